"""Hub commands: `card` (re-)renders an output folder's README.md, `push` publishes the folder."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 80


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "card", help="(re-)render README.md of a stage output folder from its manifest.json",
        description="Render FOLDER/README.md (a Hub model or dataset card) from FOLDER/manifest.json alone. The "
                    "card kind follows the stage (train_lora: LoRA card, build_dataset: dataset card, "
                    "train_classifier: classifier card, leaderboard: results card, others: a generic card). "
                    "Facts the run did not record are written as 'not recorded'.")
    p.add_argument("folder", type=Path, help="a stage output folder holding manifest.json")
    p.add_argument("--kind", choices=["lora", "dataset", "classifier", "results", "stage"], default=None,
                   help="card kind (default: chosen from the manifest's stage)")
    p.add_argument("--repo-id", default=None,
                   help="ORG/NAME the card's how-to-use snippet loads from (default: the manifest's fact "
                        "`repo_id`, else a placeholder)")
    p.set_defaults(func=_card)

    p = subparsers.add_parser(
        "push", help="upload a stage output folder to the Hub (private unless --public)",
        description="Create the Hub repo (private unless --public; an existing repo keeps its visibility) and "
                    "upload FOLDER, leaving out checkpoints, optimizer/scheduler states, caches, logs, "
                    "TensorBoard events, resume journals and temp files. Refuses pickle weight files (.bin .pt "
                    ".pth .pkl .pickle .ckpt), a private push into an existing public repo, and folders of "
                    "real patient-derived images (preprocess, qa, a real-config dataset) without "
                    "--allow-real-images. Absolute local paths in JSON/JSONL/YAML files are published as "
                    "<local>/LASTPART (the local files keep them). Retries transient HTTP errors. The token "
                    "comes from HF_TOKEN or the cached `hf auth login` and is never printed or written. Prints "
                    "the commit URL.")
    p.add_argument("folder", type=Path, help="the folder to upload (render its card first: dermt2im card FOLDER)")
    p.add_argument("--repo-id", required=True, help="target repo, ORG/NAME")
    p.add_argument("--repo-type", choices=["model", "dataset"], default=None,
                   help="repo type (default: dataset for folders of images or tables - phantoms, "
                        "preprocess, generate, qa, build_dataset, benchmark results - else model)")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.add_argument("--revision", default=None, metavar="BRANCH",
                   help="branch to commit to, created from main if missing (default: main)")
    p.add_argument("--commit-message", default=None, help="commit message (default: 'Upload FOLDER ...')")
    p.add_argument("--allow-memorized", action="store_true",
                   help="for a built dataset or a generated folder: push even if images were flagged by the "
                        "memorization audit (review the audit first)")
    p.add_argument("--allow-real-images", action="store_true",
                   help="push a folder that holds real patient-derived images (a preprocess or qa output, or a "
                        "dataset built with the real config); check that the source datasets' licences and "
                        "terms allow publishing them first")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")
    p.set_defaults(func=_push)


def write_stage_card(folder: Path) -> Path | None:
    """README.md of a stage's output folder, for the commands that do not render their own (the pipeline
    re-renders every card anyway); a folder without a manifest gets none."""
    from dermt2im_hub.hub.cards import render_card
    from dermt2im_hub.manifest import try_read_manifest

    return render_card(folder) if try_read_manifest(folder) is not None else None


def _card(args: argparse.Namespace) -> int:
    from dermt2im_hub.hub.cards import render_card

    path = render_card(args.folder, kind=args.kind, repo_id=args.repo_id)
    print(f"card written to {path}")
    return 0


def _default_repo_type(folder: Path) -> str:
    from dermt2im_hub.hub.cards import card_kind, card_repo_type
    from dermt2im_hub.manifest import try_read_manifest

    manifest = try_read_manifest(folder)
    return card_repo_type(card_kind(manifest), manifest.get("stage")) if manifest else "model"


def _check_stage_rules(folder: Path, allow_memorized: bool, allow_real_images: bool = False) -> None:
    """Stage-specific publishing rules, for FOLDER and every stage folder inside it (pushing a run's root must
    not bypass them): a folder of real patient-derived images needs --allow-real-images; a built dataset with
    rows flagged by the memorization audit is refused (the CLI may import stages; the hub layer may not)."""
    from dermt2im_hub.hub.push import PushError, files_to_upload, real_image_content
    from dermt2im_hub.manifest import MANIFEST_NAME, try_read_manifest

    inner = [folder / p for p in files_to_upload(folder) if Path(p).name == MANIFEST_NAME] if folder.is_dir() else []
    stage_folders = sorted({folder, *(path.parent for path in inner)})
    for stage_folder in stage_folders:
        manifest = try_read_manifest(stage_folder) or {}
        real = real_image_content(manifest)
        if real and not allow_real_images:
            where = "" if stage_folder == folder else f" (inside it: {stage_folder.relative_to(folder)})"
            raise PushError(f"refusing to push {folder}{where}: this {manifest.get('stage')} output holds real "
                            f"patient-derived images ({real}); publishing them is up to their licences and the "
                            "patients' consent terms, not to this tool. If those allow it, pass "
                            "--allow-real-images.")
        if manifest.get("stage") == "build_dataset":
            from dermt2im_hub.dataset.export import check_publishable

            check_publishable(stage_folder, allow_memorized=allow_memorized)
        if manifest.get("stage") == "generate":
            _check_generated_rows(folder, stage_folder, allow_memorized, allow_real_images)


def _check_generated_rows(folder: Path, stage_folder: Path, allow_memorized: bool, allow_real_images: bool) -> None:
    """A generation folder the QA stage has annotated: flagged rows need --allow-memorized (as for a built
    dataset), and the names of real training images (the audit's nearest match, which build-dataset leaves
    out) need --allow-real-images."""
    from dermt2im_hub.dataset.schema import TRAINING_REFERENCE_KEYS
    from dermt2im_hub.hub.push import PushError
    from dermt2im_hub.records import METADATA_NAME
    from dermt2im_hub.utils.files import read_jsonl

    path = stage_folder / METADATA_NAME
    rows = [row for row in read_jsonl(path) if isinstance(row, dict)] if path.is_file() else []
    flagged = sum(1 for row in rows if row.get("mem_flagged") is True)
    if flagged and not allow_memorized:
        raise PushError(f"refusing to push {folder}: {flagged} generated image(s) in {stage_folder.name} were "
                        "flagged by the memorization audit (mem_flagged); review qa/ first, then pass "
                        "--allow-memorized to publish them anyway")
    named = sorted({key for row in rows for key in TRAINING_REFERENCE_KEYS if row.get(key)})
    if named and not allow_real_images:
        raise PushError(f"refusing to push {folder}: {METADATA_NAME} in {stage_folder.name} names the real training "
                        f"image closest to each generated one ({', '.join(named)}), which reveals who is in the "
                        "training set; push the dataset built from it (build-dataset leaves that out) or pass "
                        "--allow-real-images")


def _push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from dermt2im_hub.cli import UserError
    from dermt2im_hub.hub.online import require_online
    from dermt2im_hub.hub.push import PushError, check_folder, push_folder, redacted_files
    from dermt2im_hub.hub.resolve import hub_id_problem

    problem = hub_id_problem(args.repo_id, "--repo-id")  # before anything else, a dry run included
    if problem:
        raise UserError(problem)
    repo_type = args.repo_type or _default_repo_type(args.folder)
    try:
        _check_stage_rules(args.folder, args.allow_memorized, args.allow_real_images)
        if args.dry_run:
            paths = check_folder(args.folder)
            redacted = redacted_files(args.folder, paths)
            print(f"would upload {len(paths)} files to {repo_type} repo {args.repo_id} "
                  f"({'public' if args.public else 'private'}):")
            print("\n".join(f"  {p}" + ("  (local paths redacted)" if p in redacted else "") for p in paths))
            return 0
        require_online("pushing", later=False)
        info = push_folder(args.folder, args.repo_id, repo_type=repo_type, private=not args.public,
                           revision=args.revision, commit_message=args.commit_message)
    except (PushError, HfHubHTTPError, ValueError) as error:
        # the Hub's own error text names the repo and the HTTP status, never the token
        raise UserError(str(error)) from error
    print(f"pushed {args.folder} to {repo_type} repo {args.repo_id}: {info.commit_url}")
    return 0
