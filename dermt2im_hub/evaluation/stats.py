"""Statistics for comparing arms: mean +- SD over seeds, the seed-aware difference test, bootstrap CIs,
exact McNemar, Holm.

The paper ran each arm once; here every arm has N seeds and each comparison of hybrid against
real-only is paired on the same test images:

- `mean_sd`: mean and sample SD (ddof=1) over seeds.
- `seed_image_test`: the primary test. metric(A) - metric(B) (each arm's mean over its seeds) against a
  variance with two parts: training randomness (the SD over seeds of each arm's metric, divided by its seed
  count) and test-set sampling (the variance over test images of the seed-averaged per-image difference,
  paired). Welch-Satterthwaite degrees of freedom, so 5 seeds are not read as 500. It gives the p-value, a
  CI and the smallest difference the run could detect. bench/null_simulation.py checks its false-positive
  rate (3-7 % at alpha 0.05 under a true null) where the ensemble McNemar test fails.
- `bootstrap_ci`: percentile CI of a run's accuracy-type metric over test images (scipy.stats.bootstrap).
- `paired_bootstrap_difference`: CI of (hybrid - real) from a two-level bootstrap: each resample draws the
  same test images for both arms and, per arm, its seeds; each arm's metric is the mean over its seeds.
- `mcnemar_exact`: exact (binomial) McNemar test on the discordant pairs of two paired predictions. Applied to
  seed-averaged ("ensemble") predictions it ignores seed-to-seed variation: a secondary test of the two
  ensembles, never the verdict about the recipes.
- `holm`: Holm's step-down adjustment across the family of comparisons (models x test sets).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence

import numpy as np

# Metrics that are a mean of per-image correctness within classes, so the bootstrap can be vectorized.
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample SD, n) over the defined values; SD is None with fewer than two values."""
    defined = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if defined.size == 0:
        return None, None, 0
    sd = float(defined.std(ddof=1)) if defined.size > 1 else None
    return float(defined.mean()), sd, int(defined.size)


def _class_recall(labels: np.ndarray, correct: np.ndarray, cls: int, axis: int) -> np.ndarray:
    in_class = labels == cls
    with np.errstate(invalid="ignore", divide="ignore"):
        return (correct * in_class).sum(axis=axis) / in_class.sum(axis=axis)


def correctness_metric(name: str, labels: np.ndarray, correct: np.ndarray, axis: int = -1) -> np.ndarray:
    """An accuracy-type metric from 0/1 (or seed-averaged) correctness; vectorized along `axis`."""
    if name == "accuracy":
        return correct.mean(axis=axis)
    if name == "sensitivity":
        return _class_recall(labels, correct, 1, axis)
    if name == "specificity":
        return _class_recall(labels, correct, 0, axis)
    if name == "balanced_accuracy":
        recalls = np.stack([_class_recall(labels, correct, 0, axis), _class_recall(labels, correct, 1, axis)])
        # a resample holding one class scores that class's recall, as sklearn does
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(recalls, axis=0)
    raise ValueError(f"no bootstrap for metric {name!r}; choose one of {BOOTSTRAP_METRICS}")


def _percentile_bootstrap(statistic, data: tuple[np.ndarray, ...], n_resamples: int, confidence: float,
                          seed: int) -> tuple[float | None, float | None]:
    from scipy import stats

    if n_resamples <= 0 or data[0].size < 2:
        return None, None
    generator = np.random.default_rng(seed)
    # scipy >= 1.15 names the generator `rng`; older releases call it `random_state`
    seed_arg = {"rng": generator} if "rng" in inspect.signature(stats.bootstrap).parameters else {
        "random_state": generator}
    result = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                             confidence_level=confidence, method="percentile", **seed_arg)
    low, high = result.confidence_interval
    return (None if np.isnan(low) else float(low)), (None if np.isnan(high) else float(high))


