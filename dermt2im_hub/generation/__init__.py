"""Stage 3: synthetic image generation with A1111-named samplers and full per-image provenance.

Public API (imported lazily, so `import dermt2im_hub.generation.infotext` stays light):

- `GenerationConfig` (the `generation:` section of configs/paper.yaml), `expand_plan(config)` -> `PlannedImage`s
- `generate(config)` -> `GenerationResult`: render the plan into the generated folder (contract 2), resumable,
  across processes under `accelerate launch -m dermt2im_hub.generation ...`
- `load_pipeline(config)`, `load_base(...)`, `load_adapters(...)`: the loaders (safetensors only)
- `make_scheduler(name, base_config)`, `known_samplers()`: the A1111 sampler registry
- `FeatureCache(unet, interval, depth)`: DeepCache-style reuse of deep UNet features across steps
  (`feature_cache_interval` / `feature_cache_depth` in the config)
- `infotext`: the only writer/parser of A1111 infotext
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GenerationConfig": "plan",
    "PlannedImage": "plan",
    "TransformOption": "plan",
    "expand_plan": "plan",
    "image_seed": "plan",
    "generate": "runner",
    "GenerationResult": "runner",
    "load_pipeline": "runner",
    "load_base": "models",
    "load_adapters": "models",
    "parse_adapter_spec": "models",
    "make_scheduler": "samplers",
    "known_samplers": "samplers",
    "FeatureCache": "feature_cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
