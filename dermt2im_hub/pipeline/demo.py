"""`dermt2im demo`: the demo recipe (shipped inside the package) on phantom images and the tiny base, on CPU."""

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
    from dermt2im_hub.pipeline.runner import run_pipeline

    return run_pipeline(demo_recipe(), list(overrides), output)
