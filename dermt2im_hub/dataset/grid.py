"""`sample_grid.png` for the dataset card: a few images per class, evenly spread over the dataset order."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from dermt2im_hub.dataset.images import read_file_bytes
from dermt2im_hub.dataset.sources import Entry
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.utils.files import atomic_save_png

TILE = 160
CAPTION = 16


def pick_samples(entries: Sequence[Entry], per_class: int) -> dict[str, list[Entry]]:
    """Up to `per_class` entries per class, evenly spaced through that class's rows (deterministic)."""
    picked = {}
    for label in CLASS_NAMES:
        rows = [e for e in entries if e.label == label]
        count = min(per_class, len(rows))
        picked[label] = [rows[i * len(rows) // count] for i in range(count)] if count else []
    return picked


def _caption(entry: Entry) -> str:
    sampler, steps = entry.values.get("sampler"), entry.values.get("steps")
    text = f"{entry.label} | {sampler}, {steps} steps" if sampler else f"{entry.label} | {entry.values.get('source')}"
    return text[:30]


def render_sample_grid(entries: Sequence[Entry], path: str | Path, per_class: int = 4) -> Path | None:
    """One row per class, `per_class` thumbnails with a caption (label, sampler, steps); None when empty."""
    from PIL import Image, ImageDraw

    picked = pick_samples(entries, per_class)
    columns = max((len(rows) for rows in picked.values()), default=0)
    if columns == 0:
        return None
    grid = Image.new("RGB", (columns * TILE, len(CLASS_NAMES) * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(grid)
    for row_index, label in enumerate(CLASS_NAMES):
        for col_index, entry in enumerate(picked[label]):
            with Image.open(io.BytesIO(read_file_bytes(entry.path))) as image:
                thumb = image.convert("RGB")
                thumb.thumbnail((TILE, TILE))
            x, y = col_index * TILE, row_index * (TILE + CAPTION)
            grid.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
            draw.text((x + 3, y + TILE + 2), _caption(entry), fill="black")
    return atomic_save_png(grid, path)
