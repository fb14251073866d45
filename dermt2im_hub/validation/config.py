"""The `validation:` section: the three downstream checks of synthetic images the Derm-T2IM paper reports.

- fidelity: a classifier trained on real images only scores every synthetic image against its prompt's label
  (the paper: a detector trained on real ISIC images classified 200 synthetic images with 72 % accuracy);
- segmentation: Segment Anything (transformers' SamModel) prompted with a box from a cheap lesion prior;
- detection: a transformers object detector (DETR family, Apache-2.0) fine-tuned on real images whose boxes
  come from the same lesion prior (or ground-truth masks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dermt2im_hub.config import ConfigError

SECTION = "validation"


@dataclass
class FidelityConfig:
    enabled: bool = field(default=True, metadata={"help": "score every image with a real-only classifier"})
    classifier: str | None = field(default=None, metadata={
        "help": "the real-only classifier: a timm model folder (a benchmark run's real-only model, or one "
                "`dermt2im validate --train-reference` wrote), `local-dir:FOLDER`, `hf-hub:ID` or a timm name; "
                "default: fine-tune `reference_model` on `real` first"})
    real: str | None = field(default=None, metadata={
        "help": "real training images (benign/ and malignant/ folders, or a data-stage folder) to fine-tune "
                "`reference_model` on when no classifier is given"})
    reference_model: str = field(default="mobilenetv2_100.tf_in1k", metadata={
        "help": "timm name or `local-dir:FOLDER` of the ImageNet model fine-tuned as the reference classifier"})
    pretrained: bool = field(default=True, metadata={
        "help": "start the reference fine-tune from the model's pretrained weights (false: random init, tests)"})
    image_size: int | None = field(default=160, metadata={
        "help": "fine-tuning input size in pixels (null: the model's own); scoring always uses the data config "
                "saved with the classifier"})
    train_layers: str = field(default="head", metadata={
        "help": "head: a linear probe (frozen pretrained features, logistic regression into the classifier "
                "layer; minutes on a CPU; 0.818 hold-out accuracy on isic-binary-train); all: fine-tune every layer "
                "(AdamW, cosine; 2 epochs at lr 5e-4 on a CPU stayed at 0.586, undiagnosed: see bench/RESULTS.md)"})
    probe_c: float = field(default=1.0, metadata={"help": "head only: inverse L2 strength of the logistic regression"})
    epochs: int = field(default=4, metadata={"help": "reference fine-tuning epochs"})
    batch_size: int = field(default=32, metadata={"help": "batch size of fine-tuning and scoring"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate (cosine decay)"})
    holdout_fraction: float = field(default=0.15, metadata={
        "help": "share of the real images held out (stratified) to check the reference classifier"})
    seed: int = field(default=0, metadata={"help": "seed of the hold-out split, shuffling and augmentation"})
    confidence: float = field(default=0.95, metadata={"help": "level of the Wilson intervals"})
    sheet_size: int = field(default=16, metadata={"help": "least-faithful images in the contact sheet"})

    def validate(self) -> None:
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError("validation.fidelity.holdout_fraction must be within (0, 1)")
        if not 0 < self.confidence < 1:
            raise ConfigError("validation.fidelity.confidence must be within (0, 1)")
        if self.train_layers not in ("all", "head"):
            raise ConfigError("validation.fidelity.train_layers must be all or head")
        if self.epochs < 1 or self.batch_size < 1 or self.sheet_size < 0:
            raise ConfigError("validation.fidelity: epochs and batch_size must be >= 1, sheet_size >= 0")


@dataclass
class SegmentationConfig:
    enabled: bool = field(default=False, metadata={"help": "segment every image zero-shot with SAM"})
    model: str = field(default="facebook/sam-vit-base", metadata={
        "help": "SAM checkpoint: a Hub id (facebook/sam-vit-base, -large, -huge) or a local folder, or "
                "`tiny-random:sam` for the random tiny model tests use"})
    prompt: str = field(default="box", metadata={"help": "SAM prompt from the lesion prior: box or point"})
    min_area: float = field(default=0.002, metadata={
        "help": "smallest mask, as a fraction of the image, that counts as a lesion found"})
    max_area: float = field(default=0.95, metadata={"help": "largest mask fraction that counts as found"})
    stability_offset: float = field(default=1.0, metadata={
        "help": "logit offset of SAM's stability score (IoU of the masks thresholded at +-offset)"})
    calibration_images: str | None = field(default=None, metadata={
        "help": "real images with ground-truth masks (images/ and masks/*_segmentation.png, as ISIC task 1) "
                "on which Dice/IoU are reported"})

    def validate(self) -> None:
        if self.prompt not in ("box", "point"):
            raise ConfigError("validation.segmentation.prompt must be box or point")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise ConfigError("validation.segmentation: need 0 <= min_area < max_area <= 1")


@dataclass
class DetectionConfig:
    enabled: bool = field(default=False, metadata={"help": "fine-tune a lesion detector on real images"})
    model: str = field(default="facebook/detr-resnet-50", metadata={
        "help": "transformers object-detection checkpoint to fine-tune (Hub id or folder; DETR, conditional "
                "DETR, RT-DETR, ...), or `tiny-random:detr` for the random tiny model tests use"})
    real: str | None = field(default=None, metadata={
        "help": "real training images (benign/ malignant/); boxes come from the lesion prior"})
    image_size: int = field(default=320, metadata={"help": "shortest side the detector sees"})
    epochs: int = field(default=10, metadata={"help": "fine-tuning epochs"})
    batch_size: int = field(default=8, metadata={"help": "fine-tuning batch size"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    max_train_images: int | None = field(default=None, metadata={"help": "cap on real training images"})
    score_threshold: float = field(default=0.5, metadata={"help": "a detection counts at this score or more"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and shuffling"})

    def validate(self) -> None:
        if not 0 <= self.score_threshold <= 1:
            raise ConfigError("validation.detection.score_threshold must be within [0, 1]")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 32:
            raise ConfigError("validation.detection: epochs, batch_size >= 1 and image_size >= 32")


@dataclass
class ValidationConfig:
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    split: str | None = field(default=None, metadata={
        "help": "built dataset input only: the split to validate (default: every split)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})

    def validate(self) -> None:
        self.fidelity.validate()
        self.segmentation.validate()
        self.detection.validate()
        if not (self.fidelity.enabled or self.segmentation.enabled or self.detection.enabled):
            raise ConfigError("validation: every check is disabled (fidelity, segmentation, detection)")
