"""Push an output folder to the Hub: private by default, safetensors only, no training debris.

    info = push_folder("outputs/lora", "my-org/dermt2im-lora")   # -> huggingface_hub CommitInfo
    print(info.commit_url)

This wraps `HfApi.create_repo` + `HfApi.repo_info` + `HfApi.upload_folder`; it only adds the policy:
- the repo is created private unless `private=False` (an existing repo keeps its visibility), and a private
  push into an existing public repo is refused;
- JSON, JSONL and YAML files go up as a redacted view: every absolute local path in them becomes
  `<local>/LASTPART` (dermt2im_hub.hub.redact); the local files keep their full provenance;
- checkpoints, optimizer/scheduler states, caches, logs, TensorBoard events and temp files are not uploaded;
- pickle-based weight files (.bin/.pt/.pth/.pkl/.pickle/.ckpt) are refused before anything is sent;
- transient HTTP errors (5xx, 429, dropped connections, timeouts) are retried with exponential backoff;
- the token is whatever huggingface_hub finds (HF_TOKEN or the cached `hf auth login`); this module never
  reads, prints, logs or writes it;
- the local folder is only read, so a failed push leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from dermt2im_hub.hub.cards import CARD_NAME
from dermt2im_hub.hub.redact import needs_redaction, redact_file
from dermt2im_hub.hub.resolve import HubInputError, require_hub_id
from dermt2im_hub.utils.files import is_pickle_weight

logger = logging.getLogger(__name__)

T = TypeVar("T")

REPO_TYPES = ("model", "dataset")

# fnmatch patterns on repo-relative paths (`*` also crosses `/`), as upload_folder applies them.
IGNORE_PATTERNS = [
    # intermediate training checkpoints (accelerate save_state folders) and their optimizer/scheduler states
    "checkpoints/*", "*/checkpoints/*", "checkpoint-*", "*/checkpoint-*",
    "optimizer*.pt", "*/optimizer*.pt", "optimizer*.bin", "*/optimizer*.bin",
    "scheduler*.pt", "*/scheduler*.pt", "scheduler*.bin", "*/scheduler*.bin",
    "scaler*.pt", "*/scaler*.pt", "random_states*.pkl", "*/random_states*.pkl",
    "training_state*", "*/training_state*",
    # caches
    ".cache/*", "*/.cache/*", "__pycache__/*", "*/__pycache__/*", "*.pyc", ".ipynb_checkpoints/*",
    "*/.ipynb_checkpoints/*", ".DS_Store", "*/.DS_Store",
    # logs and experiment trackers
    "*.log", "logs/*", "*/logs/*", "runs/*", "*/runs/*", "wandb/*", "*/wandb/*", "*events.out.tfevents.*",
    # leftovers of interrupted atomic writes (dermt2im_hub.utils.files)
    "*.tmp", ".*.tmp", "*/.*.tmp",
    # resume journals and state of long jobs (the data stage's .preprocess-journal.jsonl names every source
    # file; generation keeps per-rank rows and its plan state in .generate/)
    ".*journal*", "*/.*journal*", ".generate/*", "*/.generate/*",
    # the output-folder guard's claim (dermt2im_hub.utils.output_folder)
    ".dermt2im-output.json", "*/.dermt2im-output.json",
]

# Stages whose output folder holds real (patient-derived) dermoscopy images, and which images: `dermt2im push`
# wants --allow-real-images for them. A build_dataset folder built with the `real` config holds them too.
REAL_IMAGE_STAGES = {
    "preprocess": "the preprocessed real dermoscopy images (ISIC, HAM10000 or a clinic folder)",
    "qa": "crops of real training images next to their closest synthetic images (closest_pairs/)",
}

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class PushError(RuntimeError):
    """A push that cannot or should not happen; the message says why and what to do."""


class UnsafeWeightsError(PushError):
    """The folder holds pickle-based weight files, which are never published."""


# ---------------------------------------------------------------------------------------------- what is uploaded


def files_to_upload(folder: str | os.PathLike, ignore_patterns: list[str] | None = None) -> list[str]:
    """Repo-relative paths upload_folder would send, with the same pattern matching it uses."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    patterns = list(IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns) + list(DEFAULT_IGNORE_PATTERNS)
    return list(filter_repo_objects(paths, ignore_patterns=patterns))


