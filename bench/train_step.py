"""LoRA training-step throughput and peak memory (issue 11, item 1): our step vs diffusers' per-step recipe.

    python bench/train_step.py                                        # CPU, tiny SD1.5-shaped base, 64 px
    python bench/train_step.py --full-size --device cuda --resolution 512 --mixed-precision bf16
    python bench/train_step.py --compile                              # adds a torch.compile row

Rows (same base, batch, rank, resolution, precision and AdamW hyperparameters everywhere):
- reference: what examples/dreambooth/train_dreambooth_lora.py does each step with its defaults (dataloader in
  the main process): open and decode each PNG, resize/crop/normalise with torchvision, tokenize the prompt,
  VAE-encode the batch and sample its latent, run the text encoder, UNet forward/backward, clip, torch AdamW
  (default kernel), LR-scheduler step, `loss.item()` for the progress bar.
- reference, tensors in memory: the same without the data loading (images pre-decoded on the device), to show
  how much of the gap is the input pipeline and how much the VAE / text encoder.
- ours: the step of `dermt2im_hub.training` (step.diffusion_loss, cache.LatentCache / PromptTable,
  step.EpochSampler, step.seeded_generator, step.build_optimizer): latents and prompt embeddings encoded once,
  SDPA attention, fused AdamW, channels_last, loss read every 10 steps.
- ours - X: the same with one optimisation removed; ours/row is that optimisation's share of the speed-up.

Every row runs in its own process on CPU (peak RSS sampled every 2 ms during warm-up and timing); on CUDA in
this process with torch.cuda.max_memory_allocated; there the JSON is rewritten after every row, so a row that
runs past gpu.sh's time limit loses only itself. MFU (CUDA) counts the UNet's training work only: the forward
(677 GFLOPs per 512-px sample) and a backward that computes activation gradients only (the base is frozen, so
no weight gradients; the rank-4 LoRA adds under 1 %), i.e. 2 x 677 GFLOPs, scaled by latent area, against
--peak-tflops. The 3x rule of full fine-tuning would print 1.5x higher MFUs for the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source tree that is not installed (the GPU machine)
    sys.path.insert(0, str(ROOT))

UNET_GFLOPS_512 = 677.0  # SD1.5 UNet forward at a 64x64 latent (DESIGN.md)
TRAIN_FORWARDS_PER_SAMPLE = 2  # forward + activation-gradient backward; a frozen base needs no weight gradients
PROMPTS = ["a dermoscopic image of a benign skin lesion", "a dermoscopic image of a malignant skin lesion"]


def variants(device: str, with_compile: bool) -> dict[str, dict]:
    ours = {"kind": "ours", "cache_latents": True, "cache_text": True, "fused": True, "attention": "sdpa",
            "channels_last": True, "compile": False}
    rows = {"reference": {"kind": "reference", "attention": "sdpa", "load_images": True},
            "reference, tensors in memory": {"kind": "reference", "attention": "sdpa", "load_images": False},
            "ours": ours,
            "ours - latent cache": {**ours, "cache_latents": False},
            "ours - text cache": {**ours, "cache_text": False},
            "ours - fused AdamW": {**ours, "fused": False},
            "ours - SDPA (classic attention)": {**ours, "attention": "classic"}}
    flipped = "ours - channels_last" if ours["channels_last"] else "ours + channels_last"
    rows[flipped] = {**ours, "channels_last": not ours["channels_last"]}
    if with_compile:
        rows["ours + torch.compile"] = {**ours, "compile": True}
    return rows


class PeakRss:
    """Peak anonymous resident memory (heap, tensors; not library code pages, which the first call of a kernel
    maps in) of this process while active, sampled (CPU rows)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            fields = handle.read().split()
        return (int(fields[1]) - int(fields[2])) * self._page  # resident minus file-backed/shared

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def build(args, variant: dict):
    """Frozen base in the compute dtype with a fp32 LoRA on the UNet; images and prompts on the device."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params

    from dermt2im_hub.labels import CLASS_NAMES
    from dermt2im_hub.testing.phantoms import PhantomConfig, render_phantom
    from dermt2im_hub.testing.tiny_base import SD15_SCHEDULER_CONFIG, build_tiny_components
    from dermt2im_hub.training.lora import add_unet_lora
    from dermt2im_hub.training.step import prepare_unet

    device = torch.device(args.device)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    with torch.device(device):  # random init directly on the device (full size on CPU would take minutes)
        parts = build_tiny_components(full_size=args.full_size, seed=0,
                                      tokenizer_dir=Path(tempfile.mkdtemp(prefix="bench-tok-")))
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
        model.to(device, dtype=dtype)
    prepare_unet(unet, variant.get("attention", "sdpa"), variant.get("channels_last", False))
    torch.manual_seed(0)
    add_unet_lora(unet, args.rank, float(args.rank), ["to_q", "to_k", "to_v", "to_out.0"])
    cast_training_params(unet, dtype=torch.float32)
    scheduler = DDPMScheduler.from_config({k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k != "_class_name"})
    config = PhantomConfig(size=args.resolution)
    images = [torch.from_numpy(__import__("numpy").asarray(render_phantom(i, CLASS_NAMES[i % 2], config),
                                                           dtype="float32")) for i in range(args.images)]
    pixels = (torch.stack(images).permute(0, 3, 1, 2) / 127.5 - 1.0).to(device)
    folder = Path(tempfile.mkdtemp(prefix="bench-images-"))
    files = []
    for i in range(args.images):  # the reference reads these PNGs every step, as the script's dataset does
        files.append(folder / f"{i:04d}.png")
        render_phantom(i, CLASS_NAMES[i % 2], config).save(files[-1])
    labels = torch.arange(args.images, device=device) % 2
    input_ids = parts["tokenizer"](PROMPTS, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids.to(device)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=parts["tokenizer"], scheduler=scheduler,
                pixels=pixels, labels=labels, input_ids=input_ids, dtype=dtype, device=device, files=files)


def reference_batch(args, m, idx):
    """The script's DreamBoothDataset + collate: PIL decode, torchvision transforms, tokenizer, per item."""
    import torch
    from PIL import Image, ImageOps
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(args.resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    pixels, ids = [], []
    for i in idx.tolist():
        image = ImageOps.exif_transpose(Image.open(m["files"][i])).convert("RGB")
        pixels.append(transform(image))
        ids.append(m["tokenizer"](PROMPTS[i % 2], truncation=True, padding="max_length", max_length=77,
                                  return_tensors="pt").input_ids)
    return torch.stack(pixels).to(m["device"]), torch.cat(ids).to(m["device"])


def autocast(args, m):
    import torch

    enabled = args.mixed_precision != "no"
    return torch.autocast(m["device"].type, dtype=m["dtype"], enabled=enabled)


def reference_step_fn(args, m, load_images: bool = True):
    """diffusers' train_dreambooth_lora.py, per step (written from its description, not copied)."""
    import torch
    import torch.nn.functional as F

    params = [p for p in m["unet"].parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    unet, vae, te, scheduler = m["unet"], m["vae"], m["text_encoder"], m["scheduler"]

    def step(i: int) -> None:
        idx = torch.randint(0, len(m["pixels"]), (args.batch_size,))
        if load_images:
            pixels, input_ids = reference_batch(args, m, idx)
        else:
            idx = idx.to(m["device"])
            pixels, input_ids = m["pixels"][idx], m["input_ids"][m["labels"][idx]]
        with autocast(args, m):
            latents = vae.encode(pixels.to(m["dtype"])).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), device=m["device"])
            noisy = scheduler.add_noise(latents, noise, timesteps)
            hidden = te(input_ids, return_dict=False)[0]
            prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        loss.detach().item()  # the script's progress bar shows the loss every step

    return step, 0.0


