"""Feature caching (DeepCache-style) on the tiny base: off is today's output, interval 1 is off, interval > 1
differs but stays close for every sampler, with CFG and LoRA, and every output records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dermt2im_hub.config import ConfigError, load_config
from dermt2im_hub.generation.feature_cache import FeatureCache, max_depth
from dermt2im_hub.generation.infotext import parse_infotext, read_infotext
from dermt2im_hub.generation.models import load_base
from dermt2im_hub.generation.outputs import FolderMismatchError
from dermt2im_hub.generation.plan import GenerationConfig
from dermt2im_hub.generation.runner import generate, prepare_pipeline
from dermt2im_hub.generation.samplers import known_samplers, make_scheduler
from dermt2im_hub.utils.files import read_jsonl

STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, 2-thread OpenMP teams stall whenever another job runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pipe(tiny_base):
    pipe, _ = load_base(str(tiny_base), None, None)
    prepare_pipeline(pipe, torch.device("cpu"), torch.float32)
    return pipe


def render(pipe, sampler: str, steps: int = STEPS, cfg: float = 7.0) -> np.ndarray:
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    with torch.inference_mode():
        return pipe(["a dermoscopic image of a malignant skin lesion"] * 2, num_inference_steps=steps,
                    guidance_scale=cfg, height=64, width=64, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in range(2)]).images


def render_cached(pipe, sampler: str, interval: int, depth: int = 1, **kwargs) -> tuple[np.ndarray, FeatureCache]:
    cache = FeatureCache(pipe.unet, interval, depth)
    try:
        cache.reset()
        return render(pipe, sampler, **kwargs), cache
    finally:
        cache.detach()


@pytest.mark.parametrize("sampler", known_samplers())
def test_interval_1_is_off_and_interval_2_stays_close(pipe, sampler):
    """Every sampler, batched CFG: interval 1 gives the uncached bytes; interval 2 runs every other UNet call as
    the shallow branch, changes the images, but by far less than another seed does; detaching restores the UNet
    (each render_cached detaches its cache)."""
    off = render(pipe, sampler)
    every_call, cache = render_cached(pipe, sampler, interval=1)
    assert np.array_equal(every_call, off) and cache.shallow_calls == 0
    cached, cache = render_cached(pipe, sampler, interval=2)
    assert cache.shallow_calls >= STEPS // 2 - 1 and cache.full_calls >= STEPS // 2
    change = np.abs(cached - off).mean()
    other_seed = np.abs(off[0] - off[1]).mean()
    assert 0 < change < 0.25 * other_seed, (change, other_seed)
    assert not any("forward" in vars(module) for module in pipe.unet.modules())  # detached: the plain UNet again


@pytest.mark.parametrize("depth", [1, 2])
def test_a_shallow_call_reuses_the_deep_features_and_skips_their_modules(pipe, depth):
    """A shallow call on the inputs of the full call before it gives that call's output bitwise (the branch is
    wired to the right cached feature and the fresh skip connections), while the deep modules do not run."""
    unet = pipe.unet
    assert max_depth(unet) == 2  # the tiny base: one layer per block
    calls = {"mid": 0, "outer": 0}
    # hooks on modules inside the wrapped ones: a wrapper that returns cached features never calls them
    hooks = [unet.mid_block.resnets[0].register_forward_pre_hook(
                 lambda *a: calls.__setitem__("mid", calls["mid"] + 1)),
             unet.up_blocks[-1].resnets[-1].register_forward_pre_hook(
                 lambda *a: calls.__setitem__("outer", calls["outer"] + 1))]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    cache = FeatureCache(unet, interval=3, depth=depth)
    try:
        with torch.inference_mode():
            full = unet(sample, 500, text).sample
            shallow = unet(sample, 500, text).sample
            other = unet(sample * 0.5, 400, text).sample  # still shallow: the cached deep feature, new input
            again_full = unet(sample, 500, text).sample  # the 4th call: full again
    finally:
        cache.detach()
        for hook in hooks:
            hook.remove()
    assert torch.equal(shallow, full) and torch.equal(again_full, full)
    assert not torch.equal(other, full)
    assert calls == {"mid": 2, "outer": 4}
    assert (cache.full_calls, cache.shallow_calls) == (2, 2)


def test_a_new_batch_shape_forces_a_full_call(pipe):
    cache = FeatureCache(pipe.unet, interval=4)
    try:
        with torch.inference_mode():
            pipe.unet(torch.randn(2, 4, 8, 8), 500, torch.randn(2, 77, 32))
            pipe.unet(torch.randn(4, 4, 8, 8), 500, torch.randn(4, 77, 32))
    finally:
        cache.detach()
    assert (cache.full_calls, cache.shallow_calls) == (2, 0)


def test_invalid_settings_are_refused(pipe, tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="depth must be within 1..2"):
        FeatureCache(pipe.unet, interval=2, depth=3)
    with pytest.raises(ConfigError, match="interval must be >= 1"):
        FeatureCache(pipe.unet, interval=0)
    with pytest.raises(ConfigError, match="feature_cache_interval must be >= 0"):
        _config(tiny_base, tmp_path / "x", feature_cache_interval=-1).validate()
    with pytest.raises(ConfigError, match="depth must be within"):  # before any file is written
        generate(_config(tiny_base, tmp_path / "deep", feature_cache_interval=2, feature_cache_depth=5))
    assert not (tmp_path / "deep").exists()


@pytest.fixture(scope="module")
def lora_dir(tiny_base, tmp_path_factory):
    """A diffusers-format LoRA for the tiny base whose weights change the output."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = StableDiffusionPipeline.from_pretrained(str(tiny_base), safety_checker=None).unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return folder