def real_image_content(manifest: dict | None) -> str | None:
    """What real patient-derived images a stage folder holds (from its manifest), or None when it holds none."""
    if not isinstance(manifest, dict):
        return None
    stage = manifest.get("stage")
    if stage in ("preprocess", "build_dataset") and _phantoms_only(manifest):
        return None  # procedural phantoms (the demo's inputs): no patient behind them
    if stage in REAL_IMAGE_STAGES:
        return REAL_IMAGE_STAGES[stage]
    if stage == "build_dataset":
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        extra = manifest.get("extra") if isinstance(manifest.get("extra"), dict) else {}
        card = extra.get("card") if isinstance(extra.get("card"), dict) else {}
        if "real" in (config.get("config_name"), card.get("builder_config")):
            return "a dataset of real dermoscopy images (the `real` config)"
    return None


def _phantoms_only(manifest: dict, depth: int = 3) -> bool:
    """Whether a preprocess or dataset folder was made from `dermt2im make-phantoms` images alone, following
    the recorded input folders (preprocess: config.images; a dataset: its inputs). Anything that cannot be
    followed counts as real."""
    from dermt2im_hub.manifest import try_read_manifest

    stage = manifest.get("stage")
    if stage == "phantoms":
        return True
    if depth == 0 or stage not in ("preprocess", "build_dataset"):
        return False
    if stage == "preprocess":
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        sources = [config.get("images")]
    else:
        inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
        sources = [item.get("path") for item in inputs.values() if isinstance(item, dict)]
    if not sources or not all(isinstance(path, str) and path for path in sources):
        return False
    return all(_phantoms_only(try_read_manifest(path) or {}, depth - 1) for path in sources)


def pickle_weight_files(paths: list[str]) -> list[str]:
    return [p for p in paths if is_pickle_weight(p)]


def check_folder(folder: str | os.PathLike) -> list[str]:
    """The files a push would upload; raises PushError / UnsafeWeightsError when it must not happen."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder")
    paths = files_to_upload(folder)
    if not paths:
        raise PushError(f"{folder} has no file to upload (it is empty or every file matches an ignore pattern)")
    unsafe = pickle_weight_files(paths)
    if unsafe:
        listed = ", ".join(unsafe[:10]) + (f" and {len(unsafe) - 10} more" if len(unsafe) > 10 else "")
        raise UnsafeWeightsError(
            f"refusing to push {folder}: it holds pickle-based weight file(s) {listed}. Pickle files run code "
            "when loaded; convert them to .safetensors (safetensors.torch.save_file) and remove the originals.")
    if CARD_NAME not in paths:
        logger.warning("%s has no %s: the Hub repo will have no card (run `dermt2im card %s` first)",
                       folder, CARD_NAME, folder)
    return paths


# ---------------------------------------------------------------------------------------------- retries


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: server-side 5xx, rate limits, dropped connections and timeouts."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):  # a ConnectionError subclass, but final: HF_HUB_OFFLINE is set
        return False
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        return status in TRANSIENT_STATUS or (status is not None and 500 <= status < 600)
    return isinstance(error, (httpx.TransportError, ConnectionError, TimeoutError))


def with_retries(call: Callable[[], T], what: str, attempts: int = 5, backoff_seconds: float = 2.0,
                 sleep: Callable[[float], Any] = time.sleep) -> T:
    """`call()`, retried on transient errors with exponential backoff (2, 4, 8 ... seconds)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:
            if attempt == attempts or not is_transient(error):
                raise
            delay = backoff_seconds * 2 ** (attempt - 1)
            # the error's class only: messages can quote request details
            logger.warning("%s failed with a transient %s (attempt %d of %d); retrying in %.0f s",
                           what, type(error).__name__, attempt, attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- redacted view


def redacted_files(folder: str | os.PathLike, paths: list[str]) -> dict[str, bytes]:
    """The published bytes of each file in `paths` whose local paths are redacted (only those that change)."""
    folder = Path(folder)
    out = {}
    for path in paths:
        new = redact_file(path, (folder / path).read_bytes()) if needs_redaction(path) else None
        if new is not None:
            out[path] = new
    return out


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, paths: list[str]) -> Iterator[tuple[Path, list[str]]]:
    """A temporary folder holding what a push publishes: redacted copies of the files whose local paths must
    not go up, links to every other file in `paths` (a copy where links cannot be made). Yields the folder and
    the redacted paths; the local folder is only read."""
    folder = Path(folder).absolute()
    redacted = redacted_files(folder, paths)
    with tempfile.TemporaryDirectory(prefix="dermt2im-push-") as tmp:
        staging = Path(tmp) / "upload"
        for path in paths:
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if path in redacted:
                target.write_bytes(redacted[path])
            else:
                _link_or_copy(folder / path, target)
        yield staging, sorted(redacted)


