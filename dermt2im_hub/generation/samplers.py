"""Samplers by their AUTOMATIC1111 names, as diffusers schedulers configured to match A1111.

A1111 runs two families of samplers, and they discretise time differently:

- k-diffusion samplers (Euler, Euler a, Heun, LMS, DPM++ ...) take `steps` timesteps evenly spaced from
  t=999 down to t=0 (sigma 14.61 -> 0.029, then 0). diffusers calls that `timestep_spacing="linspace"`; its
  SD1.5 default, "leading", would start at t=951 instead (see DESIGN.md). The "Karras" variants use
  Karras et al.'s sigma schedule (rho 7) between the model's own sigma min and max: `use_karras_sigmas=True`.
- CompVis samplers (DDIM, PLMS) take the "uniform" timesteps `range(0, 1000, 1000 // steps) + 1`, which is
  diffusers' "leading" spacing with `steps_offset=1`, and DDIM's last step uses alpha_cumprod[0]
  (`set_alpha_to_one=False`), as SD1.5's scheduler config already says.

Known, documented differences (none changes what a sampler is, only rounding of its schedule):
- k-diffusion interpolates sigma log-linearly between integer timesteps, diffusers' Euler/Heun/LMS linearly;
  the two agree at integer timesteps and differ by well under 1% in between.
- diffusers' multistep solvers (DPM++ 2M, UniPC) with "linspace" evaluate t = 999 ... 999/steps and then
  jump to sigma 0, where A1111 also evaluates t=0; the Karras variants are unaffected (same sigmas).
- A1111 draws DPM++ SDE noise from a seeded Brownian tree; diffusers draws plain Gaussian noise from the
  per-image generator, so SDE images are deterministic here but not A1111's pixels.
- For a step count that does not divide 1000 (e.g. 22), CompVis PLMS/DDIM run one more step than asked
  (1000 // 22 = 45 -> 23 timesteps); diffusers runs exactly `steps`.

Usage:
    scheduler = make_scheduler("DPM++ 2M Karras", pipe.scheduler.config)
    known_samplers()  # the registry's names, in A1111's order
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dermt2im_hub.config import ConfigError


class UnknownSamplerError(ConfigError):
    """A sampler name that is not in the registry; the message lists the known ones."""


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # the A1111 name, written into infotext as `Sampler: <name>`
    scheduler_class: str  # diffusers class name
    options: Mapping[str, Any] = field(default_factory=dict)  # config values that make it match A1111
    note: str = ""


_K_DIFFUSION = {"timestep_spacing": "linspace", "steps_offset": 0}
_KARRAS = {"use_karras_sigmas": True}
_COMPVIS = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}

_REGISTRY: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("Euler", "EulerDiscreteScheduler", {**_K_DIFFUSION, "use_karras_sigmas": False},
                    "k-diffusion sample_euler"),
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", _K_DIFFUSION,
                    "k-diffusion sample_euler_ancestral (eta 1)"),
        SamplerSpec("LMS", "LMSDiscreteScheduler", {**_K_DIFFUSION, "use_karras_sigmas": False},
                    "k-diffusion sample_lms (order 4)"),
        SamplerSpec("Heun", "HeunDiscreteScheduler", {**_K_DIFFUSION, "use_karras_sigmas": False},
                    "k-diffusion sample_heun (2 UNet calls per step)"),
        SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler",
                    {**_K_DIFFUSION, "algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
                    "k-diffusion sample_dpmpp_2m"),
        SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
                    {**_K_DIFFUSION, **_KARRAS, "algorithm_type": "dpmsolver++", "solver_order": 2},
                    "k-diffusion sample_dpmpp_2m, Karras sigmas"),
        SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
                    {**_K_DIFFUSION, **_KARRAS, "algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                     "solver_type": "midpoint"},
                    "k-diffusion sample_dpmpp_2m_sde (midpoint), Karras sigmas"),
        SamplerSpec("DDIM", "DDIMScheduler", {**_COMPVIS, "clip_sample": False}, "CompVis DDIM, eta 0"),
        SamplerSpec("PLMS", "PNDMScheduler", {**_COMPVIS, "skip_prk_steps": True},
                    "CompVis PLMS (first step by improved Euler, as diffusers' PNDM without PRK steps)"),
        SamplerSpec("UniPC", "UniPCMultistepScheduler",
                    {**_K_DIFFUSION, "solver_order": 3, "solver_type": "bh1", "predict_x0": True,
                     "lower_order_final": True, "use_karras_sigmas": False, "final_sigmas_type": "sigma_min"},
                    "A1111 defaults: order 3, variant bh1, time-uniform skip; like A1111 it stops at the model's "
                    "smallest sigma (diffusers' bh1 step to sigma 0 gives NaN)"),
    )
}


def known_samplers() -> list[str]:
    return list(_REGISTRY)


def canonical_sampler_name(name: str) -> str:
    """The registry's spelling of `name` (case and surrounding spaces ignored), or UnknownSamplerError."""
    wanted = " ".join(str(name).split()).casefold()
    for known in _REGISTRY:
        if known.casefold() == wanted:
            return known
    raise UnknownSamplerError(f"unknown sampler {name!r}; known samplers: {', '.join(_REGISTRY)}")


def sampler_spec(name: str) -> SamplerSpec:
    return _REGISTRY[canonical_sampler_name(name)]


def make_scheduler(name: str, base_config: Mapping[str, Any]):
    """A new diffusers scheduler for A1111 sampler `name`, built on the base model's scheduler config
    (its betas and prediction type are kept; spacing and solver options are set to match A1111)."""
    import diffusers

    spec = sampler_spec(name)
    scheduler_cls = getattr(diffusers, spec.scheduler_class)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    config.update(spec.options)
    return scheduler_cls.from_config(config)
