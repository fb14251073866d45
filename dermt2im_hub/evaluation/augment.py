"""Batched augmentation and normalisation on the training device.

The loader hands over cached uint8 images; everything per-image-random happens here, on the GPU when
there is one, with independent parameters for every image of the batch:

- random resized crop + rotation + flips as one affine warp (`affine_grid` + `grid_sample`, reflection
  padding so rotated corners are skin, not black);
- colour jitter of brightness, contrast and saturation (hue is left alone: lesion colours such as
  blue-grey or red are diagnostic, and shifting them would change what the image shows);
- normalisation with the model's own mean/std.

Doing this per batch on the device keeps the CPU side to a memory copy, so loading does not bound the
training speed (bench/classifier.py measures both).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dermt2im_hub.evaluation.config import AugmentationConfig


def _uniform(n: int, low: float, high: float, device, generator=None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


class Normalize(torch.nn.Module):
    """uint8 NHWC batch -> normalised float NCHW (evaluation path)."""

    def __init__(self, mean, std, channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_nchw(images) if images.dtype == torch.uint8 else images
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


class Augment(torch.nn.Module):
    """uint8 NHWC batch -> augmented, normalised float NCHW batch of side `size`."""

    def __init__(self, config: AugmentationConfig, size: int, mean, std, channels_last: bool = False):
        super().__init__()
        self.config = config
        self.size = int(size)
        self.normalize = Normalize(mean, std, channels_last)

    def _affine(self, n: int, device, generator) -> torch.Tensor:
        """Per-image matrices mapping output to input coordinates (affine_grid's convention)."""
        cfg = self.config
        area = _uniform(n, cfg.scale_min, 1.0, device, generator)
        log_ratio = _uniform(n, -math.log(cfg.ratio_max), math.log(cfg.ratio_max), device, generator)
        ratio = torch.exp(log_ratio)
        half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop half-extent in [-1, 1] coordinates
        half_h = torch.sqrt(area / ratio).clamp(max=1.0)
        centre_x = _uniform(n, -1.0, 1.0, device, generator) * (1.0 - half_w)
        centre_y = _uniform(n, -1.0, 1.0, device, generator) * (1.0 - half_h)
        angle = _uniform(n, -1.0, 1.0, device, generator) * math.radians(cfg.rotation_degrees)
        flip_x = torch.ones(n, device=device)
        flip_y = torch.ones(n, device=device)
        if cfg.horizontal_flip:
            flip_x = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -flip_x, flip_x)
        if cfg.vertical_flip:
            flip_y = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -flip_y, flip_y)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx, sy = half_w * flip_x, half_h * flip_y
        theta = torch.stack([
            torch.stack([cos * sx, -sin * sy, centre_x], dim=1),
            torch.stack([sin * sx, cos * sy, centre_y], dim=1),
        ], dim=1)
        return theta

    def _jitter(self, x: torch.Tensor, generator) -> torch.Tensor:
        cfg = self.config
        n, device = x.shape[0], x.device

        def factor(strength: float) -> torch.Tensor:
            return _uniform(n, 1.0 - strength, 1.0 + strength, device, generator).view(n, 1, 1, 1)

        if cfg.brightness:
            x = x * factor(cfg.brightness)
        grey_weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
        if cfg.contrast:
            mean_grey = (x * grey_weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
            x = (x - mean_grey) * factor(cfg.contrast) + mean_grey
        if cfg.saturation:
            grey = (x * grey_weights).sum(dim=1, keepdim=True)
            x = grey + (x - grey) * factor(cfg.saturation)
        return x.clamp_(0.0, 1.0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float_nchw(images)
        n = x.shape[0]
        theta = self._affine(n, x.device, generator)
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return self.normalize(self._jitter(x, generator))