def _link_or_copy(source: Path, target: Path) -> None:
    for link in (os.symlink, os.link):
        try:
            link(source, target)
            return
        except OSError:
            continue
    shutil.copy2(source, target)


# ---------------------------------------------------------------------------------------------- push


def check_visibility(api, repo_id: str, repo_type: str, private: bool, **retry) -> None:
    """Refuse a private push into a repo that exists and is public (create_repo(exist_ok=True) keeps an
    existing repo's visibility, so asking for private is not enough)."""
    if not private:
        return
    info = with_retries(lambda: api.repo_info(repo_id, repo_type=repo_type), "repo_info", **retry)
    visibility = getattr(info, "private", None)
    if visibility is True:
        return
    state = "is public" if visibility is False else "does not say whether it is private"
    raise PushError(f"refusing to push to {repo_type} repo {repo_id}: this push is private but the repo already "
                    f"exists and {state}; push with --public (private=False) to publish into it, or choose "
                    "another repo id")


def push_folder(folder: str | os.PathLike, repo_id: str, repo_type: str = "model", private: bool = True,
                revision: str | None = None, commit_message: str | None = None, api=None, *,
                attempts: int = 5, backoff_seconds: float = 2.0, sleep: Callable[[float], Any] = time.sleep):
    """Create `repo_id` (private unless `private=False`) and upload `folder` to it; returns the CommitInfo
    (its `.commit_url` says where the commit is). `revision` is a branch, created from main when missing."""
    if repo_type not in REPO_TYPES:
        raise PushError(f"repo_type must be one of {', '.join(REPO_TYPES)}, got {repo_type!r}")
    try:
        require_hub_id(repo_id)
    except HubInputError as error:
        raise PushError(str(error)) from None
    folder = Path(folder)
    paths = check_folder(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()  # token: HF_TOKEN or the cached login, resolved inside huggingface_hub
    message = commit_message or f"Upload {folder.name} with dermt2im-hub"
    retry = {"attempts": attempts, "backoff_seconds": backoff_seconds, "sleep": sleep}

    # the redacted view is made before the first request, so a file that cannot be read sends nothing
    with staged_folder(folder, paths) as (staging, redacted):
        repo_url = with_retries(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private,
                                                        exist_ok=True), "create_repo", **retry)
        check_visibility(api, repo_id, repo_type, private, **retry)
        if revision and revision != "main":
            with_retries(lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                         "create_branch", **retry)
        logger.info("uploading %d files from %s to %s (%s); local paths redacted in %d", len(paths), folder,
                    repo_url, repo_type, len(redacted))
        return with_retries(lambda: api.upload_folder(
            repo_id=repo_id, folder_path=str(staging), repo_type=repo_type, revision=revision,
            commit_message=message, ignore_patterns=list(IGNORE_PATTERNS),  # fresh list: upload_folder extends it
        ), "upload_folder", **retry)
