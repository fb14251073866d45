"""The data stage's config (`data:` in configs/paper.yaml): what `dermt2im preprocess` reads and how.

Kept free of OpenCV/NumPy imports so that `dermt2im --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dermt2im_hub.config import ConfigError
from dermt2im_hub.labels import CLASS_NAMES, DEFAULT_PROMPT_TEMPLATE

SOURCES = ("ham10000", "isic", "folder")
PILLOW_DEFAULT_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS as shipped (about 0.25 GB of 24-bit RGB)
REFERENCE_SIDE = 512  # HairConfig sizes are pixels of a 512 px image, scaled with the image's short side
INPAINT_METHODS = ("telea", "ns")


@dataclass
class HairConfig:
    kernel_length: int = field(default=17, metadata={
        "help": "length in pixels (at 512 px) of the line structuring elements; hair thinner than this is found"})
    angles: list[float] = field(default_factory=lambda: [0.0, 30.0, 60.0, 90.0, 120.0, 150.0], metadata={
        "help": "angles in degrees of the line structuring elements"})
    threshold: int = field(default=16, metadata={
        "help": "black-hat response (0-255 grey levels) above which a pixel counts as hair"})
    min_length: int = field(default=24, metadata={
        "help": "minimum extent in pixels (at 512 px) of a connected component to count as hair, not a dot"})
    dilate: int = field(default=1, metadata={"help": "pixels by which the hair mask is grown before inpainting"})
    inpaint_radius: int = field(default=3, metadata={"help": "inpainting neighbourhood radius in pixels (at 512 px)"})
    inpaint_method: str = field(default="telea", metadata={"help": "telea or ns (Navier-Stokes), OpenCV's methods"})

    def validate(self) -> None:
        if self.kernel_length < 3:
            raise ConfigError("hair.kernel_length must be at least 3")
        if not self.angles:
            raise ConfigError("hair.angles must list at least one angle")
        if not 0 <= self.threshold <= 255:
            raise ConfigError("hair.threshold must be within [0, 255]")
        if self.min_length < 0 or self.dilate < 0 or self.inpaint_radius < 1:
            raise ConfigError("hair.min_length and hair.dilate must be >= 0, hair.inpaint_radius >= 1")
        if self.inpaint_method not in INPAINT_METHODS:
            raise ConfigError(f"hair.inpaint_method must be one of {list(INPAINT_METHODS)}")


@dataclass
class DataConfig:
    source: str = field(default="folder", metadata={
        "help": "ham10000 (HAM10000_metadata.csv + images), isic (ground-truth/metadata CSVs or a folder of ISIC "
                "API JSON records + images) or folder (benign/ and malignant/ subfolders)"})
    images: str | None = field(default=None, metadata={
        "help": "folder holding the input images (searched recursively, e.g. both HAM10000 image parts)"})
    metadata: list[str] = field(default_factory=list, metadata={
        "help": "ham10000: HAM10000_metadata.csv; isic: any number of challenge CSVs (ground truth, metadata, "
                "duplicates list) or the folder of per-image JSON records; folder: none (its metadata.jsonl "
                "is read when present)"})
    output: str | None = field(default=None, metadata={"help": "output image folder"})
    size: int = field(default=512, metadata={"help": "output side in pixels (resize, then centre-crop)"})
    hair_removal: bool = field(default=True, metadata={"help": "DullRazor-style hair removal before saving"})
    hair: HairConfig = field(default_factory=HairConfig)
    limit_per_class: int | None = field(default=None, metadata={
        "help": "keep at most N images per class, picked at random by seed (the paper used 1400 + 1400)"})
    exclude_sources: list[str] = field(default_factory=list, metadata={
        "help": "sources that are test sets (e.g. HAM10000 when it is the unseen test source): their metadata CSV, "
                "preprocessed folder or test_exclusion.json; rows of this source with one of their image ids, "
                "lesion ids or image sha256s are dropped and counted"})
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15], metadata={
        "help": "train, validation, test shares; lesion- and patient-disjoint, stratified by label"})
    seed: int = field(default=0, metadata={"help": "seed for the split and for --limit-per-class"})
    diagnosis_map: dict[str, str] = field(default_factory=dict, metadata={
        "help": "overrides of the diagnosis -> label mapping in dermt2im_hub.labels, e.g. {akiec: exclude}; "
                "values benign, malignant or exclude"})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={
        "help": "instance prompt; {label} becomes benign or malignant"})
    min_side: int = field(default=128, metadata={
        "help": "images whose shorter side is smaller are skipped (upscaling them would invent detail)"})
    max_image_pixels: int | None = field(default=PILLOW_DEFAULT_MAX_PIXELS, metadata={
        "help": "decompression-bomb limit in pixels (Pillow's MAX_IMAGE_PIXELS); larger images are refused"})
    png_compress_level: int = field(default=3, metadata={
        "help": "zlib level of the output PNGs, 0-9 (3: about 4x faster to write than 6, files about 10% larger)"})
    num_workers: int = field(default=0, metadata={"help": "worker processes (0: one per CPU core)"})

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.size < 16:
            raise ConfigError("size must be at least 16 pixels")
        if self.limit_per_class is not None and self.limit_per_class < 1:
            raise ConfigError("limit_per_class must be at least 1 (or null for no limit)")
        self._validate_split()
        for code, value in self.diagnosis_map.items():
            if str(value).strip().lower() not in (*CLASS_NAMES, "exclude"):
                raise ConfigError(f"diagnosis_map[{code!r}] must be benign, malignant or exclude, got {value!r}")
        try:
            self.prompt_template.format(label=CLASS_NAMES[0])
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"prompt_template may only use the {{label}} placeholder: {exc}") from exc
        if "{label}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain {label} (the class word the LoRA learns)")
        if self.min_side < 1:
            raise ConfigError("min_side must be at least 1")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ConfigError("max_image_pixels must be positive (or null to lift Pillow's limit)")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError("png_compress_level must be within [0, 9]")
        if self.num_workers < 0:
            raise ConfigError("num_workers must be >= 0 (0: one per CPU core)")
        self.hair.validate()

    def _validate_split(self) -> None:
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise ConfigError("split_fractions must be three non-negative numbers: train, validation, test")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ConfigError(f"split_fractions must add up to 1, got {sum(self.split_fractions):g}")
        if self.split_fractions[0] <= 0:
            raise ConfigError("the train share of split_fractions must be positive")

    def normalised_diagnosis_map(self) -> dict[str, str]:
        """Override keys as binary_label looks them up (lower case, stripped)."""
        return {str(k).strip().lower(): str(v).strip().lower() for k, v in self.diagnosis_map.items()}
