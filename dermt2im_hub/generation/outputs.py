"""The generated folder (contract 2) and how it survives kills and resumes.

    OUT/{label}/{index:05d}-{seed}.png   A1111 infotext in the PNG `parameters` chunk
    OUT/metadata.jsonl                   one row per image, in index order
    OUT/generation_config.yaml           the resolved config (what a resume must match)
    OUT/plan.jsonl                       every planned image (index, label, sampler, steps, seed, prompt, tags)
    OUT/contact_sheet.png                class x sampler grid, for people
    OUT/manifest.json                    stage "generate"
    OUT/.generate/                       resume state: provenance.json, rows-rank{R}.jsonl append logs

Crash safety: a PNG is written to a temporary file and renamed into place, so a final name always holds a whole
image. Its metadata row is then appended (fsynced) to the writing rank's log. metadata.jsonl is rebuilt from
the plan, the logs and the PNGs at the end of every run (also after an exception): a PNG whose row did not
reach the log (a kill between rename and append) gets its row rebuilt from the plan after its infotext is
checked against the plan, so metadata.jsonl always has exactly one row per PNG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dermt2im_hub import __version__
from dermt2im_hub.config import ConfigError, config_to_dict, read_yaml, save_config
from dermt2im_hub.generation.infotext import format_infotext, parse_infotext, pnginfo_for, read_infotext
from dermt2im_hub.generation.plan import GenerationConfig, PlannedImage
from dermt2im_hub.manifest import try_read_manifest
from dermt2im_hub.utils.files import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    read_jsonl,
    safe_join,
    sha256_bytes,
    sha256_file,
    write_jsonl,
)

METADATA_NAME = "metadata.jsonl"
CONFIG_NAME = "generation_config.yaml"
PLAN_NAME = "plan.jsonl"
CONTACT_SHEET_NAME = "contact_sheet.png"
STATE_DIR = ".generate"
PROVENANCE_NAME = "provenance.json"
REJECTED_DIR = "rejected"  # the QA stage moves rejected images here; they count as done


class FolderMismatchError(ConfigError):
    """The output folder was made by a different plan, base model or adapter set."""


# ---------------------------------------------------------------------------------------------- rows


def infotext_for(image: PlannedImage, base, adapters) -> str:
    # as A1111 writes it, so civitai/A1111 lookups resolve: the installed file's stem and its addnet hash (12 hex);
    # the metadata row keeps the sha256 of the file that was loaded
    lora_hashes = ", ".join(f"{a.a1111_name or a.name}: {(a.addnet_hash or a.sha256)[:12]}" for a in adapters) or None
    params = {"Steps": image.steps, "Sampler": image.sampler, "CFG scale": image.cfg_scale, "Seed": image.seed,
              "Size": (image.width, image.height), "Model hash": base.short_hash, "Model": base.name,
              "Lora hashes": lora_hashes, "Version": f"dermt2im-hub {__version__}",
              "Feature cache": image.feature_cache.infotext() if image.feature_cache else None}
    return format_infotext(image.prompt, image.negative_prompt, params)


def metadata_row(image: PlannedImage, base, adapters, sha256: str) -> dict[str, Any]:
    """One metadata.jsonl row (contract 2). `base_model_hash` is the full sha256 (infotext shows its first 10)."""
    return {
        "file_name": image.file_name, "label": image.label, "prompt": image.prompt,
        "negative_prompt": image.negative_prompt, "sampler": image.sampler, "steps": image.steps,
        "cfg_scale": image.cfg_scale, "seed": image.seed, "width": image.width, "height": image.height,
        "base_model": base.id, "base_model_revision": base.revision, "base_model_hash": base.sha256,
        "adapters": [a.to_row() for a in adapters], "transformations": list(image.transformations),
        "index": image.index, "sha256": sha256, "package_version": __version__,
        **({"feature_cache": image.feature_cache.to_row()} if image.feature_cache else {}),
    }


def save_image(out: Path, image: PlannedImage, pil_image, base, adapters) -> str:
    """Write one PNG atomically; returns its sha256."""
    data = encode_png(pil_image, pnginfo=pnginfo_for(infotext_for(image, base, adapters)))
    atomic_write_bytes(out / image.file_name, data)
    return sha256_bytes(data)


def append_rows(out: Path, rank: int, rows: Iterable[dict[str, Any]]) -> None:
    append_jsonl(out / STATE_DIR / f"rows-rank{rank}.jsonl", ({**row, "_rank": rank} for row in rows))


def logged_rows(out: Path) -> dict[int, dict[str, Any]]:
    """The latest logged row per index, over every rank's log."""
    rows: dict[int, dict[str, Any]] = {}
    for log in sorted((out / STATE_DIR).glob("rows-rank*.jsonl")):
        for row in read_jsonl(log):
            if isinstance(row.get("index"), int):
                rows[row["index"]] = row
    return rows


