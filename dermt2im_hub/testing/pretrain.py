"""Pretrain the tiny base on phantoms: the small world in which every stage can visibly learn.

The random tiny base (`tiny_base.make_tiny_base`) draws noise, so nothing downstream can show learning. This module
trains the same kind of pipeline (diffusers' AutoencoderKL + UNet2DConditionModel, SD1.5's scheduler config, the
real CLIP tokenizer, a small random text encoder that stays frozen) on phantom images, the way SD1.5 was trained
on captioned photos:

1. a small VAE (4 latent channels like SD1.5's, but 4x downsampling: 64 px -> 16x16 latents; at SD1.5's 8x the
   8x8 latents lost the malignant cues) learns to reconstruct whole phantoms (MSE + L1, a tiny KL);
2. a small UNet learns epsilon-prediction denoising of the cached, scaled latents under SD1.5's noise schedule,
   conditioned on *class-neutral* captions ("a dermoscopic image of a small skin lesion, on brown skin ...") whose
   skin-tone, size and hair words come from each phantom's own parameters; 10% of captions are empty so
   classifier-free guidance works.

The base therefore draws both kinds of lesion (round brown ones and irregular multi-coloured ones) without knowing
which is which; a DreamBooth-LoRA on "benign" / "malignant" prompts then has to learn the difference, as SD1.5 does
in the paper. The phantoms come from seed 1000, not the demo's seed 0, so the base never saw the demo's images.

Deterministic for a given torch version and thread count (both recorded); `dermt2im make-tiny-base --pretrained
--from-scratch DIR` reruns it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dermt2im_hub.labels import CLASS_NAMES

# The phantom's skin tone in the words generation prompts use (its Fitzpatrick transformation axis).
SKIN_WORDS = {
    "very_light": "on very fair skin (Fitzpatrick type I)",
    "light": "on fair skin (Fitzpatrick type II)",
    "intermediate": "on light brown skin (Fitzpatrick type III)",
    "tan": "on olive skin (Fitzpatrick type IV)",
    "brown": "on brown skin (Fitzpatrick type V)",
    "dark": "on dark brown to black skin (Fitzpatrick type VI)",
}
NEUTRAL_PROMPT = "a dermoscopic image of a skin lesion"


@dataclass
class PretrainConfig:
    """How the shipped tiny base was made (every field is recorded in its dermt2im_tiny_base.json)."""

    num_images: int = field(default=1024, metadata={"help": "phantoms to train on (half per class)"})
    phantom_seed: int = field(default=1000, metadata={"help": "phantom seed (the demo uses 0: the base never sees it)"})
    render_size: int = field(default=128, metadata={"help": "phantoms are rendered at this side, then downsampled"})
    size: int = field(default=64, metadata={"help": "image side the base works at"})
    latent_downsampling: int = field(default=4, metadata={
        "help": "VAE downsampling factor (8 as SD1.5: 8x8 latents at 64 px; 4: 16x16 latents keep the phantoms' "
                "fine colour patches and borders)"})
    vae_steps: int = field(default=2000, metadata={"help": "VAE optimisation steps"})
    vae_batch_size: int = 16
    vae_crop: int = field(default=64, metadata={
        "help": "side of the random crops the VAE trains on (64: whole images; 32 px crops were 4x cheaper but lost "
                "the malignant cues: bench/RESULTS.md)"})
    vae_lr: float = 2e-3
    vae_kl_weight: float = field(default=1e-6, metadata={"help": "KL weight (SD's VAE uses 1e-6)"})
    vae_l1_weight: float = field(default=1.0, metadata={"help": "weight of an L1 term beside MSE (sharper colours)"})
    unet_steps: int = field(default=2000, metadata={"help": "UNet optimisation steps on cached latents"})
    unet_channels: list[int] = field(default_factory=lambda: [32, 64], metadata={
        "help": "UNet block widths: the first level has cross-attention, the last does not"})
    unet_batch_size: int = 64
    unet_lr: float = 2e-3
    ema_decay: float = field(default=0.995, metadata={"help": "the saved UNet is the EMA of its weights"})
    caption_dropout: float = field(default=0.1, metadata={"help": "share of empty captions (for CFG)"})
    attribute_dropout: float = field(default=0.5, metadata={"help": "chance each caption attribute is left out"})
    seed: int = 0
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads (float rounding depends on it; one thread is also fastest on a busy machine)"})


# ------------------------------------------------------------------------------------------------ data


def size_word(lesion_fraction: float) -> str:
    """The phantom's lesion area as a prompt word (phantom lesions cover about 6-22% of the image)."""
    if lesion_fraction < 0.10:
        return "small"
    if lesion_fraction > 0.16:
        return "large"
    return ""


