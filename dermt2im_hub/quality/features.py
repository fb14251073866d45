"""Pluggable image embeddings for the memorization audit and the fidelity metrics.

Any object with a `name`, `describe()` and `embed(images)` works (see `FeatureExtractor`); the built-in one
wraps a timm model with its classifier removed. FID, KID and precision/recall are only comparable between
runs that used the same extractor, so the report and the manifest record `describe()`.

Weights: a random init from a seed (the offline default; fine for comparing sets within one run, not for
numbers against the literature), timm's pretrained weights from the Hugging Face Hub (or its local cache),
or a local `.safetensors` file (never a pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from dermt2im_hub.config import ConfigError
from dermt2im_hub.quality.config import FeatureConfig
from dermt2im_hub.utils.files import is_safetensors, sha256_file


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str  # short, human-readable: what the report prints next to every FID/KID number

    def describe(self) -> dict:
        """JSON-safe facts that identify the extractor (model, weights, their sha256, input size, dim)."""

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(len(images), dim) float32 embeddings of RGB uint8 HxWx3 arrays of any size."""


class TimmFeatureExtractor:
    """A timm backbone's pooled features (num_classes=0), images resized to a square input."""

    def __init__(self, model: str = "resnet18", weights: str | None = None, seed: int = 0,
                 image_size: int | None = None, device: str = "cpu"):
        import timm
        import torch

        self._torch = torch
        self.model_name = model
        self.weights_label, self.weights_sha256 = _describe_weights(weights, seed)
        try:
            if weights is None:
                torch.manual_seed(seed)  # the random init is part of the extractor's identity
            net = _create_model(timm, model, weights, image_size)
        except RuntimeError as exc:  # timm: unknown model name
            raise ConfigError(f"quality.features.model {model!r}: {exc}") from exc
        except OSError as exc:  # huggingface_hub: offline and not cached
            raise ConfigError(f"quality.features: cannot load pretrained weights for {model!r} ({exc}); give a "
                              "local .safetensors file or weights: null for a random init") from exc
        if weights == "hub":
            self.weights_label = f"pretrained ({net.pretrained_cfg.get('hf_hub_id') or model})"
        data_config = timm.data.resolve_model_data_config(net)
        self.image_size = int(image_size or data_config["input_size"][-1])
        self._mean = np.asarray(data_config["mean"], np.float32)
        self._std = np.asarray(data_config["std"], np.float32)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = net.eval().to(self.device)
        self.dim = int(net.num_features)
        self.name = f"{model} [{self.weights_label}] @{self.image_size}px"

    def describe(self) -> dict:
        return {"name": self.name, "library": "timm", "model": self.model_name, "weights": self.weights_label,
                "weights_sha256": self.weights_sha256, "image_size": self.image_size, "dim": self.dim}

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.dim), np.float32)
        side = self.image_size
        batch = np.stack([cv2.resize(np.ascontiguousarray(image[..., :3]), (side, side),
                                     interpolation=cv2.INTER_AREA if min(image.shape[:2]) > side
                                     else cv2.INTER_CUBIC) for image in images])
        batch = (batch.astype(np.float32) / 255.0 - self._mean) / self._std
        tensor = self._torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)
        with self._torch.inference_mode():
            features = self.model(tensor)
        return features.float().cpu().numpy().reshape(len(images), -1)


def _create_model(timm, model: str, weights: str | None, image_size: int | None):
    kwargs: dict = {"pretrained": weights is not None, "num_classes": 0}
    if weights not in (None, "hub"):
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    if image_size:
        # vision transformers fix their input size at creation (timm resamples the position embeddings of
        # pretrained weights to it); convolutional networks take any size and do not accept the argument
        try:
            return timm.create_model(model, img_size=image_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(model, **kwargs)


def _describe_weights(weights: str | None, seed: int) -> tuple[str, str | None]:
    if weights is None:
        return f"random init, seed {seed}", None
    if weights == "hub":
        return "pretrained (Hub)", None
    path = Path(weights)
    if not is_safetensors(path):
        raise ConfigError(f"quality.features.weights {weights!r}: only .safetensors files are loaded "
                          "(pickled checkpoints can run code)")
    if not path.is_file():
        raise ConfigError(f"quality.features.weights: file not found: {path}")
    return f"file {path.name}", sha256_file(path)


def build_extractor(config: FeatureConfig) -> TimmFeatureExtractor:
    return TimmFeatureExtractor(config.model, config.weights, config.seed, config.image_size, config.device)
