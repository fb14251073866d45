"""The publishing gate: the one place that decides whether a folder may go to the Hub, and what goes up.

    plan = review("outputs/run/dataset", "my-org/dermt2im", permissions=Permissions(allow_memorized=False))
    plan.files, plan.skipped_links, plan.card          # what a push sends; raises PushError when it must not

Every push goes through `review`: `push_folder` calls it, so `dermt2im push` (and its --dry-run), the pipeline's
`run.push` targets and `push_dataset` (`build-dataset --push-to-hub`) all apply the same rules; a rule added to
STAGE_RULES or TABLE_RULES holds for each of them. The rules:

- the repo id is a Hub id and the folder has files to send; pickle weight files are refused;
- links are never followed out of the folder: a symlink whose target lies outside (or a link to a folder) is
  skipped and listed in `skipped_links`;
- every stage folder in the upload (the folder itself and any folder inside it holding a manifest.json) must have
  a readable manifest of a finished run; one holding real patient-derived images needs `allow_real_images`; a
  built dataset must hold its parquet shards and no leftovers of an interrupted build;
- every table that goes up (metadata.jsonl, *.parquet): rows flagged by the memorization audit need
  `allow_memorized`, and columns naming real training images need `allow_real_images`;
- the card that goes up is rendered from the manifest for the target repo id (never a placeholder id);
- a built dataset goes up as one config of a repo that may hold several (hub.configs): its files under
  `data/<config>/`, replacing only that config's remote files, its card merged with the remote card
  (`card_for_repo`, called by push_folder once it has read the remote card).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.hub.cards import CARD_NAME, CardError, build_card, load_manifest
from dermt2im_hub.hub.configs import CONFIG_NAMES, replaced_patterns, repo_path
from dermt2im_hub.hub.resolve import HubInputError, require_hub_id
from dermt2im_hub.manifest import MANIFEST_NAME
from dermt2im_hub.records import METADATA_NAME, TRAINING_REFERENCE_KEYS
from dermt2im_hub.utils.files import is_pickle_weight

logger = logging.getLogger(__name__)

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

# Stages whose output folder holds real (patient-derived) dermoscopy images, and which images. A build_dataset
# folder built with the `real` config holds them too.
REAL_IMAGE_STAGES = {
    "preprocess": "the preprocessed real dermoscopy images (ISIC, HAM10000 or a clinic folder)",
    "qa": "crops of real training images next to their closest synthetic images (closest_pairs/)",
}
# What an interrupted build-dataset leaves behind (dermt2im_hub.dataset.export builds in it).
BUILD_STAGING_DIR = ".build-staging"


class PushError(RuntimeError):
    """A push that cannot or should not happen; the message says why and what to do."""


class UnsafeWeightsError(PushError):
    """The folder holds pickle-based weight files, which are never published."""


@dataclass(frozen=True)
class Permissions:
    """What the person pushing explicitly allowed (each is a command-line flag or a recipe setting)."""

    allow_memorized: bool = False
    allow_real_images: bool = False


@dataclass
class PushPlan:
    """What a push of `folder` sends: repo-relative `files`, the outward links left out, and the card text
    rendered for `repo_id` (None when the folder has no manifest: its own README.md, if any, goes up).
    A built dataset (`dataset_config` set) goes up as one config of a repo that may hold several: `renamed`
    maps a file to its path in the repo when it differs, `replaces` lists the remote files it replaces
    (upload_folder's delete_patterns), and its card is merged with the repo's (card_for_repo)."""

    folder: Path
    repo_id: str
    repo_type: str
    files: list[str]
    skipped_links: list[str] = field(default_factory=list)
    card: str | None = None
    dataset_config: str | None = None
    renamed: dict[str, str] = field(default_factory=dict)
    replaces: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    def repo_path(self, path: str) -> str:
        return self.renamed.get(path, path)


@dataclass
class StageFolder:
    """A folder in the upload that holds a manifest.json (the pushed folder itself or one inside it)."""

    root: Path
    path: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> Any:
        return self.manifest.get("stage")

    def where(self) -> str:
        return "" if self.path == self.root else f" (inside it: {self.path.relative_to(self.root).as_posix()})"


# ---------------------------------------------------------------------------------------------- files


def scan_files(folder: str | os.PathLike, ignore_patterns: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(repo-relative paths upload_folder would send, links left out). A symlink is sent only when it is a file
    inside the folder; links that lead out of it (or to a folder, or nowhere) are never followed."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    root = Path(folder)
    real_root = root.resolve()
    paths, links = [], []
    for current, dirs, names in os.walk(root):  # followlinks=False: a linked folder is listed, not entered
        base = Path(current)
        for name in sorted(dirs):
            if (base / name).is_symlink():
                links.append((base / name).relative_to(root).as_posix())
        for name in names:
            path = base / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not (target.is_file() and target.is_relative_to(real_root)):
                    links.append(relative)
                    continue
            elif not path.is_file():
                continue  # sockets, fifos
            paths.append(relative)
    patterns = list(IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns) + list(DEFAULT_IGNORE_PATTERNS)
    return sorted(filter_repo_objects(paths, ignore_patterns=patterns)), sorted(links)


def files_to_upload(folder: str | os.PathLike, ignore_patterns: list[str] | None = None) -> list[str]:
    """Repo-relative paths upload_folder would send, with the same pattern matching it uses (no outward links)."""
    return scan_files(folder, ignore_patterns)[0]


def read_stage_manifest(folder: Path) -> dict[str, Any] | None:
    """A folder's manifest.json; None without one. One that cannot be read is refused (the card's own reader
    says why): the rules that depend on it cannot be checked."""
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        return dict(load_manifest(folder))
    except CardError as error:
        raise PushError(f"refusing to push {folder}: {error}; or remove it from the folder") from None


# ---------------------------------------------------------------------------------------------- stage rules


def real_image_content(manifest: dict | None) -> str | None:
    """What real patient-derived images a stage folder holds (from its manifest), or None when it holds none."""
    if not isinstance(manifest, dict):
        return None
    stage = manifest.get("stage")
    if stage in ("preprocess", "build_dataset", "qa") and _phantoms_only(manifest):
        return None  # procedural phantoms (the demo's inputs): no patient behind them
    if stage in REAL_IMAGE_STAGES:
        return REAL_IMAGE_STAGES[stage]
    if stage == "build_dataset":
        config = _mapping(manifest.get("config"))
        card = _mapping(_mapping(manifest.get("extra")).get("card"))
        if "real" in (config.get("config_name"), card.get("builder_config")):
            return "a dataset of real dermoscopy images (the `real` config)"
    return None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _phantoms_only(manifest: dict, depth: int = 3) -> bool:
    """Whether a preprocess, dataset or qa folder was made from `dermt2im make-phantoms` images alone, following
    the recorded input folders (preprocess: config.images; a dataset: its inputs; qa: its `real` reference
    images, which its closest_pairs/ crops come from). Anything that cannot be followed counts as real."""
    from dermt2im_hub.manifest import try_read_manifest

    stage = manifest.get("stage")
    if stage == "phantoms":
        return True
    if depth == 0 or stage not in ("preprocess", "build_dataset", "qa"):
        return False
    if stage == "preprocess":
        sources = [_mapping(manifest.get("config")).get("images")]
    elif stage == "qa":
        sources = [_mapping(_mapping(manifest.get("inputs")).get("real")).get("path")]
    else:
        sources = [item.get("path") for item in _mapping(manifest.get("inputs")).values() if isinstance(item, dict)]
    if not sources or not all(isinstance(path, str) and path for path in sources):
        return False
    return all(_phantoms_only(_mapping(try_read_manifest(path)), depth - 1) for path in sources)


def _finished_run(stage: StageFolder, permissions: Permissions) -> None:
    status = stage.manifest.get("status", "complete")
    if status != "complete":
        raise PushError(f"refusing to push {stage.root}{stage.where()}: its {stage.stage} run did not finish "
                        f"(manifest status {status!r}); run the stage again first")


def _real_images(stage: StageFolder, permissions: Permissions) -> None:
    real = real_image_content(stage.manifest)
    if real and not permissions.allow_real_images:
        raise PushError(f"refusing to push {stage.root}{stage.where()}: this {stage.stage} output holds real "
                        f"patient-derived images ({real}); publishing them is up to their licences and the "
                        "patients' consent terms, not to this tool. If those allow it, pass --allow-real-images.")


def _built_dataset(stage: StageFolder, permissions: Permissions) -> None:
    if stage.stage != "build_dataset":
        return
    if (stage.path / BUILD_STAGING_DIR).exists():
        raise PushError(f"refusing to push {stage.root}{stage.where()}: it holds {BUILD_STAGING_DIR}/ from an "
                        "interrupted build; run build-dataset again")
    if not any((stage.path / "data").rglob("*.parquet")):
        raise PushError(f"refusing to push {stage.root}{stage.where()}: data/ holds no parquet shards")
    if builder_config(stage.manifest) is None:
        raise PushError(f"refusing to push {stage.root}{stage.where()}: its manifest names no builder config "
                        f"({', '.join(CONFIG_NAMES)}), which decides where its files go in the repo; run "
                        "build-dataset again")


def builder_config(manifest: dict[str, Any] | None) -> str | None:
    """The builder config a build-dataset manifest records (the card's, else the resolved config's), when it is
    one of the known names (it becomes a path in the repo)."""
    manifest = _mapping(manifest)
    card = _mapping(_mapping(manifest.get("extra")).get("card"))
    name = card.get("builder_config") or _mapping(manifest.get("config")).get("config_name")
    return name if name in CONFIG_NAMES else None


StageRule = Callable[[StageFolder, Permissions], None]
STAGE_RULES: tuple[StageRule, ...] = (_finished_run, _real_images, _built_dataset)


# ---------------------------------------------------------------------------------------------- table rules


def is_table(path: str) -> bool:
    """The files whose rows the table rules read: image metadata (metadata.jsonl) and parquet shards."""
    return Path(path).name == METADATA_NAME or path.endswith(".parquet")


def _table_columns(path: Path, columns: list[str]) -> dict[str, list[Any]]:
    """The values of those of `columns` a table has (a parquet file reads only them)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        present = [c for c in columns if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=present) if present else None
        return {c: table.column(c).to_pylist() for c in present} if table is not None else {}
    from dermt2im_hub.utils.files import read_jsonl

    rows = [row for row in read_jsonl(path) if isinstance(row, dict)]
    return {c: [row.get(c) for row in rows] for c in columns if any(c in row for row in rows)}


