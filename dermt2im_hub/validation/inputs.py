"""What `dermt2im validate` reads: the synthetic images with their intended label and sampler.

Three kinds of input, all read-only:
- a generated folder (metadata.jsonl rows with `file_name`, `label`, `sampler`, `prompt`);
- any folder of AUTOMATIC1111 PNGs: label from the prompt (it names benign or malignant) else from a
  benign/malignant parent folder, sampler from the infotext;
- a built dataset (a `dermt2im build-dataset` folder or `save_to_disk` folder): its `image`, `label`,
  `sampler` and `prompt` columns.
File names and infotext are untrusted: names are resolved inside the folder, infotext is only parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from dermt2im_hub.dataset.a1111 import label_from_path, label_from_prompt
from dermt2im_hub.generation.infotext import parse_infotext, read_infotext
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.manifest import try_read_manifest
from dermt2im_hub.quality.images import FolderError, generated_items, has_metadata

UNKNOWN = "unknown"


@dataclass
class SyntheticImage:
    image_id: str
    file_name: str
    label: str | None  # the class the prompt asked for
    sampler: str
    prompt: str | None
    load: Callable[[], Image.Image] = field(repr=False)  # RGB image
    label_source: str = "metadata"  # metadata, prompt, folder or dataset


def _open_rgb(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB")
    return load


def _png_text(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            return read_infotext(image)
    except (OSError, ValueError):
        return None


def _a1111_image(item) -> SyntheticImage:
    infotext = _png_text(item.path)
    parsed = parse_infotext(infotext) if infotext else {}
    prompt = parsed.get("prompt")
    from_prompt, from_folder = label_from_prompt(prompt), label_from_path(item.file_name)
    label = from_prompt or from_folder
    return SyntheticImage(item.image_id, item.file_name, label, parsed.get("sampler") or UNKNOWN, prompt,
                          _open_rgb(item.path), "prompt" if from_prompt else "folder" if from_folder else "none")


def _generated_image(item) -> SyntheticImage:
    row = item.row
    return SyntheticImage(item.image_id, item.file_name, item.label, str(row.get("sampler") or UNKNOWN),
                          row.get("prompt"), _open_rgb(item.path))


def _is_built_dataset(folder: Path) -> bool:
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return True
    return (try_read_manifest(folder) or {}).get("stage") == "build_dataset"


def _dataset_images(folder: Path, split: str | None) -> list[SyntheticImage]:
    import datasets

    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
    else:  # a build-dataset folder: parquet files named by the `configs:` block of its README
        loaded = datasets.load_dataset(str(folder))
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if split is not None:
        if split not in splits:
            raise FolderError(f"{folder} has no split {split!r} (it has {', '.join(splits)})")
        splits = {split: splits[split]}
    images = []
    for name, dataset in splits.items():
        names = dataset.features["label"].names if hasattr(dataset.features["label"], "names") else None
        columns = {key: dataset[key] for key in ("sampler", "prompt", "image_id", "file_name")
                   if key in dataset.column_names}
        for index, raw_label in enumerate(dataset["label"]):
            label = names[raw_label] if names and isinstance(raw_label, int) else raw_label
            image_id = (columns.get("image_id") or [None] * len(dataset))[index] or f"{name}/{index}"
            file_name = (columns.get("file_name") or [None] * len(dataset))[index] or f"{name}/{index}"
            images.append(SyntheticImage(
                str(image_id), str(file_name), label if label in CLASS_NAMES else None,
                str((columns.get("sampler") or [None] * len(dataset))[index] or UNKNOWN),
                (columns.get("prompt") or [None] * len(dataset))[index],
                _dataset_loader(dataset, index), "dataset"))
    return images


def _dataset_loader(dataset, index: int) -> Callable[[], Image.Image]:
    return lambda: dataset[index]["image"].convert("RGB")


def read_synthetic(folder: str | Path, split: str | None = None,
                   skip: str | Path | None = None) -> tuple[str, list[SyntheticImage]]:
    """(kind, images) of any accepted input; kind is generated, a1111 or dataset (a generated folder's
    QA-rejected rows are left out). `skip`: a folder inside
    `folder` whose images are not inputs (the validation output itself)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"input folder not found: {folder}")
    if _is_built_dataset(folder):
        return "dataset", _dataset_images(folder, split)
    if has_metadata(folder):  # images the QA stage rejected are not part of the set
        items = [item for item in generated_items(folder) if item.row.get("qa_passed") is not False]
        if not items:
            raise FolderError(f"{folder}: every image was rejected by the QA stage")
        return "generated", [_generated_image(item) for item in items]
    items = generated_items(folder, output_dir=skip)
    return "a1111", [_a1111_image(item) for item in items]


def describe_labels(images: list[SyntheticImage]) -> dict[str, Any]:
    """How many images have a label and where it came from (for the report)."""
    sources: dict[str, int] = {}
    for image in images:
        sources[image.label_source] = sources.get(image.label_source, 0) + 1
    return {"labelled": sum(image.label is not None for image in images), "label_sources": sources}
