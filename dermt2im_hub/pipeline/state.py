"""Which stages of a run are up to date.

A stage's *key* is a hash of its resolved config and of the manifests of the folders it reads. After a stage
finishes, `OUT/pipeline_state.json` records its key and the hash of the manifest it wrote. On the next run the
stage is skipped when both still match (and its manifest says "complete"). An upstream stage that re-runs writes
a new manifest, so every stage after it gets a new key and re-runs too; stages before it are untouched.

When a stage must re-run because its key changed, its old folder is moved aside to `NAME.previous` (one
generation kept), so a changed config never resumes into outputs made with another one. When the key is the
same but the last attempt did not finish (Ctrl-C, a crash), the folder is kept and the stage resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from dermt2im_hub.config import config_to_dict
from dermt2im_hub.manifest import MANIFEST_NAME, try_read_manifest
from dermt2im_hub.utils.files import atomic_write_json, sha256_file

STATE_NAME = "pipeline_state.json"


def manifest_sha256(folder: Path) -> str | None:
    path = Path(folder) / MANIFEST_NAME
    return sha256_file(path) if path.is_file() else None


def stage_key(config: Any, input_folders: list[Path], extra: Any = None) -> str:
    """Hash of the stage's resolved config, the manifests of its inputs and anything else it depends on."""
    inputs = [manifest_sha256(p) or f"missing:{p}" for p in input_folders]
    payload = {"config": config_to_dict(config), "inputs": inputs, "extra": extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class PipelineState:
    def __init__(self, root: Path):
        self.path = Path(root) / STATE_NAME
        self.data: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8")).get("stages", {})
            except json.JSONDecodeError:
                self.data = {}

    def is_up_to_date(self, name: str, key: str, folder: Path) -> bool:
        record = self.data.get(name)
        if not record or record.get("key") != key:
            return False
        manifest = try_read_manifest(folder)
        if not manifest or manifest.get("status") != "complete":
            return False
        return record.get("manifest_sha256") == manifest_sha256(folder)

    def prepare(self, name: str, key: str, folder: Path) -> None:
        """Before running: keep a folder to resume (same key), else move the stale one aside."""
        record = self.data.get(name)
        folder = Path(folder)
        if folder.exists() and (not record or record.get("key") != key):
            previous = folder.with_name(folder.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
        self.data[name] = {"key": key, "manifest_sha256": None, "status": "running"}
        self._save()

    def finish(self, name: str, key: str, folder: Path) -> None:
        self.data[name] = {"key": key, "manifest_sha256": manifest_sha256(folder), "status": "complete"}
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, {"stages": self.data})
