"""Loading: LoRA adapters (diffusers and kohya format, scales, mismatches) and single-file checkpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from dermt2im_hub.config import load_config
from dermt2im_hub.generation.infotext import parse_infotext, read_infotext
from dermt2im_hub.generation.models import AdapterMismatchError, load_base, write_sd15_config_folder
from dermt2im_hub.generation.plan import GenerationConfig, expand_plan
from dermt2im_hub.generation.runner import generate, load_pipeline, render_batch
from dermt2im_hub.utils.files import read_jsonl, sha256_file


def _config(tiny_base, output, **overrides) -> GenerationConfig:
    values = {"base": str(tiny_base), "output": str(output), "size": 64, "steps": "2", "num_images": 4,
              "batch_size": 4, "progress": False, "samplers": ["Euler a"]}
    values.update(overrides)
    return load_config(GenerationConfig, overrides=values)


@pytest.fixture(scope="module")
def lora_files(tiny_base, tmp_path_factory):
    """A LoRA for the tiny base made with peft (lora_B randomised so it changes the output), saved in diffusers
    format, in kohya format, and a copy whose shapes do not fit the base."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("lora")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_base), safety_checker=None)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_state = get_peft_model_state_dict(unet)
    diffusers_dir = folder / "diffusers"
    StableDiffusionPipeline.save_lora_weights(str(diffusers_dir), unet_lora_layers=convert_state_dict_to_diffusers(
        peft_state))
    kohya = folder / "derm kohya.safetensors"  # a space in the name: names are sanitised
    save_file(convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()}), str(kohya))

    broken_state = load_file(str(diffusers_dir / "pytorch_lora_weights.safetensors"))
    first_a = next(k for k in sorted(broken_state) if "lora_A" in k or "lora.down" in k)
    broken_state[first_a] = torch.zeros(broken_state[first_a].shape[0], broken_state[first_a].shape[1] + 3)
    broken = folder / "broken.safetensors"
    save_file(broken_state, str(broken))
    return {"diffusers": diffusers_dir, "kohya": kohya, "broken": broken}


def _pixels(pipe, config) -> np.ndarray:
    batch = expand_plan(config)[:2]
    cache = {"_base_config": dict(pipe.scheduler.config)}
    return np.stack([np.asarray(im) for im in render_batch(pipe, batch, pipe.device, cache)]).astype(np.int16)


def test_lora_changes_the_output_and_is_recorded(tiny_base, lora_files, tmp_path):
    base_pipe, _, _ = load_pipeline(_config(tiny_base, tmp_path / "x"))
    base_pixels = _pixels(base_pipe, _config(tiny_base, tmp_path / "x"))

    config = _config(tiny_base, tmp_path / "lora", lora=[f"{lora_files['diffusers']}:0.8"])
    pipe, base, adapters = load_pipeline(config)
    assert [(a.weight_name, a.scale) for a in adapters] == [("pytorch_lora_weights.safetensors", 0.8)]
    assert np.abs(_pixels(pipe, config) - base_pixels).max() > 10

    zero_pipe, _, _ = load_pipeline(_config(tiny_base, tmp_path / "z", lora=[f"{lora_files['diffusers']}:0"]))
    assert np.array_equal(_pixels(zero_pipe, config), base_pixels)  # scale 0 is the base

    generate(config, pipeline=(pipe, base, adapters))
    rows = read_jsonl(tmp_path / "lora" / "metadata.jsonl")
    sha = sha256_file(lora_files["diffusers"] / "pytorch_lora_weights.safetensors")
    assert rows[0]["adapters"] == [{"id": str(lora_files["diffusers"]), "weight_name": "pytorch_lora_weights.safetensors",
                                    "sha256": sha, "scale": 0.8}]
    with Image.open(tmp_path / "lora" / rows[0]["file_name"]) as image:
        parsed = parse_infotext(read_infotext(image))
    from dermt2im_hub.utils.model_hash import addnet_hash  # A1111's: the loaded file's stem and addnet hash

    weights = lora_files["diffusers"] / "pytorch_lora_weights.safetensors"
    assert parsed["params"]["Lora hashes"] == f"pytorch_lora_weights: {addnet_hash(weights)[:12]}"


