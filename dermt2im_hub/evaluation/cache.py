"""Decoded-image cache: every image is decoded and resized once per input size, then reused by every
epoch, seed, arm and model with that size.

Decoding a 512 px PNG or a 1000 px JPEG costs far more than a training step of MobileNetV2 on a GPU, so
decoding per epoch would starve the GPU. Instead DataLoader workers decode each split once into a
uint8 array (N, H, W, 3): for training at the model's resize size (side / crop_pct, so random crops
have room), for evaluation at the exact timm eval transform (resize + centre crop). JPEGs are decoded
at reduced DCT scale when that still leaves enough pixels (PIL `draft`). The arrays stay in memory for
the process and, with a cache folder, as .npy files that later processes memory-map instead of decoding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

_MEMORY: dict[str, np.ndarray] = {}


def resize_transform(data_config: dict, side: int, crop_pct: float):
    """timm's eval transform at `side` without its tensor conversion and normalisation (a PIL -> PIL step)."""
    from timm.data import create_transform
    from torchvision import transforms

    full = create_transform(input_size=(3, side, side), interpolation=data_config["interpolation"],
                            mean=data_config["mean"], std=data_config["std"], crop_pct=crop_pct,
                            crop_mode=data_config.get("crop_mode", "center"), is_training=False)
    steps = [t for t in full.transforms if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")]
    return transforms.Compose(steps)


def train_side(data_config: dict) -> int:
    """Side of the cached training images: the model's resize size, so random crops keep their pixels."""
    size = int(data_config["input_size"][-1])
    return int(round(size / float(data_config.get("crop_pct") or 1.0)))


def open_image(value, min_side: int | None = None) -> Image.Image:
    """An RGB PIL image from an undecoded `datasets` value ({bytes, path}), bytes, a path or a PIL image."""
    if isinstance(value, Image.Image):
        image = value
    else:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        image = Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value)
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))  # decode at a reduced scale that still covers min_side
    return image.convert("RGB")


class DecodeDataset(torch.utils.data.Dataset):
    """Images -> uint8 HWC arrays through a PIL transform (run in DataLoader workers)."""

    def __init__(self, images, transform, min_side: int):
        self.images = images
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        value = self.images[index]
        if isinstance(value, dict) and "image" in value:  # a datasets row
            value = value["image"]
        return np.asarray(self.transform(open_image(value, self.min_side)), dtype=np.uint8)


def _stack(batch):
    return np.stack(batch)


def decode_images(images, transform, side: int, num_workers: int = 0, progress: bool = True,
                  desc: str = "decoding", draft_side: int | None = None) -> np.ndarray:
    """Decode every image into one (N, side, side, 3) uint8 array, in parallel workers."""
    from tqdm.auto import tqdm

    dataset = DecodeDataset(images, transform, draft_side or side)
    out = np.empty((len(dataset), side, side, 3), dtype=np.uint8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=num_workers, collate_fn=_stack)
    position = 0
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            out[position:position + len(batch)] = batch
            position += len(batch)
            bar.update(len(batch))
    return out


def cached_images(images, key: str, data_config: dict, mode: str, cache_dir: str | os.PathLike | None = None,
                  num_workers: int = 0, progress: bool = True) -> np.ndarray:
    """The decoded array of `images` for `mode` "train" (resize size) or "eval" (timm eval crop).

    `key` names the image set (a dataset fingerprint); the size and interpolation are added here.
    """
    size = int(data_config["input_size"][-1])
    if mode == "train":
        side, crop_pct = train_side(data_config), 1.0
    else:
        side, crop_pct = size, float(data_config.get("crop_pct") or 1.0)
    recipe = f"{key}|{mode}|{side}|{crop_pct}|{data_config['interpolation']}"
    full_key = hashlib.sha256(recipe.encode()).hexdigest()
    if full_key in _MEMORY:
        return _MEMORY[full_key]
    path = Path(cache_dir) / f"images-{full_key[:24]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        array = np.load(path, mmap_mode="r")
    else:
        array = decode_images(images, resize_transform(data_config, side, crop_pct), side, num_workers, progress,
                              desc=f"decoding {len(images)} images at {side}px",
                              draft_side=int(round(side / crop_pct)))
        if path is not None:
            _save_npy_atomically(array, path)
    _MEMORY[full_key] = array
    return array


def _save_npy_atomically(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def clear_memory_cache() -> None:
    _MEMORY.clear()