def ours_step_fn(args, m, variant: dict):
    import torch

    from dermt2im_hub.training.cache import build_prompt_table, encode_pixel_batches
    from dermt2im_hub.training.step import EpochSampler, build_optimizer, diffusion_loss, seeded_generator

    unet, vae, te = m["unet"], m["vae"], m["text_encoder"]
    t0 = time.perf_counter()
    cache = None
    if variant["cache_latents"]:
        # VAE batches no larger than a training batch, as the trainer does (vae_batch_size default)
        cache = encode_pixel_batches(vae, m["pixels"].split(args.batch_size), with_flips=False)
    table = build_prompt_table(m["tokenizer"], te, PROMPTS, m["device"], encode=variant["cache_text"])
    _sync(m)
    cache_seconds = time.perf_counter() - t0
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = build_optimizer([{"params": params, "lr": 1e-4}], "adamw", (0.9, 0.999), 1e-2, 1e-8,
                                fused=variant["fused"])
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    sampler = EpochSampler(len(m["pixels"]), args.batch_size, seed=0)
    model = torch.compile(unet) if variant["compile"] else unet
    running = torch.zeros((), device=m["device"])

    def step(i: int) -> None:
        nonlocal running
        plan = sampler.plan(i)
        generator = seeded_generator(m["device"], 0, 0, i)
        idx = plan.indices.to(m["device"], non_blocking=True)
        with autocast(args, m):
            if cache is not None:
                latents = cache.sample(idx, plan.views.to(m["device"]), generator)
            else:
                with torch.no_grad():
                    dist = vae.encode(m["pixels"][idx].to(m["dtype"])).latent_dist
                latents = dist.sample(generator) * vae.config.scaling_factor
            with torch.no_grad():
                hidden = table.hidden_states(m["labels"][idx], te)
            loss = diffusion_loss(model, m["scheduler"], latents, hidden, generator,
                                  channels_last=variant["channels_last"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        if (i + 1) % 10 == 0:  # the trainer logs every logging_steps (default 10)
            running.item()
            running = torch.zeros((), device=m["device"])

    return step, cache_seconds


def _sync(m) -> None:
    import torch

    if m["device"].type == "cuda":
        torch.cuda.synchronize()


class Row:
    """One row: models built and warmed up once, then timed in chunks (interleaved with the other rows)."""

    def __init__(self, args, name: str, variant: dict):
        self.args, self.name, self.variant = args, name, variant
        self.rates: list[float] = []

    def setup(self) -> None:
        import torch

        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        self.m = build(self.args, self.variant)
        self.loaded = 0
        if self.m["device"].type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.loaded = torch.cuda.memory_allocated()
        self.rss = PeakRss().__enter__()
        if self.variant["kind"] == "reference":
            self.step, self.cache_seconds = reference_step_fn(self.args, self.m, self.variant["load_images"])
        else:
            self.step, self.cache_seconds = ours_step_fn(self.args, self.m, self.variant)
        self.next_step = 0
        self.chunk(self.args.warmup + (10 if self.variant.get("compile") else 0), record=False)

    def chunk(self, steps: int, record: bool = True) -> float:
        _sync(self.m)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.next_step)
            self.next_step += 1
        _sync(self.m)
        rate = steps * self.args.batch_size / (time.perf_counter() - start)
        if record:
            self.rates.append(rate)
        return rate

    def finish(self) -> dict:
        import statistics

        import torch

        self.rss.__exit__(None, None, None)
        if self.m["device"].type == "cuda":
            peak, start = torch.cuda.max_memory_allocated(), self.loaded
        else:
            peak, start = self.rss.peak, self.rss.start
        del self.m
        return {"name": self.name, "samples_per_s": statistics.median(self.rates), "chunk_rates": self.rates,
                "peak_mb": peak / 2**20, "added_mb": (peak - start) / 2**20, "cache_seconds": self.cache_seconds}


def serve(args) -> None:
    """Worker process: one row; commands (JSON lines) on stdin, answers on stdout."""
    job = json.loads(args.worker)
    row = Row(args, job["name"], job["variant"])
    row.setup()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "chunk":
            print(json.dumps({"rate": row.chunk(command["steps"])}), flush=True)
        else:
            print(json.dumps(row.finish()), flush=True)
            return


class Worker:
    def __init__(self, name: str, variant: dict):
        self.name = name
        command = [sys.executable, __file__, "--worker", json.dumps({"name": name, "variant": variant}),
                   *sys.argv[1:]]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.ask(None)  # wait until built and warmed up

    def ask(self, command: dict | None) -> dict:
        if command is not None:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"row {self.name!r} failed (see its stderr above)")
        return json.loads(line)


