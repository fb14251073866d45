"""`RunConfig`: the `run:` section of a recipe — what `dermt2im run` chains together and where it writes.

The stage settings themselves stay in their own sections (`data`, `training`, `generation`, `quality`,
`dataset`, `evaluation`); this section only names the real inputs, the base model, the launcher and the
optional publishing targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dermt2im_hub.config import ConfigError
from dermt2im_hub.hub.resolve import hub_id_problem

SECTION = "run"

# Stage order; `--from` / `--until` take these names.
STAGES = ("preprocess", "train_lora", "generate", "qa", "dataset", "benchmark", "leaderboard", "validate", "cards",
          "push")


@dataclass
class RealSource:
    """One real-data input of the data stage (any `data:` key may be overridden per source)."""

    name: str = field(default="real", metadata={"help": "short name; the output folder is OUT/data/NAME"})
    source: str = field(default="folder", metadata={
        "help": "ham10000, isic or folder (see `dermt2im preprocess`), or phantoms (made by the run itself)"})
    images: str | None = field(default=None, metadata={"help": "folder of input images"})
    metadata: list[str] = field(default_factory=list, metadata={"help": "metadata/ground-truth files"})
    train_lora: bool = field(default=True, metadata={
        "help": "the LoRA is trained on this source's train split (exactly one source; the paper: ISIC)"})
    test_only: bool = field(default=False, metadata={
        "help": "an unseen test source (the paper: HAM10000): its image ids, lesion ids and image hashes are "
                "dropped from every other source at preprocessing, and the LoRA's exclusion list holds all of it"})
    num_images: int = field(default=64, metadata={"help": "phantoms only: how many images to make"})
    image_size: int = field(default=128, metadata={"help": "phantoms only: image side in pixels"})
    seed: int = field(default=0, metadata={"help": "phantoms only: seed"})
    overrides: dict = field(default_factory=dict, metadata={
        "help": "other `data:` keys for this source only, e.g. {limit_per_class: null}"})


@dataclass
class PushTargets:
    """Hub repos to publish to at the end (nothing is pushed unless an id is set)."""

    lora: str | None = field(default=None, metadata={"help": "ORG/NAME of the LoRA adapter (model repo)"})
    dataset: str | None = field(default=None, metadata={"help": "ORG/NAME of the synthetic dataset"})
    real_dataset: str | None = field(default=None, metadata={
        "help": "ORG/NAME of the preprocessed real dataset (check the source licences before publishing)"})
    results: str | None = field(default=None, metadata={"help": "ORG/NAME of the benchmark results dataset"})
    public: bool = field(default=False, metadata={"help": "make the repos public (private by default)"})


@dataclass
class RunConfig:
    output: str = field(default="outputs/run", metadata={"help": "root folder; each stage writes a subfolder"})
    real_sources: list[RealSource] = field(default_factory=list, metadata={
        "help": "real image inputs of the data stage (one preprocessed folder each)"})
    base_model: str | None = field(default=None, metadata={
        "help": "base Stable Diffusion model for training and generation (overrides both sections); "
                "`embedded:tiny-sd15` writes the shipped tiny base pretrained on phantoms (offline)"})
    num_processes: int = field(default=1, metadata={
        "help": "processes for training and generation through `accelerate launch` (one per GPU)"})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "accelerate config file for training (e.g. configs/accelerate/multi_gpu.yaml)"})
    allow_memorized: bool = field(default=False, metadata={
        "help": "go on (and build/push) even when the memorization audit flags images"})
    push: PushTargets = field(default_factory=PushTargets)
    report: bool = field(default=True, metadata={"help": "write OUT/report.md and OUT/report.html"})

    def validate(self) -> None:
        if self.num_processes < 1:
            raise ConfigError("run.num_processes must be at least 1")
        names = [s.name for s in self.real_sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"run.real_sources: names must be unique, got {names}")
        for source in self.real_sources:
            if not source.name or "/" in source.name or source.name.startswith("."):
                raise ConfigError(f"run.real_sources: {source.name!r} is not a usable folder name")
        for target in ("lora", "dataset", "real_dataset", "results"):  # refused before the first stage runs
            repo_id = getattr(self.push, target)
            if repo_id and hub_id_problem(repo_id):
                raise ConfigError(hub_id_problem(repo_id, f"run.push.{target}"))

    def require_inputs(self) -> None:
        if not self.real_sources:
            raise ConfigError("run.real_sources is empty: name at least one real image input (see configs/paper.yaml)")
        missing = [s.name for s in self.real_sources if not s.images and s.source != "phantoms"]
        if missing:
            raise ConfigError(f"run.real_sources {missing}: `images` is not set; fill in the paths of your "
                              "ISIC / HAM10000 downloads (configs/paper.yaml) or use --set")
        if any(s.test_only and s.train_lora for s in self.real_sources):
            raise ConfigError("run.real_sources: a test_only source cannot train the LoRA (set train_lora: false)")
        if sum(s.train_lora for s in self.real_sources) != 1:
            raise ConfigError("run.real_sources: exactly one source needs train_lora: true (the LoRA's data; "
                              "the paper used ISIC)")

    @property
    def lora_source(self) -> RealSource:
        return next(s for s in self.real_sources if s.train_lora)
