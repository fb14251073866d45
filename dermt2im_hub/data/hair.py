"""DullRazor-style hair removal (Lee et al., Comput. Biol. Med. 1997), on OpenCV primitives.

1. grayscale;
2. morphological black-hat (closing minus image) with thin line structuring elements at several angles: a
   dark structure thinner than the line is filled by the closing in at least one direction, so the maximum
   over angles lights up hair while the lesion body (wider than the line in every direction) stays dark;
3. threshold the black-hat response, keep only elongated connected components (hair is long and thin; dots
   and globules inside the lesion are compact and must survive), dilate by a pixel to cover hair edges;
4. inpaint the masked pixels from their surroundings (Telea by default).

Kernel sizes are given for a 512 px image and scaled with the image's short side, so the same settings work
for the demo's 64-128 px images and the paper's 512 px ones. The hair fraction (share of pixels in the mask)
is measured before and after, as a record of what the step did.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dermt2im_hub.data.config import REFERENCE_SIDE, HairConfig

_INPAINT_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}  # keys: config.INPAINT_METHODS


def _scaled(pixels_at_512: int, short_side: int, minimum: int) -> int:
    return max(minimum, int(round(pixels_at_512 * short_side / REFERENCE_SIDE)))


def line_kernel(length: int, angle_degrees: float) -> np.ndarray:
    """A one-pixel-wide line through the centre of a square uint8 kernel, reaching its border at every angle
    (so each angle's line has `length` pixels, rounded up to odd)."""
    length = length | 1  # odd, so the line has a centre pixel
    kernel = np.zeros((length, length), np.uint8)
    centre = length // 2
    theta = np.deg2rad(angle_degrees)
    cos, sin = np.cos(theta), -np.sin(theta)  # image rows grow downwards
    reach = centre / max(abs(cos), abs(sin))
    start = (int(round(centre - reach * cos)), int(round(centre - reach * sin)))
    end = (int(round(centre + reach * cos)), int(round(centre + reach * sin)))
    cv2.line(kernel, start, end, 1, thickness=1)
    return kernel


def blackhat_response(gray: np.ndarray, config: HairConfig) -> np.ndarray:
    """Per-pixel maximum over angles of the black-hat transform (uint8)."""
    length = _scaled(config.kernel_length, min(gray.shape[:2]), minimum=3)
    response = np.zeros_like(gray)
    for angle in config.angles:
        np.maximum(response, cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, line_kernel(length, angle)), out=response)
    return response


def hair_mask(rgb: np.ndarray, config: HairConfig) -> np.ndarray:
    """uint8 mask (255 = hair) of an RGB uint8 image."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    short_side = min(gray.shape[:2])
    candidates = (blackhat_response(gray, config) > config.threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    min_extent = _scaled(config.min_length, short_side, minimum=0)
    extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = extent >= min_extent
    keep[0] = False  # label 0 is the background
    mask = np.where(keep[labels], 255, 0).astype(np.uint8)
    if config.dilate:
        size = 2 * config.dilate + 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    return mask


def hair_fraction(rgb: np.ndarray, config: HairConfig) -> float:
    """Share of the image's pixels that the detector calls hair."""
    return float((hair_mask(rgb, config) > 0).mean())


@dataclass
class HairRemoval:
    image: np.ndarray
    mask: np.ndarray
    fraction_before: float
    fraction_after: float


def remove_hair(rgb: np.ndarray, config: HairConfig | None = None) -> HairRemoval:
    """Inpaint detected hair; returns the new image with the mask and the hair fraction before/after."""
    config = config or HairConfig()
    mask = hair_mask(rgb, config)
    before = float((mask > 0).mean())
    if before == 0.0:
        return HairRemoval(rgb, mask, 0.0, 0.0)
    radius = _scaled(config.inpaint_radius, min(rgb.shape[:2]), minimum=1)
    cleaned = cv2.inpaint(rgb, mask, radius, _INPAINT_METHODS[config.inpaint_method])
    return HairRemoval(cleaned, mask, before, hair_fraction(cleaned, config))
