"""Per-image artifact scores and the classical lesion segmentation the filter and the skin-tone check share.

Every measure runs on the image rescaled so its shorter side is `analysis_size`, so thresholds do not depend
on the size the generator wrote:

- sharpness: variance of the Laplacian of the grey image (low = blurred);
- clipping: fraction of pixels inside the inscribed disc that are blown out (a channel at 253+) or black
  (every channel at 2 or less); the disc leaves out the dark corners of a dermatoscope's vignette;
- noise: Immerkaer's fast noise-sigma estimate (J. Immerkaer, "Fast Noise Variance Estimation", CVIU 1996),
  the mean absolute response of a Laplacian-difference kernel that cancels smooth image structure;
- lesion: Otsu's threshold on a smoothed L* channel, opening/closing, then the largest central dark region.
  Dark regions lying mostly in the outer ring (vignette shading) are removed and the threshold recomputed,
  because otherwise the vignette, not the mole, is the largest dark region.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dermt2im_hub.quality.config import ArtifactConfig

# Immerkaer's kernel: the difference of two Laplacians, zero response on locally quadratic structure.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_MORPH_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_HAIR_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
_PERIPHERAL_RADIUS = 0.75  # a dark region whose median radius exceeds this (1 = inscribed circle) is vignette
_VIGNETTE_LSTAR = 25.0  # corners darker than this L* outside the inscribed circle are the dermatoscope's rim
_MIN_SKIN_PIXELS = 50


@dataclass
class Lesion:
    mask: np.ndarray  # bool, the lesion region at analysis size
    area: float  # fraction of the field of view
    contrast: float  # median L* of skin minus median L* of lesion
    solidity: float  # area / convex-hull area


@dataclass
class ImageAnalysis:
    """What one image looks like to the filter and the skin-tone check (at analysis size)."""

    sharpness: float
    clipping: float
    noise: float
    lesion: Lesion
    lab: np.ndarray  # float32 CIELAB (L* 0..100)
    skin_mask: np.ndarray  # bool, field of view minus the dilated lesion

    def scores(self) -> dict:
        return {
            "qa_sharpness": round(self.sharpness, 3),
            "qa_clipping": round(self.clipping, 5),
            "qa_noise": round(self.noise, 4),
            "qa_lesion_area": round(self.lesion.area, 5),
            "qa_lesion_contrast": round(self.lesion.contrast, 3),
            "qa_lesion_solidity": round(self.lesion.solidity, 4),
        }


def rescale_shorter_side(rgb: np.ndarray, size: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = size / min(height, width)
    if abs(scale - 1.0) < 1e-6:
        return rgb
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, new_size, interpolation=interpolation)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> float32 CIELAB (D65, L* in 0..100, a*/b* in their natural units)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def normalized_radius(height: int, width: int) -> np.ndarray:
    """Distance from the image centre divided by half the shorter side (1 = the inscribed circle)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2) / (0.5 * min(height, width))


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_32F, ksize=3).var())


def noise_sigma(gray: np.ndarray) -> float:
    if min(gray.shape) < 3:
        return 0.0
    response = cv2.filter2D(gray, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6.0)


def clipping_fraction(rgb: np.ndarray, disc: np.ndarray) -> float:
    clipped = (rgb >= 253).any(axis=-1) | (rgb <= 2).all(axis=-1)
    return float(clipped[disc].mean()) if disc.any() else 0.0


