"""Speed against quality (issue 18): images/s and fidelity for 10-30 steps per sampler and for feature caching.

    python bench/speed_quality.py --base DIR        # a diffusers folder: the pretrained tiny base (the tiny world)
    python bench/speed_quality.py                   # no --base: the random tiny base (says so in the table)
    python bench/speed_quality.py --samplers "Euler a,DPM++ 2M Karras" --steps 10,20 --cache-intervals 2,3

Every row renders the same --images plan indices (same seeds, prompts and classes) through
`dermt2im_hub.generation.generate()` end to end (batches, PNGs with infotext, metadata), changing only the
sampler, the steps or the feature cache (`feature_cache_interval`, `feature_cache_depth`). Columns:
- images/s (the run's own timer: sampling + PNG writing, model loading excluded; best of --repeats) and its
  ratio to the sampler's reference row (the most steps, no cache);
- UNet calls per batch, full and shallow (what the cache skips), and the UNet work they make (shallow calls
  weighted by their share of a full call's FLOPs on this UNet, from torch's FLOP counter) as a speed-up over the
  reference row: machine-independent, unlike images/s on a shared CPU;
- fidelity against phantom images (the world the tiny base was trained on, seed 0 so not its training images)
  in the QA stage's feature space (dermt2im_hub.quality.features / fidelity): FID and KID (x1000) of the
  row's images vs --phantoms phantoms, and their ratio to the reference row's;
- "to ref": mean absolute pixel difference (0-255) to the reference row's image of the same seed. Ancestral and
  SDE samplers draw new noise at every step, so their images move more with the step count.
FID of a few hundred images is biased upwards; compare rows of one run, not numbers across runs or papers.
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
if str(ROOT) not in sys.path:  # run from a source tree that is not installed
    sys.path.insert(0, str(ROOT))

SHARED_MOBILENET = ROOT.parent / "shared" / "models" / "mobilenetv2_100.tf_in1k"
PROMPT = "a dermoscopic image of a {label} skin lesion"


def parse_args(argv=None):
    from dermt2im_hub.generation.samplers import known_samplers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None, help="diffusers folder of the base (default: the random tiny base)")
    p.add_argument("--samplers", default=",".join(known_samplers()), help="comma-separated A1111 sampler names")
    p.add_argument("--steps", default="10,20,30", help="step counts without cache; the largest is the reference")
    p.add_argument("--cache-intervals", default="2,3", help="feature cache intervals to measure (rows per sampler)")
    p.add_argument("--cache-depths", default="1", help="feature cache depths to measure")
    p.add_argument("--cache-steps", default="20,30", help="step counts at which the cache rows run")
    p.add_argument("--images", type=int, default=128, help="images per row (plan indices 0..N-1)")
    p.add_argument("--phantoms", type=int, default=512, help="phantom images in the real set")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per row; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--features", default="auto", help="timm model for the fidelity features; auto: the shared "
                   "ImageNet MobileNetV2 (../shared/models) when present, else a random-init resnet18 (QA default)")
    p.add_argument("--feature-size", type=int, default=None, help="extractor input side (default: the model's)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def build_extractor(args):
    from dermt2im_hub.quality.features import TimmFeatureExtractor

    if args.features == "auto":
        if (SHARED_MOBILENET / "model.safetensors").is_file():
            extractor = TimmFeatureExtractor(f"local-dir:{SHARED_MOBILENET}", weights="hub",
                                             image_size=args.feature_size)
            extractor.name = f"mobilenetv2_100.tf_in1k [ImageNet, ../shared/models] @{extractor.image_size}px"
            return extractor
        return TimmFeatureExtractor("resnet18", None, 0, args.feature_size or 64)
    return TimmFeatureExtractor(args.features, None, 0, args.feature_size)


def phantom_pixels(count: int, size: int):
    """The real set: phantoms rendered at 128 px and shrunk to the base's size (as the tiny base was trained)."""
    import cv2
    import numpy as np

    from dermt2im_hub.labels import CLASS_NAMES
    from dermt2im_hub.testing.phantoms import PhantomConfig, render_phantom

    config = PhantomConfig(num_images=count, size=128, seed=0)
    images = []
    for i in range(count):
        rgb = np.asarray(render_phantom(i, CLASS_NAMES[i % len(CLASS_NAMES)], config).convert("RGB"))
        images.append(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA))
    return images


