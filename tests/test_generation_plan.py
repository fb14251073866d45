"""The generation plan, the sampler registry and config validation (no model is loaded here)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dermt2im_hub.config import ConfigError, load_config
from dermt2im_hub.generation.models import parse_adapter_spec
from dermt2im_hub.generation.plan import GenerationConfig, apportion, expand_plan, image_seed, steps_range
from dermt2im_hub.generation.samplers import UnknownSamplerError, known_samplers, make_scheduler

A1111_NAMES = ["Euler", "Euler a", "PLMS", "Heun", "LMS", "DDIM", "UniPC", "DPM++ 2M", "DPM++ 2M Karras",
               "DPM++ 2M SDE Karras"]


def _config(**overrides) -> GenerationConfig:
    return load_config(GenerationConfig, overrides=overrides)


def test_plan_splits_evenly_over_classes_and_samplers():
    plan = expand_plan(_config(num_images=60, samplers="Euler,Euler a,PLMS", steps="20-26"))
    assert Counter(im.label for im in plan) == {"benign": 30, "malignant": 30}
    for label in ("benign", "malignant"):
        assert Counter(im.sampler for im in plan if im.label == label) == {"Euler": 10, "Euler a": 10, "PLMS": 10}
    assert {im.steps for im in plan} <= set(range(20, 27)) and len({im.steps for im in plan}) > 3
    assert [im.index for im in plan] == list(range(60))
    assert all(im.file_name == f"{im.label}/{im.index:05d}-{im.seed}.png" for im in plan)


def test_sampler_weights_and_uneven_counts():
    plan = expand_plan(_config(num_images=7, classes=["malignant"], samplers=["Euler", "PLMS"],
                               sampler_weights={"euler": 2.5}))
    assert Counter(im.sampler for im in plan) == {"Euler": 5, "PLMS": 2}
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]


def test_image_draws_depend_only_on_seed_and_index():
    small, large = expand_plan(_config(num_images=8)), expand_plan(_config(num_images=40, batch_size=2))
    for a, b in zip(small, large):
        assert (a.seed, a.steps, a.prompt, a.transformations) == (b.seed, b.steps, b.prompt, b.transformations)
    assert small[3].seed == image_seed(0, 3) and 0 <= small[3].seed < 2**32
    assert expand_plan(_config(num_images=8, seed=1))[0].seed != small[0].seed


def test_transformations_are_tagged_and_worded():
    plan = expand_plan(_config(num_images=400))
    tags = Counter(t for im in plan for t in im.transformations)
    assert all(len(im.transformations) == 4 for im in plan)
    for tag in ("size:tiny", "size:large", "count:multiple", "skin:fitzpatrick-5", "site:neck"):
        assert tags[tag] > 0, tag
    tiny = next(im for im in plan if "size:tiny" in im.transformations)
    assert f"tiny {tiny.label}" in tiny.prompt
    fitz = next(im for im in plan if "skin:fitzpatrick-6" in im.transformations)
    assert "Fitzpatrick type VI" in fitz.prompt
    plain = next(im for im in plan if all(t.endswith((":unspecified", ":single")) for t in im.transformations))
    assert plain.prompt == f"a dermoscopic image of a {plain.label} skin lesion"  # the training instance prompt


def test_custom_axes_and_template_errors():
    config = _config(num_images=4, prompt_template="{label} mole {where}",
                     transformations={"where": {"neck": {"text": "on neck", "weight": 1}}})
    assert {im.prompt for im in expand_plan(config)} == {"benign mole on neck", "malignant mole on neck"}
    assert expand_plan(config)[0].transformations == ("where:neck",)
    with pytest.raises(ConfigError, match="placeholder"):
        _config(prompt_template="{label}", transformations={"where": {"neck": {"text": "x"}}})
    with pytest.raises(ConfigError, match="{colour}"):
        _config(prompt_template="{label} {colour}", transformations={})


def test_sampler_registry_matches_a1111():
    from dermt2im_hub.testing.tiny_base import SD15_SCHEDULER_CONFIG

    assert set(known_samplers()) == set(A1111_NAMES)
    euler = make_scheduler("Euler", SD15_SCHEDULER_CONFIG)
    euler.set_timesteps(20)
    assert float(euler.timesteps[0]) == 999.0 and abs(float(euler.sigmas[0]) - 14.6146) < 1e-3  # A1111: t=999
    karras = make_scheduler("DPM++ 2M Karras", SD15_SCHEDULER_CONFIG)
    karras.set_timesteps(20)
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "dpmsolver++"
    assert make_scheduler("DPM++ 2M SDE Karras", SD15_SCHEDULER_CONFIG).config.algorithm_type == "sde-dpmsolver++"
    plms = make_scheduler("PLMS", SD15_SCHEDULER_CONFIG)
    plms.set_timesteps(20)
    assert int(plms.timesteps[-1]) == 1 and int(plms.timesteps[0]) == 951  # CompVis uniform: range(0,1000,50)+1
    assert type(make_scheduler("euler A", SD15_SCHEDULER_CONFIG)).__name__ == "EulerAncestralDiscreteScheduler"


def _a1111_schedule(sampler: str, steps: int) -> tuple[str, np.ndarray]:
    """What A1111 evaluates, written out independently of the registry: ("timesteps" | "sigmas", values)."""
    from dermt2im_hub.testing.tiny_base import SD15_SCHEDULER_CONFIG as sd

    betas = np.linspace(sd["beta_start"] ** 0.5, sd["beta_end"] ** 0.5, sd["num_train_timesteps"]) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    if "Karras" in sampler:  # k-diffusion get_sigmas_karras(n, sigma_min, sigma_max, rho=7), without the final 0
        ramp = np.linspace(0, 1, steps)
        low, high = sigmas[0] ** (1 / 7), sigmas[-1] ** (1 / 7)
        return "sigmas", (high + ramp * (low - high)) ** 7
    if sampler in ("DDIM", "PLMS"):  # CompVis make_ddim_timesteps("uniform"): range(0, 1000, 1000 // n) + 1;
        # documented difference: when n does not divide 1000 CompVis runs one more (the largest) step, diffusers n
        return "timesteps", (np.arange(0, 1000, 1000 // steps)[::-1] + 1.0)[-steps:]
    if sampler in ("DPM++ 2M", "UniPC"):  # documented: t = 999 ... 999/steps, then sigma 0 (module docstring)
        return "timesteps", np.linspace(0, 999, steps + 1).round()[::-1][:-1]
    return "timesteps", np.linspace(999, 0, steps)  # k-diffusion: evenly spaced from t=999 to t=0


@pytest.mark.parametrize("steps", [20, 13])
@pytest.mark.parametrize("sampler", known_samplers())
def test_every_sampler_evaluates_a1111s_schedule(sampler, steps):
    """Each sampler's evaluated timesteps (or Karras sigmas) equal A1111's: a changed timestep spacing, offset or
    sigma schedule in the registry fails here (the tiny world's image checks cannot see spacing reliably)."""
    from dermt2im_hub.testing.tiny_base import SD15_SCHEDULER_CONFIG

    scheduler = make_scheduler(sampler, SD15_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    kind, expected = _a1111_schedule(sampler, steps)
    if kind == "sigmas":
        got = np.asarray(scheduler.sigmas, np.float64)[:steps]
        np.testing.assert_allclose(got, expected, rtol=1e-4)
    else:  # Heun and PLMS evaluate some timesteps twice: compare the distinct ones, in order
        got = np.asarray(scheduler.timesteps, np.float64)
        distinct = got[np.r_[True, np.abs(np.diff(got)) > 1e-6]]
        np.testing.assert_allclose(distinct, expected, atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    ({"samplers": "Euler,Euler b"}, "unknown sampler 'Euler b'; known samplers: Euler, Euler a"),
    ({"steps": "26-20"}, "reversed"),
    ({"steps": "0-3"}, ">= 1"),
    ({"steps": "0"}, ">= 1"),
    ({"steps": "twenty"}, "N or LO-HI"),
    ({"cfg": 0.5}, "cfg must be >= 1"),
    ({"size": 500}, "multiple of 8"),
    ({"num_images": 0}, "num_images"),
    ({"classes": ["benign", "cat"]}, "classes"),
    ({"base": "/nonexistent/base-model"}, "base model folder '/nonexistent/base-model' not found (no such file or folder)"),
    ({"lora": ["/nonexistent/lora.safetensors:0.5"]}, "LoRA adapter '/nonexistent/lora.safetensors' not found"),
])
def test_bad_config_gives_a_clear_error(overrides, message):
    with pytest.raises(ConfigError) as info:
        _config(**overrides)
    assert message in str(info.value)


def test_unknown_sampler_lists_every_known_name():
    with pytest.raises(UnknownSamplerError) as info:
        _config(samplers=["Karras Magic"])
    assert all(name in str(info.value) for name in A1111_NAMES)


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"not really")
    (tmp_path / "lora.bin").write_bytes(b"not really")
    with pytest.raises(ConfigError, match="pickle"):
        _config(base=str(tmp_path / "model.ckpt"))
    with pytest.raises(ConfigError, match="pickle"):
        _config(lora=[str(tmp_path / "lora.bin")])
    folder = tmp_path / "lora_folder"
    folder.mkdir()
    (folder / "pytorch_lora_weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="refused"):
        _config(lora=[str(folder)])
    # diffusers reads only an exact `.safetensors` suffix with safetensors and would torch.load this one
    (tmp_path / "model.SAFETENSORS").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a .safetensors file"):
        _config(base=str(tmp_path / "model.SAFETENSORS"))


def test_adapter_spec_parsing(tmp_path):
    assert parse_adapter_spec("outputs/lora:0.8") == ("outputs/lora", 0.8)
    assert parse_adapter_spec("org/derm-lora") == ("org/derm-lora", 1.0)
    assert parse_adapter_spec("org/derm-lora/kohya.safetensors:-0.5") == ("org/derm-lora/kohya.safetensors", -0.5)
    assert parse_adapter_spec(r"C:\loras\derm.safetensors") == (r"C:\loras\derm.safetensors", 1.0)
    assert parse_adapter_spec(r"C:\loras\derm.safetensors:1.5") == (r"C:\loras\derm.safetensors", 1.5)
    odd = tmp_path / "odd:2"
    odd.mkdir()
    assert parse_adapter_spec(str(odd)) == (str(odd), 1.0)  # an existing path wins over the scale syntax


def test_steps_range():
    assert steps_range("20-26") == (20, 26) and steps_range(25) == (25, 25) and steps_range(" 3 - 3 ") == (3, 3)