def test_kohya_lora_and_two_adapters(tiny_base, lora_files, tmp_path):
    diffusers_only = _config(tiny_base, tmp_path / "d", lora=[str(lora_files["diffusers"])])
    kohya_only = _config(tiny_base, tmp_path / "k", lora=[str(lora_files["kohya"])])
    pipe_d, _, _ = load_pipeline(diffusers_only)
    pipe_k, _, adapters = load_pipeline(kohya_only)
    assert re.fullmatch(r"[\w-]+", adapters[0].name)  # "derm kohya" sanitised for peft and infotext
    # the same LoRA in both formats gives the same images (up to float rounding of the fused weights)
    assert np.abs(_pixels(pipe_d, diffusers_only) - _pixels(pipe_k, kohya_only)).max() <= 2

    both = _config(tiny_base, tmp_path / "b", lora=[f"{lora_files['diffusers']}:0.5", f"{lora_files['kohya']}:0.5"])
    pipe_b, _, adapters = load_pipeline(both)
    assert [a.scale for a in adapters] == [0.5, 0.5] and len({a.name for a in adapters}) == 2
    assert np.abs(_pixels(pipe_b, both) - _pixels(pipe_d, diffusers_only)).max() <= 2  # 0.5 + 0.5 of the same


def test_adapter_that_does_not_fit_names_both(tiny_base, lora_files, tmp_path):
    config = _config(tiny_base, tmp_path / "x", lora=[str(lora_files["broken"])])
    with pytest.raises(AdapterMismatchError) as info:
        load_pipeline(config)
    message = str(info.value)
    assert str(lora_files["broken"]) in message and str(tiny_base) in message and "does not fit" in message


# ---------------------------------------------------------------------------------------------- single file


def _resnet_to_ldm(rest: str, vae: bool) -> str:
    if vae:
        return rest.replace("conv_shortcut", "nin_shortcut")
    for new, old in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                     ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")):
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_key_to_ldm(key: str, per_block: int, attention_up: set[int]) -> str:
    fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for new, old in fixed.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block = 1 + int(m[1]) * (per_block + 1) + int(m[3])
        part = "0." + _resnet_to_ldm(m[4], False) if m[2] == "resnets" else "1." + m[4]
        return f"input_blocks.{block}.{part}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_to_ldm(m[2], False)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block = int(m[1]) * (per_block + 1) + int(m[3])
        part = "0." + _resnet_to_ldm(m[4], False) if m[2] == "resnets" else "1." + m[4]
        return f"output_blocks.{block}.{part}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * (per_block + 1) + per_block}.{2 if i in attention_up else 1}.conv.{m[2]}"
    raise KeyError(key)


def _vae_key_to_ldm(key: str, num_blocks: int) -> str:
    side, rest = key.split(".", 1) if key.startswith(("encoder.", "decoder.")) else ("", key)
    rest = rest.replace("conv_norm_out", "norm_out")
    if m := re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        i = int(m[2]) if m[1] == "down" else num_blocks - 1 - int(m[2])
        rest = f"{m[1]}.{i}.block.{m[3]}.{_resnet_to_ldm(m[4], True)}"
    elif m := re.match(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.*)", rest):
        i = int(m[2]) if m[1] == "down" else num_blocks - 1 - int(m[2])
        rest = f"{m[1]}.{i}.{'downsample' if m[1] == 'down' else 'upsample'}.conv.{m[4]}"
    elif m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest):
        rest = f"mid.block_{int(m[1]) + 1}.{_resnet_to_ldm(m[2], True)}"
    elif m := re.match(r"mid_block\.attentions\.0\.(.*)", rest):
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        head = next(n for n in names if m[1].startswith(n + "."))
        rest = f"mid.attn_1.{names[head]}{m[1][len(head):]}"
    return f"{side}.{rest}" if side else rest