def _config(tiny_base, output, **overrides) -> GenerationConfig:
    values = {"base": str(tiny_base), "output": str(output), "size": 64, "steps": "4", "num_images": 2,
              "batch_size": 4, "progress": False, "samplers": ["Euler a", "DPM++ 2M Karras"]}
    values.update(overrides)
    return load_config(GenerationConfig, overrides=values)


def _pixels(folder) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.glob("*/*.png")):
        with Image.open(path) as image:
            out[path.relative_to(folder).as_posix()] = np.asarray(image.convert("RGB"), dtype=np.int16)
    return out


def test_generate_with_lora_records_the_cache_everywhere(tiny_base, lora_dir, tmp_path):
    """Through `generate` with a LoRA (fused into the weights): caching off writes what it wrote before the option
    existed (no new key anywhere), interval 1 the same pixels, interval 3 close pixels; the metadata rows, the
    infotext, plan.jsonl and the manifest say which; resuming with another interval is refused."""
    lora, n = [f"{lora_dir}:0.8"], 4  # 4 images: one batch per sampler
    off = generate(_config(tiny_base, tmp_path / "off", lora=lora, num_images=n)).output
    every = generate(_config(tiny_base, tmp_path / "every", lora=lora, num_images=n, feature_cache_interval=1)).output
    cached = generate(_config(tiny_base, tmp_path / "cached", lora=lora, num_images=n, feature_cache_interval=3)).output
    no_lora = generate(_config(tiny_base, tmp_path / "no-lora", num_images=n, feature_cache_interval=3)).output

    a, b, c, d = _pixels(off), _pixels(every), _pixels(cached), _pixels(no_lora)
    assert a.keys() == b.keys() == c.keys() and len(a) == n
    names = sorted(a)
    other_seed = np.abs(a[names[0]] - a[names[1]]).mean()
    for name in names:
        assert np.array_equal(a[name], b[name]), name
        cache_change, lora_effect = np.abs(a[name] - c[name]).mean(), np.abs(c[name] - d[name]).mean()
        # close to the uncached image, and the LoRA still acts on the cached path
        assert 0 < cache_change < min(0.25 * other_seed, lora_effect), (name, cache_change, lora_effect, other_seed)

    for row in read_jsonl(off / "metadata.jsonl"):
        assert "feature_cache" not in row
        with Image.open(off / row["file_name"]) as image:
            assert "Feature cache" not in parse_infotext(read_infotext(image))["params"]
    assert json.loads((off / "manifest.json").read_text())["extra"]["feature_cache"] is None
    assert all("feature_cache" not in row for row in read_jsonl(off / "plan.jsonl"))

    rows = read_jsonl(cached / "metadata.jsonl")
    assert all(row["feature_cache"] == {"interval": 3, "depth": 1} for row in rows)
    assert all(row["adapters"][0]["scale"] == 0.8 for row in rows)
    with Image.open(cached / rows[0]["file_name"]) as image:
        assert parse_infotext(read_infotext(image))["params"]["Feature cache"] == "interval 3, depth 1"
    assert all(row["feature_cache"] == {"interval": 3, "depth": 1} for row in read_jsonl(cached / "plan.jsonl"))
    manifest = json.loads((cached / "manifest.json").read_text())
    # 2 batches (one per sampler) of 4 steps, each starting afresh: calls 0 and 3 full, 1 and 2 shallow
    assert manifest["extra"]["feature_cache"] == {"interval": 3, "depth": 1, "full_unet_calls_rank0": 4,
                                                  "shallow_unet_calls_rank0": 4}
    assert manifest["config"]["feature_cache_interval"] == 3

    with pytest.raises(FolderMismatchError, match="feature_cache_interval"):
        generate(_config(tiny_base, cached, lora=lora, num_images=n, feature_cache_interval=2))


def test_a_folder_saved_before_the_option_resumes(tiny_base, tmp_path):
    """generation_config.yaml files written before feature caching existed lack its fields: they mean 'off'."""
    import yaml

    out = generate(_config(tiny_base, tmp_path / "old", num_images=2, samplers=["Euler"])).output
    saved = yaml.safe_load((out / "generation_config.yaml").read_text())
    for key in ("feature_cache_interval", "feature_cache_depth"):
        saved.pop(key)
    (out / "generation_config.yaml").write_text(yaml.safe_dump(saved))
    assert generate(_config(tiny_base, out, num_images=2, samplers=["Euler"])).finished == 2
    with pytest.raises(FolderMismatchError, match="feature_cache_interval"):
        generate(_config(tiny_base, out, num_images=2, samplers=["Euler"], feature_cache_interval=2))


def test_cli_option(tiny_base, tmp_path, run_cli):
    code, out, err = run_cli("generate", "--base", tiny_base, "--output", tmp_path / "cli", "--num-images", "2",
                             "--size", "64", "--steps", "3", "--samplers", "Heun", "--feature-cache-interval", "3",
                             "--feature-cache-depth", "2", "--no-progress")
    assert code == 0, err
    rows = read_jsonl(tmp_path / "cli" / "metadata.jsonl")
    assert [row["feature_cache"] for row in rows] == [{"interval": 3, "depth": 2}] * 2
