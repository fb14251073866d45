"""Benchmark inputs as `datasets` splits: loading, labels and ids, validation hold-out, leakage check.

Each input is a local folder (the dataset stage's parquet export, or a `save_to_disk` folder), a Hub id
(+ revision), or a `datasets.Dataset` / `DatasetDict` already in memory. The `image` column is read
undecoded (bytes), so decoding happens once, in the image cache, at the size each model needs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermt2im_hub.config import ConfigError
from dermt2im_hub.labels import CLASS_NAMES, label_id
from dermt2im_hub.manifest import fingerprint as path_fingerprint
from dermt2im_hub.manifest import try_read_manifest
from dermt2im_hub.records import EXCLUSION_NAME, ImageRecord, TestExclusion, assert_no_test_images, find_exclusion
from dermt2im_hub.utils.files import sha256_bytes

logger = logging.getLogger(__name__)

ID_COLUMNS = ("image_id", "lesion_id", "patient_id")
METADATA_COLUMNS = ("source", "diagnosis", "sex", "age", "site")


@dataclass
class ImageTable:
    """One split: undecoded images plus the columns the benchmark reads, aligned by row."""

    name: str
    images: Any  # a datasets.Dataset with one undecoded `image` column (or any indexable of images)
    labels: np.ndarray
    columns: dict[str, list] = field(default_factory=dict)  # image_id, lesion_id, ..., site
    origin: dict[str, Any] = field(default_factory=dict)  # where it came from (path, revision, fingerprint)
    # sha256 of every stored image, computed once (content hash and leakage check both use it); None: not known
    image_digests: list[str | None] | None = None

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def image_ids(self) -> list[str]:
        return self.columns["image_id"]

    @property
    def cache_key(self) -> str:
        return f"{self.origin.get('fingerprint')}:{self.name}:{len(self)}"

    def subset(self, indices, name: str | None = None) -> ImageTable:
        indices = np.asarray(indices, dtype=np.int64)
        if hasattr(self.images, "select"):
            images = self.images.select(indices)
        else:
            images = [self.images[i] for i in indices]
        columns = {key: [values[i] for i in indices] for key, values in self.columns.items()}
        origin = dict(self.origin, fingerprint=getattr(images, "_fingerprint", None) or
                      f"{self.origin.get('fingerprint')}[{sha256_bytes(indices.tobytes())[:16]}]",
                      content_sha256=sha256_bytes(f"{self.origin.get('content_sha256')}".encode() + indices.tobytes()))
        digests = [self.image_digests[i] for i in indices] if self.image_digests is not None else None
        return ImageTable(name or self.name, images, self.labels[indices], columns, origin, digests)


def _load_dataset_dict(path: str, config_name: str | None, revision: str | None):
    import datasets

    folder = Path(path)
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        return datasets.load_from_disk(str(folder))
    stage = (try_read_manifest(folder) or {}).get("stage") if folder.is_dir() else None
    if stage and stage != "build_dataset":
        kind = {"preprocess": "real", "phantoms": "real", "generate": "synthetic"}.get(stage)
        build = (f"build it first (dermt2im build-dataset {path} --config {kind} --output DIR) and give DIR" if kind
                 else "give a `dermt2im build-dataset` output or a Hub dataset id")
        raise ConfigError(f"{path} is a {stage!r} output, not a built dataset: {build}")
    if not folder.exists() and (folder.is_absolute() or str(path).startswith((".", "~"))):
        raise ConfigError(f"dataset folder not found: {path}")
    try:
        return datasets.load_dataset(str(path), name=config_name, revision=revision)
    except ConnectionError as exc:  # datasets' wrapper of the Hub error (offline, no network)
        raise ConfigError(f"dataset {str(path)!r} is not a local folder and could not be fetched from the Hub "
                          f"({exc})") from exc
    except ValueError as exc:
        if config_name and "config" in str(exc).lower():
            # a folder or repo with a single default config (e.g. a test set exported on its own)
            return datasets.load_dataset(str(path), revision=revision)
        raise


def open_split(source, split: str, config_name: str | None = None, revision: str | None = None):
    """A `datasets.Dataset`: `source` is a Dataset (used as is), a DatasetDict, a folder or a Hub id."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        loaded = source
    else:
        loaded = _load_dataset_dict(source, config_name, revision)
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split not in loaded:
        raise ConfigError(f"{_describe(source)} has no split {split!r} (it has {', '.join(loaded)})")
    return loaded[split]