def bootstrap_ci(name: str, labels, predictions, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI over test images of one run's accuracy-type metric."""
    labels = np.asarray(labels, dtype=np.int64)
    correct = (np.asarray(predictions, dtype=np.int64) == labels).astype(np.float64)

    def statistic(y, c, axis=-1):
        return correctness_metric(name, y, c, axis)

    return _percentile_bootstrap(statistic, (labels, correct), n_resamples, confidence, seed)


def paired_bootstrap_difference(name: str, labels, predictions_a, predictions_b, n_resamples: int = 2000,
                                confidence: float = 0.95, seed: int = 0) -> dict[str, float | None]:
    """Point estimate and percentile CI of metric(A) - metric(B) on the same test images.

    `predictions_a` / `predictions_b` are (seeds, images) arrays (or one run each, (images,)); each arm's
    metric is its mean over seeds, which for these metrics equals the metric of seed-averaged correctness.
    The CI comes from a two-level bootstrap: every resample draws the test images (the same ones for both
    arms, so the comparison stays paired) and, independently per arm, its seeds, so the interval carries the
    run-to-run spread of training as well as the test-set sampling. With one seed per arm it is the usual
    paired bootstrap over images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    right_a = (np.atleast_2d(np.asarray(predictions_a)) == labels).astype(np.float64)
    right_b = (np.atleast_2d(np.asarray(predictions_b)) == labels).astype(np.float64)
    point = float(correctness_metric(name, labels, right_a.mean(axis=0))
                  - correctness_metric(name, labels, right_b.mean(axis=0)))
    low, high = _two_level_bootstrap(name, labels, right_a, right_b, n_resamples, confidence, seed)
    return {"difference": point, "ci_low": low, "ci_high": high}


def _two_level_bootstrap(name: str, labels: np.ndarray, right_a: np.ndarray, right_b: np.ndarray,
                         n_resamples: int, confidence: float, seed: int,
                         chunk: int = 256) -> tuple[float | None, float | None]:
    if n_resamples <= 0 or labels.size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    statistics = []
    for start in range(0, n_resamples, chunk):  # chunks keep memory at chunk x images
        size = min(chunk, n_resamples - start)
        images = rng.integers(0, labels.size, (size, labels.size))
        per_arm = []
        for right in (right_a, right_b):
            seeds = rng.integers(0, right.shape[0], (size, right.shape[0]))
            weights = np.stack([np.bincount(row, minlength=right.shape[0]) for row in seeds]) / right.shape[0]
            per_arm.append(np.take_along_axis(weights @ right, images, axis=1))  # seed-averaged, then images
        drawn = labels[images]
        statistics.append(correctness_metric(name, drawn, per_arm[0]) - correctness_metric(name, drawn, per_arm[1]))
    values = np.concatenate(statistics)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    tail = (1.0 - confidence) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def discordant_pairs(labels, predictions_a, predictions_b) -> tuple[int, int]:
    """(b, c): images only A got right, and images only B got right."""
    labels = np.asarray(labels)
    right_a = np.asarray(predictions_a) == labels
    right_b = np.asarray(predictions_b) == labels
    return int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c trials at p = 0.5."""
    from scipy import stats

    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (same order as given; None stays None)."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        # each adjusted value is at least the previous one, so the order of decisions is kept
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------------------------------------- primary test


def metric_strata(name: str, labels: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """An accuracy-type metric as a weighted sum of per-stratum mean correctness: [(image mask, weight)]."""
    benign, malignant = labels == 0, labels == 1
    strata = {"accuracy": [(np.ones_like(labels, dtype=bool), 1.0)], "sensitivity": [(malignant, 1.0)],
              "specificity": [(benign, 1.0)], "balanced_accuracy": [(benign, 0.5), (malignant, 0.5)]}
    if name not in strata:
        raise ValueError(f"no seed-aware test for metric {name!r}; choose one of {BOOTSTRAP_METRICS}")
    # a class missing from the test set drops out (balanced accuracy is then that class's recall)
    kept = [(mask, weight) for mask, weight in strata[name] if mask.any()]
    total = sum(weight for _, weight in kept)
    return [(mask, weight / total) for mask, weight in kept]


def variance_components(right_a: np.ndarray, right_b: np.ndarray,
                        strata: list[tuple[np.ndarray, float]]) -> dict[str, np.ndarray]:
    """Difference, its variance parts and degrees of freedom from 0/1 correctness arrays (..., seeds, images).

    Vectorized over leading axes (the null simulation passes thousands of experiments at once). The seed
    part uses each arm's per-seed metric (training randomness, conditional on the test images); the image
    part uses the seed-averaged per-image difference within each stratum (test-set sampling, paired). The
    within-image seed noise that both parts would count is taken out of the image part once.
    """
    def per_seed(right):
        return sum(weight * right[..., mask].mean(axis=-1) for mask, weight in strata)

    seeds_a, seeds_b = right_a.shape[-2], right_b.shape[-2]
    metric_a, metric_b = per_seed(right_a), per_seed(right_b)
    difference = metric_a.mean(axis=-1) - metric_b.mean(axis=-1)
    seed_a = metric_a.var(axis=-1, ddof=1) / seeds_a if seeds_a > 1 else np.zeros_like(difference)
    seed_b = metric_b.var(axis=-1, ddof=1) / seeds_b if seeds_b > 1 else np.zeros_like(difference)
    per_image = right_a.mean(axis=-2) - right_b.mean(axis=-2)
    image = np.zeros_like(difference)
    for mask, weight in strata:
        count = int(mask.sum())
        if count < 2:
            continue
        spread = per_image[..., mask].var(axis=-1, ddof=1)
        for right, seeds in ((right_a, seeds_a), (right_b, seeds_b)):
            if seeds > 1:  # already in that arm's seed part
                spread = spread - right[..., mask].var(axis=-2, ddof=1).mean(axis=-1) / seeds
        image = image + weight ** 2 * np.maximum(spread, 0.0) / count
    image_df = max(1, sum(int(mask.sum()) - 1 for mask, _ in strata))
    parts = [(seed_a, seeds_a - 1), (seed_b, seeds_b - 1), (image, image_df)]
    variance = seed_a + seed_b + image
    variance = np.where(variance < 1e-12, 0.0, variance)  # rounding noise of identical arrays is no variation
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = sum(v ** 2 / df for v, df in parts if df > 0)
        usable = (denominator > 0) & (variance > 0)
        df = np.where(usable, variance ** 2 / np.where(usable, denominator, 1.0), image_df)
    return {"difference": difference, "variance": variance, "df": df, "seed_variance_a": seed_a,
            "seed_variance_b": seed_b, "image_variance": image}


def t_test_from_components(difference, variance, df) -> np.ndarray:
    """Two-sided p-value of difference / sqrt(variance) against Student's t with df degrees of freedom."""
    from scipy import stats

    difference, variance = np.asarray(difference, dtype=np.float64), np.asarray(variance, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(variance > 0, np.abs(difference) / np.sqrt(np.where(variance > 0, variance, 1.0)), 0.0)
    # no variance at all: identical correctness everywhere (p = 1), or a constant non-zero shift (p = 0)
    t = np.where((variance <= 0) & (np.abs(difference) > 0), np.inf, t)
    return 2 * stats.t.sf(t, df)


def detectable_difference(variance: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true difference a two-sided t test at `alpha` finds with probability `power`; None when the
    run shows no variation at all (no image or seed where the arms disagree: nothing to estimate it from)."""
    from scipy import stats

    if variance <= 0:
        return None
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * math.sqrt(max(variance, 0.0)))


def seed_image_test(name: str, labels, predictions_a, predictions_b, confidence: float = 0.95,
                    detect_alpha: float = 0.05, power: float = 0.8) -> dict[str, float | int | None]:
    """The primary, seed-aware test of metric(A) - metric(B) on the same test images.

    `predictions_a` / `predictions_b`: hard predictions, (seeds, images) or (images,) for one run. Returns the
    difference (each arm's mean over seeds), its standard error, the Welch-Satterthwaite degrees of freedom,
    the two-sided p-value, a `confidence` CI (seeds and test images both in it) and the smallest difference
    detectable at `detect_alpha` with `power`. With one seed per arm it is the paired t-test on per-image
    correctness (scipy.stats.ttest_rel), whose seed part cannot be estimated (`seed_variance_known` False).
    """
    from scipy import stats

    labels = np.asarray(labels, dtype=np.int64)
    right_a = (np.atleast_2d(np.asarray(predictions_a)) == labels).astype(np.float64)
    right_b = (np.atleast_2d(np.asarray(predictions_b)) == labels).astype(np.float64)
    parts = variance_components(right_a, right_b, metric_strata(name, labels))
    difference, variance, df = (float(parts[k]) for k in ("difference", "variance", "df"))
    half_width = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(variance)
    return {"difference": difference, "se": math.sqrt(variance), "df": df,
            "p_value": float(t_test_from_components(difference, variance, df)),
            # a difference of two proportions lies in [-1, 1]: with few seeds the t interval can reach past that
            "ci_low": max(-1.0, difference - half_width), "ci_high": min(1.0, difference + half_width),
            "seed_se": math.sqrt(float(parts["seed_variance_a"] + parts["seed_variance_b"])),
            "image_se": math.sqrt(float(parts["image_variance"])),
            "detectable_difference": detectable_difference(variance, df, detect_alpha, power),
            "detect_alpha": detect_alpha, "power": power,
            "seed_variance_known": right_a.shape[0] > 1 and right_b.shape[0] > 1}


# ---------------------------------------------------------------------------------------------- scores


def sensitivity_at_specificity(labels, scores, specificity: float) -> float | None:
    """The highest sensitivity any threshold reaches while keeping at least `specificity` (ROC curve
    points; None when the test set lacks a class)."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    allowed = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[allowed].max())


def _placements(positive: np.ndarray, negative: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's structural components (midranks, so ties count one half)."""
    from scipy.stats import rankdata

    m, n = positive.size, negative.size
    overall = rankdata(np.concatenate([positive, negative]))
    within_positive, within_negative = rankdata(positive), rankdata(negative)
    auc = (overall[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (overall[:m] - within_positive) / n  # share of negatives each positive outranks
    v01 = 1.0 - (overall[m:] - within_negative) / m  # share of positives that outrank each negative
    return float(auc), v10, v01


def delong_difference(labels, scores_a, scores_b) -> dict[str, float | None]:
    """Paired DeLong test of AUROC(A) - AUROC(B) on the same images (DeLong, DeLong & Clarke-Pearson 1988)."""
    from scipy.stats import norm

    labels = np.asarray(labels, dtype=np.int64)
    positive, negative = labels == 1, labels == 0
    if positive.sum() < 2 or negative.sum() < 2:
        return {"auroc_a": None, "auroc_b": None, "difference": None, "se": None, "p_value": None}
    parts = [_placements(np.asarray(s, dtype=np.float64)[positive], np.asarray(s, dtype=np.float64)[negative])
             for s in (scores_a, scores_b)]
    s10 = np.cov(np.stack([parts[0][1], parts[1][1]]))
    s01 = np.cov(np.stack([parts[0][2], parts[1][2]]))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ s10 @ contrast / positive.sum() + contrast @ s01 @ contrast / negative.sum())
    difference = parts[0][0] - parts[1][0]
    if variance <= 0:
        p = 1.0 if difference == 0 else 0.0
    else:
        p = float(2 * norm.sf(abs(difference) / math.sqrt(variance)))
    return {"auroc_a": parts[0][0], "auroc_b": parts[1][0], "difference": difference,
            "se": math.sqrt(max(variance, 0.0)), "p_value": p}
