"""The dataset stage's config (`dataset:` in configs/paper.yaml): how `build-dataset` reads and writes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dermt2im_hub.config import ConfigError

SYNTHETIC = "synthetic"
A1111 = "a1111"
REAL = "real"
CONFIG_NAMES = (SYNTHETIC, A1111, REAL)
SPLIT_BY_CHOICES = ("none", "seed", "prompt")
SPLIT_NAMES = ("train", "validation", "test")

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """"500MB" / "1GiB" / 1000000 -> bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ConfigError(f"max_shard_size: cannot read {text!r} as a size such as 500MB")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "B").upper()])


@dataclass
class DatasetConfig:
    config_name: str = field(default=SYNTHETIC, metadata={
        "help": "what the inputs are: synthetic (a generation output folder), a1111 (any folder of AUTOMATIC1111 "
                "PNGs) or real (a preprocessed image folder with a split column)"})
    split_by: str = field(default="none", metadata={
        "help": "synthetic/a1111 only: none (one train split), seed or prompt (hash-based train/validation/test "
                "assignment that keeps one seed or one prompt inside one split)"})
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], metadata={
        "help": "train, validation, test shares used with split_by seed or prompt"})
    include_rejected: bool = field(default=False, metadata={
        "help": "synthetic: also take images under rejected/ and rows with qa_passed false"})
    allow_memorized: bool = field(default=False, metadata={
        "help": "build and push even when rows carry mem_flagged true (the memorization audit flagged them)"})
    include_mem_nearest_id: bool = field(default=False, metadata={
        "help": "synthetic: keep the QA stage's mem_nearest_id column (the real training image each synthetic "
                "image is closest to). Off by default: it reveals which images were in the training set and, "
                "for a plain folder, their file names"})
    verify_pixels: bool = field(default=False, metadata={
        "help": "decode every image fully (slower); by default PNG chunk checksums are verified, which catches "
                "truncated and damaged files"})
    max_shard_size: str = field(default="500MB", metadata={"help": "parquet shard size limit (before compression)"})
    sample_grid_per_class: int = field(default=4, metadata={
        "help": "images per class in the card's sample_grid.png (0: no grid)"})
    pretty_name: str | None = field(default=None, metadata={"help": "dataset title in the card"})
    license: str | None = field(default=None, metadata={"help": "Hub licence id for the card, e.g. "
                                                                "creativeml-openrail-m"})
    source_datasets: list[str] = field(default_factory=list, metadata={
        "help": "Hub ids (or descriptions) of the datasets the images derive from, for the card"})
    push_to_hub: str | None = field(default=None, metadata={"help": "ORG/NAME: push the built folder as a "
                                                                    "dataset repo"})
    public: bool = field(default=False, metadata={"help": "make the pushed repo public (private by default)"})

    def validate(self) -> None:
        if self.config_name not in CONFIG_NAMES:
            raise ConfigError(f"config_name {self.config_name!r} is not one of {', '.join(CONFIG_NAMES)}")
        if self.split_by not in SPLIT_BY_CHOICES:
            raise ConfigError(f"split_by {self.split_by!r} is not one of {', '.join(SPLIT_BY_CHOICES)}")
        if self.config_name == REAL and self.split_by != "none":
            raise ConfigError("split_by applies to synthetic and a1111 inputs; the real config keeps the splits "
                              "its metadata.jsonl assigns")
        self._validate_fractions()
        if parse_size(self.max_shard_size) < 1_000_000:
            raise ConfigError("max_shard_size must be at least 1MB")
        if not 0 <= self.sample_grid_per_class <= 16:
            raise ConfigError("sample_grid_per_class must be within 0..16")
        if self.push_to_hub is not None and not _REPO_ID_RE.match(self.push_to_hub):
            raise ConfigError(f"push_to_hub {self.push_to_hub!r} must look like ORG/NAME")

    def _validate_fractions(self) -> None:
        fractions = self.split_fractions
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError("split_fractions must be three non-negative shares (train, validation, test) "
                              f"that sum to 1, got {fractions}")
        if fractions[0] <= 0:
            raise ConfigError("split_fractions: the train share must be positive")