def _describe(source) -> str:
    return source if isinstance(source, (str, Path)) else f"the in-memory {type(source).__name__}"


def _labels(dataset) -> np.ndarray:
    """ClassLabel ids in CLASS_NAMES order (a string label column is mapped by name)."""
    feature = dataset.features.get("label")
    if feature is None:
        raise ConfigError(f"dataset has no `label` column (columns: {', '.join(dataset.column_names)})")
    values = dataset["label"]
    names = getattr(feature, "names", None)
    if names is not None:
        if list(names) != list(CLASS_NAMES):
            remap = np.array([label_id(n) for n in names])
            return remap[np.asarray(values, dtype=np.int64)]
        return np.asarray(values, dtype=np.int64)
    return np.array([label_id(str(v)) for v in values], dtype=np.int64)


def make_table(dataset, name: str, origin: dict[str, Any] | None = None,
               id_prefix: str | None = None) -> ImageTable:
    """Undecoded images, labels, ids and metadata columns of one `datasets.Dataset`."""
    import datasets

    if "image" not in dataset.column_names:
        raise ConfigError(f"{name}: the dataset has no `image` column")
    labels = _labels(dataset)
    columns: dict[str, list] = {}
    for column in (*ID_COLUMNS, *METADATA_COLUMNS):
        if column in dataset.column_names:
            columns[column] = [None if v is None else v for v in dataset[column]]
    if "image_id" not in columns:
        # synthetic rows have no natural id; a stable one keeps predictions and leakage messages readable
        columns["image_id"] = [f"{id_prefix or name}-{i:06d}" for i in range(len(dataset))]
    columns["image_id"] = [str(v) for v in columns["image_id"]]
    images = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    stored = dataset["sha256"] if "sha256" in dataset.column_names else [None] * len(dataset)
    digests = [value or image_sha256(images, i) for i, value in enumerate(stored)]
    origin = dict(origin or {}, fingerprint=getattr(dataset, "_fingerprint", None), num_rows=len(dataset),
                  content_sha256=content_sha256(columns["image_id"], labels, digests))
    return ImageTable(name, images, labels, columns, origin, digests)


def content_sha256(image_ids: list[str], labels: np.ndarray, image_digests: list[str | None]) -> str:
    """What a table holds, whatever folder it was loaded from and whenever its files were touched: ids, labels
    and the sha256 of every stored image. Run and sweep hashes use it, so moving or re-syncing a dataset (or
    reading it from another mount on another machine) does not make finished runs look stale."""
    blob = json.dumps([list(image_ids), np.asarray(labels).tolist(), list(image_digests)])
    return sha256_bytes(blob.encode())


def is_class_folder(source) -> bool:
    """A plain folder of class folders (benign/, malignant/) that no dermt2im stage wrote, as public sets come."""
    if not isinstance(source, (str, Path)) or not Path(source).is_dir():
        return False
    folder = Path(source)
    return all((folder / name).is_dir() for name in CLASS_NAMES) and try_read_manifest(folder) is None


def class_folder_dataset(folder: str | Path):
    """Every image below folder/{benign,malignant}/ as one `datasets.Dataset` (image paths, labels, ids), read
    by the data stage's folder reader (the same ids `dermt2im preprocess --source folder` gives)."""
    import datasets

    from dermt2im_hub.data.report import Report
    from dermt2im_hub.data.sources import read_image_folder

    report = Report()
    records = read_image_folder(folder, report)
    if report.skipped:
        logger.warning("%s: skipped %s", folder, dict(report.skipped))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
                                  "image_id": datasets.Value("string"), "source": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "image": [str(r.path) for r in records], "label": [label_id(r.label) for r in records],
        "image_id": [r.image_id for r in records], "source": [r.source for r in records]}, features=features)


