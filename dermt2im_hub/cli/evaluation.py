"""Evaluation commands: `benchmark` (the classifier sweep) and `leaderboard` (Table IV, plot, Hub metadata)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 60


def register(subparsers) -> None:
    from dermt2im_hub.evaluation.launch import DESCRIPTION, add_arguments

    p = subparsers.add_parser("benchmark", help="train and test classifiers on real-only vs hybrid data",
                              description=DESCRIPTION + " For several GPUs use `accelerate launch "
                              "training_scripts/train_classifier.py` with the same options.")
    add_arguments(p)
    p.set_defaults(func=_benchmark)

    p = subparsers.add_parser(
        "leaderboard", help="render Table IV, the synthetic-fraction plot and Hub metadata from benchmark results",
        description="Read RESULTS_DIR/records/*.json (written by `dermt2im benchmark`) and write OUTPUT "
                    "(default RESULTS_DIR/leaderboard): leaderboard.md (the paper's Table IV layout with mean +- SD "
                    "over seeds and the paper's numbers beside ours; hybrid - real differences with paired "
                    "bootstrap CIs, exact McNemar p-values, Holm-adjusted; every mix; subgroups), leaderboard.json, "
                    "synthetic_fraction.png, classifiers/MODEL__MIX/model-index.md and .eval_results/*.yaml, "
                    "manifest.json and README.md.")
    p.add_argument("results_dir", type=Path, help="the results/ folder of a benchmark output")
    p.add_argument("--output", type=Path, default=None, help="output folder (default: RESULTS_DIR/leaderboard)")
    p.add_argument("--bootstrap-resamples", type=int, default=None,
                   help="bootstrap resamples (default: the benchmark config's)")
    p.add_argument("--confidence", type=float, default=None, help="CI level (default: the benchmark config's)")
    from dermt2im_hub.utils.output_folder import add_overwrite_flag

    add_overwrite_flag(p)
    p.set_defaults(func=_leaderboard)


def _benchmark(args: argparse.Namespace) -> int:
    from dermt2im_hub.cli import UserError
    from dermt2im_hub.evaluation.launch import run_from_args
    from dermt2im_hub.records import TestLeakageError

    try:
        return run_from_args(args)
    except TestLeakageError as error:
        raise UserError(str(error)) from error


def _leaderboard(args: argparse.Namespace) -> int:
    from dermt2im_hub.evaluation.leaderboard import render_leaderboard, table_iv_section
    from dermt2im_hub.utils.output_folder import claimed_output_folder

    if not args.results_dir.is_dir():
        raise FileNotFoundError(f"results folder not found: {args.results_dir}")
    with claimed_output_folder(args.output or args.results_dir / "leaderboard", "leaderboard",
                               {"results": args.results_dir}, overwrite=args.overwrite, inside_ok=("results",)):
        output = render_leaderboard(args.results_dir, args.output, args.bootstrap_resamples, args.confidence)
    # the Table IV section (table + test-set note) on screen; the rest (differences, every mix, subgroups) in the file
    section = table_iv_section((output / "leaderboard.md").read_text(encoding="utf-8"))
    if section:
        print(section)
    print(f"leaderboard written to {output} (leaderboard.md: this table, hybrid - real differences with CIs, every "
          "mix, subgroups; synthetic_fraction.png, README.md)")
    return 0
