"""`dermt2im validate`: the three checks on one input, written to one output folder (the input is only read).

OUTPUT/
  metadata.jsonl         one row per image: file_name (relative to the input), label, sampler, prompt, and the
                         fidelity_*, seg_* and det_* columns
  report.json            summaries (accuracy with Wilson intervals per class and sampler, confusion matrix,
                         segmentation and calibration, detection) beside the paper's numbers
  summary.md             the same as tables
  least_faithful.png     contact sheet of the images the real-only classifier found least faithful
  reference_classifier/  the fine-tuned real-only classifier, when none was given (timm folder + manifest)
  manifest.json, README.md
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermt2im_hub.config import ConfigError, config_to_dict
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.manifest import StageRun, try_read_manifest
from dermt2im_hub.quality.images import real_items
from dermt2im_hub.utils.files import atomic_write_json, atomic_write_text, write_jsonl
from dermt2im_hub.validation import detection, fidelity, segmentation
from dermt2im_hub.validation.classifier import REFERENCE_STAGE, fine_tune_reference, load_classifier
from dermt2im_hub.validation.config import ValidationConfig
from dermt2im_hub.validation.inputs import SyntheticImage, describe_labels, read_synthetic
from dermt2im_hub.validation.summary import card_facts, summary_markdown

log = logging.getLogger(__name__)

STAGE = "validate"
REFERENCE_DIR = "reference_classifier"
# the fidelity settings that decide the reference classifier's weights (a change of any other reuses it)
TRAINING_KEYS = ("real", "reference_model", "pretrained", "train_layers", "probe_c", "image_size", "epochs", "batch_size", "learning_rate",
                 "holdout_fraction", "seed")
SHEET_NAME = "least_faithful.png"


@dataclass
class ValidationResult:
    output_dir: Path
    report: dict[str, Any]


def _check_output(input_dir: Path, output_dir: Path) -> None:
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or target.is_relative_to(source):
        raise ConfigError(f"the output folder {output_dir} is inside the input {input_dir}: validation never "
                          "writes into its input; choose another --output")


def reference_classifier(config: ValidationConfig, output_dir: Path, classifier: str | None, progress: bool):
    """The classifier given, else one fine-tuned on `fidelity.real` (reused when its manifest matches)."""
    spec = classifier or config.fidelity.classifier
    if spec:
        return load_classifier(spec), spec
    if not config.fidelity.real:
        raise ConfigError("label fidelity needs a real-only classifier: give --classifier (a benchmark run's "
                          "real-only model folder or any 2-class timm model) or --fidelity.real REAL_DIR to "
                          "fine-tune validation.fidelity.reference_model on real images")
    folder = output_dir / REFERENCE_DIR
    done = try_read_manifest(folder) or {}
    wanted = {key: value for key, value in config_to_dict(config.fidelity).items() if key in TRAINING_KEYS}
    recorded = {key: value for key, value in (done.get("config") or {}).items() if key in TRAINING_KEYS}
    if not (done.get("stage") == REFERENCE_STAGE and done.get("status") == "complete" and recorded == wanted):
        fine_tune_reference(config.fidelity.real, folder, config.fidelity, progress=progress)
    return load_classifier(str(folder)), str(folder)


def _run_fidelity(images, config: ValidationConfig, output_dir: Path, classifier: str | None, progress: bool):
    model, spec = reference_classifier(config, output_dir, classifier, progress)
    rows = fidelity.score_images(model, images, config.fidelity.batch_size, progress)
    summary = fidelity.summarize(images, rows, config.fidelity.confidence)
    summary["classifier"] = spec
    summary["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()}
    reference = try_read_manifest(spec) if Path(spec).is_dir() else None
    if reference and reference.get("stage") == REFERENCE_STAGE:
        summary["reference_holdout"] = reference["extra"].get("holdout")
    sheet = fidelity.write_contact_sheet(images, rows, fidelity.least_faithful(images, rows,
                                                                              config.fidelity.sheet_size),
                                         output_dir / SHEET_NAME)
    summary["contact_sheet"] = sheet.name if sheet else None
    return rows, summary


def _segmenter(config: ValidationConfig):
    model_id = config.segmentation.model
    segmenter = segmentation.tiny_sam() if model_id == segmentation.TINY_RANDOM else segmentation.load_sam(model_id)
    segmenter.prompt, segmenter.stability_offset = config.segmentation.prompt, config.segmentation.stability_offset
    return segmenter


def _run_segmentation(images, config: ValidationConfig, progress: bool):
    from tqdm.auto import tqdm

    seg = config.segmentation
    segmenter = _segmenter(config)
    rows = [segmentation.segmentation_columns(segmenter.segment(np.array(image.load())), seg.min_area, seg.max_area)
            for image in tqdm(images, disable=not progress, desc="segmentation")]
    summary = segmentation.summarize(rows)
    summary["model"] = seg.model
    if seg.calibration_images:
        summary["calibration"] = {
            "sam": segmentation.calibrate(lambda rgb: segmenter.segment(rgb)["mask"], seg.calibration_images),
            "prior_only": segmentation.calibrate(lambda rgb: segmentation.lesion_prior(rgb).mask,
                                                 seg.calibration_images),
            "images": str(seg.calibration_images)}
    return rows, summary


def _real_detection_examples(config: ValidationConfig):
    from PIL import Image

    det = config.detection
    if not det.real:
        raise ConfigError("detection needs real training images: set validation.detection.real")
    items = [item for item in real_items(det.real) if item.label in CLASS_NAMES]
    rng = np.random.default_rng(det.seed)
    if det.max_train_images and len(items) > det.max_train_images:
        items = [items[i] for i in sorted(rng.choice(len(items), det.max_train_images, replace=False))]
    images = []
    for item in items:
        with Image.open(item.path) as image:
            images.append(np.asarray(image.convert("RGB")))
    return detection.training_examples(images, [item.label for item in items])


def _run_detection(images, config: ValidationConfig, progress: bool):
    from tqdm.auto import tqdm

    det = config.detection
    examples = _real_detection_examples(config)
    model, processor = detection.load_detector(det.model, det.image_size, det.seed)
    history = detection.fine_tune(model, processor, examples, det.epochs, det.batch_size, det.learning_rate,
                                  det.seed, progress)
    rows = [detection.detect(model, processor, np.array(image.load()), det.score_threshold)
            for image in tqdm(images, disable=not progress, desc="detection")]
    summary = detection.summarize([image.label for image in images], rows, config.fidelity.confidence)
    summary.update(model=det.model, train_images=len(examples), loss_history=history,
                   score_threshold=det.score_threshold)
    return rows, summary


def _image_rows(images: list[SyntheticImage], columns: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for index, image in enumerate(images):
        row = {"file_name": image.file_name, "image_id": image.image_id, "label": image.label,
               "label_source": image.label_source, "sampler": image.sampler, "prompt": image.prompt}
        for check in columns:
            row.update(check[index])
        rows.append(row)
    return rows


def run_validation(input_dir: str | Path, config: ValidationConfig, output_dir: str | Path,
                   classifier: str | None = None, progress: bool = True) -> ValidationResult:
    """Run the enabled checks on `input_dir` and write everything to `output_dir`."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _check_output(input_dir, output_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    inputs = {"images": input_dir}
    for role, path in (("classifier", classifier or config.fidelity.classifier),
                       ("fidelity_real", config.fidelity.real if config.fidelity.enabled else None),
                       ("detection_real", config.detection.real if config.detection.enabled else None)):
        if path:
            inputs[role] = path
    with StageRun(output_dir, STAGE, config, inputs=inputs) as run:
        kind, images = read_synthetic(input_dir, config.split)
        report: dict[str, Any] = {"input": {"kind": kind, "num_images": len(images), **describe_labels(images)}}
        columns = []
        if config.fidelity.enabled:
            rows, report["fidelity"] = _run_fidelity(images, config, output_dir, classifier, progress)
            columns.append(rows)
        if config.segmentation.enabled:
            rows, report["segmentation"] = _run_segmentation(images, config, progress)
            columns.append(rows)
        if config.detection.enabled:
            rows, report["detection"] = _run_detection(images, config, progress)
            columns.append(rows)
        write_jsonl(output_dir / "metadata.jsonl", _image_rows(images, columns))
        atomic_write_json(output_dir / "report.json", report)
        atomic_write_text(output_dir / "summary.md", summary_markdown(report))
        run.outputs.update(metadata="metadata.jsonl", report="report.json", summary="summary.md",
                           num_images=len(images))
        if report.get("fidelity", {}).get("contact_sheet"):
            run.outputs["contact_sheet"] = SHEET_NAME
        run.extra["card"] = card_facts(report)
        run.extra["report"] = report
    return ValidationResult(output_dir, report)