def load_table(source, split: str, name: str, config_name: str | None = None, revision: str | None = None,
               source_filter: str | None = None, whole_class_folder: bool = False) -> ImageTable:
    """One split of a dataset as an ImageTable. With `whole_class_folder`, a plain folder of class folders is
    read whole as this split (a test set given as the public set's own test folder)."""
    if is_class_folder(source):
        if not whole_class_folder:
            raise ConfigError(f"{source} is a folder of class folders: as training data it goes through the data "
                              "stage first (dermt2im preprocess --source folder --images FOLDER --output PRE; "
                              "dermt2im build-dataset PRE --config real --output DATASET); as a test set give it "
                              "in test_sets")
        dataset, split = class_folder_dataset(source), "all (class folders)"
    else:
        dataset = open_split(source, split, config_name, revision)
    if source_filter is not None:
        if "source" not in dataset.column_names:
            raise ConfigError(f"{name} filters on source={source_filter!r}, but the dataset has no `source` "
                              "column")
        # in memory: every rank of a multi-process run filters the same folder, and datasets' on-disk cache
        # files (temp file + rename beside the arrow files) race between ranks
        dataset = dataset.filter(lambda value: value == source_filter, input_columns="source", keep_in_memory=True)
    if len(dataset) == 0:
        raise ConfigError(f"{name}: split {split!r} of {_describe(source)} has no rows"
                          + (f" with source={source_filter!r}" if source_filter else ""))
    origin = {"path": str(source) if isinstance(source, (str, Path)) else None, "revision": revision,
              "config_name": config_name, "split": split, "source_filter": source_filter}
    if isinstance(source, (str, Path)):
        origin["input_fingerprint"] = path_fingerprint(source)
    return make_table(dataset, name, origin)


def group_holdout(table: ImageTable, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) with whole patients (else lesions, else images) on one side."""
    groups = []
    for i in range(len(table)):
        groups.append(next((f"{key}:{table.columns[key][i]}" for key in ("patient_id", "lesion_id")
                            if table.columns.get(key) and table.columns[key][i]), f"image:{table.image_ids[i]}"))
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(unique)[: max(1, round(fraction * len(unique)))])
    in_validation = np.array([g in held for g in groups])
    return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


# ---------------------------------------------------------------------------------------------- leakage


def image_sha256(images, index: int) -> str | None:
    """sha256 of the stored (encoded) bytes of one image, reading its file when only a path is stored."""
    value = images[index]["image"] if hasattr(images, "column_names") else images[index]
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return sha256_bytes(value["bytes"])
        if value.get("path") and Path(value["path"]).is_file():
            return sha256_bytes(Path(value["path"]).read_bytes())
    elif isinstance(value, bytes):
        return sha256_bytes(value)
    return None


def _digest(table: ImageTable, index: int) -> str | None:
    if table.image_digests is not None:
        return table.image_digests[index]
    return image_sha256(table.images, index)


def _records(table: ImageTable, with_hashes: bool) -> list[ImageRecord]:
    rows = []
    for i in range(len(table)):
        rows.append(ImageRecord(
            file_name=table.image_ids[i], image_id=table.image_ids[i], label=CLASS_NAMES[int(table.labels[i])],
            source=str((table.columns.get("source") or [None] * len(table))[i] or table.name),
            lesion_id=(table.columns.get("lesion_id") or [None] * len(table))[i],
            patient_id=(table.columns.get("patient_id") or [None] * len(table))[i],
            sha256=_digest(table, i) if with_hashes else None,
        ))
    return rows


def exclusion_of(test_tables: list[ImageTable], extra: TestExclusion | None = None) -> TestExclusion:
    """Image, lesion and patient ids and file hashes of every test image (plus an exclusion file's)."""
    exclusion = TestExclusion(source="benchmark test sets")
    for table in test_tables:
        exclusion = exclusion.merge(TestExclusion.from_records(_records(table, with_hashes=True)))
    return exclusion.merge(extra) if extra is not None else exclusion


def exclusion_from_config(exclusion_file: str | None, real_path) -> TestExclusion | None:
    """The configured exclusion file, else the data stage's `test_exclusion.json` beside a local real dataset."""
    if exclusion_file:
        if not Path(exclusion_file).is_file():
            raise ConfigError(f"evaluation.exclusion_file not found: {exclusion_file}")
        return TestExclusion.load(exclusion_file)
    if isinstance(real_path, (str, Path)) and Path(real_path).is_dir():
        found = find_exclusion(real_path)
        if found is not None:
            logger.info("also refusing the images listed in %s", found)
            return TestExclusion.load(found)
        logger.info("no %s beside %s: checking against the test sets only", EXCLUSION_NAME, real_path)
    return None


def assert_disjoint(training_tables: list[ImageTable], exclusion: TestExclusion) -> int:
    """Raise `records.TestLeakageError` when a training image is a test image, its lesion or its patient
    (or the same bytes); returns how many training images were checked."""
    checked = 0
    for table in training_tables:
        checked += assert_no_test_images(f"the {table.name} images", _records(table, with_hashes=True), exclusion,
                                         hash_files=False, stage="classifier training")
    return checked
