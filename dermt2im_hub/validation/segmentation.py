"""Zero-shot lesion segmentation with Segment Anything (transformers' SamModel / SamProcessor).

SAM needs a prompt. A cheap lesion prior gives it: Otsu's threshold on the blurred grey image (lesions are
darker than skin), the connected component nearest the centre, its bounding box (or an interior point). SAM's
best mask of three is kept; per image we record whether a lesion-sized mask was found, its area, compactness
(4 pi A / P^2: 1 for a disc), border irregularity (perimeter / convex-hull perimeter: 1 for a convex outline;
the "B" of the ABCD rule), SAM's predicted IoU and its stability score (IoU of the mask thresholded at
+offset and -offset logits). On real images with ground-truth masks, Dice and IoU say how far to trust it.

Real checkpoints: facebook/sam-vit-base, facebook/sam-vit-large, facebook/sam-vit-huge (Apache-2.0), by Hub id
or local folder. Tests use `tiny_sam()` (random weights, built in code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

TINY_RANDOM = "tiny-random:sam"  # model id of the random tiny SAM built in code (tests, plumbing checks)
MASK_THRESHOLD = 0.0  # SAM's mask logits are thresholded at 0 (transformers' post_process_masks default)
PAPER_NOTE = "the paper shows SAM masks of synthetic moles qualitatively; it reports no segmentation numbers"


@dataclass
class LesionPrior:
    mask: np.ndarray  # bool H x W
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), pixels
    point: tuple[int, int]  # x, y inside the component
    found: bool  # False: no dark component; box/point fall back to the central half


def lesion_prior(rgb: np.ndarray, blur_fraction: float = 0.02) -> LesionPrior:
    """The dark blob nearest the centre by Otsu's threshold on the blurred grey image."""
    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    kernel = max(3, int(blur_fraction * max(height, width)) | 1)
    blurred = cv2.GaussianBlur(grey, (kernel, kernel), 0)
    _, dark = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    count, components, stats, centroids = cv2.connectedComponentsWithStats((dark > 0).astype(np.uint8))
    min_pixels = 0.001 * height * width
    candidates = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_pixels
                  and stats[i, cv2.CC_STAT_AREA] < 0.95 * height * width]
    if not candidates:
        box = (width // 4, height // 4, width - width // 4, height - height // 4)
        return LesionPrior(np.zeros((height, width), bool), box, (width // 2, height // 2), False)
    centre = np.array([width / 2, height / 2])
    best = min(candidates, key=lambda i: np.linalg.norm(centroids[i] - centre) / np.sqrt(stats[i, cv2.CC_STAT_AREA]))
    mask = components == best
    x, y, w, h = (int(stats[best, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                 cv2.CC_STAT_HEIGHT))
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    py, px = np.unravel_index(int(np.argmax(inside)), inside.shape)
    return LesionPrior(mask, (x, y, x + w, y + h), (int(px), int(py)), True)


def shape_metrics(mask: np.ndarray) -> dict[str, float | None]:
    """Area fraction, compactness and border irregularity of the largest region of a boolean mask."""
    area_fraction = float(mask.mean()) if mask.size else 0.0
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return {"area": area_fraction, "compactness": None, "border_irregularity": None}
    # a pixel outline's stair steps add ~5-15 % to the perimeter; a 1-pixel polygon fit removes them
    contour = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 1.0, True)
    area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
    hull_perimeter = cv2.arcLength(cv2.convexHull(contour), True)
    return {
        "area": area_fraction,
        "compactness": float(4 * np.pi * area / perimeter ** 2) if perimeter > 0 else None,
        "border_irregularity": float(perimeter / hull_perimeter) if hull_perimeter > 0 else None,
    }


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; two empty masks agree perfectly (1, 1)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    intersection = np.logical_and(predicted, truth).sum()
    total = predicted.sum() + truth.sum()
    union = np.logical_or(predicted, truth).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * intersection / total), float(intersection / union)


class SamSegmenter:
    """SAM prompted by the lesion prior. `model`/`processor` come from `load_sam` or `tiny_sam`."""

    def __init__(self, model, processor, prompt: str = "box", stability_offset: float = 1.0):
        self.model = model.eval()
        self.processor = processor
        self.prompt = prompt
        self.stability_offset = stability_offset

    @torch.no_grad()
    def segment(self, rgb: np.ndarray) -> dict[str, Any]:
        """{"mask": bool H x W, "prior": LesionPrior, "iou_score": float, "stability": float}."""
        prior = lesion_prior(rgb)
        if self.prompt == "box":
            inputs = self.processor(images=rgb, input_boxes=[[list(prior.box)]], return_tensors="pt")
        else:
            inputs = self.processor(images=rgb, input_points=[[[list(prior.point)]]], input_labels=[[[1]]],
                                    return_tensors="pt")
        outputs = self.model(**{k: v for k, v in inputs.items() if k not in ("original_sizes",
                                                                               "reshaped_input_sizes")},
                             multimask_output=True)
        logits = self.processor.image_processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False)[0][0]
        scores = outputs.iou_scores[0, 0]
        best = int(torch.argmax(scores))
        chosen = logits[best]
        mask = (chosen > MASK_THRESHOLD).numpy()
        high = (chosen > MASK_THRESHOLD + self.stability_offset).sum().item()
        low = (chosen > MASK_THRESHOLD - self.stability_offset).sum().item()
        return {"mask": mask, "prior": prior, "iou_score": float(scores[best]),
                "stability": float(high / low) if low else 0.0}


def load_sam(model_id: str, device: str | None = None) -> SamSegmenter:
    from transformers import SamModel, SamProcessor

    model = SamModel.from_pretrained(model_id, use_safetensors=True)  # never pickle weights
    processor = SamProcessor.from_pretrained(model_id)
    return SamSegmenter(model.to(device or "cpu"), processor)


def tiny_sam(seed: int = 0, image_size: int = 64) -> SamSegmenter:
    """A SAM with random weights and the real architecture's wiring, small enough for tests (no download)."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    config = SamConfig(
        vision_config={"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 16, "window_size": 2, "global_attn_indexes": [1],
                       "num_pos_feats": 8, "mlp_dim": 64},
        prompt_encoder_config={"hidden_size": 16, "image_size": image_size, "patch_size": 16,
                               "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 16, "mlp_dim": 32, "num_attention_heads": 2, "iou_head_hidden_dim": 16},
    )
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": image_size},
                                               pad_size={"height": image_size, "width": image_size}))
    return SamSegmenter(SamModel(config), processor)


def segmentation_columns(result: dict[str, Any], min_area: float, max_area: float) -> dict[str, Any]:
    """The per-image `seg_*` columns of one SAM result."""
    shape = shape_metrics(result["mask"])
    found = bool(min_area <= shape["area"] <= max_area)
    return {"seg_found": found, "seg_area": round(shape["area"], 6),
            "seg_compactness": _round(shape["compactness"]),
            "seg_border_irregularity": _round(shape["border_irregularity"]),
            "seg_iou_score": round(result["iou_score"], 6), "seg_stability": round(result["stability"], 6),
            "seg_prior_found": result["prior"].found, "seg_box": list(result["prior"].box)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def calibration_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(image id, image path, mask path) of an ISIC task-1 style folder: images/ID.jpg|png and
    masks/ID_segmentation.png; images without a mask (or masks without an image) are skipped."""
    folder = Path(folder)
    pairs = []
    for image_path in sorted((folder / "images").glob("*")):
        if image_path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        mask_path = folder / "masks" / f"{image_path.stem}_segmentation.png"
        if mask_path.is_file():
            pairs.append((image_path.stem, image_path, mask_path))
    return pairs


def calibrate(segment, folder: str | Path, max_side: int = 1024) -> dict[str, Any]:
    """Dice/IoU of `segment(rgb) -> bool mask` against ground-truth masks, per image and on average."""
    from PIL import Image

    rows = []
    for image_id, image_path, mask_path in calibration_pairs(folder):
        with Image.open(image_path) as image:
            image = image.convert("RGB")
            scale = min(1.0, max_side / max(image.size))
            size = (round(image.width * scale), round(image.height * scale))
            rgb = np.array(image.resize(size, Image.Resampling.BILINEAR))
        with Image.open(mask_path) as mask:
            truth = np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) > 127
        dice, iou = dice_iou(segment(rgb), truth)
        rows.append({"image_id": image_id, "dice": round(dice, 6), "iou": round(iou, 6)})
    mean = {key: round(float(np.mean([row[key] for row in rows])), 6) if rows else None for key in ("dice", "iou")}
    return {"n": len(rows), "mean_dice": mean["dice"], "mean_iou": mean["iou"], "images": rows}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    found = [row for row in rows if row["seg_found"]]

    def median(key: str) -> float | None:
        values = [row[key] for row in found if row[key] is not None]
        return round(float(np.median(values)), 6) if values else None

    return {"n": len(rows), "found": len(found), "found_rate": len(found) / len(rows) if rows else None,
            "median_area": median("seg_area"), "median_compactness": median("seg_compactness"),
            "median_border_irregularity": median("seg_border_irregularity"),
            "median_iou_score": median("seg_iou_score"), "median_stability": median("seg_stability"),
            "paper": PAPER_NOTE}
