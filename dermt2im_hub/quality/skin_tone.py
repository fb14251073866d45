"""Skin tone as the Individual Typology Angle (ITA) of the non-lesion skin.

    ITA = arctan((L* - 50) / b*) * 180 / pi        (Chardon et al. 1991; CIELAB, D65)

computed from the median L* and median b* of the skin pixels (the field of view minus the dilated lesion), so
hair, specular spots and a missed lesion edge move it little. `atan2` gives the same angle for b* > 0 and
stays defined when b* is zero or negative (then |ITA| > 90 would mean a bluish cast; skin has b* > 0).

Categories (degrees, the usual bins of Del Bino et al. 2013 as used in dermatology-AI fairness work):
very light > 55 >= light > 41 >= intermediate > 28 >= tan > 10 >= brown > -30 >= dark.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# (name, lower bound exclusive), lightest first; the last bin takes everything below -30.
ITA_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("very_light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0), ("brown", -30.0),
    ("dark", -math.inf),
)
CATEGORY_NAMES = tuple(name for name, _ in ITA_CATEGORIES)
_MIN_SKIN_PIXELS = 50


def ita_degrees(lightness: float, b_star: float) -> float:
    return math.degrees(math.atan2(lightness - 50.0, b_star))


def ita_category(ita: float | None) -> str | None:
    if ita is None or not math.isfinite(ita):
        return None
    for name, lower in ITA_CATEGORIES:
        if ita > lower:
            return name
    return ITA_CATEGORIES[-1][0]


def image_ita(lab: np.ndarray, skin_mask: np.ndarray) -> float | None:
    """ITA of the skin pixels of one CIELAB image, or None when too little skin is visible."""
    if int(skin_mask.sum()) < _MIN_SKIN_PIXELS:
        return None
    lightness = float(np.median(lab[..., 0][skin_mask]))
    b_star = float(np.median(lab[..., 2][skin_mask]))
    return ita_degrees(lightness, b_star)


def category_histogram(categories: Iterable[str | None]) -> dict[str, int]:
    """Counts per category in the fixed light-to-dark order; images without skin count as 'unknown'."""
    counts = dict.fromkeys(CATEGORY_NAMES, 0)
    unknown = 0
    for name in categories:
        if name in counts:
            counts[name] += 1
        else:
            unknown += 1
    if unknown:
        counts["unknown"] = unknown
    return counts