def _memorized_rows(root: Path, path: str, columns: dict[str, list[Any]], permissions: Permissions) -> None:
    flagged = sum(value is True for value in columns.get("mem_flagged", []))
    if flagged and not permissions.allow_memorized:
        raise PushError(f"refusing to push {root}: {flagged} row(s) of {path} (image(s)) were flagged by the "
                        "memorization audit (mem_flagged: true); review the audit report first, then pass "
                        "--allow-memorized to publish them anyway")


def _training_references(root: Path, path: str, columns: dict[str, list[Any]], permissions: Permissions) -> None:
    named = sorted(key for key in TRAINING_REFERENCE_KEYS if any(columns.get(key, [])))
    if named and not permissions.allow_real_images:
        raise PushError(f"refusing to push {root}: {path} names the real training image closest to each generated "
                        f"one ({', '.join(named)}), which reveals who is in the training set; push the dataset "
                        "built from it (build-dataset leaves that out) or pass --allow-real-images")


TableRule = Callable[[Path, str, dict[str, list[Any]], Permissions], None]
TABLE_RULES: tuple[TableRule, ...] = (_memorized_rows, _training_references)
TABLE_COLUMNS = ["mem_flagged", *sorted(TRAINING_REFERENCE_KEYS)]


# ---------------------------------------------------------------------------------------------- the gate


