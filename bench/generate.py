"""Generation throughput (issue 11, item 2): our generator vs calling the plain diffusers pipeline once per image.

    python bench/generate.py                                   # CPU, tiny SD1.5-shaped base, 64 px
    python bench/generate.py --full-size --device cuda          # SD1.5's architecture, 512 px, fp16
    python bench/generate.py --full-size --device cuda --batch-sizes 16,32 --compile

Both rows use the same in-memory components (random weights from dermt2im_hub.testing.tiny_base), the same
sampler (Euler a, A1111's linspace schedule), steps, CFG, size and precision, and both write one PNG per image:
- per-image: `pipe(prompt, generator=...)` once per image with diffusers' defaults, then `image.save(png)`;
- ours: `dermt2im_hub.generation.generate()` end to end (plan, batches of images sharing sampler/steps, one
  generator per image, SDPA, fused QKV projections and channels_last on CUDA, optional torch.compile of the
  UNet and VAE decoder, PNGs with infotext written on
  threads while the next batch samples, metadata.jsonl, contact sheet and manifest).
- ours + feature cache (--cache-intervals N,...): the same with `feature_cache_interval: N` (DeepCache-style: the
  full UNet every N-th call, its shallow branch in between; --cache-depth layers of the outer level), which
  trades a little fidelity for speed (bench/speed_quality.py measures the fidelity on the tiny world).
Timings exclude model building and one warm-up pass per row; each row is timed --repeats times and the fastest
counts (on CPU in alternating rounds, so both rows see the same load from other processes). MFU (CUDA) counts the UNet at 677 GFLOPs per
forward at a 64x64 latent (two forwards per step with CFG) plus 2.48 TFLOPs per VAE decode at 512 px, both
scaled by pixel area, against --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source tree that is not installed (the GPU machine)
    sys.path.insert(0, str(ROOT))

UNET_GFLOPS_512 = 677.0  # SD1.5 UNet forward at a 64x64 latent (DESIGN.md)
VAE_DECODE_GFLOPS_512 = 2480.0  # SD1.5 VAE decode of one 512 px image
PROMPT = "a dermoscopic image of a {label} skin lesion"


def flops_per_image(steps: int, cfg: float, size: int) -> float:
    area = (size / 512) ** 2
    unet_calls = steps * (2 if cfg > 1 else 1)
    return (unet_calls * UNET_GFLOPS_512 + VAE_DECODE_GFLOPS_512) * area * 1e9


def build_pipeline(full_size: bool, device: str, dtype):
    import torch
    from diffusers import StableDiffusionPipeline

    from dermt2im_hub.testing.tiny_base import build_tiny_components

    with tempfile.TemporaryDirectory() as tok:
        components = build_tiny_components(full_size=full_size, seed=0, tokenizer_dir=tok)
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.to(torch.device(device))
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_per_image(pipe, args, out: Path, count: int, first_seed: int = 0) -> float:
    """The plain pipeline, once per image, as a script or a web UI's simple loop would call it."""
    import torch

    from dermt2im_hub.generation.samplers import make_scheduler

    pipe.scheduler = make_scheduler(args.sampler, pipe.scheduler.config)
    out.mkdir(parents=True, exist_ok=True)
    _sync(args.device)
    t0 = time.perf_counter()
    for i in range(count):
        label = ("benign", "malignant")[i % 2]
        image = pipe(PROMPT.format(label=label), num_inference_steps=args.steps, guidance_scale=args.cfg,
                     height=args.size, width=args.size,
                     generator=torch.Generator("cpu").manual_seed(first_seed + i)).images[0]
        image.save(out / f"{i:05d}.png")
    _sync(args.device)
    return time.perf_counter() - t0


