"""`dermt2im generate`: render a synthetic benign/malignant set with A1111 samplers and full provenance."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ORDER = 30

_DESCRIPTION = """\
Render N images (split evenly over the classes and the samplers) from a Stable Diffusion base plus optional
LoRA adapters, with the paper's settings by default (Euler, Euler a and PLMS; 20-26 steps; CFG 7; 512 px) and
prompt "smart transformations" (lesion size, count, body site, Fitzpatrick skin type).

Output: OUT/{benign,malignant}/{index:05d}-{seed}.png with A1111 infotext, OUT/metadata.jsonl (one row per
image), OUT/contact_sheet.png, OUT/manifest.json, OUT/README.md. Re-running the same command resumes. Image i
depends only on (seed, i): the batch size and the number of processes do not change it (bitwise on CPU, given
the same --cpu-threads per process; to float precision on GPUs).

Examples:
  dermt2im generate --base stable-diffusion-v1-5/stable-diffusion-v1-5 --lora outputs/lora:0.8 \\
      --output outputs/generated --num-images 6000 --samplers "Euler,Euler a,PLMS" --steps 20-26 --cfg 7 \\
      --size 512 --seed 0
  dermt2im generate --config configs/paper.yaml --base derm-t2im.safetensors --output out --num-processes 8
  accelerate launch -m dermt2im_hub.generation --config configs/paper.yaml --base ... --output out
"""


def register(subparsers) -> None:
    from dermt2im_hub.config import add_common_config_flags, add_config_arguments
    from dermt2im_hub.generation.plan import GenerationConfig

    p = subparsers.add_parser("generate", help="render a synthetic dataset (A1111 samplers, resumable, multi-GPU)",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_config_flags(p)
    p.add_argument("--lora", dest="cfg__lora", action="append", default=None, metavar="PATH_OR_ID[:SCALE]",
                   help="LoRA adapter (diffusers or kohya .safetensors file, folder or Hub id) with an optional "
                        "scale, e.g. outputs/lora:0.8; repeat for several")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="start N worker processes with `accelerate launch` (one per GPU; on a CPU-only machine "
                        "N CPU ranks) and split the plan between them (default 1: this process)")
    add_config_arguments(p, GenerationConfig, skip=("lora", "transformations"))
    from dermt2im_hub.utils.output_folder import add_overwrite_flag

    add_overwrite_flag(p)
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from dermt2im_hub.config import config_from_args
    from dermt2im_hub.generation.plan import GenerationConfig

    config = config_from_args(GenerationConfig, args, section="generation")
    config.require_inputs()
    if "WORLD_SIZE" in os.environ:  # a worker: the launching process checked and claimed the folder
        return _run_generation(config, args)
    with _claimed_output(config, args.overwrite):
        return _run_generation(config, args)


def _run_generation(config, args: argparse.Namespace) -> int:
    if args.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_workers(config, args.num_processes)
    if args.num_processes < 1:
        from dermt2im_hub.cli import UserError

        raise UserError("--num-processes must be >= 1")

    from dermt2im_hub.cli.hub import write_stage_card
    from dermt2im_hub.generation.runner import generate

    result = generate(config)
    if result.rank == 0:
        write_stage_card(Path(result.output))
        print(f"{result.finished} of {result.planned} images in {result.output} (this run: {result.generated} "
              f"on rank 0, {result.images_per_second:.2f} img/s); see metadata.jsonl, contact_sheet.png, "
              "manifest.json, README.md")
    return 0 if result.finished == result.planned or result.rank != 0 else 1


def _claimed_output(config, overwrite: bool):
    """The output folder must be empty or an earlier generate output (whose plan generation itself compares);
    never the base model's folder or an adapter's."""
    from dermt2im_hub.generation.models import parse_adapter_spec
    from dermt2im_hub.utils.output_folder import claimed_output_folder

    weights = {"base": config.base, "single_file_config": config.single_file_config,
               "lora": [parse_adapter_spec(spec)[0] for spec in config.lora]}
    return claimed_output_folder(config.output, "generate", overwrite=overwrite, reads=weights)


def _launch_workers(config, num_processes: int) -> int:
    import subprocess

    from dermt2im_hub.config import save_config
    from dermt2im_hub.generation.outputs import STATE_DIR
    from dermt2im_hub.utils.launch import accelerate_launch

    # Workers read the resolved config, so they run exactly what this command was given.
    config_path = save_config(config, Path(config.output) / STATE_DIR / "launch_config.yaml")
    prefix, env = accelerate_launch(num_processes)
    cmd = prefix + ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dermt2im_hub.generation",
                    "--config", str(config_path)]
    print(f"starting {num_processes} processes: {' '.join(cmd)}", file=sys.stderr)
    code = subprocess.call(cmd, env=env)
    if code == 0:
        from dermt2im_hub.cli.hub import write_stage_card

        write_stage_card(Path(config.output))
    return code
