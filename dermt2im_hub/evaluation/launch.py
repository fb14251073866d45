"""The benchmark's command-line entry, shared by `dermt2im benchmark` and the `accelerate launch` script.

    accelerate launch training_scripts/train_classifier.py --config configs/paper.yaml [--option VALUE ...]
    dermt2im benchmark --config configs/paper.yaml [--option VALUE ...]

Both run the configured sweep (models x mixes x seeds) and then render the leaderboard. Under
`accelerate launch` with several processes each run is data-parallel across them; every process walks
the same sweep and only the main process writes files.
"""

from __future__ import annotations

import argparse
import sys

from dermt2im_hub.config import add_common_config_flags, add_config_arguments
from dermt2im_hub.evaluation.config import EvaluationConfig
from dermt2im_hub.utils.output_folder import add_overwrite_flag, claimed_output_folder

DESCRIPTION = (
    "Train and test classifiers on real-only and hybrid (real + synthetic) data: every model x mix x seed of "
    "the `evaluation:` config (timm models, accelerate training with early stopping, the evaluate metric module, "
    "bootstrap CIs). Writes OUTPUT/results (one JSON per run; a Hub-ready dataset) and OUTPUT/classifiers/RUN "
    "(Hub-ready timm models), then the leaderboard (Table IV, plot, model-index, .eval_results). Training "
    "refuses any image whose id, lesion, patient or bytes belong to a test set. Finished runs are skipped, so "
    "a re-run resumes.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_config_flags(parser)
    add_config_arguments(parser, EvaluationConfig)
    parser.add_argument("--profile", default=None, help="a named profile of the config file (its top-level "
                        "`profiles:` block, applied over its `evaluation:` section), e.g. cpu or paper for "
                        "configs/isic-binary.yaml")
    parser.add_argument("--no-leaderboard", action="store_true", help="skip rendering the leaderboard at the end")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_overwrite_flag(parser)


def profile_overrides(path, profile: str | None) -> dict:
    """The chosen profile's `evaluation:` settings of a config file with a `profiles:` block (none: {})."""
    from dermt2im_hub.config import ConfigError, read_yaml, select_section

    profiles = (read_yaml(path) if path else {}).get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: `profiles` must map names to settings")
    if profile is None:
        if profiles:
            raise ConfigError(f"{path} has profiles ({', '.join(profiles)}): choose one with --profile")
        return {}
    if profile not in profiles:
        known = f"its profiles are {', '.join(profiles)}" if profiles else "it has no `profiles:` block"
        raise ConfigError(f"--profile {profile}: {path or 'no --config file'}: {known}")
    return select_section(profiles[profile] or {}, "evaluation")


def evaluation_config_from_args(args: argparse.Namespace) -> EvaluationConfig:
    """The config file's `evaluation:` section <- its chosen profile <- `--set` items <- explicit options."""
    from dermt2im_hub.config import deep_merge, load_config, overrides_from_args, parse_overrides

    overrides = deep_merge(profile_overrides(args.config, getattr(args, "profile", None)),
                           parse_overrides(getattr(args, "set", None) or []))
    overrides = deep_merge(overrides, parse_overrides(overrides_from_args(args)))
    return load_config(EvaluationConfig, args.config, overrides, section="evaluation")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the sweep; leakage and missing-data problems surface as errors the user can act on."""
    from dermt2im_hub.evaluation.benchmark import run_benchmark
    from dermt2im_hub.evaluation.leaderboard import render_leaderboard
    from dermt2im_hub.evaluation.train import get_accelerator

    config = evaluation_config_from_args(args)
    # never into a dataset or generation folder (a later push would upload classifiers/ with it)
    with claimed_output_folder(config.output_dir, "benchmark", {"real": config.real.path,
                               "synthetic": config.synthetic.path}, overwrite=args.overwrite):
        results_dir = run_benchmark(config, progress=not args.no_progress)
    if get_accelerator(config).is_main_process:
        print(f"results: {results_dir}")
        if not args.no_leaderboard:
            print(f"leaderboard: {render_leaderboard(results_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from dermt2im_hub.config import ConfigError
    from dermt2im_hub.records import TestLeakageError
    from dermt2im_hub.utils.logging import configure_logging

    parser = argparse.ArgumentParser(prog="train_classifier.py", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(None)
    try:
        return run_from_args(args)
    except (ConfigError, TestLeakageError, FileNotFoundError) as error:
        print(f"train_classifier: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m dermt2im_hub.evaluation.launch (what `dermt2im run` launches on N GPUs)
    sys.exit(main())
