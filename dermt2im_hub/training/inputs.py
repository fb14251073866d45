"""What the LoRA stage trains on, checked before any model is loaded.

- `collect_training_data`: the training examples (image path + prompt + label) from an image folder written
  by the data stage or `make-phantoms` (metadata.jsonl rows whose split is a training split or unset), or from
  a plain folder of images with one instance prompt (diffusers' DreamBooth layout). Every example is checked
  against the held-out test split (`records.assert_no_test_images`, file bytes hashed too).
- `resolve_base_model`: a local diffusers folder or a Hub id, checked to be a Stable Diffusion 1.x/2.x
  pipeline (UNet2DConditionModel + AutoencoderKL + CLIP text encoder and tokenizer) before its weights load.
- `load_training_pixels`: one image as the tensor the VAE encodes (short side resized, centre crop, [-1, 1]).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dermt2im_hub.labels import prompt_for
from dermt2im_hub.manifest import try_read_manifest
from dermt2im_hub.records import (
    METADATA_NAME,
    ImageRecord,
    TestExclusion,
    assert_no_test_images,
    find_exclusion,
    read_records,
)
from dermt2im_hub.utils.files import sha256_file
from dermt2im_hub.utils.logging import get_logger

logger = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Components a Stable Diffusion 1.x/2.x pipeline folder must declare in model_index.json.
REQUIRED_COMPONENTS = {
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
    "tokenizer": "CLIPTokenizer",
    "scheduler": None,  # any diffusers scheduler
}


class TrainingInputError(ValueError):
    """The data folder or base model cannot be trained on; the message says why and what to do."""


@dataclass
class TrainingExample:
    path: Path
    prompt: str
    label: str | None
    image_id: str
    sha256: str


@dataclass
class TrainingData:
    folder: Path
    layout: str  # "image_folder" (metadata.jsonl) or "instance_folder" (plain images)
    examples: list[TrainingExample]
    exclusion_path: Path | None = None
    skipped_by_split: dict[str, int] = field(default_factory=dict)

    @property
    def prompts(self) -> list[str]:
        """Distinct prompts in first-seen order (validation samples use one per class)."""
        return list(dict.fromkeys(e.prompt for e in self.examples))

    @property
    def per_label(self) -> dict[str, int]:
        return dict(Counter(e.label or "unlabelled" for e in self.examples))

    @property
    def test_exclusion_checked(self) -> bool:
        return self.exclusion_path is not None


def _check_folder(folder: str | None, what: str) -> Path:
    if not folder:
        raise TrainingInputError(f"{what} is required (--train_data_dir or --instance_data_dir)")
    path = Path(folder)
    if not path.exists():
        raise TrainingInputError(f"{what} not found: {path}")
    if not path.is_dir():
        raise TrainingInputError(f"{what} must be a folder, got a file: {path}")
    if not any(path.iterdir()):
        raise TrainingInputError(f"{what} is empty: {path}")
    return path


def list_images(folder: Path) -> list[Path]:
    """Image files below `folder` in sorted order, skipping hidden files and folders."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return found


def _examples_from_metadata(folder: Path, splits: list[str], instance_prompt: str | None):
    try:
        records = read_records(folder)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise TrainingInputError(f"{folder / METADATA_NAME} has an invalid row: {exc}") from exc
    if not records:
        raise TrainingInputError(f"{folder / METADATA_NAME} has no rows: no images to train on")
    chosen = [r for r in records if r.split is None or r.split in splits]
    skipped = dict(Counter(r.split for r in records if not (r.split is None or r.split in splits)))
    if not chosen:
        raise TrainingInputError(f"{folder}: none of its {len(records)} rows is in a training split "
                                 f"{splits} (rows per split: {skipped})")
    missing = [r.file_name for r in chosen if not (folder / r.file_name).is_file()]
    if missing:
        raise TrainingInputError(f"{folder}: {len(missing)} image(s) listed in {METADATA_NAME} are missing, "
                                 f"e.g. {missing[0]!r}")
    examples = []
    for r in chosen:
        prompt = r.prompt or instance_prompt or prompt_for(r.label)
        path = folder / r.file_name
        examples.append(TrainingExample(path, prompt, r.label, r.image_id, r.sha256 or sha256_file(path)))
    return chosen, examples, skipped


def _examples_from_images(folder: Path, instance_prompt: str | None):
    stage = (try_read_manifest(folder) or {}).get("stage")
    if stage:  # e.g. a built dataset (parquet) or a LoRA folder given by mistake
        raise TrainingInputError(f"{folder} is the output of stage {stage!r}, not an image folder: train on a "
                                 "`dermt2im preprocess` output (or `dermt2im make-phantoms`), or a plain folder "
                                 "of images with --instance_prompt")
    images = list_images(folder)
    if not images:
        raise TrainingInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if not instance_prompt:
        raise TrainingInputError(f"{folder} has no {METADATA_NAME}, so it is a plain instance folder: give the "
                                 "prompt of its images with --instance_prompt")
    records, examples = [], []
    for path in images:
        rel = path.relative_to(folder).as_posix()
        digest = sha256_file(path)
        # label is unknown here; the exclusion check only uses ids and bytes
        records.append(ImageRecord(file_name=rel, image_id=path.stem, label="", source="folder", sha256=digest))
        examples.append(TrainingExample(path, instance_prompt, None, path.stem, digest))
    return records, examples