def images_by_rank(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in logged_rows(out).values():
        key = str(row.get("_rank"))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------------------- resume


_SCALAR_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)
                    if f.default is not dataclasses.MISSING}

# Where the weights come from may be spelled differently on resume; their hashes are compared instead.
_SOURCE_FIELDS = ("base", "base_revision", "single_file_config", "lora")


def _comparable(config: GenerationConfig | dict) -> dict[str, Any]:
    data = config_to_dict(config) if not isinstance(config, dict) else dict(config)
    # a folder saved before a field existed was rendered with that field's default (e.g. feature caching off)
    for name, default in _SCALAR_DEFAULTS.items():
        data.setdefault(name, default)
    ignored = set(GenerationConfig.RUNTIME_FIELDS) | set(_SOURCE_FIELDS)
    return {k: v for k, v in data.items() if k not in ignored}


def check_folder_matches(out: Path, config: GenerationConfig) -> None:
    """Refuse to resume a folder whose saved config would render different images, or to write into another
    stage's output (its metadata.jsonl and manifest.json would be replaced)."""
    stage = (try_read_manifest(out) or {}).get("stage")
    if stage and stage != "generate":
        raise FolderMismatchError(f"{out} holds the output of stage {stage!r}; generate into an empty folder or "
                                  "an earlier generate output (to resume it)")
    saved_path = out / CONFIG_NAME
    if not saved_path.is_file():
        return
    saved, current = _comparable(read_yaml(saved_path)), _comparable(config)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        raise FolderMismatchError(
            f"{out} was generated with a different plan (changed: {', '.join(changed)}); resuming would mix "
            "images from two plans. Use a new --output folder, or the same settings to resume.")


def provenance(base, adapters) -> dict[str, Any]:
    return {"base_model": base.id, "base_model_hash": base.sha256,
            "adapters": [{"id": a.id, "sha256": a.sha256, "scale": a.scale} for a in adapters]}


def check_provenance_matches(out: Path, base, adapters) -> None:
    path = out / STATE_DIR / PROVENANCE_NAME
    if not path.is_file():
        return
    import json

    def weights(record: dict[str, Any]) -> tuple:
        return record.get("base_model_hash"), [(a.get("sha256"), a.get("scale")) for a in record.get("adapters", [])]

    saved = json.loads(path.read_text(encoding="utf-8"))
    if weights(saved) != weights(provenance(base, adapters)):
        raise FolderMismatchError(
            f"{out} was generated from other weights (base {saved.get('base_model_hash', '?')[:10]}, adapters "
            f"{[a.get('sha256', '?')[:12] for a in saved.get('adapters', [])]}); the files now given hash to base "
            f"{base.short_hash}, adapters {[a.sha256[:12] for a in adapters]}. Use a new --output folder.")


def prepare_folder(out: Path, config: GenerationConfig, plan: list[PlannedImage], base, adapters) -> None:
    """Rank 0, before any image is written: save the resolved config, the plan and the provenance."""
    from dermt2im_hub.utils.files import remove_stale_temp_files

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    save_config(config, out / CONFIG_NAME)
    if not (out / PLAN_NAME).is_file():
        write_jsonl(out / PLAN_NAME, (image.to_dict() for image in plan))
    atomic_write_json(out / STATE_DIR / PROVENANCE_NAME, provenance(base, adapters))


