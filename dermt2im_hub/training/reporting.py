"""What a training run shows: sample images with fixed seeds, the loss curve, and the card facts.

Sample images are drawn with the model being trained (adapter active) from one CPU generator per seed, so
the same seed gives the same starting noise on any device; they are saved under `samples/` and logged to
TensorBoard. The global RNG is forked around sampling so a run with more or fewer sample steps trains on
exactly the same random numbers.
"""

from __future__ import annotations

import csv
import io
import platform
import re
from pathlib import Path

import torch

from dermt2im_hub.utils.files import atomic_save_figure, atomic_save_png, atomic_write_text
from dermt2im_hub.utils.logging import get_logger

logger = get_logger(__name__)

SAMPLES_DIR = "samples"
LOSS_CURVE_NAME = "loss_curve.png"
LOSS_CSV_NAME = "loss_history.csv"


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


class SampleWriter:
    """Draws one image per (prompt, seed) with the live UNet/text encoder."""

    def __init__(self, base_dir: Path, unet, text_encoder, vae, tokenizer, prompts: list[str], seeds: list[int],
                 resolution: int, steps: int, guidance_scale: float):
        from diffusers import StableDiffusionPipeline

        # from_pretrained only loads what is not passed in: here the base's own inference scheduler
        self.pipe = StableDiffusionPipeline.from_pretrained(
            str(base_dir), unet=unet, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer,
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
            use_safetensors=True)  # defence in depth: a crafted model_index.json must not load a pickle
        self.pipe.set_progress_bar_config(disable=True)
        self.prompts, self.seeds = prompts, seeds
        self.resolution, self.steps, self.guidance_scale = resolution, steps, guidance_scale

    def write(self, folder: Path, autocast_ctx, rel_to: Path) -> list[dict]:
        """Generate and save every (prompt, seed) image into `folder`; returns [{path, prompt, seed, image}]."""
        devices = [self.pipe.unet.device] if self.pipe.unet.device.type == "cuda" else []
        written = []
        self.pipe.unet.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast_ctx:
            for p_index, prompt in enumerate(self.prompts):
                for seed in self.seeds:
                    image = self.pipe(prompt, height=self.resolution, width=self.resolution,
                                      num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                                      generator=torch.Generator().manual_seed(seed)).images[0]
                    path = folder / f"{p_index:02d}-{slug(prompt)}-seed{seed}.png"
                    atomic_save_png(image, path)
                    written.append({"path": path.relative_to(rel_to).as_posix(), "prompt": prompt, "seed": seed,
                                    "image": image})
        self.pipe.unet.train()
        return written


def log_samples_to_tracker(accelerator, samples: list[dict], step: int) -> None:
    import numpy as np

    try:
        tracker = accelerator.get_tracker("tensorboard", unwrap=False)
    except (ValueError, AttributeError):
        return
    if not getattr(tracker, "writer", None):
        return
    by_prompt: dict[str, list] = {}
    for sample in samples:
        by_prompt.setdefault(sample["prompt"], []).append(np.asarray(sample["image"]))
    for p_index, (prompt, images) in enumerate(by_prompt.items()):
        tracker.writer.add_images(f"samples/{p_index:02d}-{slug(prompt)}", np.stack(images), global_step=step,
                                  dataformats="NHWC")


def write_loss_history(history: list[tuple[int, float]], out_dir: Path) -> None:
    """`loss_history.csv` and `loss_curve.png` (raw points and a moving average)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", "loss"])
    writer.writerows(history)
    atomic_write_text(out_dir / LOSS_CSV_NAME, buffer.getvalue())
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in history]
    losses = [v for _, v in history]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, color="#9ab" if window > 1 else "#c33", linewidth=0.8 if window > 1 else 1.6,
            label=f"mean loss per {steps[0]} steps" if len(steps) > 1 else "loss")
    if window > 1:
        ax.plot(steps, smooth, color="#c33", linewidth=1.6, label=f"moving average of {window} points")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("diffusion loss")
    ax.set_title("LoRA training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, out_dir / LOSS_CURVE_NAME)


def hardware_description(accelerator) -> str:
    count = accelerator.num_processes
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
    else:
        name = f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads per process)"
    return f"{count} x {name}" if count > 1 else name
