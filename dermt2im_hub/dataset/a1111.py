"""From an AUTOMATIC1111 PNG to row values: parsed infotext, the class label and prompt-derived tags.

Parsing is `dermt2im_hub.generation.infotext.parse_infotext`'s job; this module only maps its result onto
the dataset's columns and keeps every key it does not map in `extra`, so nothing the file said is dropped.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from dermt2im_hub.generation.infotext import parse_infotext
from dermt2im_hub.labels import CLASS_NAMES

# Infotext keys that have their own column (everything else goes to `extra`).
MAPPED_KEYS = frozenset({"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model",
                         "Face restoration", "Version"})
TYPED_FIELDS = ("sampler", "steps", "cfg_scale", "seed", "model", "model_hash", "face_restoration", "version")

_CLASS_WORD_RE = re.compile(r"\b(" + "|".join(CLASS_NAMES) + r")\b", re.IGNORECASE)
_SIZE_RE = re.compile(r"\b(tiny|small|large|big|huge|giant)\b", re.IGNORECASE)
_COUNT_RE = re.compile(r"\b(multiple|several|many|clustered|two|three)\b", re.IGNORECASE)
_SKIN_RE = re.compile(r"\b(very dark|dark|light|fair|pale|brown|black|white|olive|tanned) skin\b", re.IGNORECASE)
_FITZPATRICK_RE = re.compile(r"\bfitzpatrick(?: type)?[ -]([1-6]|vi|v|iv|iii|ii|i)\b", re.IGNORECASE)
_SITE_RE = re.compile(r"\bon (?:the |a |an )?([a-z][a-z \-]{1,48}?)\s*$", re.IGNORECASE)
_ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6"}


def label_from_path(name: str) -> str | None:
    """The class of a file from its nearest enclosing folder named benign/malignant (any case)."""
    for parent in reversed(PurePosixPath(name).parts[:-1]):
        if parent.lower() in CLASS_NAMES:
            return parent.lower()
    return None


def label_from_prompt(prompt: str | None) -> str | None:
    """benign/malignant when the prompt names exactly one of the two class words; None otherwise."""
    words = {match.lower() for match in _CLASS_WORD_RE.findall(prompt or "")}
    return words.pop() if len(words) == 1 else None


def infer_transformations(prompt: str | None) -> list[str]:
    """Transformation tags in the generator's vocabulary (size:, count:, skin:, site:) read from a prompt's
    words. A1111 files do not record the tags, so these are inferred, not recorded facts."""
    text = " ".join((prompt or "").split())
    tags = []
    if match := _SIZE_RE.search(text):
        tags.append(f"size:{match.group(1).lower()}")
    if _COUNT_RE.search(text):
        tags.append("count:multiple")
    if match := _FITZPATRICK_RE.search(text):
        level = match.group(1).lower()
        tags.append(f"skin:fitzpatrick-{_ROMAN.get(level, level)}")
    elif match := _SKIN_RE.search(text):
        tags.append(f"skin:{match.group(1).lower().replace(' ', '-')}")
    if match := _SITE_RE.search(text):
        tags.append("site:" + "-".join(match.group(1).lower().split()))
    return tags


def row_from_infotext(infotext: str | None) -> dict[str, Any]:
    """Column values from one PNG's infotext (all null when the PNG has none)."""
    if infotext is None:
        return {"transformations": []}
    parsed = parse_infotext(infotext)
    values: dict[str, Any] = {name: parsed.get(name) for name in TYPED_FIELDS}
    prompt = parsed.get("prompt")
    values.update(prompt=prompt, negative_prompt=parsed.get("negative_prompt"), infotext=infotext,
                  transformations=infer_transformations(prompt))
    unknown = {key: value for key, value in parsed.get("params", {}).items() if key not in MAPPED_KEYS}
    if parsed.get("width") is not None:
        unknown["generation_size"] = f"{parsed['width']}x{parsed['height']}"
    values["_extra"] = unknown
    return values
