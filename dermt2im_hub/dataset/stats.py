"""What the dataset card says about a built folder, computed from its parquet shards (image bytes unread).

The facts follow contract 4's dataset keys (`manifest["extra"]["card"]`): counts per class, sampler and
steps (each broken down by class), transformation tags, generation settings, base models and adapters,
QA / memorization / skin-tone summaries when the QA stage ran, and the `configs` block `load_dataset` uses.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dermt2im_hub.dataset.layout import (
    DATA_DIR,
    SHARD_RE,
    SUBSET_CONFIGS,
    hub_configs,
    sampler_slug,
    shard_files,
    subset_config_name,
)
from dermt2im_hub.labels import CLASS_NAMES

__all__ = ["DATA_DIR", "SHARD_RE", "card_facts", "read_rows", "shard_files"]

NOT_RECORDED = "not recorded"


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every row's metadata (all columns but the image) with a `split` key; label as its class name."""
    import pyarrow.parquet as pq

    rows = []
    for split, paths in shard_files(folder).items():
        for path in paths:
            columns = [name for name in pq.read_schema(path).names if name != "image"]
            for row in pq.read_table(path, columns=columns).to_pylist():
                row["label"] = CLASS_NAMES[row["label"]] if row.get("label") in (0, 1) else None
                row["split"] = split
                rows.append(row)
    return rows


def _by_class(rows: Iterable[dict], key: str) -> dict[str, dict[str, int]]:
    """{value of `key`: {class: count}}, values sorted, null shown as "not recorded"."""
    table: dict[str, Counter] = {}
    for row in rows:
        value = row.get(key)
        table.setdefault(NOT_RECORDED if value is None else str(value), Counter())[row["label"]] += 1
    return {value: {name: counts[name] for name in CLASS_NAMES} for value, counts in sorted(table.items())}


