"""ISIC readers: every challenge ground-truth/metadata CSV format, and ISIC Archive per-image JSON records.

CSV formats are recognised from their header (`read_isic_csv` returns the format's name):

| format | header | label |
|---|---|---|
| `isic2016` | none: `ISIC_id,benign|malignant` (training) or `ISIC_id,0.0|1.0` (test, 1.0 = malignant) | as given |
| `isic2017` | `image_id,melanoma,seborrheic_keratosis` | melanoma / seborrheic keratosis / else nevus |
| `onehot` | `image,MEL,NV,BCC,AKIEC|AK,BKL,DF,VASC[,SCC,UNK]` (2018 task 3, 2019) | the column holding 1 |
| `isic2020` | `image_name,patient_id,...,diagnosis,benign_malignant,target` (also ISIC Archive CSV exports with `isic_id`) | `benign_malignant`, else `target`, else diagnosis |
| `metadata` | an id column with age/sex/site/lesion_id columns and no labels (2017, 2019 metadata) | none |
| `duplicates` | `image_name_1,image_name_2` (2020 duplicates list) | none |

Where a source states benign/malignant itself (ISIC 2016, ISIC 2020, Archive JSON), that statement is the
label; ISIC 2020's 27,124 "unknown" diagnoses are all benign by its `benign_malignant` column. A
`diagnosis_map` entry for the image's diagnosis still wins, so a recipe can exclude a diagnosis everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.data.report import Report
from dermt2im_hub.data.sources import (
    InputError,
    SourceRecord,
    clean_age,
    clean_sex,
    clean_text,
    read_csv_rows,
    rows_as_dicts,
)
from dermt2im_hub.labels import BENIGN, CLASS_NAMES, MALIGNANT, binary_label, canonical_diagnosis

ID_COLUMNS = ("image_name", "isic_id", "image_id", "image", "name")
SITE_COLUMNS = ("anatom_site_general_challenge", "anatom_site_general", "anatom_site", "localization")
AGE_COLUMNS = ("age_approx", "age_approximate", "age")
LABEL_FORMATS = ("isic2016", "isic2017", "onehot", "isic2020")
MAX_JSON_BYTES = 1 << 20  # an ISIC API record is a few hundred bytes

_BINARY_VALUES = {"benign": BENIGN, "malignant": MALIGNANT, "0": BENIGN, "1": MALIGNANT, "0.0": BENIGN,
                  "1.0": MALIGNANT}


@dataclass
class IsicTable:
    """One parsed ISIC CSV. `records` is empty for a duplicates list; `duplicates` for anything else."""

    path: Path
    format: str
    records: list[SourceRecord] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    @property
    def has_labels(self) -> bool:
        return self.format in LABEL_FORMATS

    def label_counts(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for record in self.records:
            counts[record.label] = counts.get(record.label, 0) + 1
        return counts


def _first_column(header_lower: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in header_lower:
            return header_lower[name]
    return None


def detect_format(rows: list[list[str]]) -> str:
    first = [cell.strip() for cell in rows[0]]
    lower = {cell.lower() for cell in first}
    if {"image_name_1", "image_name_2"} <= lower:
        return "duplicates"
    if {"melanoma", "seborrheic_keratosis"} <= lower:
        return "isic2017"
    if {"mel", "nv"} <= lower:
        return "onehot"
    has_id = any(name in lower for name in ID_COLUMNS)
    if has_id and lower & {"benign_malignant", "target", "diagnosis"}:
        return "isic2020"
    if has_id:
        return "metadata"
    if len(first) == 2 and first[1].lower() in _BINARY_VALUES:
        return "isic2016"
    raise InputError(f"unrecognised ISIC CSV header {first!r}: expected one of the challenge formats "
                     "(2016 headerless, 2017 part 3, 2018/2019 one-hot, 2020, metadata, duplicates)")


def _metadata_fields(row: Mapping[str, str], header_lower: dict[str, str]) -> dict[str, Any]:
    def get(names):
        column = _first_column(header_lower, names)
        return row.get(column) if column else None

    return {
        "lesion_id": clean_text(get(("lesion_id",))),
        "patient_id": clean_text(get(("patient_id",))),
        "age": clean_age(get(AGE_COLUMNS)),
        "sex": clean_sex(get(("sex",))),
        "site": clean_text(get(SITE_COLUMNS)),
    }


def stated_label(benign_malignant: Any, target: Any, diagnosis: str | None,
                 diagnosis_map: Mapping[str, str] | None) -> str | None:
    """The label a source states itself (benign_malignant, else target), unless diagnosis_map names the
    diagnosis; falls back to the diagnosis mapping (e.g. ISIC's "indeterminate/benign")."""
    if diagnosis and diagnosis_map:
        raw = diagnosis.strip().lower()
        if raw in diagnosis_map or canonical_diagnosis(raw) in diagnosis_map:
            return binary_label(diagnosis, diagnosis_map)
    for value in (benign_malignant, target):
        text = clean_text(value)
        if text and text.lower() in _BINARY_VALUES:
            return _BINARY_VALUES[text.lower()]
    return binary_label(diagnosis, diagnosis_map)


def _parse_isic2016(rows, path, diagnosis_map) -> list[SourceRecord]:
    records = []
    for row in rows:
        image_id = clean_text(row[0]) if len(row) >= 2 else None
        if image_id:
            records.append(SourceRecord(image_id, "isic", _BINARY_VALUES.get(row[1].strip().lower()),
                                        extra={"ground_truth": path.name}))
    return records


def _parse_isic2017(dict_rows, header_lower, path, diagnosis_map) -> list[SourceRecord]:
    id_col = _first_column(header_lower, ID_COLUMNS)
    mel_col, sk_col = header_lower["melanoma"], header_lower["seborrheic_keratosis"]
    records = []
    for row in dict_rows:
        melanoma, keratosis = _is_one(row.get(mel_col)), _is_one(row.get(sk_col))
        diagnosis = None if melanoma and keratosis else (
            "melanoma" if melanoma else "seborrheic keratosis" if keratosis else "nevus")
        records.append(SourceRecord(row[id_col], "isic", binary_label(diagnosis, diagnosis_map), diagnosis,
                                    extra={"ground_truth": path.name}))
    return records


def _is_one(value: Any) -> bool:
    try:
        return float(value) >= 0.5
    except (TypeError, ValueError):
        return False


def _parse_onehot(dict_rows, header, header_lower, path, diagnosis_map) -> list[SourceRecord]:
    id_col = _first_column(header_lower, ID_COLUMNS)
    class_columns = [c for c in header if c != id_col]
    records = []
    for row in dict_rows:
        hot = [c for c in class_columns if _is_one(row.get(c))]
        code = hot[0] if len(hot) == 1 else None  # no class or several: not a usable label
        records.append(SourceRecord(row[id_col], "isic", binary_label(code, diagnosis_map), canonical_diagnosis(code),
                                    extra={"ground_truth": path.name, "class_code": code}))
    return records


def _parse_isic2020(dict_rows, header_lower, path, diagnosis_map) -> list[SourceRecord]:
    id_col = _first_column(header_lower, ID_COLUMNS)
    bm_col, target_col = header_lower.get("benign_malignant"), header_lower.get("target")
    diag_col = header_lower.get("diagnosis")
    records = []
    for row in dict_rows:
        diagnosis = clean_text(row.get(diag_col)) if diag_col else None
        label = stated_label(row.get(bm_col) if bm_col else None, row.get(target_col) if target_col else None,
                             diagnosis, diagnosis_map)
        records.append(SourceRecord(row[id_col], "isic", label, canonical_diagnosis(diagnosis),
                                    **_metadata_fields(row, header_lower), extra={"ground_truth": path.name}))
    return records


def _parse_metadata(dict_rows, header_lower) -> list[SourceRecord]:
    id_col = _first_column(header_lower, ID_COLUMNS)
    return [SourceRecord(row[id_col], "isic", None, **_metadata_fields(row, header_lower)) for row in dict_rows]


def read_isic_csv(path: str | Path, diagnosis_map: Mapping[str, str] | None = None) -> IsicTable:
    """Parse any ISIC challenge CSV (format detected from its header); rows with an empty id are dropped."""
    path = Path(path)
    rows = read_csv_rows(path)
    if not rows:
        raise InputError(f"{path} is empty")
    kind = detect_format(rows)
    if kind == "isic2016":
        return IsicTable(path, kind, _parse_isic2016(rows, path, diagnosis_map))
    header, dict_rows = rows_as_dicts(rows)
    header_lower = {h.lower(): h for h in header}
    if kind == "duplicates":
        first, second = header_lower["image_name_1"], header_lower["image_name_2"]
        pairs = [(r[first], r[second]) for r in dict_rows if r.get(first) and r.get(second)]
        return IsicTable(path, kind, duplicates=pairs)
    id_col = _first_column(header_lower, ID_COLUMNS)
    dict_rows = [r for r in dict_rows if clean_text(r.get(id_col))]
    if kind == "isic2017":
        records = _parse_isic2017(dict_rows, header_lower, path, diagnosis_map)
    elif kind == "onehot":
        records = _parse_onehot(dict_rows, header, header_lower, path, diagnosis_map)
    elif kind == "isic2020":
        records = _parse_isic2020(dict_rows, header_lower, path, diagnosis_map)
    else:
        records = _parse_metadata(dict_rows, header_lower)
    return IsicTable(path, kind, records)


# ---------------------------------------------------------------- ISIC Archive JSON records


def record_from_isic_json(data: Mapping[str, Any], fallback_id: str,
                          diagnosis_map: Mapping[str, str] | None = None) -> SourceRecord:
    """An ISIC Archive API image record (v1: `name` + `meta.clinical`; v2: `isic_id` + `metadata.clinical`)."""
    meta = data.get("meta") if isinstance(data.get("meta"), Mapping) else data.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    clinical = meta.get("clinical") if isinstance(meta.get("clinical"), Mapping) else {}
    acquisition = meta.get("acquisition") if isinstance(meta.get("acquisition"), Mapping) else {}
    patient = meta.get("patient") if isinstance(meta.get("patient"), Mapping) else {}
    lesion = meta.get("lesion") if isinstance(meta.get("lesion"), Mapping) else {}
    image_id = clean_text(data.get("isic_id") or data.get("name")) or fallback_id
    diagnosis = clean_text(clinical.get("diagnosis"))
    label = stated_label(clinical.get("benign_malignant"), None, diagnosis, diagnosis_map)
    extra = {k: clinical[k] for k in ("benign_malignant", "diagnosis_confirm_type", "melanocytic") if k in clinical}
    extra.update({k: acquisition[k] for k in ("image_type", "pixelsX", "pixelsY") if k in acquisition})
    if "_id" in data:
        extra["isic_archive_id"] = data["_id"]
    return SourceRecord(
        image_id=image_id, source="isic", label=label, diagnosis=canonical_diagnosis(diagnosis),
        lesion_id=clean_text(clinical.get("lesion_id") or lesion.get("lesion_id") or data.get("lesion_id")),
        patient_id=clean_text(clinical.get("patient_id") or patient.get("patient_id") or data.get("patient_id")),
        age=clean_age(clinical.get("age_approx")), sex=clean_sex(clinical.get("sex")),
        site=clean_text(clinical.get("anatom_site_general")), extra=extra,
    )


def read_isic_json_folder(folder: str | Path, diagnosis_map: Mapping[str, str] | None = None,
                          report: Report | None = None) -> list[SourceRecord]:
    """One record per `*.json` file below `folder` (bad or oversized files are reported and skipped)."""
    folder = Path(folder)
    report = report if report is not None else Report()
    if not folder.is_dir():
        raise InputError(f"ISIC JSON folder not found: {folder}")
    records = []
    for path in sorted(p for p in folder.rglob("*.json") if p.is_file() and not p.name.startswith(".")):
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, Mapping):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            report.skip("bad_metadata", path.stem, path, str(exc))
            continue
        records.append(record_from_isic_json(data, path.stem, diagnosis_map))
    return records


def label_counts(records: list[SourceRecord]) -> dict[str, int]:
    """{benign: n, malignant: n, excluded: n} of parsed records (for reports and tests)."""
    counts = {name: 0 for name in CLASS_NAMES}
    counts["excluded"] = 0
    for record in records:
        counts[record.label if record.label in CLASS_NAMES else "excluded"] += 1
    return counts