def neutral_caption(info: dict, rng: np.random.Generator, attribute_dropout: float = 0.0) -> str:
    """A class-neutral caption from a phantom's parameters; each attribute is kept with 1 - attribute_dropout."""
    keep = lambda: rng.random() >= attribute_dropout  # noqa: E731
    size = size_word(info["lesion_fraction"]) if keep() else ""
    skin = SKIN_WORDS[info["skin_tone"]] if keep() else ""
    hair = "with hair" if info["has_hair"] and keep() else ""
    caption = f"a dermoscopic image of a {size} skin lesion" if size else NEUTRAL_PROMPT
    return ", ".join([caption] + [part for part in (skin, hair) if part])


def render_training_set(config: PretrainConfig) -> tuple[np.ndarray, list[dict], list[str]]:
    """(uint8 N x H x W x 3 images at config.size, phantom parameters, labels); classes alternate."""
    import cv2

    from dermt2im_hub.testing.phantoms import PhantomConfig, _render

    phantom_config = PhantomConfig(num_images=config.num_images, size=config.render_size, seed=config.phantom_seed)
    images, infos, labels = [], [], []
    for index in range(config.num_images):
        label = CLASS_NAMES[index % 2]
        image, info = _render(index, label, phantom_config)
        pixels = cv2.resize(np.asarray(image), (config.size, config.size), interpolation=cv2.INTER_AREA)
        images.append(pixels)
        infos.append(info)
        labels.append(label)
    return np.stack(images), infos, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random flip/rotation per batch (phantoms have no orientation: 8x the data for free)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    batch = torch.rot90(batch, k, dims=(2, 3))
    return batch.flip(3) if torch.rand(1, generator=generator).item() < 0.5 else batch


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ------------------------------------------------------------------------------------------------ models


def pretrained_architecture(config: PretrainConfig | None = None) -> dict[str, dict]:
    """The base's VAE and UNet arguments (diffusers' SD1.5 classes, small widths) for `config`."""
    config = config or PretrainConfig()
    levels = {4: 3, 8: 4}.get(config.latent_downsampling)
    if levels is None:
        raise ValueError(f"latent_downsampling must be 4 or 8, not {config.latent_downsampling}")
    unet_levels = len(config.unet_channels)
    return {
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=config.size,
                    block_out_channels=(16, 32, 64, 64)[:levels], layers_per_block=1,
                    down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                    norm_num_groups=16),
        "unet": dict(sample_size=config.size // config.latent_downsampling, in_channels=4, out_channels=4,
                     layers_per_block=1, block_out_channels=tuple(config.unet_channels),
                     down_block_types=("CrossAttnDownBlock2D",) * (unet_levels - 1) + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (unet_levels - 1),
                     cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32),
    }