def save_as_a1111_checkpoint(pipe, path) -> None:
    """Write a diffusers SD1.x pipeline as one original-layout (A1111/CompVis) safetensors file, for the test."""
    from safetensors.torch import save_file

    unet_cfg = pipe.unet.config
    attention_up = {i for i, t in enumerate(unet_cfg.up_block_types) if "CrossAttn" in t}
    state = {}
    for key, value in pipe.unet.state_dict().items():
        state["model.diffusion_model." + _unet_key_to_ldm(key, unet_cfg.layers_per_block, attention_up)] = value
    for key, value in pipe.vae.state_dict().items():
        if re.search(r"attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", key):
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        state["first_stage_model." + _vae_key_to_ldm(key, len(pipe.vae.config.block_out_channels))] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers 5 drops CLIPTextModel's "text_model." prefix from its own keys; checkpoints keep it
        state["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def test_single_file_checkpoint_loads_offline_with_a_local_config(tiny_base, tmp_path):
    folder_pipe, folder_info = load_base(str(tiny_base))
    checkpoint = tmp_path / "derm-t2im-tiny.safetensors"
    save_as_a1111_checkpoint(folder_pipe, checkpoint)

    pipe, info = load_base(str(checkpoint), single_file_config=str(tiny_base))
    assert info.kind == "single_file" and info.sha256 == sha256_file(checkpoint) and info.name == "derm-t2im-tiny"
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(folder_pipe, name).state_dict()
        assert set(ours) == set(theirs), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name

    out = tmp_path / "out"
    generate(_config(checkpoint, out, single_file_config=str(tiny_base), num_images=2))
    row = read_jsonl(out / "metadata.jsonl")[0]
    assert row["base_model_hash"] == sha256_file(checkpoint)  # A1111's "Model hash" is of this file
    with Image.open(out / row["file_name"]) as image:
        assert parse_infotext(read_infotext(image))["model_hash"] == sha256_file(checkpoint)[:10]
    assert folder_info.hashed_file == "unet/diffusion_pytorch_model.safetensors"


def test_default_single_file_config_is_sd15(tmp_path):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = write_sd15_config_folder(tmp_path / "sd15")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in text.parameters()) == 123_060_480
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


_GENERATE_FROM_HUB = """
import sys
from dermt2im_hub.cli import main
sys.exit(main(["generate", "--base", "org/tiny-sd", "--lora", "org/derm-lora:0.7", "--output", sys.argv[1],
               "--num-images", "2", "--steps", "1", "--size", "64", "--samplers", "Euler", "--no-progress"]))
"""


@pytest.mark.integration
def test_base_and_adapter_from_the_hub(local_hub, tiny_base, lora_files, tmp_path):
    """Hub ids through a real Hub read API: the base as a snapshot (its commit recorded as the revision) and
    the LoRA as a file of a repo, both hashed like local files."""
    base_commit = local_hub.publish(tiny_base, "org/tiny-sd")
    local_hub.publish(lora_files["diffusers"], "org/derm-lora")
    out = tmp_path / "out"
    result = local_hub.run_python(_GENERATE_FROM_HUB, str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = read_jsonl(out / "metadata.jsonl")[0]
    assert (row["base_model"], row["base_model_revision"]) == ("org/tiny-sd", base_commit)
    assert row["base_model_hash"] == sha256_file(tiny_base / "unet" / "diffusion_pytorch_model.safetensors")
    lora_sha = sha256_file(lora_files["diffusers"] / "pytorch_lora_weights.safetensors")
    assert row["adapters"] == [{"id": "org/derm-lora", "weight_name": "pytorch_lora_weights.safetensors",
                                "sha256": lora_sha, "scale": 0.7}]
