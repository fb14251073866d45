"""LoRA adapters on the UNet / text encoder (peft), and the two files the adapter is published as.

- `pytorch_lora_weights.safetensors`: diffusers keys (`unet.…lora.down.weight`, `text_encoder.…`), written by
  `StableDiffusionPipeline.save_lora_weights`, with the peft LoraConfig (rank, alpha, targets) in the
  safetensors metadata; loads with `pipe.load_lora_weights(DIR, weight_name=...)`.
- the kohya/A1111 file: `lora_unet_<module>` / `lora_te_<module>` with `.lora_down.weight`, `.lora_up.weight`
  and a scalar `.alpha`, converted here straight from the peft state dict (diffusers' convert_all_state_dict_to_peft
  route drops UNet keys when text-encoder keys are present). A1111, ComfyUI and diffusers load it.

Text-encoder module names are written in the canonical `text_model.` form (transformers 5 flattened
CLIPTextModel to `encoder.…`; older loaders, A1111 and ComfyUI expect `text_model.encoder.…`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"
_TEXT_MODEL_CHILDREN = ("embeddings.", "encoder.", "final_layer_norm.")
_KOHYA_SUFFIX = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def lora_config(rank: int, alpha: float, targets: list[str], dropout: float = 0.0):
    from peft import LoraConfig

    # gaussian A and zero B: the adapter starts as the identity, like diffusers' DreamBooth-LoRA script
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=list(targets))


def add_unet_lora(unet, rank: int, alpha: float, targets: list[str], dropout: float = 0.0):
    config = lora_config(rank, alpha, targets, dropout)
    unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    return config


def add_text_encoder_lora(text_encoder, rank: int, alpha: float, targets: list[str], dropout: float = 0.0):
    """peft's injector directly: transformers 5's `add_adapter` refuses the pinned peft 0.21."""
    from peft import inject_adapter_in_model

    config = lora_config(rank, alpha, targets, dropout)
    inject_adapter_in_model(config, text_encoder, adapter_name=ADAPTER_NAME)
    return config


def peft_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors with peft names (`<module>.lora_A.weight`), adapter name stripped."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)


def load_peft_state_dict(model, state_dict: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state_dict, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint holds LoRA keys this model does not have, e.g. {unexpected[0]}")


def canonical_text_encoder_name(name: str) -> str:
    return "text_model." + name if name.startswith(_TEXT_MODEL_CHILDREN) else name


def uniform_lora_names(state_dict: dict[str, torch.Tensor], infix: str) -> dict[str, torch.Tensor]:
    """Give every module the diffusers naming (`<module><infix>.down.weight` / `.up.weight`).

    convert_state_dict_to_diffusers renames only attention projections and leaves other targets (conv_in,
    proj_in, ff, ...) as peft `lora_A`/`lora_B`. diffusers' loader decides the format from the first key, so
    such a mixed file silently loses every module of the other naming: keep one naming throughout.
    """
    renamed = {}
    for key, tensor in state_dict.items():
        for peft_part, diffusers_part in ((".lora_A.weight", ".down.weight"), (".lora_B.weight", ".up.weight")):
            if key.endswith(peft_part):
                key = key[: -len(peft_part)] + infix + diffusers_part
        renamed[key] = tensor
    return renamed


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}


def peft_to_kohya(state_dict: dict[str, torch.Tensor], prefix: str, alpha: float | dict[str, float],
                  rename=None) -> dict[str, torch.Tensor]:
    """peft LoRA tensors -> kohya keys: `<prefix><module with _>.lora_down.weight|lora_up.weight|alpha`.

    `prefix` is "lora_unet_" or "lora_te_"; `alpha` is one value or per-module values (peft names);
    `rename` maps a module name first (e.g. `canonical_text_encoder_name`).
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        module, _, peft_suffix = key.rpartition(".lora_")
        kohya_suffix = _KOHYA_SUFFIX.get(peft_suffix)
        if not module or kohya_suffix is None:
            raise ValueError(f"not a LoRA A/B weight: {key!r} (DoRA/bias adapters have no kohya form here)")
        name = prefix + (rename(module) if rename else module).replace(".", "_")
        converted[f"{name}.{kohya_suffix}"] = tensor
        module_alpha = alpha[module] if isinstance(alpha, dict) else alpha
        converted[f"{name}.alpha"] = torch.tensor(float(module_alpha))
    return converted


def kohya_metadata(unet_config, te_config, base_model: str, resolution: int) -> dict[str, str]:
    """The `ss_*` keys A1111 and kohya tools read to describe a LoRA (a local base model by its last part)."""
    from dermt2im_hub.hub.redact import public_name

    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(unet_config.r),
        "ss_network_alpha": str(unet_config.lora_alpha),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": public_name(base_model),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_training_comment": "dermt2im-hub train_lora; text encoder LoRA: "
                               + (f"rank {te_config.r}, alpha {te_config.lora_alpha}" if te_config else "none"),
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "format": "pt",
    }


def save_adapter_files(out_dir: str | Path, unet, unet_config, text_encoder=None, te_config=None,
                       kohya_weight_name: str = "dermt2im_lora_kohya.safetensors", save_precision: str = "fp32",
                       base_model: str = "", resolution: int = 512) -> dict[str, str]:
    """Write the diffusers file and the kohya file into `out_dir`; returns {"diffusers": name, "kohya": name}.

    `unet` / `text_encoder` are the unwrapped models carrying the adapter (text_encoder None when frozen).
    Files appear atomically (written in a temporary folder, then renamed).
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = SAVE_DTYPES[save_precision]
    unet_sd = _cast(peft_state_dict(unet), dtype)
    te_sd = _cast(peft_state_dict(text_encoder), dtype) if text_encoder is not None else None
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora-") as tmp:
        tmp_dir = Path(tmp)
        te_layers = None
        if te_sd:
            te_layers = {canonical_text_encoder_name(k): v for k, v in
                         uniform_lora_names(convert_state_dict_to_diffusers(te_sd), ".lora_linear_layer").items()}
        unet_layers = uniform_lora_names(convert_state_dict_to_diffusers(unet_sd), ".lora")
        StableDiffusionPipeline.save_lora_weights(
            tmp_dir, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
            weight_name=DIFFUSERS_WEIGHT_NAME, safe_serialization=True,
            unet_lora_adapter_metadata=unet_config.to_dict(),
            text_encoder_lora_adapter_metadata=te_config.to_dict() if te_config is not None else None)
        kohya = peft_to_kohya(unet_sd, "lora_unet_", unet_config.lora_alpha)
        if te_sd:
            kohya.update(peft_to_kohya(te_sd, "lora_te_", te_config.lora_alpha, rename=canonical_text_encoder_name))
        save_file(kohya, str(tmp_dir / kohya_weight_name),
                  metadata=kohya_metadata(unet_config, te_config, base_model, resolution))
        for name in (DIFFUSERS_WEIGHT_NAME, kohya_weight_name):
            os.replace(tmp_dir / name, out_dir / name)
    return {"diffusers": DIFFUSERS_WEIGHT_NAME, "kohya": kohya_weight_name}