def run_ours(pipe, args, out: Path, count: int, batch_size: int, cache_interval: int = 0) -> float:
    from dermt2im_hub.config import load_config
    from dermt2im_hub.generation.models import BaseModelInfo
    from dermt2im_hub.generation.plan import GenerationConfig
    from dermt2im_hub.generation.runner import generate

    config = load_config(GenerationConfig, overrides={
        "base": "in-memory/sd15-shaped-random", "output": str(out), "num_images": count, "samplers": [args.sampler],
        "steps": str(args.steps), "cfg": args.cfg, "size": args.size, "batch_size": batch_size, "progress": False,
        "transformations": {}, "prompt_template": "a dermoscopic image of a {label} skin lesion",
        "dtype": "float16" if args.dtype == "fp16" else "bfloat16" if args.dtype == "bf16" else "float32",
        "feature_cache_interval": cache_interval, "feature_cache_depth": args.cache_depth})
    base = BaseModelInfo(id="in-memory/sd15-shaped-random", kind="memory", revision=None, sha256="0" * 64,
                         hashed_file="(in memory)", name="sd15-shaped-random", local_path="")
    _sync(args.device)
    t0 = time.perf_counter()
    result = generate(config, pipeline=(pipe, base, []))
    _sync(args.device)
    seconds = time.perf_counter() - t0
    assert result.finished == count, result
    return seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--full-size", action="store_true", help="SD1.5's real architecture (random weights), 512 px")
    p.add_argument("--size", type=int, default=None, help="image side (default 64, or 512 with --full-size)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="precision of both rows (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--images", type=int, default=None, help="images timed for our row (default 32; 128 on CUDA)")
    p.add_argument("--baseline-images", type=int, default=None, help="images timed per image (default 16)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes for our rows (default 8; 32 CUDA)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats per row; the fastest counts (shared machines are noisy)")
    p.add_argument("--cache-intervals", default="", help="comma-separated feature cache intervals: one more row "
                   "of ours (largest batch size) per interval (default: none)")
    p.add_argument("--cache-depth", type=int, default=1, help="feature cache depth of those rows")
    p.add_argument("--compile", action="store_true", help="add a row with torch.compile of the UNet and the VAE decoder (CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default). Default 1: on "
                   "a shared machine, OpenMP teams of 2+ threads stall whenever another process takes a core")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense fp16/bf16 peak for MFU (H100/H200 SXM)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    cuda = args.device == "cuda"
    args.size = args.size or (512 if args.full_size else 64)
    args.dtype = args.dtype or ("fp16" if cuda else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    ours_images = args.images or (128 if cuda else 32)
    baseline_images = args.baseline_images or 16
    batch_sizes = [int(b) for b in (args.batch_sizes or ("32" if cuda else "8")).split(",")]
    # (row name, batch size, feature cache interval): the cache rows use the largest batch
    ours_rows = [(f"ours (batch {b})", b, 0) for b in batch_sizes]
    ours_rows += [(f"ours + feature cache interval {i} (batch {batch_sizes[-1]})", batch_sizes[-1], i)
                  for i in (int(x) for x in args.cache_intervals.split(",") if x.strip())]
    if args.threads and not cuda:
        torch.set_num_threads(args.threads)

    t_build = time.perf_counter()
    pipe = build_pipeline(args.full_size, args.device, dtype)
    build_seconds = time.perf_counter() - t_build
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    rows = []
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                            f"{torch.get_num_threads()} threads)"

    def write_json() -> None:  # after every row: a row cut off by gpu.sh's time limit loses only itself
        if args.json:
            args.json.write_text(json.dumps({"device": device_name, "args": {k: str(v) for k, v in vars(args).items()},
                                             "rows": rows}, indent=2) + "\n")

    def record(name: str, images: int, seconds: float, cached: bool = False) -> None:
        per_s = images / seconds
        # a cached row skips most of the UNet on its shallow calls: the full-UNet FLOP count would overstate MFU
        mfu = per_s * flops_per_image(args.steps, args.cfg, args.size) / (args.peak_tflops * 1e12) \
            if cuda and not cached else None
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        rows.append({"row": name, "images": images, "seconds": round(seconds, 3), "images_per_s": round(per_s, 3),
                     "mfu": round(mfu, 4) if mfu is not None else None,
                     "peak_gb": round(peak_gb, 1) if peak_gb is not None else None})
        print(f"  {name}: {images} images in {seconds:.2f}s = {per_s:.2f} img/s", flush=True)
        write_json()

    from dermt2im_hub.generation.runner import compile_pipeline, prepare_pipeline

    run_per_image(pipe, args, work / "warm-per-image", 1, first_seed=10_000)  # warm-up
    if not cuda:
        # A shared CPU is noisy: time the rows in alternating rounds so each sees the same conditions. On CPU,
        # prepare_pipeline changes nothing the plain pipeline lacks (SDPA is diffusers' default there too).
        prepare_pipeline(pipe, torch.device(args.device), dtype)
        for k, (_, batch, interval) in enumerate(ours_rows):
            run_ours(pipe, args, work / f"warm-{k}", batch, batch, interval)
        best: dict = {}
        for r in range(args.repeats):
            best["per-image"] = min(best.get("per-image", float("inf")),
                                    run_per_image(pipe, args, work / f"per-image-{r}", baseline_images))
            for k, (_, batch, interval) in enumerate(ours_rows):
                best[k] = min(best.get(k, float("inf")),
                              run_ours(pipe, args, work / f"ours-{k}-{r}", ours_images, batch, interval))
        record("per-image pipeline", baseline_images, best["per-image"])
        for k, (name, _, interval) in enumerate(ours_rows):
            record(name, ours_images, best[k], cached=interval > 0)
    else:
        record("per-image pipeline", baseline_images,
               min(run_per_image(pipe, args, work / f"per-image-{r}", baseline_images) for r in range(args.repeats)))
        prepare_pipeline(pipe, torch.device(args.device), dtype)
        variants = [(name, batch, interval, False) for name, batch, interval in ours_rows]
        if args.compile:  # last: compilation is the slowest part, and the modules stay compiled
            variants.append((f"ours + torch.compile (batch {batch_sizes[-1]})", batch_sizes[-1], 0, True))
        for name, batch, interval, compiled in variants:
            if compiled:
                compile_pipeline(pipe)
            torch.cuda.reset_peak_memory_stats()
            run_ours(pipe, args, work / f"warm-{len(rows)}", batch, batch, interval)  # warm-up (and compilation)
            if compiled and not hasattr(pipe.unet, "_orig_mod"):  # generate() fell back to eager: say so
                name = f"ours, torch.compile FAILED so eager (batch {batch})"
            record(name, ours_images, min(run_ours(pipe, args, work / f"ours-{len(rows)}-{r}", ours_images, batch,
                                                   interval) for r in range(args.repeats)), cached=interval > 0)

    baseline = rows[0]["images_per_s"]
    print(f"\nGeneration throughput on {device_name}: {'full-size SD1.5' if args.full_size else 'tiny base'}, "
          f"{args.size} px, {args.steps} steps, CFG {args.cfg:g}, {args.sampler}, {args.dtype}; "
          f"model build {build_seconds:.1f}s (excluded)\n")
    print("| row | images | seconds | images/s | vs per-image | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        mfu = f"{row['mfu'] * 100:.1f}%" if row["mfu"] is not None else "-"
        peak = f"{row['peak_gb']}" if row["peak_gb"] is not None else "-"
        print(f"| {row['row']} | {row['images']} | {row['seconds']} | {row['images_per_s']} | "
              f"{row['images_per_s'] / baseline:.2f}x | {mfu} | {peak} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