def review(folder: str | os.PathLike, repo_id: str, repo_type: str | None = None,
           permissions: Permissions = Permissions()) -> PushPlan:
    """What a push of `folder` to `repo_id` sends; raises PushError (UnsafeWeightsError for pickle files)
    when any rule refuses it. Reads the folder only; nothing reaches the Hub."""
    folder = Path(folder)
    try:
        require_hub_id(repo_id)
    except HubInputError as error:
        raise PushError(str(error)) from None
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder")
    files, links = scan_files(folder)
    if links:
        logger.warning("not uploading %d link(s) that lead out of %s or to a folder: %s", len(links), folder,
                       ", ".join(links[:10]))
    _check_files(folder, files)
    stages = [StageFolder(folder, path, manifest) for path in _stage_paths(folder, files)
              if (manifest := read_stage_manifest(path)) is not None]
    for stage in stages:
        for rule in STAGE_RULES:
            rule(stage, permissions)
    _unrecorded_images(folder, files, stages, permissions)
    for path in (p for p in files if is_table(p)):
        columns = _table_columns(folder / path, TABLE_COLUMNS)
        for table_rule in TABLE_RULES:
            table_rule(folder, path, columns, permissions)
    own = next((s.manifest for s in stages if s.path == folder), None)
    repo_type = repo_type or default_repo_type(own)
    if repo_type not in REPO_TYPES:
        raise PushError(f"repo_type must be one of {', '.join(REPO_TYPES)}, got {repo_type!r}")
    card = _card_for(own, repo_id) if own is not None else None
    if card is not None and CARD_NAME not in files:
        files = sorted([*files, CARD_NAME])
    if CARD_NAME not in files:
        logger.warning("%s has no %s: the Hub repo will have no card", folder, CARD_NAME)
    plan = PushPlan(folder, repo_id, repo_type, files, links, card, manifest=own)
    config = builder_config(own) if (own or {}).get("stage") == "build_dataset" and repo_type == "dataset" else None
    if config is not None:
        plan.dataset_config = config
        plan.renamed = {p: repo_path(p, config) for p in files if repo_path(p, config) != p}
        plan.replaces = replaced_patterns(config)
    return plan


