"""Foundation commands: `make-tiny-base` and `make-phantoms` (the offline test/demo inputs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dermt2im_hub.utils.output_folder import add_overwrite_flag, claimed_output_folder

ORDER = 90


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-tiny-base", help="save an offline SD1.5-shaped pipeline (random weights, or pretrained on phantoms)",
        description="Save a Stable Diffusion 1.5-shaped pipeline with the real CLIP tokenizer, loadable with "
                    "StableDiffusionPipeline.from_pretrained(DIR). By default its weights are random (small widths): "
                    "for fast tests and benchmarks, it generates noise-like images. --pretrained writes the tiny base "
                    "shipped with the package, pretrained on phantom images with class-neutral captions (the demo's "
                    "base: it draws lesion-like images); --pretrained --from-scratch retrains it (about 26 minutes on a busy "
                    "2-core machine, deterministic) and writes it in the shipped form (float16, no tokenizer files).")
    p.add_argument("output_dir", type=Path, help="folder to write the diffusers pipeline into")
    p.add_argument("--full-size", action="store_true",
                   help="build SD1.5's exact architecture (859.5M-parameter UNet) instead of the tiny one")
    p.add_argument("--pretrained", action="store_true",
                   help="write the shipped tiny base pretrained on phantoms instead of random weights")
    p.add_argument("--from-scratch", action="store_true",
                   help="with --pretrained: rerun the pretraining that made the shipped weights")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="weight dtype to save (default float32)")
    add_overwrite_flag(p)
    p.set_defaults(func=_make_tiny_base)

    p = subparsers.add_parser(
        "make-phantoms", help="write procedural dermoscopy-like images (the embedded default data)",
        description="Write N procedural dermoscopy-like images (half benign: round, even border; half malignant: "
                    "irregular, multi-coloured) over a range of skin tones, with metadata.jsonl and manifest.json "
                    "in the image-folder format the data stage writes. Same seed, same bytes.")
    p.add_argument("output_dir", type=Path, help="folder to write the image folder into")
    p.add_argument("--n", type=int, default=16, help="number of images, split evenly between classes (default 16)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--hair-probability", type=float, default=0.3, help="share of images with hair (default 0.3)")
    add_overwrite_flag(p)
    p.set_defaults(func=_make_phantoms)


def _make_tiny_base(args: argparse.Namespace) -> int:
    from dermt2im_hub.cli import UserError
    from dermt2im_hub.testing.tiny_base import make_tiny_base

    if args.from_scratch:
        if not args.pretrained or args.full_size:
            raise UserError("--from-scratch retrains the pretrained tiny base: use it with --pretrained only")
    if args.pretrained and args.full_size:
        raise UserError("only the tiny base ships pretrained weights: drop --full-size")
    with claimed_output_folder(args.output_dir, "tiny_base", overwrite=args.overwrite):
        if args.from_scratch:
            from dermt2im_hub.testing.pretrain import pretrain_tiny_base

            out = pretrain_tiny_base(args.output_dir)
            print(f"tiny base pretrained from scratch and written to {out} (shipped form: float16, no tokenizer; "
                  f"compare its dermt2im_tiny_base.json sha256s with dermt2im_hub/testing/tiny_sd15/)")
            return 0
        out = make_tiny_base(args.output_dir, full_size=args.full_size, seed=args.seed, dtype=args.dtype,
                             pretrained=args.pretrained)
    print(f"{'pretrained' if args.pretrained else 'random-weight'} tiny base written to {out}")
    return 0


def _make_phantoms(args: argparse.Namespace) -> int:
    from dermt2im_hub.config import load_config
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    config = load_config(PhantomConfig, overrides={"num_images": args.n, "size": args.size, "seed": args.seed,
                                                   "hair_probability": args.hair_probability})
    with claimed_output_folder(args.output_dir, "phantoms", overwrite=args.overwrite):
        out = make_phantoms(args.output_dir, config)
    print(f"{config.num_images} phantom images written to {out} (metadata.jsonl, manifest.json)")
    return 0
