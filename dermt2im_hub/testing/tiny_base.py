"""An offline Stable Diffusion 1.5-shaped pipeline with random weights.

Nothing can be downloaded here, so tests, the demo and the CPU benchmarks run on a pipeline with SD1.5's
structure (UNet2DConditionModel, AutoencoderKL with 8x downsampling, CLIPTextModel, SD1.5's scheduler
config, the real CLIP tokenizer, no safety checker) but small widths. `full_size=True` builds SD1.5's
exact architecture (859.5M-parameter UNet) with random weights for GPU benchmarks.

The folder loads with `StableDiffusionPipeline.from_pretrained(DIR)` / `DiffusionPipeline.from_pretrained(DIR)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dermt2im_hub.testing.tokenizer import VOCAB_SIZE, write_clip_tokenizer_files

# SD1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5), the reference for "like SD1.5".
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def _unet_kwargs(full_size: bool) -> dict:
    if full_size:
        return dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8,
        )
    # Tiny: two resolution levels, 32/64 channels (the size diffusers' own tests use); 64 px -> 8x8 latents.
    return dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
    )


def _vae_kwargs(full_size: bool) -> dict:
    blocks = (128, 256, 512, 512) if full_size else (32, 32, 64, 64)
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512 if full_size else 64,
        block_out_channels=blocks, layers_per_block=2 if full_size else 1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, scaling_factor=0.18215,
    )


def _text_encoder_kwargs(full_size: bool) -> dict:
    common = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                  pad_token_id=49407)
    if full_size:  # CLIP ViT-L/14 text tower
        return dict(common, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    projection_dim=768, hidden_act="quick_gelu")
    return dict(common, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=32, hidden_act="quick_gelu")


def build_tiny_components(full_size: bool = False, seed: int = 0, tokenizer_dir: str | Path | None = None):
    """The pipeline's components in memory (random weights, deterministic by `seed`)."""
    import tempfile

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_kwargs(full_size))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_vae_kwargs(full_size))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_encoder_kwargs(full_size)))
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else Path(tempfile.mkdtemp(prefix="clip-tok-"))
    write_clip_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    config = {k: v for k, v in SD15_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    scheduler = PNDMScheduler.from_config(config)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, image_encoder=None)


def make_tiny_base(output_dir: str | Path, full_size: bool = False, seed: int = 0,
                   dtype: str = "float32") -> Path:
    """Save an SD1.5-shaped pipeline to `output_dir` (safetensors weights) and return the folder."""
    from diffusers import StableDiffusionPipeline

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    components = build_tiny_components(full_size=full_size, seed=seed, tokenizer_dir=output_dir / "tokenizer")
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    if dtype != "float32":
        pipe.to(dtype=getattr(torch, dtype))
    pipe.save_pretrained(str(output_dir), safe_serialization=True)
    info = {
        "what": "random-weight Stable Diffusion 1.5-shaped pipeline made by dermt2im make-tiny-base",
        "full_size": full_size,
        "seed": seed,
        "dtype": dtype,
        "unet_parameters": sum(p.numel() for p in components["unet"].parameters()),
        "note": "for tests and benchmarks only: it generates noise-like images",
    }
    (output_dir / "dermt2im_tiny_base.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output_dir
