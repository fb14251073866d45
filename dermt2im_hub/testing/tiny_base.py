"""Offline Stable Diffusion 1.5-shaped pipelines: random weights, or the shipped tiny base pretrained on phantoms.

Nothing can be downloaded here, so tests, the demo and the CPU benchmarks run on a pipeline with SD1.5's
structure (UNet2DConditionModel, AutoencoderKL with 8x downsampling, CLIPTextModel, SD1.5's scheduler
config, the real CLIP tokenizer, no safety checker) but small widths. `full_size=True` builds SD1.5's
exact architecture (859.5M-parameter UNet) with random weights for GPU benchmarks.

The folder loads with `StableDiffusionPipeline.from_pretrained(DIR)` / `DiffusionPipeline.from_pretrained(DIR)`.

`pretrained=True` writes instead the tiny base that ships inside the package (`tiny_sd15/`, float16 safetensors
with their sha256 in `dermt2im_tiny_base.json`): the same kind of pipeline, pretrained on phantom images with
class-neutral captions by `dermt2im_hub.testing.pretrain`, so it draws lesion-like images (its VAE downsamples 4x:
64 px -> 16x16 latents). It is the demo's
`embedded:tiny-sd15` base; `pretrained_tiny_base_path()` gives a loadable float32 copy (cached).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from dermt2im_hub.testing.tokenizer import VOCAB_SIZE, write_clip_tokenizer_files

SHIPPED_PRETRAINED_DIR = Path(__file__).resolve().parent / "tiny_sd15"
BASE_INFO_FILE = "dermt2im_tiny_base.json"
PRETRAIN_COMMAND = "dermt2im make-tiny-base --pretrained --from-scratch DIR"
WORLD = ("phantoms + a tiny base trained on them: a small SD1.5-shaped pipeline (64 px, 16x16 latents) pretrained "
         "by this project on procedural phantom dermoscopy images with class-neutral captions; not a model of "
         "real skin lesions")

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
                   dtype: str = "float32", pretrained: bool = False) -> Path:
    """Save an SD1.5-shaped pipeline to `output_dir` (safetensors weights) and return the folder: random weights,
    or with `pretrained=True` the shipped tiny base pretrained on phantoms."""
    from diffusers import StableDiffusionPipeline

    if pretrained:
        if full_size:
            raise ValueError("only the tiny base ships pretrained weights")
        return write_pretrained_tiny_base(output_dir, dtype=dtype)

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


# ---------------------------------------------------------------------------------- the pretrained tiny base


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.safetensors"))


def describe_pretrained(folder: str | Path, facts: dict) -> Path:
    """Write the shipped base's dermt2im_tiny_base.json: what it is, how it was made, each weight file's sha256."""
    from dermt2im_hub.utils.files import atomic_write_json, sha256_file

    folder = Path(folder)
    info = {
        "what": "tiny Stable Diffusion 1.5-shaped pipeline pretrained on phantom images by dermt2im make-tiny-base",
        "pretrained": True,
        "world": WORLD,
        "command": PRETRAIN_COMMAND,
        "dtype": "float16",
        "captions": "class-neutral: 'a dermoscopic image of a [small|large] skin lesion[, on <skin> skin][, with "
                    "hair]' from each phantom's own parameters; 10% empty (for classifier-free guidance)",
        "note": "knows lesions, not classes: a DreamBooth-LoRA on benign/malignant prompts has to learn them",
        "weights_sha256": {p.relative_to(folder).as_posix(): sha256_file(p) for p in _weight_files(folder)},
        **facts,
    }
    return atomic_write_json(folder / BASE_INFO_FILE, info)


def shipped_base_info() -> dict:
    return json.loads((SHIPPED_PRETRAINED_DIR / BASE_INFO_FILE).read_text(encoding="utf-8"))


def write_pretrained_tiny_base(output_dir: str | Path, dtype: str = "float32",
                               source: str | Path = SHIPPED_PRETRAINED_DIR) -> Path:
    """Write the shipped pretrained base to `output_dir` as a loadable diffusers folder: weights cast to `dtype`
    (checked against their recorded sha256 first), the real CLIP tokenizer, the configs and the base's facts."""
    from safetensors.torch import load_file, save_file

    from dermt2im_hub.utils.files import sha256_file

    source, output_dir = Path(source), Path(output_dir)
    info = json.loads((source / BASE_INFO_FILE).read_text(encoding="utf-8"))
    for rel, expected in info["weights_sha256"].items():
        if sha256_file(source / rel) != expected:
            raise RuntimeError(f"shipped tiny-base weights {rel} do not match their recorded sha256")
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*/*.json")) + [source / "model_index.json"]:
        target = output_dir / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        config = json.loads(path.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):  # transformers loads a text encoder in its config's dtype
            if key in config:
                config[key] = dtype
        target.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for rel in info["weights_sha256"]:
        tensors = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in load_file(source / rel).items()}
        save_file(tensors, str(output_dir / rel), metadata={"format": "pt"})
    write_clip_tokenizer_files(output_dir / "tokenizer")
    info.update(dtype=dtype, shipped_dtype=info["dtype"], shipped_weights_sha256=info.pop("weights_sha256"))
    (output_dir / BASE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output_dir


def pretrained_tiny_base_path(cache_dir: str | Path | None = None) -> Path:
    """A loadable float32 folder of the shipped pretrained tiny base (written once per weights version under
    `cache_dir`, default $DERMT2IM_CACHE or ~/.cache/dermt2im): `StableDiffusionPipeline.from_pretrained(path)`."""
    root = Path(cache_dir or os.environ.get("DERMT2IM_CACHE") or Path.home() / ".cache" / "dermt2im")
    version = shipped_base_info()["weights_sha256"]["unet/diffusion_pytorch_model.safetensors"][:12]
    folder = root / f"tiny-sd15-pretrained-{version}"
    if (folder / BASE_INFO_FILE).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-sd15-", dir=root))
    try:
        write_pretrained_tiny_base(staging)
        try:
            os.rename(staging, folder)  # atomic: a concurrent writer's identical copy may win
        except OSError:
            if not (folder / BASE_INFO_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
