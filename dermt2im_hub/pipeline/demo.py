"""The embedded default run: phantom images and the tiny base, then every stage that exists."""

from __future__ import annotations

import os
from pathlib import Path


def run_demo(output: str | Path, seed: int = 0) -> dict[str, Path]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms
    from dermt2im_hub.testing.tiny_base import make_tiny_base

    output = Path(output)
    outputs: dict[str, Path] = {}
    outputs["phantoms"] = make_phantoms(output / "phantoms", PhantomConfig(num_images=32, size=128, seed=seed))
    base_dir = output / "tiny-base"
    if not (base_dir / "model_index.json").is_file():
        make_tiny_base(base_dir, seed=seed)
    outputs["tiny base"] = base_dir
    return outputs
