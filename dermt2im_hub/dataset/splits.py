"""Hash-based split assignment for synthetic data: the same key always lands in the same split.

Splitting by seed keeps an image and any re-generation with the same seed together; splitting by prompt
holds whole prompts out (a harder test of generalisation). A key's split depends only on the key and the
fractions, so rebuilding with more images never moves an existing image to another split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from dermt2im_hub.dataset.config import SPLIT_NAMES


def split_key(split_by: str, values: dict[str, Any], sha256: str) -> str:
    """The text a row is split on: its seed, its normalised prompt, or (no seed recorded) its bytes' hash."""
    if split_by == "seed" and values.get("seed") is not None:
        return f"seed:{values['seed']}"
    if split_by == "prompt":
        return "prompt:" + " ".join(str(values.get("prompt") or "").lower().split())
    return f"sha256:{sha256}"


def hashed_split(key: str, fractions: Sequence[float]) -> str:
    """train / validation / test for `key`, with probabilities `fractions`."""
    position = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in zip(SPLIT_NAMES, fractions):
        cumulative += share
        if position < cumulative:
            return name
    # rounding left `position` just above the total: the last split with a share takes it
    return [name for name, share in zip(SPLIT_NAMES, fractions) if share > 0][-1]
