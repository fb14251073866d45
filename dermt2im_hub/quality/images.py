"""The two inputs of the QA stage as lists of images, and batched, size-capped loading.

- Generated folder (contract 2): `metadata.jsonl` rows with `file_name` and `label`; any plain folder of PNG/JPEG
  files is accepted too (label from a `benign`/`malignant` parent folder, else None), read-only.
- Real training folder (contract 1): `metadata.jsonl` records, train split only (all rows when `split` is
  null); or a plain image folder, as above.

`file_name` values are untrusted: a row pointing outside its folder is refused. A generated row whose file was
already moved by an interrupted earlier run is found at its other location (`{label}/` or `rejected/{label}/`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.records import METADATA_NAME
from dermt2im_hub.utils.files import describe_path, path_problem, read_jsonl, safe_join
from dermt2im_hub.utils.logging import get_logger

logger = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REJECTED_DIR = "rejected"
QA_DIR = "qa"
UNLABELLED = "unlabelled"
LOAD_MAX_SIDE = 512  # every check works at or below this size; larger files are reduced while decoding


class FolderError(ValueError):
    """An input folder that cannot be read as the QA stage expects; the message says why."""


@dataclass
class ImageItem:
    image_id: str
    path: Path
    label: str | None
    file_name: str  # relative to its folder, POSIX
    row: dict = field(default_factory=dict)  # the metadata row (generated side), updated in place


def safe_relative(folder: Path, file_name: str) -> Path:
    """folder / file_name, refusing names that lead outside the folder (metadata is untrusted; `\\` reads as `/`)."""
    path = safe_join(folder, file_name, windows_separators=True)
    if path is None:
        raise FolderError(f"{folder / METADATA_NAME}: file_name {file_name!r} points outside the folder")
    return path


def _label_from_path(rel: PurePosixPath) -> str | None:
    for part in reversed(rel.parts[:-1]):
        if part in CLASS_NAMES:
            return part
    return None


def _plain_images(folder: Path, skip: Sequence[Path] = ()) -> list[ImageItem]:
    items = []
    skip = [s.resolve() for s in skip]
    listed = sorted(p for p in folder.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
    for path in listed:
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        if any(part.startswith(".") for part in rel.parts):
            continue
        problem = path_problem(path)
        if problem is not None:  # a name that is not UTF-8, a link loop: skipped, said on the console
            logger.warning("skipped %s: %s", describe_path(path), problem.replace("_", " "))
            continue
        if any(path.resolve().is_relative_to(s) for s in skip):
            continue
        items.append(ImageItem(str(rel.with_suffix("")), path, _label_from_path(rel), str(rel)))
    if not items:
        raise FolderError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def has_metadata(folder: str | Path) -> bool:
    return (Path(folder) / METADATA_NAME).is_file()


def alternative_location(file_name: str, label: str | None) -> str:
    """Where a generated image lives after the other outcome: kept <-> rejected."""
    rel = PurePosixPath(file_name)
    if rel.parts and rel.parts[0] == REJECTED_DIR:
        return str(PurePosixPath(*rel.parts[1:]))
    return str(PurePosixPath(REJECTED_DIR, label or UNLABELLED, rel.name))


def generated_items(folder: str | Path, output_dir: str | Path | None = None) -> list[ImageItem]:
    """The synthetic images: metadata rows when the folder has them, else every image below it except the QA
    output folder's own pictures."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"generated folder not found: {folder}")
    if not has_metadata(folder):
        return _plain_images(folder, skip=(folder / QA_DIR, Path(output_dir or folder / QA_DIR)))
    items = []
    for number, row in enumerate(read_jsonl(folder / METADATA_NAME)):
        file_name = row.get("file_name")
        if not file_name:
            raise FolderError(f"{folder / METADATA_NAME}: row {number} has no file_name")
        label = row.get("label") if row.get("label") in CLASS_NAMES else None
        path = safe_relative(folder, file_name)
        if not path.is_file():
            moved = alternative_location(file_name, label)
            if safe_relative(folder, moved).is_file():
                file_name, path = moved, safe_relative(folder, moved)
                row["file_name"] = file_name
        items.append(ImageItem(str(row.get("image_id") or file_name), path, label, file_name, row))
    if not items:
        raise FolderError(f"{folder / METADATA_NAME} has no rows")
    return items


def real_items(folder: str | Path) -> list[ImageItem]:
    """The real training images: records of the train split (or unsplit rows), else every image below it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"real training folder not found: {folder}")
    if not has_metadata(folder):
        return _plain_images(folder)
    items = []
    for row in read_jsonl(folder / METADATA_NAME):
        if row.get("split") not in (None, "train"):
            continue  # validation/test images were never trained on, so they cannot be memorized
        file_name = row.get("file_name")
        if not file_name:
            continue
        label = row.get("label") if row.get("label") in CLASS_NAMES else None
        items.append(ImageItem(str(row.get("image_id") or file_name), safe_relative(folder, file_name), label,
                               file_name, row))
    if not items:
        raise FolderError(f"{folder / METADATA_NAME} has no train-split (or unsplit) rows")
    return items


def load_rgb(path: Path, max_side: int = LOAD_MAX_SIDE) -> np.ndarray | None:
    """RGB uint8 array no larger than `max_side`, or None when the file is not a readable image."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
            image = image.convert("RGB")
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