def _dark_regions(lightness: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Otsu split of L* inside the field of view, dark side, cleaned by opening and closing."""
    values = np.clip(lightness[fov] * 2.55, 0, 255).astype(np.uint8).reshape(-1, 1)
    threshold, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = ((lightness <= threshold / 2.55) & fov).astype(np.uint8)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, _MORPH_KERNEL)
    return cv2.morphologyEx(dark, cv2.MORPH_CLOSE, _MORPH_KERNEL)


def _components(mask: np.ndarray, radius: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """(area, median normalized radius, bool mask) of each connected region."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = []
    for index in range(1, count):
        region = labels == index
        regions.append((int(stats[index, cv2.CC_STAT_AREA]), float(np.median(radius[region])), region))
    return regions


def _solidity(region: np.ndarray, area: int) -> float:
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    return float(min(1.0, area / max(cv2.contourArea(hull), 1.0)))


def segment_lesion(lab: np.ndarray, fov: np.ndarray, radius: np.ndarray) -> tuple[Lesion, np.ndarray]:
    """The lesion and the (possibly narrowed) field of view; an empty lesion when nothing dark is found."""
    empty = np.zeros(fov.shape, bool)
    if fov.sum() < _MIN_SKIN_PIXELS:
        return Lesion(empty, 0.0, 0.0, 0.0), fov
    # closing first erases thin dark hairs, which Otsu would otherwise pick over a paler lesion
    lightness = cv2.GaussianBlur(cv2.morphologyEx(lab[..., 0], cv2.MORPH_CLOSE, _HAIR_KERNEL), (0, 0), 2.0)
    regions = _components(_dark_regions(lightness, fov), radius)
    peripheral = [r for r in regions if r[1] > _PERIPHERAL_RADIUS]
    if peripheral:
        # vignette shading: drop it from the field of view and split the rest again
        fov = fov.copy()
        for _, _, region in peripheral:
            fov &= ~region
        if fov.sum() >= _MIN_SKIN_PIXELS:
            regions = _components(_dark_regions(lightness, fov), radius)
    central = [r for r in regions if r[1] <= _PERIPHERAL_RADIUS] or regions
    if not central:
        return Lesion(empty, 0.0, 0.0, 0.0), fov
    area, _, region = max(central, key=lambda r: r[0])
    dilated = cv2.dilate(region.astype(np.uint8), _MORPH_KERNEL, iterations=2).astype(bool)
    skin = fov & ~dilated
    contrast = 0.0
    if skin.sum() >= _MIN_SKIN_PIXELS:
        contrast = float(np.median(lab[..., 0][skin]) - np.median(lab[..., 0][region]))
    return Lesion(region, area / max(int(fov.sum()), 1), contrast, _solidity(region, area)), fov


def analyze_image(rgb: np.ndarray, analysis_size: int = 256) -> ImageAnalysis:
    """Scores, lesion and skin mask of one RGB uint8 image."""
    rgb = rescale_shorter_side(np.ascontiguousarray(rgb[..., :3]), analysis_size)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lab = to_lab(rgb)
    radius = normalized_radius(*gray.shape)
    disc = radius <= 1.0
    fov = ~((radius > 1.0) & (lab[..., 0] < _VIGNETTE_LSTAR))
    lesion, fov = segment_lesion(lab, fov, radius)
    skin = fov & ~cv2.dilate(lesion.mask.astype(np.uint8), _MORPH_KERNEL, iterations=2).astype(bool)
    return ImageAnalysis(sharpness(gray), clipping_fraction(rgb, disc), noise_sigma(gray), lesion, lab, skin)


def lesion_found(scores: dict, config: ArtifactConfig) -> bool:
    """A compact pigmented region of plausible area that is clearly darker than the skin around it."""
    return (config.min_lesion_area <= scores["qa_lesion_area"] <= config.max_lesion_area
            and scores["qa_lesion_contrast"] >= config.min_lesion_contrast
            and scores["qa_lesion_solidity"] >= config.min_lesion_solidity)


def artifact_reasons(scores: dict, config: ArtifactConfig) -> list[str]:
    """Why the filter rejects an image, judged from its recorded scores (`ImageAnalysis.scores()`), so a re-run
    with other thresholds needs no pixels. Empty: it passes. Near-duplicates are judged over the whole set."""
    reasons = []
    if scores["qa_sharpness"] < config.min_sharpness:
        reasons.append("blurry")
    if scores["qa_clipping"] > config.max_clipping:
        reasons.append("clipped")
    if scores["qa_noise"] > config.max_noise:
        reasons.append("noisy")
    if config.require_lesion and not lesion_found(scores, config):
        reasons.append("no_lesion")
    return reasons
