"""Columns and `datasets` features of each builder config: the one place that says what a row holds.

Every config shares the core columns (image, label, file_name, source, sha256, width, height, prompt, extra).
`synthetic` and `a1111` add the generation columns, so the two concatenate; `synthetic` adds the QA columns
(always present, null until `dermt2im qa` has run, plus any further `qa_*`/`mem_*` scores the QA stage
wrote, without `mem_nearest_id` unless asked for); `real` adds the data stage's identifiers. `extra` is a JSON
object string holding whatever the source had that no column names (unknown infotext keys, adapter details),
so nothing is dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from dermt2im_hub.dataset.config import A1111, REAL, SYNTHETIC
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.records import TRAINING_REFERENCE_KEYS

MAX_TEXT_CHARS = 8192  # prompts and other free text from untrusted files are cut here
MAX_LIST_ITEMS = 256

# Column kinds: how a raw value is cleaned before `datasets` encodes it.
STRING, INT32, INT64, FLOAT32, FLOAT64, BOOL, STRING_LIST = (
    "string", "int32", "int64", "float32", "float64", "bool", "string_list")

CORE_COLUMNS: dict[str, str] = {
    "file_name": STRING, "source": STRING, "sha256": STRING, "width": INT32, "height": INT32, "prompt": STRING,
}
GENERATION_COLUMNS: dict[str, str] = {
    "negative_prompt": STRING, "sampler": STRING, "steps": INT32, "cfg_scale": FLOAT32, "seed": INT64,
    "model": STRING, "model_hash": STRING, "adapter": STRING, "transformations": STRING_LIST,
    "face_restoration": STRING, "version": STRING, "infotext": STRING,
}
QA_CORE_COLUMNS: dict[str, str] = {
    "qa_passed": BOOL, "qa_reasons": STRING_LIST, "mem_flagged": BOOL, "ita": FLOAT64, "ita_category": STRING,
}
REAL_COLUMNS: dict[str, str] = {
    "image_id": STRING, "diagnosis": STRING, "lesion_id": STRING, "patient_id": STRING, "age": FLOAT32,
    "sex": STRING, "site": STRING,
}
QA_PREFIXES = ("qa_", "mem_", "ita")
_MAX_QA_COLUMNS = 64
_COLUMN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def is_qa_key(key: str) -> bool:
    return key.startswith(QA_PREFIXES)


def _kind_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return FLOAT64
    if isinstance(value, str):
        return STRING
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return STRING_LIST
    return STRING  # anything else is kept as JSON text


def discover_qa_columns(rows: Iterable[Mapping[str, Any]], include_training_references: bool = False
                        ) -> dict[str, str]:
    """QA columns for a synthetic folder: the core ones plus every further `qa_*`/`mem_*`/`ita*` key the rows
    carry, typed from their values (mixed types fall back to text), except TRAINING_REFERENCE_KEYS unless
    `include_training_references`. Names are sorted for a stable schema."""
    seen: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.items():
            if key in QA_CORE_COLUMNS or not is_qa_key(key) or not _safe_column_name(key):
                continue
            if key in TRAINING_REFERENCE_KEYS and not include_training_references:
                continue
            kinds = seen.setdefault(key, set())
            if (kind := _kind_of(value)) is not None:
                kinds.add(kind)
    columns = dict(QA_CORE_COLUMNS)
    for key in sorted(seen)[:_MAX_QA_COLUMNS]:
        kinds = seen[key]
        columns[key] = kinds.pop() if len(kinds) == 1 else STRING
    return columns


def _safe_column_name(key: str) -> bool:
    return 0 < len(key) <= 64 and set(key) <= _COLUMN_NAME_CHARS


def columns_for(config_name: str, qa_columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """Column name -> kind for a config (without `image` and `label`, which every config has first)."""
    columns = dict(CORE_COLUMNS)
    if config_name in (SYNTHETIC, A1111):
        columns.update(GENERATION_COLUMNS)
    if config_name == SYNTHETIC:
        columns.update(qa_columns if qa_columns is not None else QA_CORE_COLUMNS)
    if config_name == REAL:
        columns.update(REAL_COLUMNS)
    columns["extra"] = STRING
    return columns


def features_for(config_name: str, qa_columns: Mapping[str, str] | None = None):
    """The `datasets.Features` of a config: Image + ClassLabel(benign, malignant) + typed metadata."""
    import datasets

    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))}
    for name, kind in columns_for(config_name, qa_columns).items():
        features[name] = datasets.List(datasets.Value("string")) if kind == STRING_LIST else datasets.Value(kind)
    return datasets.Features(features)


def clean_text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text.replace("\x00", "")[:limit]


def _clean_int(value: Any, bits: int) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or not number.is_integer() or abs(number) >= 2 ** (bits - 1):
        return None
    return int(number)


def _clean_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _clean_bool(value: Any) -> bool | None:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _clean_list(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [clean_text(v, 512) for v in value[:MAX_LIST_ITEMS] if v is not None]


_CLEANERS = {
    STRING: clean_text, INT32: lambda v: _clean_int(v, 32), INT64: lambda v: _clean_int(v, 64),
    FLOAT32: _clean_float, FLOAT64: _clean_float, BOOL: _clean_bool, STRING_LIST: _clean_list,
}


def clean_row(values: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """One row with exactly `columns`, each value cleaned for its kind (missing -> null, [] for lists)."""
    return {name: _CLEANERS[kind](values.get(name)) for name, kind in columns.items()}


def extra_json(values: Mapping[str, Any]) -> str | None:
    """Leftover source fields as one JSON object string (sorted keys, so identical input gives identical text)."""
    kept = {str(k)[:128]: v for k, v in values.items() if v is not None}
    if not kept:
        return None
    return clean_text(json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str), 65536)
