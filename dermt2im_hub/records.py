"""The image-folder format that the data stage writes and every later stage reads.

An image folder (preprocessed real data, phantom images) is:

    FOLDER/benign/*.png, FOLDER/malignant/*.png
    FOLDER/metadata.jsonl      one JSON object per image (the fields of `ImageRecord`)
    FOLDER/manifest.json       written by the stage that made it
    FOLDER/test_exclusion.json (data stage only) the held-out test split; see `TestExclusion`

`file_name` is relative to FOLDER (POSIX separators), as `datasets` ImageFolder metadata expects.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.utils.files import atomic_write_json, read_jsonl, safe_join, sha256_file, write_jsonl

METADATA_NAME = "metadata.jsonl"
EXCLUSION_NAME = "test_exclusion.json"
# QA keys that name real training images (the memorization audit's nearest match): publishing them reveals which
# images were in the training set and, for a plain folder, file names that may identify patients. A built
# dataset leaves them out unless asked; the publishing gate (hub.gate) wants --allow-real-images for them.
TRAINING_REFERENCE_KEYS = frozenset({"mem_nearest_id"})
SPLITS = ("train", "validation", "test")


@dataclass
class ImageRecord:
    """One image in an image folder. Unknown values are None, never guessed."""

    file_name: str  # relative to the folder, e.g. "malignant/ISIC_0000002.png"
    image_id: str
    label: str  # "benign" | "malignant"
    source: str  # "ham10000" | "isic" | "folder" | "phantom"
    diagnosis: str | None = None
    lesion_id: str | None = None
    patient_id: str | None = None
    split: str | None = None  # "train" | "validation" | "test" (None: not split yet)
    prompt: str | None = None  # the instance prompt the LoRA stage trains on
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None  # of the file as written
    hair_fraction_before: float | None = None
    hair_fraction_after: float | None = None
    age: float | None = None
    sex: str | None = None
    site: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the source had (kept, not dropped)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ImageRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in row.items() if k in names}
        extra = dict(known.pop("extra", None) or {})
        extra.update({k: v for k, v in row.items() if k not in names})
        record = cls(**known, extra=extra)
        if record.label not in CLASS_NAMES:
            raise ValueError(f"record {record.image_id!r}: label must be one of {CLASS_NAMES}, got {record.label!r}")
        return record


def read_records(folder: str | Path) -> list[ImageRecord]:
    folder = Path(folder)
    path = folder / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {METADATA_NAME}; expected an image folder written by "
                                "`dermt2im preprocess` or `dermt2im make-phantoms`")
    records = [ImageRecord.from_dict(row) for row in read_jsonl(path)]
    for record in records:  # metadata is untrusted: a row must not lead a stage to a file outside the folder
        if safe_join(folder, record.file_name) is None:
            raise ValueError(f"record {record.image_id!r}: file_name {record.file_name!r} points outside {folder}")
    return records


def write_records(folder: str | Path, records: Iterable[ImageRecord]) -> Path:
    return write_jsonl(Path(folder) / METADATA_NAME, (r.to_dict() for r in records))


@dataclass
class TestExclusion:
    """The held-out test split as identifiers that training stages must never see.

    An image is excluded when its image id, lesion id, patient id or file sha256 is listed: a copy of a
    test image under another name (same bytes), another image of the same lesion, or another lesion of
    the same patient all count as leakage.
    """

    image_ids: set[str] = field(default_factory=set)
    lesion_ids: set[str] = field(default_factory=set)
    patient_ids: set[str] = field(default_factory=set)
    sha256: set[str] = field(default_factory=set)
    source: str | None = None  # the folder it was written for
    __test__ = False  # not a pytest test class despite the name

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord], source: str | None = None) -> TestExclusion:
        ex = cls(source=source)
        for r in records:
            ex.image_ids.add(r.image_id)
            if r.lesion_id:
                ex.lesion_ids.add(r.lesion_id)
            if r.patient_id:
                ex.patient_ids.add(r.patient_id)
            if r.sha256:
                ex.sha256.add(r.sha256)
        return ex

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, {
            "description": "Held-out test split: training stages refuse any image listed here.",
            "source": self.source,
            "image_ids": sorted(self.image_ids),
            "lesion_ids": sorted(self.lesion_ids),
            "patient_ids": sorted(self.patient_ids),
            "sha256": sorted(self.sha256),
        })

    @classmethod
    def load(cls, path: str | Path) -> TestExclusion:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(set(data.get("image_ids", [])), set(data.get("lesion_ids", [])),
                   set(data.get("patient_ids", [])), set(data.get("sha256", [])), data.get("source"))

    def merge(self, other: TestExclusion) -> TestExclusion:
        return TestExclusion(self.image_ids | other.image_ids, self.lesion_ids | other.lesion_ids,
                             self.patient_ids | other.patient_ids, self.sha256 | other.sha256, self.source)

    def reason(self, record: ImageRecord, sha256: str | None = None) -> str | None:
        """Why `record` is a test image, or None when it is not."""
        digest = sha256 or record.sha256
        if record.image_id in self.image_ids:
            return f"image id {record.image_id!r} is in the test split"
        if record.lesion_id and record.lesion_id in self.lesion_ids:
            return f"lesion {record.lesion_id!r} of image {record.image_id!r} is in the test split"
        if record.patient_id and record.patient_id in self.patient_ids:
            return f"patient {record.patient_id!r} of image {record.image_id!r} is in the test split"
        if digest and digest in self.sha256:
            return f"file {record.file_name!r} has the same bytes as a test image"
        return None


class TestLeakageError(RuntimeError):
    """A training input contains a held-out test image."""

    __test__ = False


def assert_no_test_images(folder: str | Path, records: Iterable[ImageRecord], exclusion: TestExclusion,
                          hash_files: bool = True, stage: str = "training") -> int:
    """Raise TestLeakageError naming the offending images; returns how many records were checked.

    With `hash_files`, each file's bytes are hashed too, so a renamed copy of a test image is caught
    even when its metadata row was edited.
    """
    folder = Path(folder)
    offenders = []
    checked = 0
    for record in records:
        checked += 1
        digest = None
        if hash_files and exclusion.sha256:
            path = folder / record.file_name
            digest = sha256_file(path) if path.is_file() else None
        why = exclusion.reason(record, sha256=digest)
        if why:
            offenders.append(why)
    if offenders:
        shown = "; ".join(offenders[:5]) + (f"; and {len(offenders) - 5} more" if len(offenders) > 5 else "")
        raise TestLeakageError(f"{stage} refuses {folder}: {len(offenders)} image(s) belong to the held-out "
                               f"test split ({shown}). Remove them or use the data stage's train split.")
    return checked


def find_exclusion(*folders: str | Path) -> Path | None:
    """The first `test_exclusion.json` found in the given folders (a data-stage output carries one)."""
    for folder in folders:
        candidate = Path(folder) / EXCLUSION_NAME
        if candidate.is_file():
            return candidate
    return None