def _counts(values: Iterable[Any]) -> dict[str, int]:
    counts = Counter(NOT_RECORDED if v is None else str(v) for v in values)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _extra(row: dict) -> dict[str, Any]:
    try:
        value = json.loads(row.get("extra") or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def generation_facts(rows: list[dict]) -> dict[str, Any]:
    steps = [r["steps"] for r in rows if r.get("steps") is not None]
    return {
        "samplers": sorted({r["sampler"] for r in rows if r.get("sampler")}),
        "steps": {"min": min(steps), "max": max(steps)} if steps else None,
        "cfg_scale": sorted({r["cfg_scale"] for r in rows if r.get("cfg_scale") is not None}),
        "image_sizes": sorted({f"{r['width']}x{r['height']}" for r in rows if r.get("width")}),
        "negative_prompts": sorted({r["negative_prompt"] for r in rows if r.get("negative_prompt")})[:10],
        "top_prompts": dict(list(_counts(r.get("prompt") for r in rows).items())[:10]),
        "face_restoration": _counts(r.get("face_restoration") for r in rows),
        "generator_versions": sorted({r["version"] for r in rows if r.get("version")}),
        "seeds_distinct": len({r["seed"] for r in rows if r.get("seed") is not None}),
    }


# What the `model_hash` column of an a1111 build holds: the PNG's own claim, in whatever form the A1111
# version that wrote it used (10 hex digits of a checkpoint's sha256 today; an 8-digit legacy hash before).
A1111_MODEL_HASH = "A1111 \"Model hash\" from the PNG infotext (as written there; not verified)"


def hash_description(config_name: str, sha256: Any, hashed_files: dict[str, str]) -> str | None:
    """What a base model's hash is of, for the card: the infotext's claim (a1111), the file a `generate` run
    recorded hashing (synthetic), or None when nothing recorded says."""
    if config_name == "a1111":
        return A1111_MODEL_HASH
    hashed = hashed_files.get(sha256) if isinstance(sha256, str) else None
    return f"sha256 of {hashed}" if hashed else None


def provenance_facts(rows: list[dict], config_name: str = "synthetic",
                     hashed_files: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Distinct base models (id, hash, what it is a hash of, revision) and adapters (id, sha256 of the weight
    file, scale) across rows. `hashed_files` maps a base-model sha256 to the file a generate run hashed."""
    models, adapters = {}, {}
    for row in rows:
        extra = _extra(row)
        if row.get("model") or row.get("model_hash"):
            model = {"id": row.get("model"), "sha256": row.get("model_hash"),
                     "hash_of": hash_description(config_name, row.get("model_hash"), hashed_files or {}),
                     "revision": extra.get("base_model_revision")}
            models[json.dumps(model, sort_keys=True)] = model
        for adapter in extra.get("adapters") or []:
            if isinstance(adapter, dict):
                kept = {"id": adapter.get("id"), "sha256": adapter.get("sha256"), "scale": adapter.get("scale"),
                        "weight_name": adapter.get("weight_name")}
                adapters[json.dumps(kept, sort_keys=True, default=str)] = kept
    return {"base_models": [models[k] for k in sorted(models)], "adapters": [adapters[k] for k in sorted(adapters)]}


def qa_facts(rows: list[dict], report: dict[str, Any], allow_memorized: bool) -> dict[str, Any]:
    """QA, memorization and skin-tone summaries; None for a part the QA stage did not record."""
    counts = report.get("counts", {})
    audited = [r for r in rows if r.get("qa_passed") is not None]
    qa = None
    if audited or counts.get("rejected") or counts.get("failed_qa"):
        qa = {"audited": len(audited), "passed": sum(r["qa_passed"] is True for r in audited),
              "failed_but_included": sum(r["qa_passed"] is False for r in audited),
              "excluded_rejected": counts.get("rejected", 0), "excluded_failed_qa": counts.get("failed_qa", 0),
              "reasons": _counts(reason for r in rows for reason in (r.get("qa_reasons") or []))}
    mem_rows = [r for r in rows if r.get("mem_flagged") is not None]
    memorization = None if not mem_rows else {
        "audited": len(mem_rows), "flagged": sum(r["mem_flagged"] is True for r in mem_rows),
        "published_with_allow_memorized": allow_memorized}
    itas = [r["ita"] for r in rows if r.get("ita") is not None]
    skin_tone = None if not itas and not any(r.get("ita_category") for r in rows) else {
        "categories": _counts(r.get("ita_category") for r in rows if r.get("ita_category")),
        "ita_mean": round(sum(itas) / len(itas), 2) if itas else None,
        "ita_min": round(min(itas), 2) if itas else None, "ita_max": round(max(itas), 2) if itas else None}
    return {"qa": qa, "memorization": memorization, "skin_tone": skin_tone}


def preprocessing_facts(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """For the real config: how each input was made, as its own manifest recorded it (`preprocessing`), and
    `hair_removal` when every input is a preprocess output that recorded the same answer (else None)."""
    rows = [{"input": r.get("input"), "stage": r.get("stage"), "source": r.get("source"), "size": r.get("size"),
             "hair_removal": r.get("hair_removal")} for r in inputs]
    answers = {r["hair_removal"] for r in rows}
    hair = answers.pop() if len(answers) == 1 and rows else None
    return {"preprocessing": rows or None, "hair_removal": hair if isinstance(hair, bool) else None}


def card_facts(folder: str | Path, report: dict[str, Any], *, config_name: str, pretty_name: str,
               license: str | None, source_datasets: list[str], sample_grid: str | None,
               allow_memorized: bool, inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`manifest["extra"]["card"]` for a built folder (contract 4, dataset keys). `inputs`: what each input's
    own manifest recorded (`export.input_records`); the card may repeat only what is written here."""
    inputs = inputs or []
    rows = read_rows(folder)
    splits = {split: len(paths) for split, paths in shard_files(folder).items()}
    facts: dict[str, Any] = {
        "pretty_name": pretty_name,
        "builder_config": config_name,
        "num_rows": len(rows),
        "splits": {split: sum(r["split"] == split for r in rows) for split in splits},
        "num_shards": splits,
        "per_class": {name: sum(r["label"] == name for r in rows) for name in CLASS_NAMES},
        "per_split_class": _by_class(rows, "split"),
        "license": license,
        "source_datasets": source_datasets,
        "sample_grid": sample_grid,
        "build_report": report,
        # the builder config is the Hub config (load_dataset(REPO, "synthetic")) and the default one; synthetic
        # and a1111 add one config per sampler (dataset.layout)
        "configs": hub_configs(config_name, splits, _subset_splits(rows) if config_name in SUBSET_CONFIGS else {}),
        "config_rows": _config_rows(rows, config_name),
    }
    if config_name in SUBSET_CONFIGS:
        facts["subset_samplers"] = _subset_samplers(rows, config_name)
    if config_name == "real":
        grouped = any(r.get("lesion_id") or r.get("patient_id") for r in rows)
        facts["split_by"] = "patient and lesion" if grouped else "image (no lesion or patient ids)"
        facts.update(per_source=_counts(r.get("source") for r in rows),
                     per_diagnosis=_counts(r.get("diagnosis") for r in rows), **preprocessing_facts(inputs))
        return facts
    hashed_files = {r["base_model"]["sha256"]: r["base_model"]["hashed_file"] for r in inputs
                    if isinstance(r.get("base_model"), dict) and r["base_model"].get("sha256")
                    and r["base_model"].get("hashed_file")}
    facts.update(
        per_sampler=_by_class(rows, "sampler"),
        per_steps=_by_class(rows, "steps"),
        per_class_sampler_steps=_class_sampler_steps(rows),
        transformation_counts=_counts(tag for r in rows for tag in (r.get("transformations") or [])),
        generation=generation_facts(rows),
        **provenance_facts(rows, config_name, hashed_files),
    )
    if config_name == "synthetic":
        facts.update(qa_facts(rows, report, allow_memorized))
    return facts


def _class_sampler_steps(rows: list[dict]) -> list[dict[str, Any]]:
    counts = Counter((r["label"], r.get("sampler") or NOT_RECORDED, r.get("steps")) for r in rows)
    return [{"label": label, "sampler": sampler, "steps": steps, "count": n}
            for (label, sampler, steps), n in sorted(counts.items(), key=lambda i: (i[0][0], i[0][1], i[0][2] or 0))]


def _subset_splits(rows: list[dict]) -> dict[str, set[str]]:
    subsets: dict[str, set[str]] = {}
    for row in rows:
        subsets.setdefault(sampler_slug(row.get("sampler")), set()).add(row["split"])
    return subsets


def _config_rows(rows: list[dict], config_name: str) -> dict[str, dict[str, int]]:
    """{Hub config: {split: rows}} for the whole config and each sampler subset (the card lists them)."""
    counts: dict[str, Counter] = {config_name: Counter(r["split"] for r in rows)}
    if config_name in SUBSET_CONFIGS:
        for row in rows:
            counts.setdefault(subset_config_name(config_name, sampler_slug(row.get("sampler"))), Counter())[
                row["split"]] += 1
    return {name: dict(counts[name]) for name in [config_name, *sorted(n for n in counts if n != config_name)]}


def _subset_samplers(rows: list[dict], config_name: str) -> dict[str, list[str]]:
    """{sampler subset config: the sampler names it holds} (names that give one slug share a subset)."""
    names: dict[str, set[str]] = {}
    for row in rows:
        names.setdefault(subset_config_name(config_name, sampler_slug(row.get("sampler"))), set()).add(
            row.get("sampler") or NOT_RECORDED)
    return {config: sorted(found) for config, found in sorted(names.items())}
