"""`dermt2im train-lora`: the LoRA stage from the package's own command line.

Without launcher options it trains in this process (one CPU or GPU). With `--num-processes N` or
`--accelerate-config FILE` it runs `accelerate launch ... -m dermt2im_hub.training.launch` with the same options,
which is exactly what `accelerate launch training_scripts/train_lora.py` runs; on a machine without CUDA,
`--num-processes N` makes a real gloo DDP group (ACCELERATE_USE_CPU=1).
"""

from __future__ import annotations

import argparse
import subprocess

ORDER = 20


def _normalize(argv: list[str]) -> list[str]:
    from dermt2im_hub.training.launch import normalize_argv

    return normalize_argv(argv)


# diffusers' spellings (--train_data_dir, --instance_data_dir, --use_8bit_adam, ...) work here as in train_lora.py
ARGV_NORMALIZERS = {"train-lora": _normalize}


def register(subparsers) -> None:
    from dermt2im_hub.training.launch import add_training_arguments

    p = subparsers.add_parser(
        "train-lora", help="DreamBooth-LoRA fine-tuning of Stable Diffusion (the paper's stage 2)",
        description="Train a LoRA adapter on an image folder (metadata.jsonl prompts, or --instance-prompt) and "
                    "write a Hub-ready folder. Same options as training_scripts/train_lora.py; see "
                    "docs/training.md.")
    launcher = p.add_argument_group("launcher (optional)")
    launcher.add_argument("--num-processes", type=int, default=None,
                          help="run under `accelerate launch` with N processes (DDP; one per GPU)")
    launcher.add_argument("--accelerate-config", default=None,
                          help="accelerate config file (e.g. configs/accelerate/multi_gpu.yaml)")
    add_training_arguments(p)
    p.set_defaults(func=_train_lora)


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The training options the user gave, spelled for train_lora.py."""
    argv: list[str] = []
    if args.config:
        argv += ["--config", str(args.config)]
    for item in args.set or []:
        argv += ["--set", item]
    for dest, value in vars(args).items():
        if not dest.startswith("cfg__") or value is None:
            continue
        flag = "--" + dest[len("cfg__"):].replace("__", ".").replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            argv += [flag, str(value)]
    return argv


def _accelerate_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    from dermt2im_hub.utils.launch import accelerate_launch

    prefix, env = accelerate_launch(args.num_processes or 1, args.accelerate_config)
    return prefix + ["-m", "dermt2im_hub.training.launch"] + forwarded_argv(args), env


def _train_lora(args: argparse.Namespace) -> int:
    if args.num_processes or args.accelerate_config:
        command, env = _accelerate_command(args)
        return subprocess.call(command, env=env)
    from dermt2im_hub.training.launch import main

    return main(forwarded_argv(args))
