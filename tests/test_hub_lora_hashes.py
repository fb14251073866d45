"""Infotext `Lora hashes` as AUTOMATIC1111 and civitai compute them, so a lookup of our PNGs resolves: the
file a user installs (the kohya copy of a train_lora folder), named by its stem, with its addnet hash (sha256
of the file after the safetensors header, first 12 hex digits); metadata rows keep the loaded file's sha256."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from dermt2im_hub.generation.infotext import parse_infotext
from dermt2im_hub.generation.models import resolve_adapter
from dermt2im_hub.generation.outputs import infotext_for, metadata_row
from dermt2im_hub.manifest import write_manifest
from dermt2im_hub.utils.files import sha256_file
from dermt2im_hub.utils.model_hash import addnet_hash

KOHYA = "derm_lesions_v1.safetensors"


def _after_header(path) -> bytes:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return data[8 + length:]


@pytest.fixture
def lora_folder(tmp_path):
    """A train_lora output: the diffusers file (what generation loads) and the kohya copy (what A1111 users
    install), named in the manifest's card facts."""
    folder = tmp_path / "lora"
    folder.mkdir()
    torch.manual_seed(0)
    down, up = torch.randn(4, 32), torch.randn(32, 4)
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": down,
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": up}, folder / "pytorch_lora_weights.safetensors")
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": down,
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": up,
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)},
              folder / KOHYA, metadata={"ss_network_dim": "4", "ss_training_comment": "first"})
    write_manifest(folder, "train_lora", extra={"card": {"weight_files": {
        "diffusers": "pytorch_lora_weights.safetensors", "kohya": KOHYA}}})
    return folder


def test_addnet_hash_skips_the_header_so_metadata_edits_keep_it(lora_folder, tmp_path):
    path = lora_folder / KOHYA
    assert addnet_hash(path) == hashlib.sha256(_after_header(path)).hexdigest() != sha256_file(path)
    from safetensors.torch import load_file

    edited = tmp_path / "edited.safetensors"
    save_file(load_file(path), edited, metadata={"ss_network_dim": "4", "ss_training_comment": "a longer comment"})
    assert addnet_hash(edited) == addnet_hash(path) and sha256_file(edited) != sha256_file(path)


def test_infotext_names_the_installed_file_and_its_addnet_hash(lora_folder):
    from types import SimpleNamespace

    adapter = resolve_adapter(f"{lora_folder}:0.8")
    assert adapter.weight_name == "pytorch_lora_weights.safetensors"  # what generation loads
    image = SimpleNamespace(prompt="malignant mole on neck", negative_prompt=None, steps=20, sampler="Euler",
                            cfg_scale=7.0, seed=1, width=64, height=64, file_name="malignant/00000-1.png",
                            label="malignant", transformations=[], index=0, feature_cache=None)
    base = SimpleNamespace(short_hash="0123456789", name="tiny", id="tiny", revision=None, sha256="ab" * 32)
    params = parse_infotext(infotext_for(image, base, [adapter]))["params"]
    assert params["Lora hashes"] == f"derm_lesions_v1: {addnet_hash(lora_folder / KOHYA)[:12]}"
    row = metadata_row(image, base, [adapter], "cd" * 32)
    assert row["adapters"][0]["sha256"] == sha256_file(lora_folder / "pytorch_lora_weights.safetensors")


def test_a_plain_adapter_file_is_its_own_installed_file(lora_folder, tmp_path):
    single = tmp_path / "other" / "my,lora:v2.safetensors"
    single.parent.mkdir()
    single.write_bytes((lora_folder / KOHYA).read_bytes())
    adapter = resolve_adapter(str(single))
    assert (adapter.a1111_name, adapter.addnet_hash) == ("mylorav2", addnet_hash(single))
    (lora_folder / "manifest.json").write_text(json.dumps({"extra": {"card": {"weight_files": {"kohya": "../x"}}}}))
    assert resolve_adapter(str(lora_folder)).a1111_name == "pytorch_lora_weights", "a name leaving the folder"
