"""Training-set mixes: which arms need which (synthetic fraction, size policy), and which images each takes.

See `dermt2im_hub.evaluation.config` for the definitions. Mixing is done per class, so every mix keeps
the real set's class balance (up to rounding) and the synthetic fraction holds within each class.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from dermt2im_hub.config import ConfigError
from dermt2im_hub.labels import CLASS_NAMES

logger = logging.getLogger(__name__)


class MissingSyntheticDataError(ConfigError):
    """A mix with synthetic images was asked for, but there is no (or too little) synthetic data."""


class ShortMixError(MissingSyntheticDataError):
    """A "full" mix cannot keep every real image at its synthetic fraction (and shrinking was not asked for)."""


@dataclass(frozen=True)
class Mix:
    synthetic_fraction: float
    size_policy: str = "full"  # "full" | "equal" | "pretrain" (synthetic first, then the real set)
    arms: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.synthetic_fraction == 0:
            return "real"
        if self.size_policy == "pretrain":
            return "synthetic-then-real"
        suffix = "-equal" if self.size_policy == "equal" else ""
        return f"r{self.synthetic_fraction:.2f}{suffix}"

    @property
    def key(self) -> tuple[float, str]:
        return (round(self.synthetic_fraction, 6), self.size_policy)


def plan_mixes(arms, hybrid_fraction: float, sweep_fractions) -> list[Mix]:
    """The distinct mixes the arms need, each labelled with every arm that uses it (real-only first)."""
    wanted: dict[tuple[float, str], list[str]] = {}

    def want(fraction: float, policy: str, arm: str) -> None:
        policy = "full" if fraction == 0 else policy  # r = 0 is the same set under both policies
        wanted.setdefault((round(float(fraction), 6), policy), []).append(arm)

    for arm in arms:
        if arm == "real":
            want(0.0, "full", arm)
        elif arm == "hybrid":
            want(hybrid_fraction, "full", arm)
        elif arm == "equal_size":
            want(hybrid_fraction, "equal", arm)
        elif arm == "pretrain_finetune":  # every synthetic image first; the real set is the second phase
            want(1.0, "pretrain", arm)
        elif arm == "sweep":
            for fraction in sweep_fractions:
                want(fraction, "full", arm)
    mixes = [Mix(fraction, policy, tuple(dict.fromkeys(names))) for (fraction, policy), names in wanted.items()]
    return sorted(mixes, key=lambda m: (m.size_policy != "full", m.synthetic_fraction))


def _class_counts(real_count: int, synthetic_count: int, fraction: float, policy: str, label: str,
                  shrink: bool = False) -> tuple[int, int]:
    """(real, synthetic) images of one class for a mix."""
    if fraction == 0:
        return real_count, 0
    if synthetic_count == 0:
        raise MissingSyntheticDataError(
            f"a mix with {fraction:.0%} synthetic images needs synthetic {label} images, and the synthetic "
            "dataset has none: set evaluation.synthetic.path to the dataset stage's synthetic output, or run "
            "only the real arm (evaluation.arms=[real])")
    if policy == "equal":
        n_synthetic = round(fraction * real_count)
        if n_synthetic > synthetic_count:
            raise MissingSyntheticDataError(
                f"the equal-size mix at r={fraction} needs {n_synthetic} synthetic {label} images; only "
                f"{synthetic_count} exist")
        return real_count - n_synthetic, n_synthetic
    if fraction == 1:
        return 0, synthetic_count
    needed = synthetic_needed(real_count, fraction)
    if synthetic_count >= needed:
        return real_count, needed
    if not shrink:
        raise ShortMixError(
            f"the r={fraction:.2f} mix keeps all {real_count} real {label} training images only with {needed} "
            f"synthetic {label} images; the synthetic dataset has {synthetic_count}: {needed - synthetic_count} "
            f"missing. Generate more, lower the synthetic fraction (evaluation.hybrid_fraction / "
            "synthetic_fractions), or set evaluation.shrink_short_mixes: true to drop real images instead (that mix "
            "then has fewer real images than real-only, and the mixes table says how many)")
    total = math.floor(synthetic_count / fraction)
    n_synthetic = round(fraction * total)
    logger.warning("only %d synthetic %s images: the r=%.2f mix keeps %d of %d real ones to hold the fraction "
                   "(shrink_short_mixes)", synthetic_count, label, fraction, total - n_synthetic, real_count)
    return total - n_synthetic, n_synthetic


def synthetic_needed(real_count: int, fraction: float) -> int:
    """Synthetic images that, beside `real_count` real ones, make `fraction` of the set."""
    return round(real_count * fraction / (1 - fraction))


def check_mixes(real_labels, synthetic_labels, mixes: list[Mix], shrink: bool = False) -> None:
    """Every mix's counts, before anything trains: a short mix fails here, not after the real-only runs."""
    real_labels = np.asarray(real_labels)
    synthetic_labels = np.asarray(synthetic_labels if synthetic_labels is not None else [], dtype=np.int64)
    for mix in mixes:
        if mix.synthetic_fraction == 0:
            continue
        for label_id, label in enumerate(CLASS_NAMES):
            _class_counts(int((real_labels == label_id).sum()), int((synthetic_labels == label_id).sum()),
                          mix.synthetic_fraction, mix.size_policy, label, shrink)


def select_mix(real_labels, synthetic_labels, mix: Mix, seed: int, shrink: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the real and the synthetic training pools for `mix`, drawn with `seed`. A "full" mix
    keeps every real image; when the synthetic pool is too small that is a `ShortMixError` unless `shrink`."""
    real_labels = np.asarray(real_labels)
    synthetic_labels = np.asarray(synthetic_labels if synthetic_labels is not None else [], dtype=np.int64)
    if mix.synthetic_fraction > 0 and synthetic_labels.size == 0:
        raise MissingSyntheticDataError(
            f"arm(s) {', '.join(mix.arms) or mix.name} train on {mix.synthetic_fraction:.0%} synthetic images, "
            "but no synthetic dataset was given: set evaluation.synthetic.path (the dataset stage's synthetic "
            "config) or run only the real arm (evaluation.arms=[real])")
    rng = np.random.default_rng([seed, int(mix.synthetic_fraction * 1000), mix.size_policy == "equal"])
    real_take, synthetic_take = [], []
    for label_id, label in enumerate(CLASS_NAMES):
        real_pool = np.flatnonzero(real_labels == label_id)
        synthetic_pool = np.flatnonzero(synthetic_labels == label_id)
        n_real, n_synthetic = _class_counts(len(real_pool), len(synthetic_pool), mix.synthetic_fraction,
                                            mix.size_policy, label, shrink)
        real_take.append(rng.permutation(real_pool)[:n_real])
        synthetic_take.append(rng.permutation(synthetic_pool)[:n_synthetic])
    return np.sort(np.concatenate(real_take)), np.sort(np.concatenate(synthetic_take))
