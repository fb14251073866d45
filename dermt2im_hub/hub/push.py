"""Push an output folder to the Hub: private by default, safetensors only, no training debris.

    info = push_folder("outputs/lora", "my-org/dermt2im-lora")   # -> huggingface_hub CommitInfo
    print(info.commit_url)

This wraps `HfApi.create_repo` + `HfApi.repo_info` + `HfApi.upload_folder` (+ `HfApi.hf_hub_download` of the
repo's card when a built dataset goes up as one config of a repo that may hold several: hub.configs). What may go up is decided by the
publishing gate (dermt2im_hub.hub.gate: stage rules, memorized rows, real images, outward symlinks, pickle
weights, the card rendered for the target repo); this module adds the mechanics:
- the repo is created private unless `private=False` (an existing repo keeps its visibility), and a private
  push into an existing public repo is refused;
- JSON, JSONL and YAML files go up as a redacted view: every absolute local path in them becomes
  `<local>/LASTPART` (dermt2im_hub.hub.redact); the local files keep their full provenance;
- checkpoints, optimizer/scheduler states, caches, logs, TensorBoard events and temp files are not uploaded;
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
from dermt2im_hub.hub.gate import (
    IGNORE_PATTERNS,
    REAL_IMAGE_STAGES,
    REPO_TYPES,
    Permissions,
    PushError,
    PushPlan,
    UnsafeWeightsError,
    card_for_repo,
    files_to_upload,
    real_image_content,
    review,
)
from dermt2im_hub.hub.redact import needs_redaction, redact_file

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["IGNORE_PATTERNS", "REAL_IMAGE_STAGES", "REPO_TYPES", "PushError", "UnsafeWeightsError",
           "files_to_upload", "push_folder", "real_image_content", "redacted_files", "staged_folder",
           "with_retries"]

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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


def published_bytes(plan: PushPlan) -> dict[str, bytes]:
    """The files whose published bytes differ from the local ones: the card rendered for the target repo and
    the redacted copies of files naming local paths."""
    own = [p for p in plan.files if not (p == CARD_NAME and plan.card is not None)]
    out = redacted_files(plan.folder, own)
    if plan.card is not None:
        card = plan.card.encode("utf-8")
        out[CARD_NAME] = redact_file(CARD_NAME, card) or card
    return out


@contextlib.contextmanager
def staged_folder(plan: PushPlan) -> Iterator[tuple[Path, list[str]]]:
    """A temporary folder holding what a push publishes: the card for the target repo, redacted copies of the
    files whose local paths must not go up, links to every other file of the plan (a copy where links cannot
    be made). Yields the folder and the rewritten paths; the local folder is only read."""
    folder = Path(plan.folder).absolute()
    rewritten = published_bytes(plan)
    with tempfile.TemporaryDirectory(prefix="dermt2im-push-") as tmp:
        staging = Path(tmp) / "upload"
        for path in plan.files:
            target = staging / plan.repo_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path in rewritten:
                target.write_bytes(rewritten[path])
            else:  # the file itself (a link inside the folder: the file it was checked to reach)
                _link_or_copy(Path(os.path.realpath(folder / path)), target)
        yield staging, sorted(rewritten)


def remote_card(api, repo_id: str, repo_type: str, revision: str | None) -> str | None:
    """The README.md a repo holds now, or None when it has none (or the repo or branch is new)."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(repo_id=repo_id, filename=CARD_NAME, repo_type=repo_type, revision=revision)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return Path(path).read_text(encoding="utf-8")


def merge_repo_card(api, plan: PushPlan, staging: Path, revision: str | None, **retry) -> None:
    """A built dataset's card as it goes up: merged with the repo's current card (gate.card_for_repo) and
    written, redacted like every published card, into the staged upload."""
    existing = with_retries(lambda: remote_card(api, plan.repo_id, plan.repo_type, revision),
                            "hf_hub_download README.md", **retry)
    plan.card = card_for_repo(plan, existing)
    card = plan.card.encode("utf-8")
    (staging / CARD_NAME).write_bytes(redact_file(CARD_NAME, card) or card)


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


def push_folder(folder: str | os.PathLike, repo_id: str, repo_type: str | None = None, private: bool = True,
                revision: str | None = None, commit_message: str | None = None, api=None, *,
                allow_memorized: bool = False, allow_real_images: bool = False,
                attempts: int = 5, backoff_seconds: float = 2.0, sleep: Callable[[float], Any] = time.sleep):
    """Create `repo_id` (private unless `private=False`) and upload `folder` to it; returns the CommitInfo
    (its `.commit_url` says where the commit is). The publishing gate (dermt2im_hub.hub.gate.review) decides
    first, with the two permissions; `repo_type` defaults to the folder's (dataset for images and tables).
    `revision` is a branch, created from main when missing."""
    plan = review(folder, repo_id, repo_type,
                  Permissions(allow_memorized=allow_memorized, allow_real_images=allow_real_images))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()  # token: HF_TOKEN or the cached login, resolved inside huggingface_hub
    message = commit_message or f"Upload {plan.folder.name} with dermt2im-hub"
    retry = {"attempts": attempts, "backoff_seconds": backoff_seconds, "sleep": sleep}
    repo_type = plan.repo_type

    # the published view is made before the first request, so a file that cannot be read sends nothing
    with staged_folder(plan) as (staging, rewritten):
        repo_url = with_retries(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private,
                                                        exist_ok=True), "create_repo", **retry)
        check_visibility(api, repo_id, repo_type, private, **retry)
        if revision and revision != "main":
            with_retries(lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                         "create_branch", **retry)
        if plan.dataset_config is not None:
            merge_repo_card(api, plan, staging, revision, **retry)
        logger.info("uploading %d files from %s to %s (%s); rewritten for publishing: %d", len(plan.files),
                    plan.folder, repo_url, repo_type, len(rewritten))
        return with_retries(lambda: api.upload_folder(
            repo_id=repo_id, folder_path=str(staging), repo_type=repo_type, revision=revision,
            commit_message=message, ignore_patterns=list(IGNORE_PATTERNS),  # fresh list: upload_folder extends it
            # a built dataset replaces its own config's remote files only (hub.configs)
            **({"delete_patterns": list(plan.replaces)} if plan.replaces else {}),
        ), "upload_folder", **retry)
