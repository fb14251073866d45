"""`TrainLoraConfig`: every setting of the DreamBooth-LoRA stage, one dataclass.

Field names follow diffusers' examples/dreambooth/train_dreambooth_lora.py where that script has the same
option (`pretrained_model_name_or_path`, `train_batch_size`, `rank`, ...), so its users find their flags;
`configs/paper.yaml` fills the `training:` section with the Derm-T2IM recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dermt2im_hub.config import ConfigError
from dermt2im_hub.hub.resolve import hub_id_problem

SECTION = "training"
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
DEFAULT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainLoraConfig:
    # ---- base model and data
    pretrained_model_name_or_path: str = field(default=SD15_ID, metadata=_help(
        "base Stable Diffusion pipeline: a Hub id or a local diffusers folder"))
    revision: str | None = field(default=None, metadata=_help("Hub revision (branch, tag or commit) of the base"))
    variant: str | None = field(default=None, metadata=_help("weight variant of the base files, e.g. fp16"))
    train_data_dir: str | None = field(default=None, metadata=_help(
        "image folder: a data-stage/phantom folder with metadata.jsonl (per-image prompts), or a plain folder "
        "of images trained with --instance-prompt (alias: --instance-data-dir)"))
    instance_prompt: str | None = field(default=None, metadata=_help(
        "prompt for a plain image folder, and for metadata rows without a prompt"))
    train_splits: list[str] = field(default_factory=lambda: ["train"], metadata=_help(
        "metadata rows whose split is one of these are trained on (rows with no split always are)"))
    test_exclusion: str | None = field(default=None, metadata=_help(
        "test_exclusion.json of the held-out test split; default: the one inside train_data_dir"))
    output_dir: str = field(default="outputs/lora", metadata=_help("output folder (the Hub-ready adapter)"))
    resolution: int = field(default=512, metadata=_help("training side in pixels (multiple of 8); images are "
                                                        "resized on the short side and centre-cropped"))
    random_flip: bool = field(default=False, metadata=_help("random horizontal flip (both orientations cached)"))
    cache_dir: str | None = field(default=None, metadata=_help(
        "folder for the latent/text-embedding cache on disk, reused across runs; default: in memory only"))
    vae_batch_size: int | None = field(default=None, metadata=_help(
        "images per VAE call while caching latents; default = train_batch_size, so caching never needs more "
        "memory than encoding each batch during training would"))
    # ---- LoRA
    rank: int = field(default=4, metadata=_help("LoRA rank of the UNet adapter"))
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA alpha (scale alpha/rank); default = rank"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA branch"))
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_UNET_TARGETS), metadata=_help(
        "UNet modules that get LoRA (default: attention q/k/v/out)"))
    train_text_encoder: bool = field(default=False, metadata=_help("also train a LoRA on the CLIP text encoder"))
    text_encoder_rank: int | None = field(default=None, metadata=_help("text-encoder LoRA rank; default = rank"))
    text_encoder_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TEXT_ENCODER_TARGETS),
                                                   metadata=_help("text-encoder modules that get LoRA"))
    # ---- prior preservation
    with_prior_preservation: bool = field(default=False, metadata=_help("DreamBooth prior-preservation loss"))
    class_data_dir: str | None = field(default=None, metadata=_help(
        "class images; missing ones are generated with the base and kept here (default OUTPUT/class_images)"))
    class_prompt: str | None = field(default=None, metadata=_help("prompt of the class images"))
    num_class_images: int = field(default=100, metadata=_help("class images to have for prior preservation"))
    prior_loss_weight: float = field(default=1.0, metadata=_help("weight of the prior-preservation loss"))
    prior_generation_steps: int = field(default=25, metadata=_help("sampling steps when generating class images"))
    # ---- optimisation
    train_batch_size: int = field(default=2, metadata=_help("images per step and process"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    num_train_epochs: int = field(default=1, metadata=_help("passes over the data (ignored with max_train_steps)"))
    max_train_steps: int | None = field(default=None, metadata=_help("optimizer steps; overrides epochs"))
    learning_rate: float = field(default=1e-4, metadata=_help("learning rate of the UNet LoRA"))
    text_encoder_lr: float | None = field(default=None, metadata=_help(
        "learning rate of the text-encoder LoRA; default = learning_rate"))
    scale_lr: bool = field(default=False, metadata=_help(
        "multiply learning rates by batch size x accumulation x processes"))
    lr_scheduler: str = field(default="constant", metadata=_help(f"one of {', '.join(LR_SCHEDULERS)}"))
    lr_warmup_steps: int = field(default=0, metadata=_help("warm-up steps of the schedule"))
    lr_num_cycles: int = field(default=1, metadata=_help("cycles of cosine_with_restarts"))
    lr_power: float = field(default=1.0, metadata=_help("power of the polynomial schedule"))
    optimizer: Literal["adamw", "adamw_8bit"] = field(default="adamw", metadata=_help(
        "adamw (torch, fused kernel where available) or adamw_8bit (bitsandbytes; alias --use-8bit-adam)"))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2"))
    adam_weight_decay: float = field(default=1e-2, metadata=_help("AdamW weight decay"))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm (0 disables)"))
    snr_gamma: float | None = field(default=None, metadata=_help("min-SNR-gamma loss weighting (5.0 is usual)"))
    noise_offset: float = field(default=0.0, metadata=_help("noise offset (0.05-0.1 helps very dark/light images)"))
    prediction_type: Literal["epsilon", "v_prediction"] | None = field(default=None, metadata=_help(
        "training target; default: the base scheduler's"))
    seed: int = field(default=0, metadata=_help("seed for LoRA init, data order, noise and sample images"))
    # ---- speed and precision
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(default=None, metadata=_help(
        "compute precision (LoRA weights stay fp32); default: the accelerate launch setting"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for activation memory"))
    attention: Literal["sdpa", "classic"] = field(default="sdpa", metadata=_help(
        "sdpa: torch scaled_dot_product_attention; classic: explicit softmax (for comparison)"))
    channels_last: bool = field(default=True, metadata=_help(
        "UNet in channels_last memory format (convolutions run NHWC: a tenth faster UNet step measured on CPU)"))
    fused_optimizer: bool = field(default=True, metadata=_help("fused AdamW kernel (else foreach)"))
    torch_compile: bool = field(default=False, metadata=_help("torch.compile the UNet"))
    allow_tf32: bool = field(default=True, metadata=_help("TF32 matmuls on Ampere+ GPUs"))
    # ---- checkpoints, validation, logging
    checkpointing_steps: int = field(default=500, metadata=_help("save a resumable checkpoint every N steps (0: "
                                                                 "only on interrupt and at the end)"))
    checkpoints_total_limit: int | None = field(default=None, metadata=_help("keep at most N checkpoints"))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        "'latest' or one of output_dir's checkpoints (checkpoint-N; no other folder: checkpoints hold pickles); "
        "continues with the same data order, RNG, optimizer and scaler state"))
    validation_prompts: list[str] | None = field(default=None, metadata=_help(
        "sample prompts; default: each distinct training prompt (one per class); alias --validation-prompt"))
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1], metadata=_help(
        "fixed seeds: one image per prompt and seed"))
    validation_steps: int = field(default=500, metadata=_help("sample images every N steps (0: only at the end)"))
    validation_inference_steps: int = field(default=25, metadata=_help("sampling steps of sample images"))
    validation_guidance_scale: float = field(default=7.0, metadata=_help("CFG scale of sample images"))
    logging_steps: int = field(default=10, metadata=_help("log the mean loss every N steps"))
    report_to: Literal["tensorboard", "none"] = field(default="tensorboard", metadata=_help("metrics logger"))
    # ---- outputs and Hub
    save_precision: Literal["fp32", "fp16", "bf16"] = field(default="fp32", metadata=_help(
        "dtype of the saved adapter weights (both files)"))
    kohya_weight_name: str = field(default="dermt2im_lora_kohya.safetensors", metadata=_help(
        "file name of the A1111/ComfyUI (kohya keys) copy of the adapter"))
    license: str = field(default="creativeml-openrail-m", metadata=_help("license in the model card"))
    push_to_hub: bool = field(default=False, metadata=_help("upload the output folder (never checkpoints)"))
    hub_model_id: str | None = field(default=None, metadata=_help("ORG/NAME of the Hub model repo"))
    hub_private: bool = field(default=True, metadata=_help("create the Hub repo private"))

    def validate(self) -> None:
        checks = [
            (self.resolution > 0 and self.resolution % 8 == 0,
             f"resolution must be a positive multiple of 8 (the VAE downsamples by 8), got {self.resolution}"),
            (self.rank >= 1, "rank must be at least 1"),
            (self.text_encoder_rank is None or self.text_encoder_rank >= 1, "text_encoder_rank must be at least 1"),
            (self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha must be positive"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be within [0, 1)"),
            (bool(self.target_modules), "target_modules must name at least one UNet module"),
            (self.train_batch_size >= 1, "train_batch_size must be at least 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
            (self.num_train_epochs >= 1, "num_train_epochs must be at least 1"),
            (self.max_train_steps is None or self.max_train_steps >= 1, "max_train_steps must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.lr_scheduler in LR_SCHEDULERS, f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}"),
            (self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma must be positive"),
            (self.noise_offset >= 0, "noise_offset must be >= 0"),
            (self.checkpointing_steps >= 0, "checkpointing_steps must be >= 0"),
            (self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
             "checkpoints_total_limit must be at least 1"),
            (self.validation_steps >= 0, "validation_steps must be >= 0"),
            (self.logging_steps >= 1, "logging_steps must be at least 1"),
            (self.vae_batch_size is None or self.vae_batch_size >= 1, "vae_batch_size must be at least 1"),
            (self.kohya_weight_name.endswith(".safetensors") and "/" not in self.kohya_weight_name,
             "kohya_weight_name must be a plain file name ending in .safetensors"),
            (self.kohya_weight_name != "pytorch_lora_weights.safetensors",
             "kohya_weight_name must differ from the diffusers file name"),
            (not self.push_to_hub or bool(self.hub_model_id), "push_to_hub needs hub_model_id (ORG/NAME)"),
            (not self.hub_model_id or not hub_id_problem(self.hub_model_id),  # refused now, not after training
             hub_id_problem(self.hub_model_id, "hub_model_id") if self.hub_model_id else ""),
            (not self.with_prior_preservation or bool(self.class_prompt),
             "with_prior_preservation needs class_prompt"),
            (self.num_class_images >= 1, "num_class_images must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def unet_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)

    @property
    def te_rank(self) -> int:
        return self.text_encoder_rank or self.rank

    @property
    def te_alpha(self) -> float:
        # same alpha/rank ratio as the UNet adapter unless the user set a separate rank
        return self.unet_alpha * self.te_rank / self.rank


def output_roles(config: TrainLoraConfig) -> dict[str, str | None]:
    """What makes a re-run into the same output folder "the same run" for the output-folder guard."""
    return {"train_data": config.train_data_dir}
