"""The `evaluation:` section: what to train, on which data mixes, tested where, and how.

One `EvaluationConfig` drives the whole sweep (models x mixes x seeds). A mix is a synthetic fraction r
of the training set and a size policy:

Every arm trains for the same budget of samples seen (`budget`; by default `epochs` passes' worth of the
real-only training set), so a hybrid set with four times the images gets no more steps than real-only.

- "full": keep every real training image and add synthetic images until they are r of the set; when the
  synthetic pool is too small, an error saying how many synthetic images are missing (with
  `shrink_short_mixes`, the largest set with exactly r synthetic instead, some real images left out).
  r = 0 is the real-only baseline, r = 1 synthetic-only.
- "equal": as many images as the real-only set, r of them synthetic (the equal-size ablation, so a gain
  cannot come only from having more images).

Arms name the mixes: `real` (r = 0), `hybrid` (r = hybrid_fraction, full), `equal_size` (r =
hybrid_fraction, equal), `sweep` (every r in synthetic_fractions, full) and `pretrain_finetune` (every
synthetic image for `pretrain_share` of the budget, then the real set for the rest: same total budget). Runs shared by two arms
(hybrid and the sweep's 0.75) are trained once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dermt2im_hub.config import ConfigError
from dermt2im_hub.utils.files import is_safetensors

ARMS = ("real", "hybrid", "equal_size", "sweep", "pretrain_finetune")
SIZE_POLICIES = ("full", "equal", "pretrain")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
PAPER_MODELS = ("vit_base_patch16_224.orig_in21k", "mobilenetv2_100")


@dataclass
class DatasetSource:
    """A `datasets` dataset: a local folder (parquet export or save_to_disk) or a Hub id."""

    path: str | None = field(default=None, metadata={"help": "local folder or Hub dataset id"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)"})
    config_name: str | None = field(default=None, metadata={"help": "dataset config, e.g. real or synthetic"})
    split: str = field(default="train", metadata={"help": "split to train on"})
    source: str | None = field(default=None, metadata={
        "help": "keep only rows whose `source` column is this, e.g. isic, so that another source's test rows "
                "form an unseen test set (for the real dataset it filters the validation split too)"})


@dataclass
class TestSetConfig:
    """One held-out test set. Without `path` it is a split of the real dataset, optionally one source."""

    name: str = field(default="test", metadata={"help": "display name, e.g. ISIC or HAM10000"})
    path: str | None = field(default=None, metadata={"help": "local folder or Hub id (default: the real dataset)"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision"})
    config_name: str | None = field(default=None, metadata={"help": "dataset config (default: the real one's)"})
    split: str = field(default="test", metadata={"help": "split holding the test images"})
    source: str | None = field(default=None, metadata={"help": "keep only rows whose `source` column is this"})
    hub_id: str | None = field(default=None, metadata={"help": "Hub dataset id named in model-index entries"})
    __test__ = False  # not a pytest class


MIN_IMAGE_SIZE = 32


@dataclass
class AugmentationConfig:
    """Batched augmentation on the training device (ours; the paper does not report its settings)."""

    scale_min: float = field(default=0.6, metadata={"help": "smallest random crop, as a share of the image area"})
    ratio_max: float = field(default=4 / 3, metadata={"help": "largest crop aspect ratio (and 1/this smallest)"})
    rotation_degrees: float = field(default=180.0, metadata={"help": "rotations drawn from +-this"})
    horizontal_flip: bool = field(default=True, metadata={"help": "random left-right flips"})
    vertical_flip: bool = field(default=True, metadata={"help": "random up-down flips (dermoscopy has no up)"})
    brightness: float = field(default=0.2, metadata={"help": "colour jitter: brightness factor 1+-this"})
    contrast: float = field(default=0.2, metadata={"help": "colour jitter: contrast factor 1+-this"})
    saturation: float = field(default=0.2, metadata={"help": "colour jitter: saturation factor 1+-this"})


@dataclass
class BudgetConfig:
    """Training length in samples seen, the same for every arm (null: counted in epochs of the real-only set)."""

    samples: int | None = field(default=None, metadata={
        "help": "training samples seen per run, identical for every arm (null: epochs x real-only training images)"})
    round_samples: int | None = field(default=None, metadata={
        "help": "samples between validation checks (null: the real-only training images, one real-only epoch)"})
    warmup_samples: int | None = field(default=None, metadata={
        "help": "linear warm-up length in samples (null: warmup_epochs x real-only training images)"})
    patience_samples: int | None = field(default=None, metadata={
        "help": "early stopping: samples without a better validation score (null: early_stopping_patience "
                "rounds)"})


@dataclass
class EvaluationConfig:
    # ---- data
    real: DatasetSource = field(default_factory=lambda: DatasetSource(config_name="real"),
                                metadata={"help": "the real dataset (train, validation, test splits)"})
    synthetic: DatasetSource | None = field(default_factory=lambda: DatasetSource(config_name="synthetic"),
                                            metadata={"help": "the synthetic dataset (needed by every r > 0)"})
    test_sets: list[TestSetConfig] = field(default_factory=lambda: [
        TestSetConfig(name="ISIC", source="isic"), TestSetConfig(name="HAM10000", source="ham10000")],
        metadata={"help": "held-out test sets, each disjoint from every training image"})
    validation_split: str = field(default="validation", metadata={
        "help": "real split for early stopping; absent -> validation_fraction of real train, grouped by patient"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of real train held out when there "
                                                              "is no validation split"})
    exclusion_file: str | None = field(default=None, metadata={
        "help": "extra test_exclusion.json to refuse (default: the one in a local real dataset folder)"})
    # ---- models
    models: list[str] = field(default_factory=lambda: list(PAPER_MODELS),
                              metadata={"help": "timm model names (any timm name, or local-dir:FOLDER)"})
    pretrained: bool = field(default=True, metadata={"help": "start from the models' pretrained weights"})
    pretrained_files: dict[str, str] = field(default_factory=dict, metadata={
        "help": "model name -> local .safetensors weights (instead of the Hub)"})
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "model name -> extra timm.create_model arguments"})
    image_size: int | None = field(default=None, metadata={
        "help": "input side in pixels (default: each model's own data config)"})
    frozen_groups: int = field(default=0, metadata={
        "help": "freeze the first N of timm's coarse parameter groups (the stem, then each block stage; never the "
                "head), their batch norm statistics included: cheaper fine-tuning, e.g. on a CPU"})
    freeze_batch_norm: bool = field(default=False, metadata={
        "help": "keep every batch norm layer's stored statistics and affine values while fine-tuning; needed by "
                "weights whose batch norm was folded into the convolutions (identity statistics) and steadier "
                "with small batches"})
    # ---- mixes and seeds
    arms: list[str] = field(default_factory=lambda: ["real", "hybrid"], metadata={
        "help": f"which mixes to run: {', '.join(ARMS)}"})
    hybrid_fraction: float = field(default=0.75, metadata={"help": "synthetic share of the hybrid set"})
    synthetic_fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 0.9, 1.0],
                                             metadata={"help": "the sweep's synthetic shares"})
    pretrain_share: float = field(default=0.5, metadata={
        "help": "pretrain_finetune arm: share of the training budget spent on synthetic images before fine-tuning "
                "on the real set"})
    shrink_short_mixes: bool = field(default=False, metadata={
        "help": "when a full mix lacks synthetic images, drop real ones to hold its fraction (default: an error "
                "saying how many synthetic images are missing)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "one run per seed"})
    # ---- training
    epochs: int = field(default=30, metadata={
        "help": "most epochs per run, an epoch being as many samples as the real-only training set has images "
                "(the same samples for every arm); budget.samples overrides"})
    budget: BudgetConfig = field(default_factory=BudgetConfig, metadata={
        "help": "training length in samples seen, identical for every arm"})
    batch_size: int = field(default=64, metadata={"help": "images per step per device"})
    eval_batch_size: int = field(default=256, metadata={"help": "images per evaluation step per device"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    min_learning_rate: float = field(default=1e-6, metadata={"help": "cosine schedule floor"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms/biases)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warmup length in epochs"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    early_stopping_patience: int = field(default=5, metadata={
        "help": "stop after this many epochs without a better validation balanced accuracy"})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on a GPU that has it, else fp32), no, fp16 or bf16"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format on a GPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig,
                                             metadata={"help": "training augmentation"})
    # ---- data loading
    num_workers: int = field(default=4, metadata={"help": "DataLoader worker processes (decoding and batching)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "folder for decoded-image caches shared between processes and re-runs (default: memory only)"})
    # ---- metrics and statistics
    subgroups: list[str] = field(default_factory=lambda: ["sex", "age", "site"], metadata={
        "help": "test-set columns to report metrics per group of (age is banded)"})
    age_bands: list[float] = field(default_factory=lambda: [30.0, 50.0, 70.0], metadata={
        "help": "age band edges in years"})
    ece_bins: int = field(default=10, metadata={"help": "probability bins for the expected calibration error"})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples for CIs"})
    confidence: float = field(default=0.95, metadata={"help": "CI level"})
    # ---- outputs
    output_dir: str = field(default="outputs/benchmark", metadata={
        "help": "writes results/ (the Hub-ready results dataset) and classifiers/ (one Hub-ready folder per run)"})
    license: str = field(default="cc-by-nc-4.0", metadata={
        "help": "licence of the classifiers and results (HAM10000 is CC BY-NC 4.0)"})

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("evaluation.models is empty: name at least one timm model")
        if not self.seeds:
            raise ConfigError("evaluation.seeds is empty: give at least one seed")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"evaluation.arms: {unknown[0] if unknown else '[]'!r} is not one of {list(ARMS)}")
        for r in [self.hybrid_fraction, *self.synthetic_fractions]:
            if not 0.0 <= r <= 1.0:
                raise ConfigError(f"synthetic fractions must be within [0, 1], got {r}")
        if not 0.0 < self.pretrain_share < 1.0:
            raise ConfigError(f"evaluation.pretrain_share must be within (0, 1), got {self.pretrain_share}")
        if "equal_size" in self.arms and self.hybrid_fraction >= 1.0:
            raise ConfigError("equal_size needs hybrid_fraction < 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"evaluation.mixed_precision must be one of {list(MIXED_PRECISION)}")
        if not self.test_sets:
            raise ConfigError("evaluation.test_sets is empty: the benchmark needs a held-out test set")
        names = [t.name for t in self.test_sets]
        if len(set(names)) != len(names):
            raise ConfigError(f"evaluation.test_sets: names must be unique, got {names}")
        for model, path in self.pretrained_files.items():
            if not is_safetensors(path):
                raise ConfigError(f"evaluation.pretrained_files[{model!r}]: only .safetensors weights are loaded "
                                  f"(pickle files can run code), got {path}")
        if self.real.path and self.real.path == self.synthetic.path:
            raise ConfigError(f"evaluation.real.path and evaluation.synthetic.path are the same ({self.real.path}): "
                              "a hybrid mix would count real images as synthetic")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"evaluation.image_size must be at least {MIN_IMAGE_SIZE} (the models downsample by "
                              f"32), got {self.image_size}")
        if self.batch_size < 2:
            raise ConfigError("evaluation.batch_size must be at least 2 (batch norm needs two images)")
        if self.frozen_groups < 0:
            raise ConfigError("evaluation.frozen_groups must be >= 0")
        positive = {"epochs": self.epochs, "eval_batch_size": self.eval_batch_size, "ece_bins": self.ece_bins}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"evaluation.{name} must be at least 1")
        for name, value in config_budget_values(self.budget):
            if value is not None and value < (0 if name == "warmup_samples" else 1):
                raise ConfigError(f"evaluation.budget.{name} must be positive (or null), got {value}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("evaluation.validation_fraction must be within (0, 1)")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError("evaluation.confidence must be within (0, 1)")
        if not 0.0 < self.augmentation.scale_min <= 1.0:
            raise ConfigError("evaluation.augmentation.scale_min must be within (0, 1]")


def config_budget_values(budget: BudgetConfig) -> list[tuple[str, int | None]]:
    return [(name, getattr(budget, name)) for name in ("samples", "round_samples", "warmup_samples",
                                                       "patience_samples")]
