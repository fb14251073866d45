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


def addnet_hash(path: str | Path) -> str:
    """The hash AUTOMATIC1111 and civitai give a LoRA safetensors file (kohya's "addnet" hash): the sha256 of the
    file after its header (an 8-byte little-endian header length, then that many bytes of JSON), so that editing
    the file's metadata does not change it. A1111's infotext `Lora hashes` shows its first 12 hex digits."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
