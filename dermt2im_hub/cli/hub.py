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
                    "TensorBoard events, resume journals and temp files; symbolic links that lead out of FOLDER "
                    "(or to a folder) are never followed and are listed as not uploaded. Refuses pickle weight "
                    "files (.bin .pt .pth .pkl .pickle .ckpt), a private push into an existing public repo, "
                    "unfinished stage outputs, rows flagged by the memorization audit without "
                    "--allow-memorized, and folders of real patient-derived images (preprocess, qa, a "
                    "real-config dataset) without --allow-real-images; the same rules hold for `dermt2im "
                    "run`'s pushes and build-dataset --push-to-hub. The README.md that goes up is the card "
                    "rendered from manifest.json for --repo-id (the local one is left as it is). "
                    "Absolute local paths in JSON/JSONL/YAML files are published as "
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
    from dermt2im_hub.cli import UserError
    from dermt2im_hub.hub.cards import CardError, render_card

    try:
        path = render_card(args.folder, kind=args.kind, repo_id=args.repo_id)
    except CardError as error:
        raise UserError(str(error)) from None
    print(f"card written to {path}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from dermt2im_hub.cli import UserError
    from dermt2im_hub.hub.gate import Permissions, review
    from dermt2im_hub.hub.online import require_online
    from dermt2im_hub.hub.push import PushError, published_bytes, push_folder
    from dermt2im_hub.hub.resolve import hub_id_problem

    problem = hub_id_problem(args.repo_id, "--repo-id")  # before anything else, a dry run included
    if problem:
        raise UserError(problem)
    permissions = Permissions(allow_memorized=args.allow_memorized, allow_real_images=args.allow_real_images)
    try:
        plan = review(args.folder, args.repo_id, args.repo_type, permissions)  # the same gate push_folder runs
        _say_skipped_links(plan.skipped_links)
        if args.dry_run:
            rewritten = published_bytes(plan)
            print(f"would upload {len(plan.files)} files to {plan.repo_type} repo {args.repo_id} "
                  f"({'public' if args.public else 'private'}):")
            print("\n".join(f"  {plan.repo_path(p)}" + _rewrite_note(p, plan, rewritten) for p in plan.files))
            if plan.dataset_config:
                print(f"as the {plan.dataset_config!r} config: remote files matching {', '.join(plan.replaces)} are "
                      "replaced, other configs' files kept, and the card merged with the repo's")
            return 0
        require_online("pushing", later=False)
        info = push_folder(args.folder, args.repo_id, repo_type=plan.repo_type, private=not args.public,
                           revision=args.revision, commit_message=args.commit_message,
                           allow_memorized=args.allow_memorized, allow_real_images=args.allow_real_images)
    except (PushError, HfHubHTTPError, ValueError) as error:
        # the Hub's own error text names the repo and the HTTP status, never the token
        raise UserError(str(error)) from error
    print(f"pushed {args.folder} to {plan.repo_type} repo {args.repo_id}: {info.commit_url}")
    return 0


def _rewrite_note(path: str, plan, rewritten: dict[str, bytes]) -> str:
    if path == "README.md" and plan.card is not None:
        return f"  (card rendered for {plan.repo_id})"
    moved = f"  (from {path})" if plan.repo_path(path) != path else ""
    return moved + ("  (local paths redacted)" if path in rewritten else "")


def _say_skipped_links(links: list[str]) -> None:
    import sys

    if links:
        shown = ", ".join(links[:20]) + (f" and {len(links) - 20} more" if len(links) > 20 else "")
        print(f"not uploading {len(links)} symbolic link(s) that lead out of the folder or to a folder (links "
              f"are never followed): {shown}", file=sys.stderr)
