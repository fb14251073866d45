"""The training step and the choices that make it fast; `bench/train_step.py` times this same code.

Per step diffusers' train_dreambooth_lora.py runs the VAE encoder on every batch and the text encoder on every
prompt. Here both are encoded once (`cache.py`), so a step is: draw the latent from its cached Gaussian, add
noise, one UNet forward/backward, AdamW on the LoRA tensors only. Speed levers, each a config field so the
benchmark can show its share: SDPA attention, channels_last, fused AdamW, torch.compile, mixed precision with
fp32 LoRA weights.

Random numbers of a micro-step come from a generator seeded by (seed, process, micro-step), so a run resumed
from a checkpoint draws exactly the noise and timesteps the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dermt2im_hub.utils.logging import get_logger

logger = get_logger(__name__)


class OptimizerUnavailable(RuntimeError):
    """The configured optimizer needs a package that is not installed."""


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) % (1 << 64) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def seeded_generator(device: torch.device, *parts: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(*parts))
    return generator


@dataclass
class BatchPlan:
    """Which cached examples (and which flip of each) one process trains on in one micro-step."""

    indices: torch.Tensor  # [B] long
    views: torch.Tensor  # [B] long: 0 = as is, 1 = flipped
    class_indices: torch.Tensor | None = None  # prior-preservation examples paired with this batch
    epoch: int = 0


class EpochSampler:
    """Seeded, stateless data order: micro-step m of process r is a pure function of (seed, m, r).

    Each epoch is a fresh permutation of the examples (seeded by (seed, epoch)), wrapped around at the end
    so every global batch is full; process r takes its slice of each global batch (DDP sharding). Random
    flips are drawn per (epoch, example). Resuming therefore needs only the step count.
    """

    def __init__(self, num_examples: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0, random_flip: bool = False, num_class_examples: int = 0):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.random_flip = random_flip
        self.num_class_examples = num_class_examples
        self.global_batch = batch_size * num_processes
        self.steps_per_epoch = math.ceil(num_examples / self.global_batch)
        self._epoch_cache: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def _epoch_order(self, epoch: int):
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 1))
            order = torch.randperm(self.num_examples, generator=generator)
            needed = self.steps_per_epoch * self.global_batch
            order = order.repeat(math.ceil(needed / self.num_examples))[:needed]
            flips = (torch.randint(0, 2, (self.num_examples,), generator=generator) if self.random_flip
                     else torch.zeros(self.num_examples, dtype=torch.long))
            class_order = None
            if self.num_class_examples:
                class_order = torch.randperm(self.num_class_examples, generator=generator)
            self._epoch_cache = (epoch, order, flips, class_order)
        return self._epoch_cache[1:]

    def plan(self, micro_step: int) -> BatchPlan:
        epoch, position = divmod(micro_step, self.steps_per_epoch)
        order, flips, class_order = self._epoch_order(epoch)
        start = position * self.global_batch + self.process_index * self.batch_size
        slots = torch.arange(start, start + self.batch_size)
        indices = order[slots]
        class_indices = class_order[slots % self.num_class_examples] if class_order is not None else None
        return BatchPlan(indices, flips[indices], class_indices, epoch)


def set_attention(unet, attention: str) -> None:
    """sdpa: torch's fused scaled_dot_product_attention; classic: explicit softmax(QK^T)V (reference only)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def prepare_unet(unet, attention: str = "sdpa", channels_last: bool = False,
                 gradient_checkpointing: bool = False) -> None:
    set_attention(unet, attention)
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()


def build_optimizer(param_groups: list[dict], name: str, betas: tuple[float, float], weight_decay: float,
                    eps: float, fused: bool = True):
    """AdamW over the LoRA tensors: torch's fused kernel when asked (one launch for all tensors), else foreach;
    or bitsandbytes' 8-bit AdamW (the paper's optimizer)."""
    if name == "adamw_8bit":
        bnb = _import_bitsandbytes()
        return bnb.optim.AdamW8bit(param_groups, betas=betas, weight_decay=weight_decay, eps=eps)
    params = [p for group in param_groups for p in group["params"]]
    kernel = {"fused": True} if fused and _fused_adamw_supported(params) else {"foreach": True}
    return torch.optim.AdamW(param_groups, betas=betas, weight_decay=weight_decay, eps=eps, **kernel)


def _fused_adamw_supported(params) -> bool:
    devices = {p.device.type for p in params}
    return bool(params) and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params) and \
        devices <= {"cuda", "cpu", "xpu", "mps"}


def _import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise OptimizerUnavailable(
            "optimizer adamw_8bit (the paper's 8-bit AdamW) needs bitsandbytes, which is not installed: "
            "pip install 'dermt2im-hub[bnb]' on a CUDA machine, or use --optimizer adamw") from None
    return bitsandbytes


def check_optimizer_available(name: str) -> None:
    """Fail before any model loads when the optimizer's package is missing."""
    if name == "adamw_8bit":
        _import_bitsandbytes()


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   generator: torch.Generator, prediction_type: str = "epsilon", snr_gamma: float | None = None,
                   noise_offset: float = 0.0, num_prior: int = 0, prior_loss_weight: float = 1.0,
                   channels_last: bool = False) -> torch.Tensor:
    """The DreamBooth-LoRA objective on a batch of clean latents.

    The last `num_prior` rows are prior-preservation (class) examples: their mean loss is added with
    `prior_loss_weight`. With `snr_gamma`, each sample's loss is weighted by min(SNR, gamma)/SNR
    (epsilon targets) or min(SNR, gamma)/(SNR + 1) (v-prediction), as in Hang et al. 2023.
    """
    from diffusers.training_utils import compute_snr

    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((batch, latents.shape[1], 1, 1), generator=generator,
                                                   device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator,
                              device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        snr = compute_snr(noise_scheduler, timesteps)
        clipped = torch.clamp(snr, max=snr_gamma)
        per_sample = per_sample * (clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1))
    if num_prior:
        instance, prior = per_sample[:-num_prior], per_sample[-num_prior:]
        return instance.mean() + prior_loss_weight * prior.mean()
    return per_sample.mean()
