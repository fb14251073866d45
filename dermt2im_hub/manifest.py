"""`manifest.json`: the record every stage leaves in its output folder.

A manifest holds the stage name, the resolved config, fingerprints of the inputs, the outputs, package
versions, start/end time and host. Later stages read it to check what they consume (e.g. that a training
folder was checked against the test split), `dermt2im run` compares it to decide whether a stage is up to
date, and the model/dataset cards are rendered from it alone.

    with StageRun(out_dir, "generation", config, inputs={"base": base_dir}) as run:
        ...
        run.outputs["num_images"] = 6000
        run.extra["sampler_counts"] = {...}
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dermt2im_hub.config import config_to_dict
from dermt2im_hub.utils.files import atomic_write_json, sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1

# The packages whose versions decide results; recorded in every manifest.
TRACKED_PACKAGES = (
    "dermt2im-hub", "torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "datasets",
    "evaluate", "timm", "huggingface_hub", "safetensors", "numpy", "pillow", "opencv-python-headless",
    "scikit-learn",
)


def package_versions(packages=TRACKED_PACKAGES) -> dict[str, str | None]:
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def tree_fingerprint(folder: Path, pattern: str = "*") -> str:
    """sha256 over (relative path, size, content sha256) of every file below `folder`, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob(pattern) if p.is_file()):  # is_file: False for link loops
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:  # temp files of interrupted writes, caches
            continue
        try:
            size, content = path.stat().st_size, sha256_file(path)
        except OSError:  # vanished or unreadable since listed: the stage reading it skips it too
            continue
        # the name's own bytes: a name that is not UTF-8 (b"bad\xff.png") is hashed, not a crash
        digest.update(os.fsencode(rel) + f"\0{size}\0{content}\n".encode())
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """How an input is identified in a manifest.

    A folder written by an earlier stage is identified by its manifest's hash (cheap, and it already
    covers that folder's outputs); another folder by a hash over its files; a file by its sha256;
    anything else (a Hub id) is kept as a reference string.
    """
    if path is None:
        return None
    text = str(path)
    p = Path(path)
    if p.is_dir():
        manifest = p / MANIFEST_NAME
        if manifest.is_file():
            return {"path": str(p.resolve()), "kind": "stage_output", "sha256": sha256_file(manifest)}
        return {"path": str(p.resolve()), "kind": "folder", "sha256": tree_fingerprint(p)}
    if p.is_file():
        return {"path": str(p.resolve()), "kind": "file", "sha256": sha256_file(p)}
    return {"path": text, "kind": "reference", "sha256": None}


def config_hash(config: Any) -> str:
    data = config_to_dict(config) if config is not None else None
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def write_manifest(
    out_dir: str | os.PathLike,
    stage: str,
    config: Any = None,
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    started_at: str | None = None,
    ended_at: str | None = None,
    status: str = "complete",
    extra: dict[str, Any] | None = None,
    input_fingerprints: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir/manifest.json`. `inputs` maps a role to a path or Hub id (fingerprinted here
    unless `input_fingerprints` already holds them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = input_fingerprints if input_fingerprints is not None else {
        role: fingerprint(value) for role, value in (inputs or {}).items()
    }
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "stage": stage,
        "status": status,
        "config": config_to_dict(config) if config is not None else None,
        "config_sha256": config_hash(config),
        "inputs": fingerprints,
        "outputs": outputs or {},
        "extra": extra or {},
        "versions": package_versions(),
        "started_at": started_at,
        "ended_at": ended_at or _now(),
        # no host name: manifests are pushed with their folders, and a clinic's machine names are not for the Hub
        "host": {"platform": platform.platform(), "python": platform.python_version()},
    }
    return atomic_write_json(out_dir / MANIFEST_NAME, manifest)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_NAME}: it was not written by a dermt2im stage "
                                "(or the stage did not finish)")
    return json.loads(path.read_text(encoding="utf-8"))


def try_read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return read_manifest(folder)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class StageRun:
    """Context manager that times a stage and writes its manifest at the end.

    On an exception the manifest is written with status "interrupted" (or "failed") so a later run
    knows the folder is incomplete and resumes it; the exception still propagates.
    """

    def __init__(self, out_dir, stage: str, config: Any = None, inputs: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.config = config
        self.inputs = inputs or {}
        self.outputs: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.started_at = _now()
        self._t0 = 0.0
        self._fingerprints: dict[str, Any] = {}

    def __enter__(self) -> StageRun:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        # fingerprint inputs before the stage runs, so an input changed mid-run is not mis-recorded
        self._fingerprints = {role: fingerprint(value) for role, value in self.inputs.items()}
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "complete"
        if exc_type is KeyboardInterrupt:
            status = "interrupted"
        elif exc_type is not None:
            status = "failed"
        self.extra.setdefault("elapsed_seconds", round(time.perf_counter() - self._t0, 3))
        write_manifest(self.out_dir, self.stage, self.config, outputs=self.outputs, started_at=self.started_at,
                       status=status, extra=self.extra, input_fingerprints=self._fingerprints)
        return False
