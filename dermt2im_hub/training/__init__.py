"""Stage 2: DreamBooth-LoRA fine-tuning of Stable Diffusion with diffusers + peft + accelerate.

    from dermt2im_hub.training import TrainLoraConfig, train_lora
    result = train_lora(TrainLoraConfig(pretrained_model_name_or_path=..., train_data_dir=..., output_dir=...))

Public pieces (imported lazily so `import dermt2im_hub.training` stays light):
`TrainLoraConfig`, `train_lora`, `preflight`, `TrainResult` (trainer), `peft_to_kohya`, `save_adapter_files`
(lora), `collect_training_data`, `resolve_base_model`, `TrainingInputError` (inputs), `diffusion_loss`,
`EpochSampler`, `build_optimizer` (step), `encode_latents`, `LatentCache`, `build_prompt_table` (cache).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainLoraConfig": "config", "train_lora": "trainer", "preflight": "trainer", "TrainResult": "trainer",
    "LoraTrainer": "trainer", "peft_to_kohya": "lora", "save_adapter_files": "lora",
    "collect_training_data": "inputs", "resolve_base_model": "inputs", "TrainingInputError": "inputs",
    "diffusion_loss": "step", "EpochSampler": "step", "build_optimizer": "step", "OptimizerUnavailable": "step",
    "encode_latents": "cache", "LatentCache": "cache", "build_prompt_table": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
