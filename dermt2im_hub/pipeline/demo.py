"""`dermt2im demo`: the demo recipe (shipped inside the package) on phantom images and the tiny base pretrained on
them (dermt2im_hub/testing/tiny_sd15), on CPU."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable
from pathlib import Path


def demo_recipe() -> Path:
    """configs/demo.yaml as shipped (readable from an installed wheel too)."""
    resource = importlib.resources.files("dermt2im_hub.recipes").joinpath("demo.yaml")
    with importlib.resources.as_file(resource) as path:
        return Path(path)


def run_demo(output: str | Path, overrides: Iterable[str] = ()):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    # The demo's models are tiny: one torch thread per stage process is about as fast on an idle 2-core machine
    # and several times faster on a busy one (two threads then wait on each other). Set it to override.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dermt2im_hub.pipeline.runner import run_pipeline

    return run_pipeline(demo_recipe(), list(overrides), output)