def load_base_pipeline(args, work: Path):
    import torch

    from dermt2im_hub.config import load_config
    from dermt2im_hub.generation.plan import GenerationConfig
    from dermt2im_hub.generation.runner import load_pipeline

    if args.base:
        base_dir, world = args.base, f"base {args.base}"
    else:
        from dermt2im_hub.testing.tiny_base import make_tiny_base

        base_dir, world = str(make_tiny_base(work / "random-tiny-base")), "the RANDOM tiny base (noise, not a world)"
    config = load_config(GenerationConfig, overrides={"base": base_dir, "output": str(work / "unused"),
                                                      "dtype": "float32"})
    pipe, base, adapters = load_pipeline(config, device=torch.device("cpu"))
    return pipe, base, adapters, base_dir, world


def shallow_flop_share(unet, depth: int, latent_side: int) -> float:
    """FLOPs of a shallow UNet call over a full one, counted by torch's FLOP counter with the plain attention
    processor (the counter does not see inside fused SDPA kernels); the UNet's processors are put back."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    from dermt2im_hub.generation.feature_cache import FeatureCache

    device = unet.device
    latent = torch.zeros(2, unet.config.in_channels, latent_side, latent_side, device=device)
    text = torch.zeros(2, 77, unet.config.cross_attention_dim, device=device)
    processors = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    cache = FeatureCache(unet, interval=2, depth=depth)
    flops = []
    try:
        with torch.inference_mode():
            for _ in range(2):  # a full call, then a shallow one
                with FlopCounterMode(display=False) as counter:
                    unet(latent, torch.tensor(500, device=device), text)
                flops.append(counter.get_total_flops())
    finally:
        cache.detach()
        unet.set_attn_processor(processors)
    return flops[1] / flops[0]


def sd15_flop_shares() -> dict[int, float]:
    """The same share for SD1.5's UNet at 512 px (64x64 latents), built on the meta device: no memory, no time."""
    import torch
    from diffusers import UNet2DConditionModel

    from dermt2im_hub.generation.feature_cache import max_depth
    from dermt2im_hub.testing.tiny_base import _unet_kwargs  # the architecture the full-size bench rows use

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_unet_kwargs(full_size=True))
    return {depth: shallow_flop_share(unet, depth, 64) for depth in range(1, max_depth(unet) + 1)}


def render_row(pipe, base, args, work: Path, sampler: str, steps: int, interval: int, depth: int):
    """(best images/s, {index: pixels}, manifest extra, UNet calls of the last run) of one row."""
    import numpy as np
    from PIL import Image

    from dermt2im_hub.config import load_config
    from dermt2im_hub.generation.plan import GenerationConfig
    from dermt2im_hub.generation.runner import generate
    from dermt2im_hub.utils.files import read_jsonl

    best, folder, calls = 0.0, None, []
    hook = pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for r in range(args.repeats):
            calls.clear()
            folder = work / f"{sampler.replace(' ', '_')}-{steps}-c{interval}d{depth}-{r}"
            config = load_config(GenerationConfig, overrides={
                "base": args.base_dir, "output": str(folder), "num_images": args.images, "samplers": [sampler],
                "steps": str(steps), "cfg": args.cfg, "size": args.size, "batch_size": args.batch_size,
                "progress": False, "transformations": {}, "prompt_template": PROMPT, "dtype": "float32",
                "feature_cache_interval": interval, "feature_cache_depth": depth})
            best = max(best, generate(config, pipeline=(pipe, base, [])).images_per_second)
    finally:
        hook.remove()
    pixels = {}
    for row in read_jsonl(folder / "metadata.jsonl"):
        with Image.open(folder / row["file_name"]) as image:
            pixels[row["index"]] = np.asarray(image.convert("RGB"))
    extra = json.loads((folder / "manifest.json").read_text())["extra"]
    return best, pixels, extra, len(calls)