def collect_training_data(train_data_dir: str | None, instance_prompt: str | None = None,
                          train_splits: list[str] | None = None, test_exclusion: str | None = None,
                          what: str = "train_data_dir") -> TrainingData:
    """The examples to train on; raises TrainingInputError / TestLeakageError before anything is trained."""
    folder = _check_folder(train_data_dir, what)
    if (folder / METADATA_NAME).is_file():
        layout = "image_folder"
        records, examples, skipped = _examples_from_metadata(folder, list(train_splits or ["train"]),
                                                             instance_prompt)
    else:
        layout = "instance_folder"
        (records, examples), skipped = _examples_from_images(folder, instance_prompt), {}
    exclusion_path = Path(test_exclusion) if test_exclusion else find_exclusion(folder)
    if test_exclusion and not exclusion_path.is_file():
        raise TrainingInputError(f"test_exclusion file not found: {exclusion_path}")
    if exclusion_path is not None:
        exclusion = TestExclusion.load(exclusion_path)
        assert_no_test_images(folder, records, exclusion, hash_files=True, stage="train_lora")
    else:
        logger.warning("%s has no test_exclusion.json and none was given: the training images cannot be checked "
                       "against a held-out test split", folder)
    return TrainingData(folder, layout, examples, exclusion_path, skipped)


# ---------------------------------------------------------------- base model


def _read_model_index(folder: Path, shown: str) -> dict:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise TrainingInputError(f"base model {shown} is not a diffusers pipeline folder (no model_index.json)")
    try:
        return json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainingInputError(f"base model {shown}: model_index.json is not valid JSON ({exc})") from exc


def check_stable_diffusion_index(index: dict, shown: str) -> None:
    """Refuse anything that is not an SD 1.x/2.x-shaped pipeline (SDXL, Flux, a lone UNet, ...)."""
    pipeline_class = index.get("_class_name", "?")
    problems = []
    for name, expected in REQUIRED_COMPONENTS.items():
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            problems.append(f"no {name}")
        elif expected and entry[1] != expected:
            problems.append(f"{name} is {entry[1]}, not {expected}")
    if "text_encoder_2" in index:
        problems.append("it has a second text encoder (SDXL-style)")
    if problems:
        raise TrainingInputError(f"base model {shown} ({pipeline_class}) is not a Stable Diffusion 1.x/2.x "
                                 f"pipeline: {'; '.join(problems)}")


def _hub_patterns(variant: str | None) -> list[str]:
    """Only what the stage loads: configs, tokenizer, scheduler and the safetensors weights of `variant`
    (an SD1.5 repo also holds pickles, EMA and fp16 copies worth gigabytes)."""
    v = f".{variant}" if variant else ""
    allow = ["model_index.json", "scheduler/*", "tokenizer/*"]
    for sub, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model")):
        allow += [f"{sub}/config.json", f"{sub}/{stem}{v}.safetensors", f"{sub}/{stem}{v}-*-of-*.safetensors",
                  f"{sub}/{stem}.safetensors.index{v}.json"]
    return allow


def resolve_base_model(name_or_path: str, revision: str | None = None, variant: str | None = None) -> Path:
    """A local folder holding the checked base pipeline. A Hub id (`org/name`, `org/name@rev`) fetches
    model_index.json first and refuses a non-SD pipeline before downloading any weights."""
    from dermt2im_hub.hub import HubInputError, resolve_file, resolve_folder
    from dermt2im_hub.utils.files import missing_local_path

    if missing_local_path(name_or_path):  # a typo'd local path: no Hub requests and retries first
        raise TrainingInputError(f"base model folder {name_or_path!r} not found (no such file or folder)")
    try:
        index_path = resolve_file(name_or_path, "model_index.json", revision=revision)
    except HubInputError as exc:
        if Path(name_or_path).is_dir():  # a local folder without model_index.json
            raise TrainingInputError(f"base model {name_or_path} is not a diffusers pipeline folder "
                                     "(no model_index.json)") from exc
        raise TrainingInputError(f"base model {name_or_path!r} not found: {exc}") from exc
    check_stable_diffusion_index(_read_model_index(index_path.parent, name_or_path), name_or_path)
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        return resolve_folder(name_or_path, revision=revision, allow_patterns=_hub_patterns(variant))
    except HubInputError as exc:
        raise TrainingInputError(f"cannot fetch base model {name_or_path!r}: {exc}") from exc


def base_revision(folder: Path, requested: str | None) -> str | None:
    """The commit of a Hub snapshot (its folder name), else the requested revision."""
    if folder.parent.name == "snapshots":
        return folder.name
    return requested


# ---------------------------------------------------------------- pixels


def load_training_pixels(path: Path, resolution: int):
    """[3, R, R] float tensor in [-1, 1]: EXIF-rotated RGB, short side resized (bilinear), centre crop."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as exc:
        raise TrainingInputError(f"cannot read image {path}: {exc}") from exc
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
