"""Readers that turn each real source into one record type, `SourceRecord`.

- HAM10000: `HAM10000_metadata.csv` (lesion_id, image_id, dx, dx_type, age, sex, localization) + image folders.
- A plain folder with class subfolders `benign/` and `malignant/` (optionally with a `metadata.jsonl`, such
  as phantoms written by `dermt2im make-phantoms`, whose ids, lesion ids and extra fields are kept).
- ISIC challenge CSVs and ISIC Archive JSON records live in `dermt2im_hub.data.isic`.

File names and metadata are untrusted: image ids become file names only through `safe_file_stem`, paths from
metadata must stay inside their folder, and malformed rows are reported, not fatal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.config import ConfigError
from dermt2im_hub.data.report import Report
from dermt2im_hub.labels import CLASS_NAMES, binary_label, canonical_diagnosis
from dermt2im_hub.records import METADATA_NAME
from dermt2im_hub.utils.files import safe_join

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
UNKNOWN_VALUES = frozenset({"", "unknown", "nan", "none", "null", "na", "n/a"})
MAX_METADATA_LINE_BYTES = 1 << 20  # a metadata.jsonl row longer than this is not an image record


class InputError(ConfigError):
    """Input files the user has to fix (missing, or in a format no reader knows); printed without a traceback."""


@dataclass
class SourceRecord:
    """One real image as a source describes it, before preprocessing. Unknown values are None."""

    image_id: str
    source: str  # "ham10000" | "isic" | "folder" | what a folder's metadata.jsonl says (e.g. "phantom")
    label: str | None  # benign / malignant; None: excluded (unknown diagnosis)
    diagnosis: str | None = None  # canonical name from dermt2im_hub.labels (e.g. "melanoma")
    lesion_id: str | None = None
    patient_id: str | None = None
    age: float | None = None
    sex: str | None = None
    site: str | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fill_missing(self, other: SourceRecord) -> None:
        """Take `other`'s values where this record has none (e.g. age/sex/site from a metadata CSV)."""
        for name in ("diagnosis", "lesion_id", "patient_id", "age", "sex", "site"):
            if getattr(self, name) is None and getattr(other, name) is not None:
                setattr(self, name, getattr(other, name))
        for key, value in other.extra.items():
            self.extra.setdefault(key, value)


# ---------------------------------------------------------------- small value cleaners


def clean_text(value: Any) -> str | None:
    """A metadata string, or None for empty/unknown markers."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip()
    return None if text.lower() in UNKNOWN_VALUES else text


def clean_age(value: Any) -> float | None:
    text = clean_text(value)
    if text is None:
        return None
    try:
        age = float(text)
    except ValueError:
        return None
    return age if 0 <= age <= 130 else None


def clean_sex(value: Any) -> str | None:
    text = clean_text(value)
    return text.lower() if text else None


_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED_STEMS = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                             *(f"lpt{i}" for i in range(10))})


def safe_file_stem(image_id: str, max_length: int = 100) -> str:
    """A file-name stem for an untrusted image id: letters, digits, `._-` only, no leading dot, bounded length.

    Ids that had to change get a short hash of the original, so two ids never collide on one file.
    """
    cleaned = _UNSAFE_CHARS.sub("_", str(image_id)).strip("._-")[:max_length]
    if cleaned and cleaned == image_id and cleaned.lower() not in _RESERVED_STEMS:
        return cleaned
    digest = hashlib.sha256(str(image_id).encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned or 'image'}-{digest}"


def is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- image folders


def iter_image_files(folder: Path) -> Iterator[Path]:
    """Image files below `folder` in a stable order; hidden files and folders (temp files) are ignored."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def index_images(folder: str | Path, report: Report) -> dict[str, Path]:
    """image id (file stem) -> path, for every image below `folder`; a second file with the same stem is
    reported as a duplicate id and ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in iter_image_files(folder):
        if path.stem in found:
            report.skip("duplicate_id", path.stem, path, f"same id as {found[path.stem]}")
            continue
        found[path.stem] = path
    return found


# ---------------------------------------------------------------- CSV helpers


def read_csv_rows(path: str | Path) -> list[list[str]]:
    """All rows of a CSV (BOM and CRLF tolerated); the caller decides whether row 0 is a header."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"metadata file not found: {path}")
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)  # strict: an unclosed quote is an error, not merged rows
        try:
            return [row for row in reader if any(cell.strip() for cell in row)]
        except csv.Error as exc:
            raise InputError(f"{path}: not a valid CSV near line {reader.line_num} ({exc}; an unclosed quote?)") from exc


