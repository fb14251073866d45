"""Label fidelity: does a classifier trained on real images only see the class the prompt asked for?

The Derm-T2IM paper's version: a YOLOv8 detector trained on real ISIC images classified 200 synthetic images
with 72 % accuracy. Here any real-only 2-class timm model scores every image; the report gives accuracy
against the intended label overall, per class and per sampler with Wilson intervals, the confusion matrix,
and a contact sheet of the images it found least faithful (lowest probability of the intended class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dermt2im_hub.labels import CLASS_NAMES, LABEL_TO_ID
from dermt2im_hub.utils.files import atomic_save_png
from dermt2im_hub.validation.classifier import Classifier, predict
from dermt2im_hub.validation.inputs import SyntheticImage
from dermt2im_hub.validation.stats import accuracy_summary, confusion_matrix, grouped_accuracy

PAPER_ACCURACY = 0.72  # YOLOv8 trained on real ISIC, 200 synthetic images (arXiv 2401.05159)
TILE, CAPTION = 128, 28


def score_images(classifier: Classifier, images: list[SyntheticImage], batch_size: int = 32,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Per-image columns: predicted label, P(malignant), P(intended label), correct (None when unlabelled)."""
    from tqdm.auto import tqdm

    rows = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="label fidelity"):
        chunk = images[start:start + batch_size]
        probabilities = predict(classifier, [image.load() for image in chunk], batch_size)
        for image, probs in zip(chunk, probabilities):
            predicted = CLASS_NAMES[int(np.argmax(probs))]
            intended = image.label
            rows.append({
                "fidelity_predicted": predicted,
                "fidelity_p_malignant": round(float(probs[LABEL_TO_ID["malignant"]]), 6),
                "fidelity_p_intended": round(float(probs[LABEL_TO_ID[intended]]), 6) if intended else None,
                "fidelity_correct": (predicted == intended) if intended else None,
            })
    return rows


def summarize(images: list[SyntheticImage], rows: list[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    labelled = [(image, row) for image, row in zip(images, rows) if row["fidelity_correct"] is not None]
    correct = [row["fidelity_correct"] for _, row in labelled]
    return {
        "overall": accuracy_summary(correct, confidence),
        "per_class": grouped_accuracy([image.label for image, _ in labelled], correct, confidence),
        "per_sampler": grouped_accuracy([image.sampler for image, _ in labelled], correct, confidence),
        "confusion_matrix": {"rows": "intended (prompt) label", "columns": "predicted label",
                             "classes": list(CLASS_NAMES),
                             "counts": confusion_matrix([image.label for image, _ in labelled],
                                                        [row["fidelity_predicted"] for _, row in labelled])},
        "unlabelled": len(images) - len(labelled),
        "confidence": confidence,
        "paper_accuracy": PAPER_ACCURACY,
    }


def least_faithful(images: list[SyntheticImage], rows: list[dict[str, Any]], count: int) -> list[int]:
    """Indices of the `count` labelled images with the lowest probability of their intended class."""
    scored = [(row["fidelity_p_intended"], index) for index, row in enumerate(rows)
              if row["fidelity_p_intended"] is not None]
    return [index for _, index in sorted(scored)[:count]]


def write_contact_sheet(images: list[SyntheticImage], rows: list[dict[str, Any]], indices: list[int],
                        path: str | Path, columns: int = 4) -> Path | None:
    """Thumbnails captioned with intended -> predicted label and P(intended); None when nothing to show."""
    from PIL import Image, ImageDraw

    if not indices:
        return None
    grid_rows = -(-len(indices) // columns)
    sheet = Image.new("RGB", (columns * TILE, grid_rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for slot, index in enumerate(indices):
        image, row = images[index], rows[index]
        thumb = image.load()
        thumb.thumbnail((TILE, TILE))
        x, y = (slot % columns) * TILE, (slot // columns) * (TILE + CAPTION)
        sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
        draw.text((x + 3, y + TILE + 1), f"{image.label}->{row['fidelity_predicted']} p={row['fidelity_p_intended']:.2f}"[:24],
                  fill="black")
        draw.text((x + 3, y + TILE + 14), image.sampler[:22], fill="black")
    return atomic_save_png(sheet, path)
