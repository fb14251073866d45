"""The QA report's pictures (closest synthetic/real pairs, ITA histograms) and the card summaries."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dermt2im_hub.quality.skin_tone import CATEGORY_NAMES
from dermt2im_hub.utils.files import atomic_save_figure, atomic_save_png

PAIR_HEIGHT = 256
_CAPTION_HEIGHT = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name-safe rendering of an image id (ids come from untrusted metadata)."""
    return _UNSAFE.sub("_", text).strip("._")[:limit] or "image"


def _fit_height(rgb: np.ndarray, height: int) -> np.ndarray:
    scale = height / rgb.shape[0]
    return cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)


def side_by_side(synthetic: np.ndarray, real: np.ndarray, caption: str) -> Image.Image:
    """Synthetic left, real right, same height, one caption line underneath."""
    left, right = _fit_height(synthetic, PAIR_HEIGHT), _fit_height(real, PAIR_HEIGHT)
    gap = np.full((PAIR_HEIGHT, 8, 3), 255, np.uint8)
    row = np.concatenate([left, gap, right], axis=1)
    canvas = np.full((PAIR_HEIGHT + _CAPTION_HEIGHT, row.shape[1], 3), 255, np.uint8)
    canvas[:PAIR_HEIGHT] = row
    font_scale = min(0.5, 0.9 * row.shape[1] / max(1, 11 * len(caption)))
    cv2.putText(canvas, caption, (6, PAIR_HEIGHT + 26), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return Image.fromarray(canvas)


def save_pair(path: Path, synthetic: np.ndarray, real: np.ndarray, caption: str) -> Path:
    return atomic_save_png(side_by_side(synthetic, real, caption), path)


def plot_ita_histograms(path: Path, real: Mapping[str, int], synthetic: Mapping[str, int],
                        real_values: Sequence[float], synthetic_values: Sequence[float]) -> Path:
    """Two panels: share of images per ITA category, and the ITA value distributions, real vs synthetic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, hist) = plt.subplots(1, 2, figsize=(11, 4))
    positions = np.arange(len(CATEGORY_NAMES))
    for offset, (name, counts, colour) in enumerate((("real", real, "#4c72b0"),
                                                     ("synthetic", synthetic, "#dd8452"))):
        total = max(1, sum(counts.get(c, 0) for c in CATEGORY_NAMES))
        shares = [counts.get(c, 0) / total for c in CATEGORY_NAMES]
        bars.bar(positions + (offset - 0.5) * 0.4, shares, width=0.4, label=f"{name} (n={total})", color=colour)
    bars.set_xticks(positions, [c.replace("_", " ") for c in CATEGORY_NAMES], rotation=20)
    bars.set_ylabel("share of images")
    bars.set_title("ITA skin-tone category")
    bars.legend()
    edges = np.linspace(-90, 90, 37)
    for name, values, colour in (("real", real_values, "#4c72b0"), ("synthetic", synthetic_values, "#dd8452")):
        if len(values):
            hist.hist(values, bins=edges, alpha=0.6, density=True, label=name, color=colour)
    for boundary in (55, 41, 28, 10, -30):
        hist.axvline(boundary, color="grey", linewidth=0.8, linestyle=":")
    hist.set_xlabel("ITA (degrees)")
    hist.set_title("ITA of non-lesion skin")
    hist.legend()
    figure.tight_layout()
    return atomic_save_figure(figure, path)


def card_summaries(report: Mapping) -> dict:
    """The `extra["card"]` dicts the dataset card renders: qa, memorization, skin_tone (contract 4)."""
    artifacts, memo, skin = report["artifacts"], report["memorization"], report["skin_tone"]
    fidelity = report.get("fidelity") or {}
    qa = {
        "num_images": artifacts["num_images"], "passed": artifacts["passed"], "rejected": artifacts["rejected"],
        "pass_rate": artifacts["pass_rate"], "reasons": artifacts["reasons"],
        "thresholds": artifacts["thresholds"], "feature_extractor": report.get("feature_extractor", {}).get("name"),
    }
    if fidelity.get("overall"):
        keys = ("fid", "kid", "kid_std", "precision", "recall", "num_real", "num_synthetic")
        qa["fidelity"] = {"overall": {k: fidelity["overall"].get(k) for k in keys},
                          "per_class": {c: {k: m.get(k) for k in keys} for c, m in fidelity["per_class"].items()}}
    memorization = {
        "audited": memo["audited"], "num_training_images": memo["num_training_images"],
        "flagged": memo["flagged"], "flagged_published": memo["flagged_published"],
        "result": memo["result"], "methods": memo["methods"], "thresholds": memo["thresholds"],
    }
    skin_tone = {"method": skin["method"], "synthetic": skin["synthetic"]["categories"],
                 "real": skin["real"]["categories"], "synthetic_median_ita": skin["synthetic"]["median_ita"],
                 "real_median_ita": skin["real"]["median_ita"], "histogram": skin.get("histogram")}
    return {"qa": qa, "memorization": memorization, "skin_tone": skin_tone}
