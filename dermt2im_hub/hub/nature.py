"""What world a run lives in, for the top of every card: a demo (procedural phantom images, a tiny base model)
or real data, and whether the base model was pretrained.

The answer is read from manifests: the card's own, then the folders it recorded as inputs or config paths
(followed a few levels: a dataset -> its generated folder -> the LoRA -> the preprocessed images -> the phantoms),
and the tiny base's `dermt2im_tiny_base.json` (written by dermt2im_hub.testing.tiny_base; `pretrained: true` for
the base pretrained on phantoms, absent for random weights). A folder that cannot be followed adds nothing, so a
card rendered elsewhere says only what it can still see.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.hub.resolve import is_remote_hub_id

TINY_BASE_INFO = "dermt2im_tiny_base.json"  # dermt2im_hub.testing.tiny_base.BASE_INFO_FILE
MANIFEST = "manifest.json"
BASE_KEYS = frozenset({"base", "base_model", "pretrained_model_name_or_path"})
MAX_FOLDERS = 64


@dataclass
class RunNature:
    phantom_images: bool = False
    real_images: bool = False
    tiny_base: str | None = None  # "pretrained" (on phantoms) or "random" (weights), when a tiny base was used
    hub_bases: list[str] = field(default_factory=list)

    def sentence(self) -> str | None:
        """One line for the top of a card, or None when nothing was found."""
        parts = []
        if self.phantom_images and not self.real_images:
            parts.append("the images are procedural phantoms made by dermt2im-hub (no patient data)")
        elif self.real_images:
            parts.append("the images are real dermoscopy images" + (" and procedural phantoms"
                                                                    if self.phantom_images else ""))
        if self.tiny_base == "pretrained":
            parts.append("the base model is a tiny Stable Diffusion 1.5-shaped model pretrained by dermt2im-hub on "
                         "phantom images (not a model of real skin lesions)")
        elif self.tiny_base == "random":
            parts.append("the base model is a tiny Stable Diffusion 1.5-shaped model with random weights (not "
                         "pretrained)")
        elif self.hub_bases:
            parts.append(f"the base model is {', '.join(f'`{b}`' for b in self.hub_bases)} (pretrained)")
        if not parts:
            return None
        demo = self.phantom_images and not self.real_images
        world = "A demo run" if demo else ("A test run" if self.tiny_base else "A run on real data")
        tail = " Its numbers say nothing about real skin lesions." if demo or self.tiny_base else ""
        return f"**{world}:** {'; '.join(parts)}.{tail}"


def run_nature(manifest: Mapping[str, Any]) -> RunNature:
    """Follow `manifest` and the folders it names (see the module doc) and say what they hold."""
    nature = RunNature()
    seen: set[Path] = set()
    queue: list[Mapping[str, Any]] = [manifest]
    while queue and len(seen) <= MAX_FOLDERS:
        current = queue.pop(0)
        _note_stage(current, nature)
        for value in _named_values(current):
            if isinstance(value, tuple):  # (key, text) of a base-model setting
                if is_remote_hub_id(value[1]) and value[1] not in nature.hub_bases:
                    nature.hub_bases.append(value[1])
                continue
            folder = _existing_folder(value)
            if folder is None or folder in seen:
                continue
            seen.add(folder)
            info = _read_json(folder / TINY_BASE_INFO)
            if info is not None:
                pretrained = info.get("pretrained") is True
                if nature.tiny_base != "pretrained":
                    nature.tiny_base = "pretrained" if pretrained else "random"
            inner = _read_json(folder / MANIFEST)
            if inner is not None:
                queue.append(inner)
    return nature


def _note_stage(manifest: Mapping[str, Any], nature: RunNature) -> None:
    stage = manifest.get("stage")
    config = manifest.get("config") if isinstance(manifest.get("config"), Mapping) else {}
    if stage == "phantoms" or (stage == "preprocess" and config.get("source") == "phantoms"):
        nature.phantom_images = True
    elif stage == "preprocess":
        source = _existing_folder(config.get("images"))
        stage_of_source = (_read_json(source / MANIFEST) or {}).get("stage") if source else None
        if stage_of_source != "phantoms":
            nature.real_images = True


def _named_values(manifest: Mapping[str, Any]) -> Iterator[Any]:
    """Strings that may name a folder (config values, input paths, the generator's base model), and
    (key, value) pairs of base-model settings."""
    def walk(value: Any, key: str | None = None) -> Iterator[Any]:
        if isinstance(value, Mapping):
            for k, v in value.items():
                yield from walk(v, str(k))
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item, key)
        elif isinstance(value, str):
            if key in BASE_KEYS:
                yield (key, value)
            yield value.rsplit(":", 1)[0] if key == "lora" else value  # a LoRA spec PATH[:SCALE]

    yield from walk(manifest.get("config"))
    for item in (manifest.get("inputs") or {}).values() if isinstance(manifest.get("inputs"), Mapping) else []:
        if isinstance(item, Mapping) and isinstance(item.get("path"), str):
            yield item["path"]
    extra = manifest.get("extra") if isinstance(manifest.get("extra"), Mapping) else {}
    base = extra.get("base_model") if isinstance(extra.get("base_model"), Mapping) else {}
    if isinstance(base.get("id"), str):
        yield ("base_model", base["id"])
        yield base["id"]


def _existing_folder(value: Any) -> Path | None:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value:
        return None
    try:
        path = Path(value).expanduser()
        return path.resolve() if path.is_dir() else None
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