def _rejected_names(out: Path) -> set[str]:
    folder = out / REJECTED_DIR
    return {p.name for p in folder.rglob("*.png")} if folder.is_dir() else set()


def _infotext_matches(path: Path, image: PlannedImage) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as handle:
            text = read_infotext(handle)
    except OSError:
        return False
    if text is None:
        return False
    parsed = parse_infotext(text)
    return (parsed["seed"], parsed["steps"], parsed["sampler"], parsed["prompt"]) == (
        image.seed, image.steps, image.sampler, image.prompt)


def finished_indices(out: Path, plan: list[PlannedImage]) -> set[int]:
    """Indices that need no work: the PNG is in place (with a logged row, or with infotext that matches the
    plan) or the QA stage moved it to rejected/."""
    logged = logged_rows(out)
    rejected = _rejected_names(out)
    done = set()
    for image in plan:
        path = out / image.file_name
        if Path(image.file_name).name in rejected:
            done.add(image.index)
        elif path.is_file() and (image.index in logged or _infotext_matches(path, image)):
            done.add(image.index)
    return done


def finalize_metadata(out: Path, plan: list[PlannedImage], base, adapters) -> list[dict[str, Any]]:
    """Rewrite metadata.jsonl with exactly one row per image file present, in index order. Rows the QA stage
    extended are kept as they are while their file exists."""
    previous = {row.get("index"): row for row in read_jsonl(out / METADATA_NAME)}
    logged = logged_rows(out)
    rows = []
    for image in plan:
        old = previous.get(image.index)
        kept = safe_join(out, old.get("file_name")) if old else None
        if kept is not None and kept.is_file():
            rows.append(old)
            continue
        path = out / image.file_name
        if not path.is_file():
            continue
        row = logged.get(image.index)
        if row is None:  # killed between the PNG's rename and the log append
            if not _infotext_matches(path, image):
                continue
            row = metadata_row(image, base, adapters, sha256_file(path))
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    write_jsonl(out / METADATA_NAME, rows)
    return rows


# ---------------------------------------------------------------------------------------------- contact sheet


def write_contact_sheet(out: Path, rows: list[dict[str, Any]], per_cell: int = 4, thumb: int = 128) -> Path | None:
    """A grid with one row per class and one column per sampler, each cell the first `per_cell` images."""
    from PIL import Image, ImageDraw, ImageFont

    classes = list(dict.fromkeys(r["label"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    if not rows:
        return None
    side = math.ceil(math.sqrt(per_cell))
    cell = side * thumb
    # Pillow's scalable default font: readable labels, and the space in "Euler a" (the bitmap font hides it)
    font = ImageFont.load_default(size=22)
    margin, header = 8, 36
    left = 12 + max(int(font.getlength(label)) for label in classes) + margin
    width = left + len(samplers) * (cell + margin) + margin
    height = header + len(classes) * (cell + margin) + margin
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, sampler in enumerate(samplers):
        draw.text((left + j * (cell + margin) + margin, 6), sampler, fill="black", font=font)
    for i, label in enumerate(classes):
        top = header + i * (cell + margin) + margin
        draw.text((6, top + cell // 2), label, fill="black", font=font)
        for j, sampler in enumerate(samplers):
            picks = [r for r in rows if r["label"] == label and r["sampler"] == sampler][:per_cell]
            for k, row in enumerate(picks):
                path = out / row["file_name"]
                if not path.is_file():
                    continue
                with Image.open(path) as img:
                    tile = img.convert("RGB").resize((thumb, thumb))
                x = left + j * (cell + margin) + margin + (k % side) * thumb
                sheet.paste(tile, (x, top + (k // side) * thumb))
    path = out / CONTACT_SHEET_NAME
    atomic_write_bytes(path, encode_png(sheet))
    return path
