"""Inputs that are a local path or a Hub repo: later stages accept either, with a revision.

    resolve_folder("outputs/lora")                                  # a local folder, as is
    resolve_folder("my-org/dermt2im-lora", revision="v1")           # snapshot_download into the HF cache
    resolve_folder("my-org/dermt2im@v1", repo_type="dataset")       # `@revision` works in config strings
    resolve_file("my-org/dermt2im-lora", "pytorch_lora_weights.safetensors")

An existing local path always wins over a Hub id of the same spelling. Downloads go through
huggingface_hub's cache and honour HF_ENDPOINT / HF_HUB_OFFLINE, so the same call works against the Hub,
a mirror, the local test server or an already-filled offline cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
# `org/name` in the Hub's characters; the Hub also forbids `..`, which keeps an id from walking up a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubInputError(FileNotFoundError):
    """An input that is neither an existing local path nor a reachable Hub repo/file."""


def split_revision(id_or_path: str, revision: str | None = None) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); an explicit `revision` must agree with the suffix."""
    if "@" not in id_or_path:
        return id_or_path, revision
    repo_id, _, suffix = id_or_path.rpartition("@")
    if revision is not None and revision != suffix:
        raise HubInputError(f"{id_or_path!r} names revision {suffix!r} but revision={revision!r} was passed")
    return repo_id, suffix


def is_hub_id(value: object) -> bool:
    """Whether `value` has the shape of a Hub repo id, `org/name` (the one check every stage uses)."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and ".." not in value


def hub_id_problem(value: object, what: str = "repo id") -> str | None:
    """Why `value` is not a valid Hub repo id ORG/NAME (our shape check plus huggingface_hub's own rules,
    which also forbid `--`, a trailing `.git` and over-long names), or None when it is one."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not is_hub_id(value):
        return f"{what} must look like ORG/NAME (letters, digits, '-', '_', '.'), got {value!r}"
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        return f"{what} {value!r} is not a valid Hub repo id: {error}"
    return None


def require_hub_id(value: object, what: str = "repo id") -> str:
    """`value` if it is a valid Hub repo id, else HubInputError saying why."""
    problem = hub_id_problem(value, what)
    if problem:
        raise HubInputError(problem)
    return value


def is_remote_hub_id(value: object) -> bool:
    """A Hub id that is not also an existing local path (which would win): only such ids may be shown as Hub
    references, e.g. in card front matter (the Hub validates them)."""
    return is_hub_id(value) and not os.path.exists(value)


def _hub_reference(id_or_path: str | os.PathLike, revision: str | None, repo_type: str):
    """(None, None) for an existing local path, else the (repo_id, revision) to download."""
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {', '.join(REPO_TYPES)}, got {repo_type!r}")
    if Path(id_or_path).exists():
        return None, None
    repo_id, revision = split_revision(str(id_or_path), revision)
    if not is_hub_id(repo_id):
        raise HubInputError(f"{id_or_path} is not an existing local path, and not a Hub id (ORG/NAME)")
    return repo_id, revision


def _explain(error: Exception, what: str) -> HubInputError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # LocalEntryNotFoundError subclasses EntryNotFoundError: test it first
    if isinstance(error, LocalEntryNotFoundError):
        reason = "it is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE, network)"
    elif isinstance(error, RevisionNotFoundError):
        reason = "the revision does not exist"
    elif isinstance(error, RepositoryNotFoundError):
        reason = "the repo does not exist or is private (log in with `hf auth login` or set HF_TOKEN)"
    elif isinstance(error, EntryNotFoundError):
        reason = "the file is not in the repo"
    else:
        reason = type(error).__name__
    return HubInputError(f"cannot get {what}: {reason}")


def resolve_folder(id_or_path: str | os.PathLike, repo_type: str = "model", revision: str | None = None,
                   allow_patterns: list[str] | str | None = None) -> Path:
    """A local folder as is, or a Hub repo downloaded with `snapshot_download` (cached) at `revision`."""
    repo_id, revision = _hub_reference(id_or_path, revision, repo_type)
    if repo_id is None:
        path = Path(id_or_path)
        if not path.is_dir():
            raise HubInputError(f"{path} is a file, not a folder")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                      allow_patterns=allow_patterns))
    except (HfHubHTTPError, EntryNotFoundError) as error:
        raise _explain(error, f"{repo_type} repo {repo_id} at revision {revision or 'main'}") from error


def resolve_file(id_or_path: str | os.PathLike, filename: str, repo_type: str = "model",
                 revision: str | None = None) -> Path:
    """`filename` inside a local folder, or downloaded from a Hub repo with `hf_hub_download` (cached)."""
    repo_id, revision = _hub_reference(id_or_path, revision, repo_type)
    if repo_id is None:
        path = Path(id_or_path) / filename
        if not path.is_file():
            raise HubInputError(f"{filename} not found in {id_or_path}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision))
    except (HfHubHTTPError, EntryNotFoundError) as error:
        raise _explain(error, f"{filename} from {repo_type} repo {repo_id} at revision {revision or 'main'}") from error