def rows_as_dicts(rows: list[list[str]]) -> tuple[list[str], list[dict[str, str]]]:
    header = [h.strip() for h in rows[0]]
    return header, [dict(zip(header, (cell.strip() for cell in row))) for row in rows[1:]]


# ---------------------------------------------------------------- HAM10000

HAM_REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")


def read_ham10000_metadata(path: str | Path, diagnosis_map: Mapping[str, str] | None = None,
                           report: Report | None = None) -> list[SourceRecord]:
    """Rows of `HAM10000_metadata.csv` as records (label from `dx` through dermt2im_hub.labels).

    Unknown dx codes give label None (the caller reports and drops them); duplicate image ids keep the first row.
    """
    report = report if report is not None else Report()
    rows = read_csv_rows(path)
    if not rows:
        raise InputError(f"{path} is empty")
    header, dict_rows = rows_as_dicts(rows)
    missing = [c for c in HAM_REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path} is not a HAM10000 metadata file: column(s) {', '.join(missing)} missing "
                         f"(found {', '.join(header)})")
    records: list[SourceRecord] = []
    seen: set[str] = set()
    for row in dict_rows:
        image_id = clean_text(row.get("image_id"))
        if image_id is None:
            report.skip("bad_metadata", None, path, "row without image_id")
            continue
        if image_id in seen:
            report.skip("duplicate_id", image_id, path, "second HAM10000 metadata row")
            continue
        seen.add(image_id)
        dx = clean_text(row.get("dx"))
        records.append(SourceRecord(
            image_id=image_id, source="ham10000", label=binary_label(dx, diagnosis_map),
            diagnosis=canonical_diagnosis(dx), lesion_id=clean_text(row.get("lesion_id")),
            age=clean_age(row.get("age")), sex=clean_sex(row.get("sex")), site=clean_text(row.get("localization")),
            extra={"dx": dx, "dx_type": clean_text(row.get("dx_type"))},
        ))
    return records


# ---------------------------------------------------------------- class-subfolder image folders


def _read_folder_metadata(folder: Path, report: Report) -> dict[str, dict[str, Any]]:
    """metadata.jsonl rows keyed by their file_name (POSIX, relative); rows pointing outside are dropped."""
    path = folder / METADATA_NAME
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                if len(line) > MAX_METADATA_LINE_BYTES:
                    raise ValueError("line too long")
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                    raise ValueError("not an object with a file_name")
            except ValueError as exc:
                report.skip("bad_metadata", None, path, f"line {number}: {exc}")
                continue
            rel = row["file_name"].replace("\\", "/")
            if safe_join(folder, rel) is None:
                report.skip("bad_metadata", clean_text(row.get("image_id")), path,
                            f"line {number}: file_name {rel!r} points outside the folder")
                continue
            rows[Path(rel).as_posix()] = row
    return rows


# `extra` keys an image folder's metadata.jsonl may carry on: those our own stages write (phantoms, preprocess
# of ISIC / HAM10000 / CSV sources). Anything else (a clinic's patient_name, mrn, dob, original path, ...) is
# dropped, since extra fields travel on into datasets that get pushed; the report counts what was dropped.
FOLDER_EXTRA_KEYS = frozenset({
    "skin_tone", "colours", "has_hair", "hair_fraction", "lesion_fraction",  # phantoms
    "source_file", "source_sha256", "conversions",  # preprocess
    "dx", "dx_type", "ground_truth", "class_code",  # HAM10000 and ISIC challenge CSVs
    "benign_malignant", "diagnosis_confirm_type", "melanocytic", "image_type", "pixelsX", "pixelsY",
    "isic_archive_id",  # ISIC Archive JSON
})


