"""The one output-folder guard every stage calls before it writes anything.

A stage may write into a folder that is empty or missing, or that the same stage wrote earlier from the same
inputs (to resume or redo it). Anything else - another stage's output, a base model folder, a folder of the
user's own files, an earlier run of the same stage over other inputs (whose images it would replace or delete)
- is refused unless the user says `--overwrite`. A folder that is one of the stage's inputs, holds one, or lies
inside one is refused even then (writing there would change the inputs while they are read).

The guard leaves a small claim file (`.dermt2im-output.json`: stage and a hash of the inputs, no paths) before
the stage writes, so a folder killed before its manifest was written is still recognised as the stage's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dermt2im_hub.config import ConfigError
from dermt2im_hub.utils.files import atomic_write_json

CLAIM_NAME = ".dermt2im-output.json"
_MANIFEST_NAME = "manifest.json"


class OutputFolderError(ConfigError):
    """The output folder holds something the stage must not replace; the message says what to do."""


def _identity(value: Any) -> Any:
    """How an input is compared between runs: a local path by its resolved location, anything else (a Hub id)
    as written."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_identity(item) for item in value]
    path = Path(os.fsdecode(value)) if isinstance(value, (str, os.PathLike)) else None
    if path is not None and _exists(path):
        return str(path.resolve())
    return str(value)


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    identities = {role: _identity(value) for role, value in sorted(inputs.items())}
    return hashlib.sha256(json.dumps(identities, sort_keys=True).encode()).hexdigest()


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to be a path: a Hub id or text, not a local input
        return False


def _local_paths(inputs: Mapping[str, Any]) -> Iterable[tuple[str, Path]]:
    for role, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, (str, os.PathLike)) and _exists(Path(item)):
                yield role, Path(item).resolve()


def _check_overlap(out: Path, inputs: Mapping[str, Any], inside_ok: Iterable[str]) -> None:
    target = out.resolve()
    inside_ok = set(inside_ok)
    for role, path in _local_paths(inputs):
        if target == path:
            owner = (_read_json(path / _MANIFEST_NAME) or {}).get("stage") if path.is_dir() else None
            what = f" (the output of stage {owner!r})" if owner else ""
            raise OutputFolderError(f"the output folder {out} is the {role} input{what}: write to a separate folder")
        if path.is_relative_to(target):
            raise OutputFolderError(f"the output folder {out} contains the {role} input {path}: write to a "
                                    "separate folder (the stage would write among, or delete, its own inputs)")
        if path.is_dir() and target.is_relative_to(path) and role not in inside_ok:
            raise OutputFolderError(f"the output folder {out} lies inside the input folder {path} ({role}): write "
                                    "to a separate folder")


def _is_claim(name: str) -> bool:
    # the claim, or another process's claim being written (the ranks of one launch all check at start)
    return name == CLAIM_NAME or name.startswith(f".{CLAIM_NAME}.")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _legacy_match(out: Path, stage: str, inputs: Mapping[str, Any]) -> bool:
    """A folder of this stage written before claim files existed: its manifest names the same stage and, for
    every input role both record, the same local path."""
    manifest = _read_json(out / _MANIFEST_NAME)
    if not manifest or manifest.get("stage") != stage:
        return False
    recorded = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
    for role, value in inputs.items():
        entry = recorded.get(role)
        if isinstance(entry, dict) and entry.get("kind") != "reference" and entry.get("path") and value is not None:
            if entry["path"] != _identity(value):
                return False
    return True


def _describe(out: Path, stage: str) -> str:
    claim = _read_json(out / CLAIM_NAME) or {}
    manifest = _read_json(out / _MANIFEST_NAME) or {}
    owner = manifest.get("stage") or claim.get("stage")
    if owner == stage:
        return f"an earlier {stage} output made from other inputs"
    if owner:
        return f"the output of stage {owner!r}"
    if (out / "model_index.json").is_file():
        return "a diffusers model"
    return "files no dermt2im stage wrote there"


def claim_output_folder(out: str | os.PathLike, stage: str, inputs: Mapping[str, Any] | None = None, *,
                        overwrite: bool = False, reads: Mapping[str, Any] | None = None,
                        inside_ok: Iterable[str] = (), claim: bool = True) -> Path:
    """Check that `stage` may write into `out` (see the module docs), then claim it; returns the folder.

    `inputs` maps a role to what the stage reads and what makes a re-run "the same" (paths or Hub ids; a list
    for several); `reads` adds what it reads without deciding that (e.g. a base model that may be spelled as a
    Hub id or a folder): both must not overlap the output. `inside_ok` names the roles whose folder may hold the
    output (qa's default GENERATED/qa). `claim=False` only checks (a stage with more checks to pass first
    claims later with `write_claim`, so a refused run leaves no folder behind)."""
    out = Path(out)
    inputs = dict(inputs or {})
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"the output {out} is a file: a file is where a folder is expected (give a folder)")
    _check_overlap(out, {**dict(reads or {}), **inputs}, inside_ok)
    digest = inputs_digest(inputs)
    if out.is_dir() and any(not _is_claim(entry.name) for entry in out.iterdir()) and not overwrite:
        claim = _read_json(out / CLAIM_NAME)
        manifest_stage = (_read_json(out / _MANIFEST_NAME) or {}).get("stage")
        if claim:
            own = claim.get("stage") == stage and claim.get("inputs_sha256") == digest and manifest_stage in (
                None, stage)
        else:
            own = _legacy_match(out, stage, inputs)
        if not own:
            raise OutputFolderError(
                f"the output folder {out} holds {_describe(out, stage)}; {stage} writes only into an empty folder or one "
                "it wrote itself from the same inputs. Choose another folder, or pass --overwrite to let it "
                "replace (and delete) what is there.")
    if claim:
        write_claim(out, stage, inputs)
    return out


def write_claim(out: str | os.PathLike, stage: str, inputs: Mapping[str, Any] | None = None) -> Path:
    """Mark `out` as `stage`'s output from `inputs` (after `claim_output_folder(..., claim=False)` passed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CLAIM_NAME, {"stage": stage, "inputs_sha256": inputs_digest(dict(inputs or {}))})
    return out


@contextlib.contextmanager
def claimed_output_folder(out: str | os.PathLike, stage: str, inputs: Mapping[str, Any] | None = None,
                          **kwargs: Any) -> Iterator[Path]:
    """`claim_output_folder` for the duration of a stage: when the stage fails before writing anything, the
    claim (and the folder, when the guard created it) is taken back, so a refused run leaves nothing behind."""
    out = Path(out)
    existed = out.exists()
    claim_output_folder(out, stage, inputs, **kwargs)
    try:
        yield out
    except BaseException:
        with contextlib.suppress(OSError):
            if all(_is_claim(entry.name) for entry in out.iterdir()):
                (out / CLAIM_NAME).unlink(missing_ok=True)
                if not existed:
                    out.rmdir()
        raise


def add_overwrite_flag(parser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an output folder that holds something else (another stage's output, an "
                             "earlier run over other inputs, other files), replacing or deleting what is there")