def card_for_repo(plan: PushPlan, remote_card: str | None) -> str | None:
    """The card a built dataset's push uploads, given the README already in the repo (None: there is none):
    rendered for the repo with the remote card's other configs merged in (hub.configs). A remote README that
    cannot be read is refused rather than overwritten, since its configs would be lost."""
    if plan.dataset_config is None or plan.manifest is None:
        return plan.card
    remote_data: dict[str, Any] = {}
    if remote_card is not None:
        from huggingface_hub import DatasetCard

        try:
            remote_data = DatasetCard(remote_card).data.to_dict()
        except (ValueError, TypeError, AttributeError) as error:
            raise PushError(f"refusing to push to {plan.repo_id}: its README.md front matter cannot be read "
                            f"({type(error).__name__}: {error}), so its configs cannot be kept; fix it first") from None
    import jinja2

    try:
        return str(build_card(plan.manifest, repo_id=plan.repo_id, repo_card_data=remote_data))
    except (CardError, TypeError, AttributeError, KeyError, ValueError, jinja2.TemplateError) as error:
        raise PushError(f"refusing to push: the card cannot be merged with {plan.repo_id}'s ({error})") from None


# Image files any clinic or camera writes (a raw folder of them may hold patients' photos).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".dcm", ".heic"})


def _unrecorded_images(folder: Path, files: list[str], stages: list[StageFolder], permissions: Permissions) -> None:
    """Images that no stage manifest accounts for (a raw folder, not a stage output) may be anyone's patient
    photos: nothing says otherwise, so they need --allow-real-images like a folder of real images."""
    if permissions.allow_real_images:
        return
    recorded = [stage.path for stage in stages]
    loose = [p for p in files if Path(p).suffix.lower() in IMAGE_SUFFIXES
             and not any((folder / p).is_relative_to(root) for root in recorded)]
    if loose:
        listed = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        raise PushError(f"refusing to push {folder}: it holds image files that no dermt2im stage wrote ({listed}), "
                        "so nothing says they are not real patient-derived images. If they may be published "
                        "(licences, consent), pass --allow-real-images.")


def _check_files(folder: Path, files: list[str]) -> None:
    if not files:
        raise PushError(f"{folder} has no file to upload (it is empty or every file matches an ignore pattern)")
    unsafe = [p for p in files if is_pickle_weight(p)]
    if unsafe:
        listed = ", ".join(unsafe[:10]) + (f" and {len(unsafe) - 10} more" if len(unsafe) > 10 else "")
        raise UnsafeWeightsError(
            f"refusing to push {folder}: it holds pickle-based weight file(s) {listed}. Pickle files run code "
            "when loaded; convert them to .safetensors (safetensors.torch.save_file) and remove the originals.")


def _stage_paths(folder: Path, files: list[str]) -> list[Path]:
    """The pushed folder and every folder in the upload that holds a manifest.json (pushing a run's root must
    not bypass the rules of the stages inside it)."""
    inner = {(folder / p).parent for p in files if Path(p).name == MANIFEST_NAME}
    return sorted({folder, *inner})


def default_repo_type(manifest: dict[str, Any] | None) -> str:
    """dataset for the folders of images or tables, else model (a folder without a manifest: model)."""
    from dermt2im_hub.hub.cards import card_kind, card_repo_type

    return card_repo_type(card_kind(manifest), manifest.get("stage")) if manifest else "model"


def _card_for(manifest: dict[str, Any], repo_id: str) -> str:
    """The card that goes up: rendered from the manifest for the target repo (its stage's card kind), so the
    title, model-index name and how-to-use snippet name the repo instead of a placeholder."""
    import jinja2

    try:
        return str(build_card(manifest, repo_id=repo_id))
    except (CardError, TypeError, AttributeError, KeyError, ValueError, jinja2.TemplateError) as error:
        raise PushError(f"refusing to push: the card cannot be rendered from {MANIFEST_NAME} ({error})") from None