def _allowed_extra(extra: dict[str, Any], image_id: str, path: Path, report: Report) -> dict[str, Any]:
    dropped = sorted(str(k) for k in extra if k not in FOLDER_EXTRA_KEYS)
    if dropped:
        report.convert("extra_fields_dropped", image_id, path,
                       "not carried on (not fields dermt2im writes): " + ", ".join(k[:40] for k in dropped[:10]))
    return {k: v for k, v in extra.items() if k in FOLDER_EXTRA_KEYS}


def _record_from_folder_row(path: Path, label: str, row: dict[str, Any] | None, report: Report,
                            default_id: str | None = None) -> SourceRecord:
    row = row or {}
    raw_id = row.get("image_id")
    image_id = (clean_text(raw_id) if isinstance(raw_id, (str, int)) else None) or default_id
    source = row.get("source")
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    row_label = row.get("label")
    if row_label is not None and row_label != label:
        report.convert("folder_label_used", image_id or path.stem, path, f"metadata said {row_label!r}")
    diagnosis = row.get("diagnosis")
    return SourceRecord(
        image_id=image_id or path.stem,
        source=source if isinstance(source, str) and re.fullmatch(r"[\w.-]{1,40}", source) else "folder",
        label=label,
        diagnosis=canonical_diagnosis(diagnosis) if isinstance(diagnosis, str) else None,
        lesion_id=clean_text(row.get("lesion_id")) if isinstance(row.get("lesion_id"), (str, int)) else None,
        patient_id=clean_text(row.get("patient_id")) if isinstance(row.get("patient_id"), (str, int)) else None,
        age=clean_age(row.get("age")) if isinstance(row.get("age"), (int, float, str)) else None,
        sex=clean_sex(row.get("sex")) if isinstance(row.get("sex"), str) else None,
        site=clean_text(row.get("site")) if isinstance(row.get("site"), str) else None,
        path=path,
        extra=_allowed_extra(extra, image_id or path.stem, path, report),
    )


def read_image_folder(folder: str | Path, report: Report) -> list[SourceRecord]:
    """Records for `folder/{benign,malignant}/**` images; labels come from the subfolder.

    When `folder/metadata.jsonl` exists (phantoms, an earlier preprocess output), each image keeps its row's
    image id, lesion/patient ids, diagnosis, age, sex, site and extra fields. Otherwise the id is the file stem;
    when stems repeat (public sets often number each class folder from 1), every id is the file's path inside
    the folder instead (`benign_100`, `malignant_100`), so that two different images never share an id.
    Such a folder has no lesion or patient ids: its images can only be split by image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    rows = _read_folder_metadata(folder, report)
    files: list[tuple[Path, str, str]] = []
    for path in iter_image_files(folder):
        rel = path.relative_to(folder).as_posix()
        top = rel.split("/", 1)[0]
        if top not in CLASS_NAMES or "/" not in rel:
            report.skip("not_in_class_folder", path.stem, path)
            continue
        files.append((path, rel, top))
    stems = [path.stem for path, _, _ in files]
    path_ids = len(set(stems)) < len(stems)
    if path_ids:
        report.convert("ids_from_paths", None, folder, "file names repeat across subfolders: image ids are the "
                       "paths inside the folder (e.g. benign_100)")
    records: list[SourceRecord] = []
    seen_files: set[str] = set()
    for path, rel, top in files:
        seen_files.add(rel)
        default_id = rel.rsplit(".", 1)[0].replace("/", "_") if path_ids else path.stem
        records.append(_record_from_folder_row(path, top, rows.get(rel), report, default_id))
    for rel, row in rows.items():
        if rel not in seen_files:
            report.skip("missing_image", clean_text(row.get("image_id")), folder / rel,
                        "named in metadata.jsonl but not found in benign/ or malignant/")
    return records