def measure_in_process(args, name: str, variant: dict, per_chunk: int) -> dict:
    """One row after another in this process; a failing row (e.g. torch.compile) is reported, not fatal."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        row = Row(args, name, variant)
        row.setup()
        for _ in range(args.rounds):
            row.chunk(per_chunk)
        result = row.finish()
    except Exception as exc:  # noqa: BLE001 - the table says which row failed and why
        return {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(f"{name}: {result['samples_per_s']:.2f} samples/s, peak {result['peak_mb']:.0f} MB", file=sys.stderr)
    return result


def measure(args, rows: dict[str, dict]) -> list[dict]:
    """CPU: one process per row (memory per row), timed in interleaved chunks, so load from other programs on a
    shared machine hits every row alike; the median chunk counts. CUDA: rows one after another in-process."""
    per_chunk = max(1, args.steps // args.rounds)
    if args.device != "cpu" or args.in_process:
        results = []
        for name, variant in rows.items():
            results.append(measure_in_process(args, name, variant, per_chunk))
            write_json(args, results)
        return results
    workers = []
    try:
        for name, variant in rows.items():
            workers.append(Worker(name, variant))
        for _ in range(args.rounds):
            for worker in workers:
                worker.ask({"op": "chunk", "steps": per_chunk})
        return [worker.ask({"op": "finish"}) for worker in workers]
    finally:
        for worker in workers:
            worker.process.stdin.close()
            worker.process.wait(timeout=60)


def mfu(args, samples_per_s: float) -> float | None:
    if args.device != "cuda" or not args.full_size:
        return None
    scale = (args.resolution / 512) ** 2
    flops = samples_per_s * TRAIN_FORWARDS_PER_SAMPLE * UNET_GFLOPS_512 * scale * 1e9
    return flops / (args.peak_tflops * 1e12)


def write_json(args, results: list[dict]) -> None:
    if not args.json:
        return
    rows = [{**r, "mfu": mfu(args, r["samples_per_s"])} if "samples_per_s" in r else r for r in results]
    args.json.write_text(json.dumps({"args": vars(args), "results": rows}, indent=2, default=str))


def table(args, results: list[dict]) -> str:
    ours = next(r for r in results if r["name"] == "ours")["samples_per_s"]
    ref = next(r for r in results if r["name"] == "reference")
    memory = "peak GPU memory" if args.device == "cuda" else "peak anonymous RSS"
    head = (f"| row | samples/s | {memory} (MB) | above the loaded models (MB) | vs reference | share (ours / row) |"
            + (" UNet MFU |" if mfu(args, 1) else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |")
            continue
        share = f"{ours / r['samples_per_s']:.2f}x" if r["name"].startswith("ours ") else ""
        row = (f"| {r['name']} | {r['samples_per_s']:.2f} | {r['peak_mb']:.0f} | {r['added_mb']:.0f} | "
               f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x | {share} |")
        if mfu(args, 1):
            row += f" {100 * mfu(args, r['samples_per_s']):.1f}% |"
        lines.append(row)
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--full-size", action="store_true", help="SD1.5's real architecture (random weights)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--batch-size", type=int, default=2, help="per step (the paper's batch is 2)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--images", type=int, default=8, help="distinct training images")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=150, help="timed steps per row")
    p.add_argument("--rounds", type=int, default=10, help="timed steps are split into this many interleaved "
                   "chunks; the median chunk counts")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default). 1 by default: "
                   "on a shared machine OpenMP threads spin at barriers and small ops slow down ~100x")
    p.add_argument("--compile", action="store_true", help="add an `ours + torch.compile` row")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM)")
    p.add_argument("--in-process", action="store_true", help="CPU too: rows one after another in this process")
    p.add_argument("--only", default=None, help="comma-separated row names to run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        serve(args)
        return 0
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # casting the frozen base prints one warning per model and row
    rows = variants(args.device, args.compile)
    if args.only:
        wanted = set(args.only.split(",")) | {"reference", "ours"}
        rows = {k: v for k, v in rows.items() if k in wanted}
    results = measure(args, rows)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU {platform.machine()}"
    print(f"\nLoRA training step, {'full-size SD1.5' if args.full_size else 'tiny SD1.5-shaped'} base, "
          f"{args.resolution} px, batch {args.batch_size}, rank {args.rank}, precision {args.mixed_precision}, "
          f"{device_name}, torch {torch.__version__}, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    print(table(args, results))
    ours = next(r for r in results if r["name"] == "ours")
    ref = next(r for r in results if r["name"] == "reference")
    print(f"\nours / reference: {ours['samples_per_s'] / ref['samples_per_s']:.2f}x samples/s, "
          f"{ours['peak_mb'] / ref['peak_mb']:.2f}x peak memory ({ours['added_mb']:.0f} vs {ref['added_mb']:.0f} MB "
          f"above the loaded models); one-time cache of {args.images} images: "
          f"{ours['cache_seconds']:.2f} s ({1000 * ours['cache_seconds'] / args.images:.1f} ms/image)")
    if mfu(args, 1):
        paper_samples = 120 * 2800
        print(f"paper recipe ({paper_samples} samples) at ours' rate: "
              f"{paper_samples / ours['samples_per_s'] / 3600:.2f} h (paper: 10.4 h on an RTX 3090 Ti)")
    write_json(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
