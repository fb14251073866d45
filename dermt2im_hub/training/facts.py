"""What a finished run records in `manifest.json`: the LoRA card facts (contract 4) and run details.

The card is rendered from these facts alone (`dermt2im_hub.hub.render_card`), so everything a reader of the
adapter's Hub page needs (base model and its hash, prompts, data and leak check, hyperparameters, loss,
time, hardware, sample images) is written here, from the live run, once.

The base model's hash (`base_model_sha256`) is the same quantity generation records as `base_model_hash` and
the dataset's `model_hash` column (docs/hub.md, "Which hash is which"): the sha256 of the UNet weights file
`unet/diffusion_pytorch_model.safetensors` (for a sharded UNet, the sha256 of the shards' sha256s joined in
file-name order), named in `base_model_hash_of`. The base folder's fingerprint over all its files stays in
the manifest's inputs (`input_fingerprints["base_model"]`), which resume checks use.
"""

from __future__ import annotations

import json
from pathlib import Path

from dermt2im_hub.manifest import MANIFEST_NAME
from dermt2im_hub.training.inputs import base_revision
from dermt2im_hub.training.reporting import hardware_description
from dermt2im_hub.utils.model_hash import unet_weights_sha256


def training_data_hair_removal(folder: Path) -> bool | None:
    """Whether the training images had hair removed, as the data stage recorded it (a `preprocess` output's
    card fact `hair_removal`); None for any other folder: nothing recorded says."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("stage") != "preprocess":
        return None
    card = (manifest.get("extra") or {}).get("card") if isinstance(manifest.get("extra"), dict) else None
    value = card.get("hair_removal") if isinstance(card, dict) else None
    return value if isinstance(value, bool) else None


def _hyperparameters(trainer) -> dict:
    c, acc = trainer.config, trainer.accelerator
    return {
        "resolution": c.resolution,
        "train_batch_size": c.train_batch_size,
        "gradient_accumulation_steps": c.gradient_accumulation_steps,
        "num_processes": acc.num_processes,
        "total_batch_size": c.train_batch_size * c.gradient_accumulation_steps * acc.num_processes,
        "max_train_steps": trainer.max_steps,
        "learning_rate": c.learning_rate,
        "text_encoder_lr": (c.text_encoder_lr or c.learning_rate) if c.train_text_encoder else None,
        "lr_scheduler": c.lr_scheduler,
        "lr_warmup_steps": c.lr_warmup_steps,
        "optimizer": c.optimizer,
        "adam_betas": [c.adam_beta1, c.adam_beta2],
        "adam_weight_decay": c.adam_weight_decay,
        "max_grad_norm": c.max_grad_norm,
        "mixed_precision": acc.mixed_precision,
        "noise_scheduler": "DDPMScheduler",
        "prediction_type": trainer.prediction_type,
        "snr_gamma": c.snr_gamma,
        "noise_offset": c.noise_offset,
        "random_flip": c.random_flip,
        "lora_dropout": c.lora_dropout,
        "target_modules": list(c.target_modules),
        "with_prior_preservation": c.with_prior_preservation,
        "prior_loss_weight": c.prior_loss_weight if c.with_prior_preservation else None,
        "num_class_images": len(trainer.class_examples) or None,
        "gradient_checkpointing": c.gradient_checkpointing,
        "seed": c.seed,
    }


def _final_loss(history: list[tuple[int, float]]) -> float | None:
    """Mean of the last logged values covering about 5% of the run (one value when the run is short)."""
    if not history:
        return None
    tail = history[-max(1, len(history) // 20):]
    return round(sum(v for _, v in tail) / len(tail), 6)


def card_facts(trainer, files: dict[str, str], samples: list[dict]) -> dict:
    c = trainer.config
    data_fp = trainer.input_fingerprints.get("train_data") or {}
    base_sha256, base_hash_of = unet_weights_sha256(trainer.base_dir, c.variant)
    return {
        "base_model": c.pretrained_model_name_or_path,
        "base_model_revision": base_revision(trainer.base_dir, c.revision),
        "base_model_sha256": base_sha256,
        "base_model_hash_of": base_hash_of,
        "instance_prompts": trainer.data.prompts,
        "weight_files": files or None,
        "lora_rank": c.rank,
        "lora_alpha": c.unet_alpha,
        "text_encoder_lora": ({"rank": c.te_rank, "alpha": c.te_alpha, "target_modules":
                               list(c.text_encoder_target_modules)} if c.train_text_encoder else False),
        "hyperparameters": _hyperparameters(trainer),
        "num_train_images": trainer.data.per_label,
        "training_data": trainer.data.folder.name,
        "hair_removal": training_data_hair_removal(trainer.data.folder),
        "data_manifest_sha256": data_fp.get("sha256"),
        "test_exclusion_checked": trainer.data.test_exclusion_checked,
        "steps": trainer.progress.global_step,
        "epochs": round(trainer.progress.global_step / trainer.updates_per_epoch, 3),
        "final_loss": _final_loss(trainer.progress.loss_history),
        "training_seconds": trainer.timings.get("training_seconds"),
        "hardware": hardware_description(trainer.accelerator),
        "sample_images": [{"path": s["path"], "prompt": s["prompt"]} for s in samples],
        "license": c.license,
        "repo_id": c.hub_model_id,
    }


def run_facts(trainer) -> dict:
    acc = trainer.accelerator
    return {
        "distributed": {"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type.value),
                        "backend": getattr(acc.state, "backend", None), "device": str(acc.device)},
        "data_layout": trainer.data.layout,
        "rows_skipped_by_split": trainer.data.skipped_by_split,
        "test_exclusion": str(trainer.data.exclusion_path) if trainer.data.exclusion_path else None,
        "resumed_from": str(trainer.resume_from) if trainer.resume_from else None,
        "timings": trainer.timings,
        "epochs_planned": trainer.num_epochs,
        "loss_history_points": len(trainer.progress.loss_history),
    }
