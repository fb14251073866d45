"""Command line of the LoRA stage, shared by `training_scripts/train_lora.py`, `python -m
dermt2im_hub.training.launch` and `dermt2im train-lora`.

    accelerate launch training_scripts/train_lora.py --config configs/paper.yaml --train_data_dir DATA
    accelerate launch training_scripts/train_lora.py --pretrained_model_name_or_path BASE \\
        --instance_data_dir DOGS --instance_prompt "a photo of sks dog" --rank 8 --max_train_steps 500

Every TrainLoraConfig field is an option (`--field-name`; diffusers' `--field_name` spelling works too), read
on top of `--config FILE` (flat, or the `training:` section of a recipe) and `--set key=value`. Accepted
aliases from diffusers' train_dreambooth_lora.py: `--instance_data_dir` (= --train_data_dir),
`--validation_prompt` (one prompt), `--use_8bit_adam` (= --optimizer adamw_8bit).
"""

from __future__ import annotations

import argparse
import json
import sys

from dermt2im_hub.config import (
    ConfigError,
    add_common_config_flags,
    add_config_arguments,
    config_from_args,
)
from dermt2im_hub.training.config import SECTION, TrainLoraConfig, output_roles
from dermt2im_hub.utils.output_folder import add_overwrite_flag, claim_output_folder

STAGE = "train_lora"

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_RENAMED = {"instance_data_dir": "train_data_dir"}


def _flag_value(argv: list[str], i: int, eq: str, value: str) -> tuple[str, int]:
    """The value of the option at argv[i] (`--x=v` or `--x v`) and the index after it."""
    if eq:
        return value, i + 1
    if i + 1 >= len(argv):
        raise ConfigError(f"{argv[i]} needs a value")
    return argv[i + 1], i + 2


def normalize_argv(argv: list[str]) -> list[str]:
    """diffusers-style spellings -> this parser's: `--a_b` -> `--a-b`, aliases resolved."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            out.append(token)
            i += 1
            continue
        flag, eq, value = token.partition("=")
        name = _RENAMED.get(flag[2:].replace("-", "_"), flag[2:].replace("-", "_"))
        if name == "hub_token":
            raise ConfigError("--hub_token is not accepted (tokens on command lines leak into shell history and "
                              "process lists): run `hf auth login` or set HF_TOKEN")
        if name == "use_8bit_adam":
            out += ["--optimizer", "adamw_8bit"]
            i += 1
            continue
        if name == "validation_prompt":  # one prompt (it may contain commas) -> a one-item YAML list
            prompt, i = _flag_value(argv, i, eq, value)
            out += ["--validation-prompts", json.dumps([prompt])]
            continue
        out.append("--" + name.replace("_", "-") + eq + value)
        i += 1
    return out


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_config_flags(parser)
    add_config_arguments(parser, TrainLoraConfig)
    add_overwrite_flag(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_lora.py",
        description="DreamBooth-LoRA fine-tuning of Stable Diffusion 1.x/2.x (diffusers + peft + accelerate). "
                    "Writes a Hub-ready folder: pytorch_lora_weights.safetensors (diffusers), a kohya/A1111 "
                    "copy, samples, loss curve, TensorBoard logs, training_config.yaml, manifest.json, README.md.",
        epilog="Run it under `accelerate launch` for multi-GPU / multi-node (configs/accelerate/*.yaml). "
               "Ctrl-C saves a checkpoint; running the same command again resumes from it.")
    return add_training_arguments(parser)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(normalize_argv(list(sys.argv[1:] if argv is None else argv)))


def parse_config(argv: list[str] | None = None) -> TrainLoraConfig:
    return config_from_args(TrainLoraConfig, parse_args(argv), section=SECTION)


def check_output(config: TrainLoraConfig, overwrite: bool = False) -> None:
    """The adapter folder must be empty or an earlier train-lora output of the same data: never the base model's
    folder, the data folder or another stage's output (the shared output-folder guard; the trainer claims the
    folder once its own checks pass)."""
    claim_output_folder(config.output_dir, STAGE, output_roles(config), overwrite=overwrite, claim=False,
                        reads={"base": config.pretrained_model_name_or_path, "class_data": config.class_data_dir})


def run(config: TrainLoraConfig, overwrite: bool = False) -> int:
    """Train `config` (built once by the caller), turning the errors a user can fix into one line on stderr
    (exit 2). A folder with checkpoints of the same run resumes; `overwrite` starts over."""
    from dermt2im_hub.records import TestLeakageError
    from dermt2im_hub.training.inputs import TrainingInputError
    from dermt2im_hub.training.step import OptimizerUnavailable

    try:
        check_output(config, overwrite)
        from dermt2im_hub.training.trainer import train_lora

        result = train_lora(config, start_over=overwrite)
    except (ConfigError, TrainingInputError, TestLeakageError, OptimizerUnavailable, FileNotFoundError) as exc:
        print(f"train_lora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from dermt2im_hub.hub.online import hub_error_line

        line = hub_error_line(exc)  # the push after training: the adapter folder is complete
        if line is None:
            raise
        print(f"train_lora: error: {line}; the adapter is in {config.output_dir}: publish it with "
              f"`dermt2im push {config.output_dir} --repo-id {config.hub_model_id}`", file=sys.stderr)
        return EXIT_USAGE
    if not result.is_main_process:
        return EXIT_INTERRUPTED if result.status == "interrupted" else 0
    if result.status == "interrupted":
        print(f"train_lora: interrupted at step {result.global_step}; checkpoint saved in "
              f"{result.output_dir / 'checkpoints'} (run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"train_lora: {result.global_step} steps; adapter written to {result.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse once, then train (train_lora.py, `python -m dermt2im_hub.training.launch`)."""
    from dermt2im_hub.utils.logging import configure_logging

    configure_logging()
    try:
        args = parse_args(argv)
        config = config_from_args(TrainLoraConfig, args, section=SECTION)
    except ConfigError as exc:
        print(f"train_lora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run(config, overwrite=args.overwrite)


if __name__ == "__main__":  # python -m dermt2im_hub.training.launch (what `dermt2im train-lora` launches)
    sys.exit(main())