def train_vae(images: torch.Tensor, config: PretrainConfig, log=print):
    """An AutoencoderKL trained to reconstruct `images` (MSE + a tiny KL, as SD's VAE); returns (vae, losses)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(config.seed)
    vae = AutoencoderKL(**pretrained_architecture(config)["vae"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    vae.train()
    for step in range(config.vae_steps):
        _set_lr(optimizer, _cosine_lr(step, config.vae_steps, config.vae_lr))
        index = torch.randint(0, len(images), (config.vae_batch_size,), generator=generator)
        top, left = (int(v) for v in torch.randint(0, images.shape[-1] - config.vae_crop + 1, (2,), generator=generator))
        batch = _dihedral(images[index, :, top:top + config.vae_crop, left:left + config.vae_crop], generator)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        loss = (torch.nn.functional.mse_loss(reconstruction, batch) + config.vae_kl_weight * posterior.kl().mean()
                + config.vae_l1_weight * torch.nn.functional.l1_loss(reconstruction, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == config.vae_steps - 1:
            log(f"vae step {step}: loss {np.mean(losses[-50:]):.5f}")
    vae.eval()
    return vae, losses


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Posterior means of every image in its 4 rotations (unscaled latents), 4N x 4 x h x w."""
    out = []
    for k in range(4):
        view = torch.rot90(images, k, dims=(2, 3))
        out += [vae.encode(view[i:i + batch_size]).latent_dist.mean for i in range(0, len(view), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def _text_embeddings(captions: list[str], tokenizer, text_encoder) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_unet(latents: torch.Tensor, infos: list[dict], tokenizer, text_encoder, config: PretrainConfig,
               log=print):
    """A UNet2DConditionModel trained on scaled latents with neutral captions; returns (EMA unet, losses)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    from dermt2im_hub.testing.tiny_base import SD15_SCHEDULER_CONFIG

    torch.manual_seed(config.seed + 1)
    unet = UNet2DConditionModel(**pretrained_architecture(config)["unet"])
    ema = EMAModel(unet.parameters(), decay=config.ema_decay)
    scheduler = DDPMScheduler.from_config({k: v for k, v in SD15_SCHEDULER_CONFIG.items() if not k.startswith("_")})
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(config.seed + 1)
    rng = np.random.default_rng(config.seed + 1)
    cache: dict[str, torch.Tensor] = {}
    num_images = len(infos)
    losses = []
    unet.train()
    for step in range(config.unet_steps):
        _set_lr(optimizer, _cosine_lr(step, config.unet_steps, config.unet_lr))
        index = torch.randint(0, len(latents), (config.unet_batch_size,), generator=generator)
        captions = ["" if rng.random() < config.caption_dropout
                    else neutral_caption(infos[int(i) % num_images], rng, config.attribute_dropout) for i in index]
        missing = sorted({c for c in captions if c not in cache})
        if missing:
            cache.update(zip(missing, _text_embeddings(missing, tokenizer, text_encoder)))
        hidden = torch.stack([cache[c] for c in captions])
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, hidden).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        if step % 500 == 0 or step == config.unet_steps - 1:
            log(f"unet step {step}: loss {np.mean(losses[-100:]):.4f}")
    ema.copy_to(unet.parameters())
    unet.eval()
    return unet, losses


# ------------------------------------------------------------------------------------------------ the run


def pretrain_tiny_base(output_dir: str | Path, config: PretrainConfig | None = None, log=print) -> Path:
    """Train the tiny base from scratch and save it (float16 weights, no tokenizer files: the shipped form that
    `tiny_base.write_pretrained_tiny_base` turns into a loadable folder). Returns the folder."""
    from diffusers import StableDiffusionPipeline

    from dermt2im_hub.testing.tiny_base import build_tiny_components, describe_pretrained

    config = config or PretrainConfig()
    output_dir = Path(output_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        pixels, infos, labels = render_training_set(config)
        images = to_tensor(pixels)
        log(f"rendered {len(images)} phantoms in {time.perf_counter() - started:.1f} s")

        vae_started = time.perf_counter()
        vae, vae_losses = train_vae(images, config, log)
        raw = encode_all(vae, images)
        scaling_factor = float(1.0 / raw.std())
        vae.register_to_config(scaling_factor=round(scaling_factor, 5))
        latents = raw * vae.config.scaling_factor
        with torch.no_grad():
            check = vae.decode(raw[: len(images)][:256]).sample
        reconstruction_mse = float(torch.nn.functional.mse_loss(check, images[:256]))
        vae_seconds = time.perf_counter() - vae_started
        log(f"vae: {vae_seconds:.0f} s, reconstruction MSE {reconstruction_mse:.5f}, scaling {scaling_factor:.4f}")

        components = build_tiny_components(seed=config.seed)
        unet_started = time.perf_counter()
        unet, unet_losses = train_unet(latents, infos, components["tokenizer"], components["text_encoder"], config,
                                       log)
        unet_seconds = time.perf_counter() - unet_started
        log(f"unet: {unet_seconds:.0f} s")

        components.update(unet=unet, vae=vae)
        pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
        pipe.to(dtype=torch.float16)
        output_dir.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(output_dir), safe_serialization=True)
        _drop_tokenizer_files(output_dir)
        facts = {
            "pretraining": asdict(config),
            "pretraining_seconds": round(time.perf_counter() - started, 1),
            "pretraining_cpu_seconds": round(time.process_time() - cpu_started, 1),
            "vae_seconds": round(vae_seconds, 1), "unet_seconds": round(unet_seconds, 1),
            "vae_final_loss": round(float(np.mean(vae_losses[-100:])), 6),
            "vae_reconstruction_mse": round(reconstruction_mse, 6),
            "unet_final_loss": round(float(np.mean(unet_losses[-200:])), 5),
            "training_images_per_class": {c: labels.count(c) for c in CLASS_NAMES},
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "vae_parameters": sum(p.numel() for p in vae.parameters()),
            "torch_version": torch.__version__, "torch_threads": config.threads,
        }
        describe_pretrained(output_dir, facts)
    finally:
        torch.set_num_threads(threads)
    return output_dir


def _drop_tokenizer_files(folder: Path) -> None:
    """The tokenizer is rebuilt from open_clip's vocabulary when the base is written out (saves 5 MB)."""
    import shutil

    shutil.rmtree(folder / "tokenizer", ignore_errors=True)
