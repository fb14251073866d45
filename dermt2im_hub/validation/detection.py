"""Lesion detection: a transformers object detector fine-tuned on real images, run on synthetic ones.

The paper trained YOLOv8 (ultralytics, AGPL-3.0) on real ISIC images and reports that it "detected and
classified" 200 synthetic images with 72 % accuracy. Here the detector is any transformers object-detection
model (DETR family, conditional DETR, RT-DETR: Apache-2.0), fine-tuned with one box per real image whose class
is the image's label; the box comes from a ground-truth mask when there is one, else from the lesion prior of
the segmentation step. On synthetic images we report the detection rate (a box at `score_threshold` or more)
and the detected-class accuracy (class of the best box vs the prompt's label), both with Wilson intervals.
YOLOv8 is not used: the core never imports ultralytics.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from dermt2im_hub.labels import CLASS_NAMES, LABEL_TO_ID
from dermt2im_hub.validation.segmentation import lesion_prior
from dermt2im_hub.validation.stats import accuracy_summary

log = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random:detr"


def tiny_detector(seed: int = 0, image_size: int = 64):
    """A DETR with a tiny ResNet backbone and random weights (tests; no download). Returns (model, processor)."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            out_features=["stage2"])
    config = DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                        decoder_attention_heads=2, num_queries=4, num_labels=len(CLASS_NAMES),
                        id2label=dict(enumerate(CLASS_NAMES)), label2id=dict(LABEL_TO_ID))
    processor = DetrImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    return DetrForObjectDetection(config), processor


def load_detector(model_id: str, image_size: int, seed: int = 0):
    """A pretrained detector with a new 2-class head (benign, malignant) and its image processor."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    if model_id == TINY_RANDOM:
        return tiny_detector(seed, image_size)
    model = AutoModelForObjectDetection.from_pretrained(
        model_id, num_labels=len(CLASS_NAMES), id2label=dict(enumerate(CLASS_NAMES)), label2id=dict(LABEL_TO_ID),
        ignore_mismatched_sizes=True, use_safetensors=True)  # a new 2-class head; never pickle weights
    processor = AutoImageProcessor.from_pretrained(model_id, size={"shortest_edge": image_size,
                                                                    "longest_edge": image_size})
    return model, processor


def box_from_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (exclusive) of a boolean mask's pixels; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _annotation(index: int, box: tuple[int, int, int, int], label: str) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    return {"image_id": index, "annotations": [{"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": LABEL_TO_ID[label],
                                                "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0}]}


def training_examples(images: list[np.ndarray], labels: list[str],
                      masks: list[np.ndarray | None] | None = None) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """(rgb, COCO annotation) per real image with a box: from its mask, else from the lesion prior."""
    examples = []
    for index, (rgb, label) in enumerate(zip(images, labels)):
        mask = masks[index] if masks else None
        box = box_from_mask(mask) if mask is not None else None
        if box is None:
            prior = lesion_prior(rgb)
            box = prior.box if prior.found else None
        if box is not None:
            examples.append((rgb, _annotation(index, box, label)))
    return examples


def fine_tune(model, processor, examples, epochs: int, batch_size: int, learning_rate: float, seed: int = 0,
              progress: bool = True) -> list[float]:
    """AdamW on DETR's own set loss; returns the mean loss of each epoch."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(examples), generator=generator).tolist()
        losses = []
        for start in tqdm(range(0, len(order), batch_size), disable=not progress,
                          desc=f"detector epoch {epoch + 1}/{epochs}"):
            batch = [examples[i] for i in order[start:start + batch_size]]
            encoded = processor(images=[rgb for rgb, _ in batch], annotations=[ann for _, ann in batch],
                                return_tensors="pt")
            outputs = model(pixel_values=encoded["pixel_values"], pixel_mask=encoded.get("pixel_mask"),
                            labels=encoded["labels"])
            optimizer.zero_grad()
            outputs.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            losses.append(outputs.loss.item())
        history.append(float(np.mean(losses)))
        log.info("detector epoch %d: loss %.4f", epoch + 1, history[-1])
    return history


@torch.no_grad()
def detect(model, processor, rgb: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per-image `det_*` columns: found, best box's class, score and box (pixels, x0 y0 x1 y1)."""
    model.eval()
    encoded = processor(images=[rgb], return_tensors="pt")
    outputs = model(pixel_values=encoded["pixel_values"], pixel_mask=encoded.get("pixel_mask"))
    result = processor.post_process_object_detection(outputs, threshold=threshold,
                                                     target_sizes=[rgb.shape[:2]])[0]
    if len(result["scores"]) == 0:
        return {"det_found": False, "det_label": None, "det_score": None, "det_box": None}
    best = int(torch.argmax(result["scores"]))
    label_id = int(result["labels"][best])
    return {"det_found": True, "det_label": CLASS_NAMES[label_id] if label_id < len(CLASS_NAMES) else None,
            "det_score": round(float(result["scores"][best]), 6),
            "det_box": [round(float(v), 1) for v in result["boxes"][best]]}


def summarize(labels: list[str | None], rows: list[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Detection rate; class accuracy among detected images; end to end (detected and right class) over all."""
    labelled = [(label, row) for label, row in zip(labels, rows) if label is not None]
    detected = [(label, row) for label, row in labelled if row["det_found"]]
    return {
        "detection_rate": accuracy_summary([row["det_found"] for _, row in labelled], confidence),
        "class_accuracy_detected": accuracy_summary([row["det_label"] == label for label, row in detected],
                                                    confidence),
        "detected_and_correct": accuracy_summary([bool(row["det_found"]) and row["det_label"] == label
                                                  for label, row in labelled], confidence),
        "paper_accuracy": 0.72,
    }
