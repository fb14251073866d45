"""Per-image results saved batch by batch, so an interrupted `dermt2im qa` resumes where it stopped.

One JSON-lines file per side in the QA output folder (`.cache/`, hidden so manifests do not fingerprint it). Its
first line is a key: what the stored results depend on (analysis size, extractor, for the synthetic side the
training reference and the audit settings). A different key starts the file over. Each further line is one
image, found again by file name (without folder, since rejected images move), size and modification time.

Only measurements are stored, never verdicts: thresholds are applied afresh on every run, so a re-run with
other thresholds reuses everything. Training-side local features are not stored (they are large); they are
recomputed from the pixels.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np

from dermt2im_hub.utils.files import append_jsonl, read_jsonl, write_jsonl

CACHE_DIR = ".cache"


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def encode_array(array: np.ndarray | None) -> dict | None:
    if array is None:
        return None
    array = np.ascontiguousarray(array)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def decode_array(blob: dict | None) -> np.ndarray | None:
    if blob is None:
        return None
    return np.frombuffer(base64.b64decode(blob["data"]), dtype=blob["dtype"]).reshape(blob["shape"]).copy()


class ResultCache:
    """Stored per-image results of one side of one QA configuration."""

    def __init__(self, path: Path, key: dict, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.digest = key_digest(key)
        self._records: dict[str, dict] = {}
        if not enabled:
            return
        rows = read_jsonl(path)
        if rows and rows[0].get("key") == self.digest:
            self._records = {row["id"]: row for row in rows[1:] if "id" in row}
        else:
            write_jsonl(path, [{"key": self.digest, "describes": key}])

    def __len__(self) -> int:
        return len(self._records)

    def get(self, path: Path) -> dict | None:
        if not self.enabled or not path.is_file():
            return None
        return self._records.get(identity(path))

    def put(self, records: list[tuple[Path, dict]]) -> None:
        """Append one batch (fsynced): a kill after this keeps the batch."""
        if not self.enabled or not records:
            return
        rows = []
        for path, record in records:
            if path.is_file():
                row = {"id": identity(path), **record}
                self._records[row["id"]] = row
                rows.append(row)
        append_jsonl(self.path, rows)
