"""`dermt2im qa`: artifact filter, memorization audit, fidelity and skin tone of a generated set."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ORDER = 40
EXIT_MEMORIZED = 3  # distinct from 2 (user error): scripts can tell "fix your command" from "do not publish"

_DESCRIPTION = """\
Check a generated folder against the real training images:
  - artifact filter: blur, clipping, high-frequency noise, no lesion found, near-duplicates within the set;
    rejected images move to GENERATED_DIR/rejected/{label}/ (nothing is deleted; a re-run may move them back);
  - memorization audit: nearest training image by perceptual hash, SIFT geometric verification and embedding
    cosine; the closest pairs are saved side by side;
  - fidelity: FID, KID and k-NN precision/recall, overall and per class, in the configured extractor's space;
  - skin tone: Individual Typology Angle of the non-lesion skin, real vs synthetic.

Per-image keys (qa_*, mem_*, ita, ita_category) are written into GENERATED_DIR/metadata.jsonl so the dataset
builder carries them as columns. The report (report.json, scores.jsonl, closest_pairs/, ita_histogram.png,
manifest.json, README.md) goes to GENERATED_DIR/qa/ or --output. A folder without metadata.jsonl (e.g. A1111
output) or a data-stage folder is only read: give --output.

Exit status: 0 done; 2 bad input or config; 3 images that would be published look memorized (rerun with
--quarantine-memorized to reject them, or --allow-memorized to accept them with a warning).

Examples:
  dermt2im qa outputs/generated --real outputs/data
  dermt2im qa outputs/generated --real outputs/data --config configs/paper.yaml --quarantine-memorized
  dermt2im qa ../shared/data/dermt2im-sample --real outputs/data --output /tmp/qa-sample
"""


def register(subparsers) -> None:
    from dermt2im_hub.config import add_common_config_flags, add_config_arguments
    from dermt2im_hub.quality.config import QualityConfig

    p = subparsers.add_parser("qa", help="quality and privacy checks of a generated set (artifacts, memorization, "
                                         "FID/KID, skin tone)",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generated_dir", type=Path, metavar="GENERATED_DIR",
                   help="generation output (metadata.jsonl + {benign,malignant}/*.png) or any folder of PNGs")
    p.add_argument("--real", type=Path, required=True, metavar="TRAIN_DIR",
                   help="real training images: a data-stage folder (its train split is used) or any image folder")
    p.add_argument("--output", type=Path, default=None, metavar="DIR",
                   help="folder for the report (default: GENERATED_DIR/qa)")
    add_common_config_flags(p)
    add_config_arguments(p, QualityConfig)
    from dermt2im_hub.utils.output_folder import add_overwrite_flag

    add_overwrite_flag(p)
    p.set_defaults(func=_qa)


def _qa(args: argparse.Namespace) -> int:
    from dermt2im_hub.cli import UserError
    from dermt2im_hub.cli.hub import write_stage_card
    from dermt2im_hub.config import config_from_args
    from dermt2im_hub.quality.config import QualityConfig
    from dermt2im_hub.quality.images import FolderError
    from dermt2im_hub.quality.run import run_qa

    config = config_from_args(QualityConfig, args, section="quality")
    try:
        with _claimed_output(args):
            result = run_qa(args.generated_dir, args.real, config, output_dir=args.output)
    except FolderError as error:
        raise UserError(str(error)) from error
    write_stage_card(result.output_dir)
    _print_summary(result.report, result.output_dir)
    memo = result.report["memorization"]
    if result.memorization_blocked:
        print(f"dermt2im qa: {memo['flagged_published']} kept image(s) look memorized from the training set "
              f"(see {result.output_dir / 'closest_pairs'}). Building or pushing the dataset will refuse them; "
              "rerun with --quarantine-memorized to reject them, or --allow-memorized to accept them.",
              file=sys.stderr)
        return EXIT_MEMORIZED
    if memo["flagged_published"]:
        print(f"dermt2im qa: warning: {memo['flagged_published']} kept image(s) look memorized; accepted because "
              "of --allow-memorized (build/push still need --allow-memorized).", file=sys.stderr)
    return 0


def _claimed_output(args: argparse.Namespace):
    """The report folder: empty, or an earlier QA report of the same folders (run_qa refuses the rest first:
    a missing folder, a generated folder it may not write into without --output)."""
    from dermt2im_hub.manifest import try_read_manifest
    from dermt2im_hub.quality.images import QA_DIR, has_metadata
    from dermt2im_hub.utils.output_folder import claimed_output_folder

    generated = args.generated_dir
    if not generated.is_dir():
        return contextlib.nullcontext()
    if args.output is None and not (has_metadata(generated) and (try_read_manifest(generated) or {}).get(
            "stage") in (None, "generate")):
        return contextlib.nullcontext()
    return claimed_output_folder(args.output if args.output is not None else generated / QA_DIR, "qa",
                        {"generated": generated, "real": args.real}, overwrite=args.overwrite,
                        inside_ok=("generated",))


def _print_summary(report: dict, output_dir: Path) -> None:
    artifacts, memo, fidelity = report["artifacts"], report["memorization"], report.get("fidelity")
    reasons = ", ".join(f"{k} {v}" for k, v in artifacts["reasons"].items()) or "none"
    print(f"artifact filter: {artifacts['passed']}/{artifacts['num_images']} passed "
          f"({100 * (artifacts['pass_rate'] or 0):.1f}%); rejections: {reasons}")
    print(f"memorization: {memo['result']}")
    if fidelity and fidelity.get("overall", {}).get("fid") is not None:
        overall = fidelity["overall"]
        numbers = ", ".join(f"{name} {_number(overall.get(key))}" for name, key in
                            (("FID", "fid"), ("KID", "kid"), ("precision", "precision"), ("recall", "recall")))
        print(f"fidelity ({fidelity['feature_extractor']}): {numbers}")
    skin = report["skin_tone"]["synthetic"]["categories"]
    print("skin tone (ITA) of kept images: " + ", ".join(f"{k} {v}" for k, v in skin.items()))
    print(f"report: {output_dir / 'report.json'} (card: {output_dir / 'README.md'})")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"
