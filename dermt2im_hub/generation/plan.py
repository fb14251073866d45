"""The generation plan: what to render, expanded into one `PlannedImage` per index.

The config (`GenerationConfig`, the `generation:` section of configs/paper.yaml) says how many images, which
samplers in which proportions, a steps range, CFG, size, prompts with "smart transformation" axes (lesion size,
count, skin tone, body site) and a seed. `expand_plan` turns it into a list where image `index` is a pure
function of (config, index):

- label: classes alternate (index 0 benign, 1 malignant, ...), so N splits evenly over the classes;
- sampler: within a class, the sampler sequence is interleaved by weight (largest remainder), so every prefix
  of the plan is close to the configured mix and N splits evenly over the samplers;
- seed, steps and transformation choices: drawn from sha256(plan seed, index, purpose), so they depend on
  neither the batch size, nor the number of processes, nor which images were already done.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from typing import Any

from dermt2im_hub.config import ConfigError
from dermt2im_hub.generation.feature_cache import FeatureCacheSettings
from dermt2im_hub.labels import CLASS_NAMES

MAX_SEED = 2**32  # A1111 seeds are 32-bit

# The wording of the paper's "smart transformations"; weights are ours (the paper gives none).
DEFAULT_PROMPT_TEMPLATE = "a dermoscopic image of a {size} {label} skin lesion{count}{site}{skin}"


@dataclass
class TransformOption:
    """One value of a transformation axis: the words put into the prompt and how often to draw it."""

    text: str = field(default="", metadata={"help": "words substituted for the axis placeholder"})
    weight: float = field(default=1.0, metadata={"help": "relative draw weight (>= 0)"})


def _opts(**options: tuple[str, float]) -> dict[str, TransformOption]:
    return {name.replace("_", "-"): TransformOption(text, weight) for name, (text, weight) in options.items()}


def default_transformations() -> dict[str, dict[str, TransformOption]]:
    """Lesion size, count, body site and Fitzpatrick skin type, each mostly left unspecified."""
    fitzpatrick = {
        "fitzpatrick-1": ", on very fair skin (Fitzpatrick type I)",
        "fitzpatrick-2": ", on fair skin (Fitzpatrick type II)",
        "fitzpatrick-3": ", on light brown skin (Fitzpatrick type III)",
        "fitzpatrick-4": ", on olive skin (Fitzpatrick type IV)",
        "fitzpatrick-5": ", on brown skin (Fitzpatrick type V)",
        "fitzpatrick-6": ", on dark brown to black skin (Fitzpatrick type VI)",
    }
    return {
        "size": _opts(unspecified=("", 4.0), tiny=("tiny", 1.0), small=("small", 1.0), large=("large", 1.0)),
        "count": _opts(single=("", 4.0), multiple=(", multiple moles", 1.0)),
        "site": _opts(unspecified=("", 4.0), neck=(" on the neck", 1.0), back=(" on the back", 1.0),
                      arm=(" on the arm", 1.0), leg=(" on the leg", 1.0), face=(" on the face", 1.0),
                      hand=(" on the hand", 1.0)),
        "skin": {"unspecified": TransformOption("", 6.0),
                 **{name: TransformOption(text, 1.0) for name, text in fitzpatrick.items()}},
    }


@dataclass
class GenerationConfig:
    """Stage 3: render a synthetic benign/malignant set (`dermt2im generate`)."""

    base: str | None = field(default=None, metadata={
        "help": "base model: a Hub id, a local diffusers folder, or a single-file .safetensors checkpoint"})
    base_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base (branch, tag, sha)"})
    single_file_config: str | None = field(default=None, metadata={
        "help": "local diffusers folder (or Hub id) with the configs for a single-file base; default: SD1.5's "
                "configs, rebuilt offline"})
    lora: list[str] = field(default_factory=list, metadata={
        "help": "LoRA adapters, each PATH_OR_ID[:SCALE] (diffusers or kohya safetensors; a Hub id may name a "
                "file: org/repo/file.safetensors)"})
    output: str | None = field(default=None, metadata={"help": "output folder (resumed when it exists)"})
    num_images: int = field(default=6000, metadata={"help": "total images, split evenly over classes and samplers"})
    classes: list[str] = field(default_factory=lambda: list(CLASS_NAMES), metadata={"help": "labels to render"})
    samplers: list[str] = field(default_factory=lambda: ["Euler", "Euler a", "PLMS"],
                                metadata={"help": "A1111 sampler names, mixed in equal parts unless weighted"})
    sampler_weights: dict[str, float] = field(default_factory=dict, metadata={
        "help": "optional relative weight per sampler name (missing names weigh 1)"})
    steps: str = field(default="20-26", metadata={"help": "sampling steps: N, or a range LO-HI drawn per image"})
    cfg: float = field(default=7.0, metadata={"help": "classifier-free guidance scale (>= 1)"})
    size: int = field(default=512, metadata={"help": "square image side in pixels (multiple of 8)"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt for every image"})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={
        "help": "prompt with {label} and one {axis} placeholder per transformation axis"})
    transformations: dict[str, dict[str, TransformOption]] = field(
        default_factory=default_transformations,
        metadata={"help": "axis -> option -> {text, weight}; each image draws one option per axis and records "
                          "the tag axis:option"})
    seed: int = field(default=0, metadata={"help": "plan seed: image i's seed depends only on (seed, i)"})
    batch_size: int = field(default=8, metadata={
        "help": "images per pipeline call (images sharing sampler and steps); on CPU use a multiple of 4"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16"})
    feature_cache_interval: int = field(default=0, metadata={
        "help": "feature caching (DeepCache-style): run the full UNet every N-th call and only its shallow branch "
                "in between, reusing the deep features (0: off; 1: full every call, same images as off; 2-3: "
                "faster, slightly different images)"})
    feature_cache_depth: int = field(default=1, metadata={
        "help": "layers of the outermost UNet level the shallow branch keeps computing (1: the fewest, the "
                "fastest; up to layers per block + 1)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the UNet and the VAE decoder (GPU; worth it for long runs)"})
    cpu_threads: int = field(default=0, metadata={
        "help": "torch CPU threads per process (0: leave as is). CPU float rounding depends on it, so pin it "
                "(e.g. 1) when runs with different process counts must give bitwise-identical images"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar with images/s and ETA"})

    # Settings that do not change any image: a folder may be resumed with other values of these.
    RUNTIME_FIELDS = ("batch_size", "compile", "progress", "output", "cpu_threads")

    def validate(self) -> None:
        self.samplers = [_canonical_sampler(name) for name in self.samplers]
        if not self.samplers:
            raise ConfigError("samplers: give at least one sampler")
        if len(set(self.samplers)) != len(self.samplers):
            raise ConfigError(f"samplers: {self.samplers} lists a sampler twice")
        self.sampler_weights = {_canonical_sampler(k): float(v) for k, v in self.sampler_weights.items()}
        unused = [k for k in self.sampler_weights if k not in self.samplers]
        if unused:
            raise ConfigError(f"sampler_weights names {unused[0]!r}, which is not in samplers {self.samplers}")
        if any(w <= 0 for w in self.sampler_weights.values()):
            raise ConfigError("sampler_weights must be > 0")
        steps_range(self.steps)
        if self.cfg < 1:
            raise ConfigError(f"cfg must be >= 1 (A1111's CFG scale), got {self.cfg:g}")
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"size must be a positive multiple of 8 (the VAE downsamples by 8), got {self.size}")
        if self.num_images < 1:
            raise ConfigError(f"num_images must be >= 1, got {self.num_images}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.feature_cache_interval < 0:
            raise ConfigError(f"feature_cache_interval must be >= 0 (0: off), got {self.feature_cache_interval}")
        if self.feature_cache_depth < 1:
            raise ConfigError(f"feature_cache_depth must be >= 1, got {self.feature_cache_depth}")
        if self.cpu_threads < 0:
            raise ConfigError(f"cpu_threads must be >= 0, got {self.cpu_threads}")
        bad = [c for c in self.classes if c not in CLASS_NAMES]
        if bad or not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes must be distinct labels among {list(CLASS_NAMES)}, got {self.classes}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"seed must be within [0, 2**32), got {self.seed}")
        _check_transformations(self.prompt_template, self.transformations)
        from dermt2im_hub.generation.models import check_sources  # path checks, no heavy imports

        check_sources(self)

    def feature_cache(self) -> FeatureCacheSettings | None:
        """The feature-cache settings every image is rendered with, or None when caching is off."""
        if not self.feature_cache_interval:
            return None
        return FeatureCacheSettings(self.feature_cache_interval, self.feature_cache_depth)

    def require_inputs(self) -> None:
        """The fields a run needs but a recipe file may leave to the caller."""
        if not self.base:
            raise ConfigError("no base model: give --base (a Hub id, a diffusers folder or a .safetensors file)")
        if not self.output:
            raise ConfigError("no output folder: give --output DIR")


def _canonical_sampler(name: str) -> str:
    from dermt2im_hub.generation.samplers import canonical_sampler_name

    return canonical_sampler_name(name)


def steps_range(text: str | int) -> tuple[int, int]:
    """"20-26" -> (20, 26); "25" -> (25, 25). Raises ConfigError for reversed or < 1 ranges."""
    raw = str(text).strip()
    match = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", raw)
    if not match:
        raise ConfigError(f"steps must be N or LO-HI (e.g. 20-26), got {raw!r}")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if low < 1:
        raise ConfigError(f"steps must be >= 1, got {raw!r}")
    if high < low:
        raise ConfigError(f"steps range {raw!r} is reversed: write it low-high")
    return low, high


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"prompt_template {template!r} is not a valid template: {exc}") from exc


def _check_transformations(template: str, axes: dict[str, dict[str, TransformOption]]) -> None:
    fields_ = _template_fields(template)
    unknown = [f for f in fields_ if f != "label" and f not in axes]
    if unknown:
        raise ConfigError(f"prompt_template uses {{{unknown[0]}}}, which is neither {{label}} nor a "
                          f"transformation axis ({', '.join(axes) or 'none defined'})")
    unused = [axis for axis in axes if axis not in fields_]
    if unused:
        raise ConfigError(f"transformation axis {unused[0]!r} has no {{{unused[0]}}} placeholder in prompt_template")
    for axis, options in axes.items():
        if not options:
            raise ConfigError(f"transformation axis {axis!r} has no options")
        if any(o.weight < 0 for o in options.values()) or sum(o.weight for o in options.values()) <= 0:
            raise ConfigError(f"transformation axis {axis!r}: weights must be >= 0 and not all 0")
        for name in options:
            if not re.fullmatch(r"[\w.+-]+", name):
                raise ConfigError(f"transformation option {axis}:{name!r}: use letters, digits, '.', '+', '-'")


@dataclass(frozen=True)
class PlannedImage:
    """One image of the plan; everything needed to render it and to name its file."""

    index: int
    label: str
    sampler: str
    steps: int
    cfg_scale: float
    seed: int
    width: int
    height: int
    prompt: str
    negative_prompt: str
    transformations: tuple[str, ...]
    feature_cache: FeatureCacheSettings | None = None  # None: the full UNet at every step

    @property
    def file_name(self) -> str:
        return f"{self.label}/{self.index:05d}-{self.seed}.png"

    @property
    def batch_key(self) -> tuple:
        """Images that may share one pipeline call."""
        return (self.sampler, self.steps, self.cfg_scale, self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "file_name": self.file_name, "label": self.label, "sampler": self.sampler,
                "steps": self.steps, "cfg_scale": self.cfg_scale, "seed": self.seed, "width": self.width,
                "height": self.height, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "transformations": list(self.transformations),
                **({"feature_cache": self.feature_cache.to_row()} if self.feature_cache else {})}


def unit_draw(seed: int, index: int, purpose: str) -> float:
    """A uniform number in [0, 1) from (seed, index, purpose): stable across Python/NumPy versions."""
    digest = hashlib.sha256(f"dermt2im/{seed}/{index}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def image_seed(plan_seed: int, index: int) -> int:
    """The 32-bit seed of image `index` (what A1111 would show as `Seed:`)."""
    return int(unit_draw(plan_seed, index, "seed") * MAX_SEED)


def _weighted_choice(names: list[str], weights: list[float], u: float) -> str:
    total = sum(weights)
    acc = 0.0
    for name, weight in zip(names, weights):
        acc += weight / total
        if u < acc:
            return name
    return names[-1]


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainder; ties go to the earlier entry)."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def interleave(names: list[str], counts: list[int]) -> list[str]:
    """The names spread evenly through a sequence: slot k of name j sits at (k + 0.5) / count_j."""
    slots = [((k + 0.5) / count, j, name) for j, (name, count) in enumerate(zip(names, counts)) for k in range(count)]
    return [name for _, _, name in sorted(slots)]


def render_prompt(template: str, label: str, words: dict[str, str]) -> str:
    text = template.format(label=label, **words)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;])", r"\1", text)


def expand_plan(config: GenerationConfig) -> list[PlannedImage]:
    """Every image of the plan, in index order (see the module docstring for how each is drawn)."""
    classes = list(config.classes)
    per_class = apportion(config.num_images, [1.0] * len(classes))
    weights = [config.sampler_weights.get(s, 1.0) for s in config.samplers]
    sampler_sequences = {label: interleave(config.samplers, apportion(n, weights))
                         for label, n in zip(classes, per_class)}
    low, high = steps_range(config.steps)
    axes = config.transformations
    images = []
    seen = dict.fromkeys(classes, 0)
    for index in range(config.num_images):
        label = classes[index % len(classes)]
        sampler = sampler_sequences[label][seen[label]]
        seen[label] += 1
        steps = low + min(high - low, int(unit_draw(config.seed, index, "steps") * (high - low + 1)))
        tags, words = [], {}
        for axis, options in axes.items():
            names = list(options)
            choice = _weighted_choice(names, [options[n].weight for n in names],
                                      unit_draw(config.seed, index, f"axis:{axis}"))
            tags.append(f"{axis}:{choice}")
            words[axis] = options[choice].text
        images.append(PlannedImage(
            index=index, label=label, sampler=sampler, steps=steps, cfg_scale=float(config.cfg),
            seed=image_seed(config.seed, index), width=config.size, height=config.size,
            prompt=render_prompt(config.prompt_template, label, words), negative_prompt=config.negative_prompt,
            transformations=tuple(tags), feature_cache=config.feature_cache()))
    return images
