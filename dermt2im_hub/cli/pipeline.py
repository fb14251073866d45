"""`dermt2im run RECIPE` (every stage, skipping up-to-date ones) and `dermt2im demo` (the embedded default)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 10


def register(subparsers) -> None:
    from dermt2im_hub.pipeline.config import STAGES

    p = subparsers.add_parser(
        "run", help="run the whole pipeline from a recipe (resumable; up-to-date stages are skipped)",
        description="preprocess -> train LoRA -> generate -> QA -> build datasets -> classifier benchmark -> "
                    "leaderboard -> cards (-> push when run.push names repos) -> report. Each stage writes its own "
                    "folder under the run's output with a manifest; a stage whose config and inputs are unchanged "
                    "is skipped, a changed one re-runs with everything after it. Ctrl-C keeps finished stages; "
                    "the same command resumes.",
        epilog="Example: dermt2im run configs/paper.yaml --set run.real_sources.0.images=/data/isic ... ; "
               "dermt2im run configs/demo.yaml --output outputs/demo")
    p.add_argument("recipe", type=Path, help="recipe YAML with sections data, training, generation, quality, "
                                             "dataset, evaluation and run (see configs/paper.yaml)")
    p.add_argument("--output", type=Path, default=None, help="output root (default: the recipe's run.output)")
    p.add_argument("--from", dest="from_stage", choices=STAGES, default=None,
                   help="start at this stage (earlier ones must be finished)")
    p.add_argument("--until", dest="until_stage", choices=STAGES, default=None, help="stop after this stage")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any recipe key, e.g. generation.num_images=600; repeatable")
    p.set_defaults(func=_run)

    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on the embedded default (phantom images + tiny base, CPU)",
        description="Make phantom dermoscopy images and a tiny random-weight Stable Diffusion base, then run every "
                    "stage of the recipe (configs/demo.yaml, shipped with the package) on CPU and print where each "
                    "output and the report are. Same code paths as the paper recipe, only smaller.")
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any demo recipe key; repeatable")
    p.set_defaults(func=_demo)


def _print_summary(summary) -> None:
    width = max(len(o.name) for o in summary.outcomes) if summary.outcomes else 10
    print("\nStages:")
    for outcome in summary.outcomes:
        took = f"{outcome.seconds:7.1f} s" if outcome.status == "ran" else " " * 9  # nothing ran: no time
        print(f"  {outcome.name:<{width}}  {outcome.status:<24} {took}  {outcome.folder}")
    for repo, url in summary.pushed.items():
        print(f"  pushed {repo}: {url}")
    if summary.report:
        print(f"\nReport: {summary.report} (and report.md beside it)")


def _run(args: argparse.Namespace) -> int:
    from dermt2im_hub.pipeline.config import STAGES
    from dermt2im_hub.pipeline.runner import run_pipeline
    from dermt2im_hub.pipeline.stages import PipelineError

    try:
        summary = run_pipeline(args.recipe, args.set, args.output, args.from_stage, args.until_stage)
    except PipelineError as error:
        from dermt2im_hub.cli import UserError

        raise UserError(str(error)) from error
    _print_summary(summary)
    if args.until_stage and args.until_stage != STAGES[-1]:
        later = STAGES[STAGES.index(args.until_stage) + 1:]
        print(f"\nStopped after {args.until_stage} (--until): {', '.join(later)} not run. The same command without "
              "--until goes on from there; finished stages are skipped.")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dermt2im_hub.pipeline.demo import run_demo
    from dermt2im_hub.pipeline.stages import PipelineError

    try:
        summary = run_demo(args.output, args.set)
    except PipelineError as error:
        from dermt2im_hub.cli import UserError

        raise UserError(str(error)) from error
    _print_summary(summary)
    print("\nDemo finished: phantom images and a tiny base pretrained on them, so the numbers show the pipeline works and learns, "
          "not how well synthetic data helps. Run configs/paper.yaml on real ISIC/HAM10000 data for that.")
    return 0