def main(argv=None) -> int:
    args = parse_args(argv)

    import numpy as np
    import torch

    from dermt2im_hub.generation.samplers import canonical_sampler_name
    from dermt2im_hub.quality.fidelity import frechet_distance, kernel_inception_distance

    if args.threads:
        torch.set_num_threads(args.threads)
    samplers = [canonical_sampler_name(s) for s in args.samplers.split(",") if s.strip()]
    steps_list, reference_steps = _ints(args.steps), max(_ints(args.steps))
    intervals, depths, cache_steps = _ints(args.cache_intervals), _ints(args.cache_depths), _ints(args.cache_steps)
    work = Path(tempfile.mkdtemp(prefix="bench-speed-quality-"))

    t0 = time.perf_counter()
    pipe, base, _, args.base_dir, world = load_base_pipeline(args, work)
    extractor = build_extractor(args)
    real = extractor.embed(phantom_pixels(args.phantoms, args.size))
    shares = {d: shallow_flop_share(pipe.unet, d, args.size // 8) for d in depths}
    sd15_shares = sd15_flop_shares()
    print(f"setup {time.perf_counter() - t0:.1f}s: {world}; features {extractor.name}", flush=True)
    print("shallow call / full call UNet FLOPs (torch FLOP counter): this base " +
          ", ".join(f"depth {d} {v:.3f}" for d, v in shares.items()) + "; SD1.5 at 512 px " +
          ", ".join(f"depth {d} {v:.3f}" for d, v in sd15_shares.items()), flush=True)

    rows: list[dict] = []
    device = f"CPU ({platform.machine()}, {torch.get_num_threads()} thread(s))"

    def write_json() -> None:
        if args.json:
            args.json.write_text(json.dumps({"device": device, "world": world, "base": args.base_dir,
                                             "features": extractor.describe(), "shallow_flop_share": shares,
                                             "sd15_shallow_flop_share": sd15_shares,
                                             "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                            indent=2) + "\n")

    for sampler in samplers:
        settings = [(steps, 0, 1) for steps in sorted(steps_list, reverse=True)]  # the reference comes first
        settings += [(steps, i, d) for steps in cache_steps for i in intervals for d in depths]
        reference = None
        for steps, interval, depth in settings:
            per_s, pixels, extra, calls = render_row(pipe, base, args, work, sampler, steps, interval, depth)
            fake = extractor.embed([pixels[i] for i in sorted(pixels)])
            kid, kid_sd = kernel_inception_distance(real, fake, subset_size=min(len(fake), 100), subsets=50)
            row = {"sampler": sampler, "steps": steps, "cache": f"interval {interval}, depth {depth}" if interval
                   else "off", "images_per_s": round(per_s, 3), "fid": round(frechet_distance(real, fake), 2),
                   "kid_x1000": round(1000 * kid, 2), "kid_sd_x1000": round(1000 * kid_sd, 2)}
            shallow = (extra.get("feature_cache") or {}).get("shallow_unet_calls_rank0", 0)
            batches = -(-args.images // args.batch_size)  # one UNet call serves a whole batch
            row["unet_calls_full"] = round((calls - shallow) / batches, 2)
            row["unet_calls_shallow"] = round(shallow / batches, 2)
            # UNet work in full-call equivalents: machine-independent, unlike images/s on a shared CPU
            row["unet_work"] = round(row["unet_calls_full"] + row["unet_calls_shallow"] * shares.get(depth, 0.0), 2)
            if reference is None:
                reference = {"row": row, "pixels": pixels}
            row["speed_vs_ref"] = round(per_s / reference["row"]["images_per_s"], 3)
            row["unet_work_vs_ref"] = round(reference["row"]["unet_work"] / row["unet_work"], 3)
            row["fid_vs_ref"] = round(row["fid"] / reference["row"]["fid"], 3) if reference["row"]["fid"] else None
            row["to_ref"] = round(float(np.mean([np.abs(pixels[i].astype(np.int16) - reference["pixels"][i]).mean()
                                                 for i in pixels])), 2)
            rows.append(row)
            print(f"  {sampler}, {steps} steps, cache {row['cache']}: {per_s:.2f} img/s ({row['speed_vs_ref']:.2f}x), "
                  f"FID {row['fid']}, KID {row['kid_x1000']}e-3, to ref {row['to_ref']}", flush=True)
            write_json()

    print(f"\nSpeed vs quality on {device}: {world}; {args.size} px, CFG {args.cfg:g}, {args.images} images per "
          f"row, batch {args.batch_size}; fidelity vs {args.phantoms} phantoms in {extractor.name} features; "
          f"reference row per sampler: {reference_steps} steps, no cache; total {time.perf_counter() - t0:.0f}s\n")
    print("| sampler | steps | feature cache | UNet calls (full + shallow) | UNet work: ref / row | images/s | vs ref "
          "| FID | FID / ref | KID x1e3 | to ref (px) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        calls = f"{row['unet_calls_full']:g} + {row['unet_calls_shallow']:g}"
        print(f"| {row['sampler']} | {row['steps']} | {row['cache']} | {calls} | {row['unet_work_vs_ref']:.2f}x | "
              f"{row['images_per_s']:.2f} | "
              f"{row['speed_vs_ref']:.2f}x | {row['fid']:.1f} | {row['fid_vs_ref']:.2f} | "
              f"{row['kid_x1000']:.1f} +- {row['kid_sd_x1000']:.1f} | {row['to_ref']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
