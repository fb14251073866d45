"""Join a source's metadata with its image files: the usable, labelled records of one preprocess run.

Everything dropped on the way is reported: metadata rows whose image is missing, images no row names, duplicate
ids, unknown diagnoses, conflicting labels from two ground-truth files, and the second image of each pair in
a duplicates list (ISIC 2020).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from dermt2im_hub.data.config import DataConfig
from dermt2im_hub.data.isic import IsicTable, read_isic_csv, read_isic_json_folder
from dermt2im_hub.data.report import Report
from dermt2im_hub.data.sources import (
    InputError,
    SourceRecord,
    index_images,
    read_ham10000_metadata,
    read_image_folder,
)
from dermt2im_hub.utils.files import describe_path, path_problem


def _describe_diagnosis(record: SourceRecord) -> str:
    code = record.extra.get("dx") or record.extra.get("class_code") or record.diagnosis
    return f"diagnosis {code!r}" if code else "no diagnosis or label"


def unique_by_id(records: Iterable[SourceRecord], report: Report, where: str) -> list[SourceRecord]:
    """First record per image id; later ones are reported as duplicate ids. An id listed twice with two
    labels is excluded altogether (a label conflict): no one can say which label is right."""
    kept: dict[str, SourceRecord] = {}
    conflicts: set[str] = set()
    for record in records:
        first = kept.get(record.image_id)
        if first is None:
            kept[record.image_id] = record
        elif first.label != record.label and record.image_id not in conflicts:
            conflicts.add(record.image_id)
            report.skip("label_conflict", record.image_id, record.path or where,
                        f"listed twice in {where}, as {first.label} and as {record.label}")
        else:
            report.skip("duplicate_id", record.image_id, record.path or where, f"second entry in {where}")
    return [record for image_id, record in kept.items() if image_id not in conflicts]


def join_images(records: list[SourceRecord], images: Mapping[str, Path], report: Report) -> list[SourceRecord]:
    """Attach image paths; report rows without an image, images without a row, and unknown labels."""
    joined = []
    named = set()
    for record in records:
        named.add(record.image_id)
        path = images.get(record.image_id)
        if path is None:
            report.skip("missing_image", record.image_id, None, "no image file with this id")
            continue
        record.path = path
        if record.label is None:
            report.skip("unknown_diagnosis", record.image_id, path, _describe_diagnosis(record))
            continue
        joined.append(record)
    for image_id, path in images.items():
        if image_id not in named:
            report.skip("no_metadata", image_id, path, "no metadata row names this image")
    return joined


def _merge_labelled(tables: list[IsicTable], report: Report) -> list[SourceRecord]:
    """One record per image id over all ground-truth tables; a second table may add fields, not change labels."""
    merged: dict[str, SourceRecord] = {}
    conflicts: set[str] = set()
    for table in tables:
        for record in unique_by_id(table.records, report, table.path.name):
            first = merged.get(record.image_id)
            if first is None:
                merged[record.image_id] = record
            elif first.label != record.label and record.image_id not in conflicts:
                conflicts.add(record.image_id)
                report.skip("label_conflict", record.image_id, table.path,
                            f"{first.extra.get('ground_truth')} says {first.label}, {table.path.name} says "
                            f"{record.label}")
            else:
                first.fill_missing(record)
    return [record for image_id, record in merged.items() if image_id not in conflicts]


def _drop_listed_duplicates(records: list[SourceRecord], pairs: list[tuple[str, str]],
                            report: Report) -> list[SourceRecord]:
    present = {record.image_id for record in records}
    dropped: dict[str, str] = {}
    for first, second in pairs:
        keeper = first
        while keeper in dropped:  # (a, b), (b, c): c is a duplicate of a, the image that stays
            keeper = dropped[keeper]
        # a self pair names one image; of a pair listed both ways (a, b), (b, a) one image stays
        if second in dropped or keeper == second:
            continue
        if first in present and second in present:
            dropped[second] = keeper
    for second, first in dropped.items():
        report.skip("listed_duplicate", second, None, f"duplicate of {first}")
    return [record for record in records if record.image_id not in dropped]


def _collect_isic(config: DataConfig, report: Report) -> list[SourceRecord]:
    diagnosis_map = config.normalised_diagnosis_map()
    labelled: list[IsicTable] = []
    extra_tables: list[IsicTable] = []
    pairs: list[tuple[str, str]] = []
    json_folder: Path | None = None
    for item in config.metadata:
        path = Path(item)
        if path.is_dir():
            records = read_isic_json_folder(path, diagnosis_map, report)
            labelled.append(IsicTable(path, "isic_json", records))
            json_folder = json_folder or path
            continue
        table = read_isic_csv(path, diagnosis_map)
        if table.format == "duplicates":
            pairs.extend(table.duplicates)
        elif table.has_labels:
            labelled.append(table)
        else:
            extra_tables.append(table)
    if not labelled:
        raise InputError("isic needs labels: pass a ground-truth CSV or a folder of ISIC JSON records with "
                         "--metadata (metadata-only CSVs and duplicates lists only add to those)")
    if not pairs and any(table.format == "isic2020" for table in labelled):
        # ISIC 2020 holds the same image under two ids; unlisted, a copy can land in train and test
        report.note("ISIC 2020 ground truth without ISIC_2020_Training_Duplicates.csv: its duplicate images are "
                    "not removed (pass the duplicates list with --metadata)")
    records = _merge_labelled(labelled, report)
    by_id = {record.image_id: record for record in records}
    for table in extra_tables:
        for row in table.records:
            if row.image_id in by_id:
                by_id[row.image_id].fill_missing(row)
    image_folder = config.images or json_folder
    if image_folder is None:
        raise InputError("isic needs --images FOLDER (the folder holding ISIC_*.jpg)")
    joined = join_images(records, index_images(image_folder, report), report)
    return _drop_listed_duplicates(joined, pairs, report)


def collect_records(config: DataConfig, report: Report) -> list[SourceRecord]:
    """The labelled records with image paths that this run will process, in a stable order."""
    if config.source == "folder":
        if not config.images:
            raise InputError("folder source needs --images FOLDER (with benign/ and malignant/ subfolders)")
        if config.metadata:
            report.note("folder source: --metadata ignored (labels come from the class subfolders; "
                        "FOLDER/metadata.jsonl is read when present)")
        records = unique_by_id(read_image_folder(config.images, report), report, "the image folder")
    elif config.source == "ham10000":
        if len(config.metadata) != 1 or not config.images:
            raise InputError("ham10000 needs --images FOLDER and exactly one --metadata HAM10000_metadata.csv")
        rows = read_ham10000_metadata(config.metadata[0], config.normalised_diagnosis_map(), report)
        records = join_images(rows, index_images(config.images, report), report)
    else:
        records = _collect_isic(config, report)
    if config.images and Path(config.images).is_dir():
        _report_unsupported_images(Path(config.images), report)
    return sorted(_usable_files(records, report), key=lambda record: record.image_id)


# image formats no reader here decodes: listed in the report instead of vanishing silently
UNSUPPORTED_IMAGE_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".avif", ".jp2", ".jxl", ".dcm", ".svg", ".ico"})


def _report_unsupported_images(folder: Path, report: Report) -> None:
    for current, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            suffix = os.path.splitext(name)[1].lower()
            if not name.startswith(".") and suffix in UNSUPPORTED_IMAGE_SUFFIXES:
                path = os.path.join(current, name)
                report.skip("unsupported_format", describe_path(os.path.splitext(name)[0]), describe_path(path),
                            f"{suffix} images are not read: convert them to PNG or JPEG")


def _usable_files(records: list[SourceRecord], report: Report) -> list[SourceRecord]:
    """Drop (and report) images whose file name is not UTF-8 or whose link leads nowhere (a loop)."""
    usable = []
    for record in records:
        problem = path_problem(record.path) if record.path is not None else None
        if problem is None:
            usable.append(record)
        else:
            report.skip(problem, describe_path(record.image_id), describe_path(record.path),
                        "file name is not valid UTF-8" if problem == "unreadable_name" else "cannot open the file")
    return usable
