"""The `quality:` section: thresholds of the artifact filter and the memorization audit, the feature extractor
and the fidelity metrics.

Defaults were tuned on the authors' own hand-cleaned Derm-T2IM samples (../shared/data/dermt2im-sample, 160
images): every one of them passes the artifact filter at these values (see docs/quality.md for the measured
distributions), while blank, pure-noise, heavily blurred and all-black/white images fail. The artifact
thresholds are measured at `analysis_size` (images are rescaled to it first), so they do not depend on the
size the generator wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dermt2im_hub.config import ConfigError


@dataclass
class ArtifactConfig:
    min_sharpness: float = field(default=15.0, metadata={
        "help": "reject below this variance of the Laplacian of the grey image at analysis_size (blur); the "
                "Derm-T2IM samples measure 19.8 at least, a Gaussian blur of 2.3 percent of the side 12.6 at most"})
    max_clipping: float = field(default=0.2, metadata={
        "help": "reject above this fraction of pixels inside the inscribed disc with a channel at 253+ or all "
                "channels at 2 or less (blown out / black); samples measure 0.03 at most"})
    max_noise: float = field(default=5.0, metadata={
        "help": "reject above this high-frequency noise sigma (Immerkaer's estimator, 8-bit units, at "
                "analysis_size); samples measure 2.0 at most, pure noise about 25"})
    require_lesion: bool = field(default=True, metadata={"help": "reject images where no lesion is found"})
    min_lesion_area: float = field(default=0.002, metadata={
        "help": "smallest lesion, as a fraction of the field of view, that counts as found (tiny moles)"})
    max_lesion_area: float = field(default=0.95, metadata={
        "help": "largest lesion fraction that counts as found (above it the image is all lesion or all dark)"})
    min_lesion_contrast: float = field(default=8.0, metadata={
        "help": "the lesion's median L* must be at least this much darker than the surrounding skin; samples "
                "measure 18 at least, noise and blank images about 0-3"})
    min_lesion_solidity: float = field(default=0.35, metadata={
        "help": "area / convex-hull area of the lesion region (compactness); samples measure 0.65 at least"})
    max_duplicate_distance: int = field(default=20, metadata={
        "help": "two synthetic images whose 256-bit perceptual hashes differ in at most this many bits are "
                "near-duplicates and the later one is rejected (distinct samples differ in 48+ bits, re-encoded "
                "copies in 8 or fewer)"})

    def validate(self) -> None:
        if self.min_sharpness < 0 or self.max_noise <= 0:
            raise ConfigError("quality.artifacts: min_sharpness must be >= 0 and max_noise > 0")
        if not 0 < self.max_clipping <= 1:
            raise ConfigError("quality.artifacts.max_clipping must be within (0, 1]")
        if not 0 <= self.min_lesion_area < self.max_lesion_area <= 1:
            raise ConfigError("quality.artifacts: need 0 <= min_lesion_area < max_lesion_area <= 1")
        if not 0 <= self.min_lesion_solidity <= 1:
            raise ConfigError("quality.artifacts.min_lesion_solidity must be within [0, 1]")
        if not 0 <= self.max_duplicate_distance <= 256:
            raise ConfigError("quality.artifacts.max_duplicate_distance must be within [0, 256] bits")


@dataclass
class MemorizationConfig:
    max_phash_distance: int = field(default=20, metadata={
        "help": "flag a synthetic image whose 256-bit perceptual hash is within this many bits of a training "
                "image (catches exact, resized, re-encoded and slightly noised copies)"})
    min_match_inliers: int = field(default=15, metadata={
        "help": "flag a synthetic image when this many one-to-one SIFT matches with one training image agree on "
                "one plausible affine map (catches crops and partial copies; 12,160 unrelated Derm-T2IM/ISIC "
                "pairs gave 5 at most, 60-percent crops of ISIC images 29 at least)"})
    min_cosine: float | None = field(default=None, metadata={
        "help": "also flag when the embedding cosine similarity reaches this value; only meaningful for a "
                "pretrained extractor and calibrated on it (the report lists real-vs-real nearest cosines); "
                "null: cosine is recorded but never flags"})
    candidates: int = field(default=5, metadata={
        "help": "training images checked geometrically per synthetic image: the top N by local-feature votes, "
                "by cosine and by hash distance each"})
    local_features: int = field(default=300, metadata={"help": "SIFT keypoints kept per image"})
    check_mirrored: bool = field(default=True, metadata={
        "help": "also compare each synthetic image's mirror image (fine-tuning with random flips can memorize "
                "mirrored copies); costs about a third more audit time"})

    def validate(self) -> None:
        if not 0 <= self.max_phash_distance <= 256:
            raise ConfigError("quality.memorization.max_phash_distance must be within [0, 256] bits")
        if self.min_match_inliers < 4:
            raise ConfigError("quality.memorization.min_match_inliers must be at least 4 (an affine map needs 3)")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise ConfigError("quality.memorization.min_cosine must be within [-1, 1] or null")
        if self.candidates < 1 or self.local_features < 10:
            raise ConfigError("quality.memorization: candidates must be >= 1 and local_features >= 10")


@dataclass
class FeatureConfig:
    model: str = field(default="resnet18", metadata={
        "help": "timm model name of the feature extractor (e.g. vit_small_patch14_dinov2.lvd142m)"})
    weights: str | None = field(default=None, metadata={
        "help": "null: random init from `seed` (numbers comparable only within this extractor); 'hub': timm's "
                "pretrained weights from the Hugging Face Hub (or its cache); or a local .safetensors file"})
    seed: int = field(default=0, metadata={"help": "seed of the random init when weights is null"})
    image_size: int | None = field(default=None, metadata={
        "help": "square input side for the extractor; null: the model's own default"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu, cuda, auto"})

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("quality.features.model must name a timm model")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError("quality.features.image_size must be at least 16")


@dataclass
class FidelityConfig:
    enabled: bool = field(default=True, metadata={"help": "compute FID, KID and k-NN precision/recall"})
    kid_subset_size: int = field(default=1000, metadata={"help": "KID subset size (capped at the set sizes)"})
    kid_subsets: int = field(default=100, metadata={"help": "number of KID subsets averaged"})
    nearest_k: int = field(default=3, metadata={"help": "k of the k-NN manifolds for precision/recall"})
    seed: int = field(default=0, metadata={"help": "seed of the KID subset sampling"})

    def validate(self) -> None:
        if self.kid_subset_size < 2 or self.kid_subsets < 1 or self.nearest_k < 1:
            raise ConfigError("quality.fidelity: kid_subset_size >= 2, kid_subsets >= 1 and nearest_k >= 1")


@dataclass
class QualityConfig:
    batch_size: int = field(default=16, metadata={"help": "images per batch (loading, scoring, embedding)"})
    analysis_size: int = field(default=256, metadata={
        "help": "shorter side (px) the artifact, lesion and skin-tone checks run at; thresholds assume 256"})
    move_rejected: bool = field(default=True, metadata={
        "help": "move rejected images to GENERATED_DIR/rejected/{label}/ (nothing is ever deleted)"})
    quarantine_memorized: bool = field(default=False, metadata={
        "help": "treat memorization-flagged images as rejected too (moved, qa_passed false, reason 'memorized'), "
                "so the rest can be published"})
    allow_memorized: bool = field(default=False, metadata={
        "help": "exit 0 even when images that would be published are flagged as memorized (a warning instead)"})
    top_k_pairs: int = field(default=8, metadata={"help": "closest synthetic/real pairs saved as side-by-side PNGs"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    cache: bool = field(default=True, metadata={
        "help": "reuse the measurements an interrupted or earlier run saved in the QA folder's .cache/ (thresholds "
                "are always applied afresh); false: measure every image again"})
    artifacts: ArtifactConfig = field(default_factory=ArtifactConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("quality.batch_size must be at least 1")
        if self.analysis_size < 64:
            raise ConfigError("quality.analysis_size must be at least 64 pixels")
        if self.top_k_pairs < 0:
            raise ConfigError("quality.top_k_pairs must be >= 0")
        for part in (self.artifacts, self.memorization, self.features, self.fidelity):
            part.validate()
