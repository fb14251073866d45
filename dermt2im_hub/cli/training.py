"""`dermt2im train-lora`: the LoRA stage from the package's own command line.

Without launcher options it trains in this process (one CPU or GPU). With `--num-processes N` or
`--accelerate-config FILE` it runs `accelerate launch ... -m dermt2im_hub.training.launch --config RESOLVED.yaml`
with the config this command built (parsed once), which is what `accelerate launch training_scripts/train_lora.py
--config RESOLVED.yaml` runs; on a machine without CUDA,
`--num-processes N` makes a real gloo DDP group (ACCELERATE_USE_CPU=1).
"""

from __future__ import annotations

import argparse

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


def _config(args: argparse.Namespace):
    """The training config, built once from the parsed options (YAML <- --set <- --options)."""
    from dermt2im_hub.config import config_from_args
    from dermt2im_hub.training.config import SECTION, TrainLoraConfig

    return config_from_args(TrainLoraConfig, args, section=SECTION)


def _launch(config, args: argparse.Namespace) -> int:
    """`accelerate launch -m dermt2im_hub.training.launch --config RESOLVED.yaml`: the workers read the config
    this command resolved (as generation's do), not a command line rebuilt from parsed options."""
    import tempfile
    from pathlib import Path

    from dermt2im_hub.config import save_config
    from dermt2im_hub.training.launch import check_output
    from dermt2im_hub.utils.launch import accelerate_launch, call_child

    check_output(config, args.overwrite)  # refused here, before any process starts
    prefix, env = accelerate_launch(args.num_processes or 1, args.accelerate_config)
    with tempfile.TemporaryDirectory(prefix="dermt2im-train-") as folder:
        resolved = save_config(config, Path(folder) / "train_lora.yaml")
        command = prefix + ["-m", "dermt2im_hub.training.launch", "--config", str(resolved)]
        return call_child(command + (["--overwrite"] if args.overwrite else []), env)


def _train_lora(args: argparse.Namespace) -> int:
    from dermt2im_hub.training.launch import run

    config = _config(args)
    if args.num_processes or args.accelerate_config:
        return _launch(config, args)
    return run(config, overwrite=args.overwrite)
