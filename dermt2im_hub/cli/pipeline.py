"""`dermt2im demo`: the whole pipeline on the embedded default (phantom images + tiny base) on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 10


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the pipeline on the embedded default (phantom images + tiny base, CPU)",
        description="Run every stage that exists on phantom images it makes itself and a tiny random-weight "
                    "Stable Diffusion base, on CPU, and print where each output is.")
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from dermt2im_hub.pipeline.demo import run_demo

    summary = run_demo(args.output, seed=args.seed)
    print("\nDemo finished. Outputs:")
    for name, path in summary.items():
        print(f"  {name:<12} {path}")
    return 0
