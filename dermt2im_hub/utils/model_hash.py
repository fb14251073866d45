"""The one definition of a diffusers base model's hash, shared by training, generation and the dataset cards.

A base model is identified by the sha256 of its UNet weights file `unet/diffusion_pytorch_model.safetensors`
(for a sharded UNet, the sha256 of the shards' sha256s joined in file-name order): the file A1111-style hashes
describe and the one every card labels (docs/hub.md, "Which hash is which").
"""

from __future__ import annotations

from pathlib import Path

from dermt2im_hub.utils.files import sha256_bytes, sha256_file

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


def unet_weights_sha256(folder: str | Path, variant: str | None = None) -> tuple[str | None, str | None]:
    """(sha256, file described) of a diffusers folder's UNet weights; with a weight `variant` (e.g. fp16),
    the variant file when it exists. (None, None) when the folder has no safetensors UNet weights."""
    unet = Path(folder) / "unet"
    if variant:
        name = f"diffusion_pytorch_model.{variant}.safetensors"
        if (unet / name).is_file():
            return sha256_file(unet / name), f"unet/{name}"
    if (unet / UNET_WEIGHTS).is_file():
        return sha256_file(unet / UNET_WEIGHTS), f"unet/{UNET_WEIGHTS}"
    shards = sorted(unet.glob("diffusion_pytorch_model-*.safetensors"))
    if shards:
        joined = "".join(sha256_file(p) for p in shards)
        return sha256_bytes(joined.encode()), "unet/diffusion_pytorch_model-*.safetensors (sha256 of shard sha256s)"
    return None, None
