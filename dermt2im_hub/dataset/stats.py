"""What the dataset card says about a built folder, computed from its parquet shards (image bytes unread).

The facts follow contract 4's dataset keys (`manifest["extra"]["card"]`): counts per class, sampler and
steps (each broken down by class), transformation tags, generation settings, base models and adapters,
QA / memorization / skin-tone summaries when the QA stage ran, and the `configs` block `load_dataset` uses.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dermt2im_hub.labels import CLASS_NAMES

DATA_DIR = "data"
SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
NOT_RECORDED = "not recorded"


def shard_files(folder: str | Path) -> dict[str, list[Path]]:
    """Parquet shards of a built folder per split (split order: train, validation, test, others sorted)."""
    found: dict[str, list[Path]] = {}
    data_dir = Path(folder) / DATA_DIR
    for path in sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []:
        if match := SHARD_RE.match(path.name):
            found.setdefault(match["split"], []).append(path)
    order = {"train": 0, "validation": 1, "test": 2}
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0], 3), item[0])))


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


def count_flagged(folder: str | Path) -> int:
    """Rows of a built folder with `mem_flagged: true` (0 when the column is absent)."""
    import pyarrow.parquet as pq

    flagged = 0
    for paths in shard_files(folder).values():
        for path in paths:
            if "mem_flagged" in pq.read_schema(path).names:
                column = pq.read_table(path, columns=["mem_flagged"]).column("mem_flagged").to_pylist()
                flagged += sum(value is True for value in column)
    return flagged


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


def provenance_facts(rows: list[dict]) -> dict[str, list[dict[str, Any]]]:
    """Distinct base models (id, hash, revision) and adapters (id, sha256, scale) across rows."""
    models, adapters = {}, {}
    for row in rows:
        extra = _extra(row)
        if row.get("model") or row.get("model_hash"):
            model = {"id": row.get("model"), "sha256": row.get("model_hash"),
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


def card_facts(folder: str | Path, report: dict[str, Any], *, config_name: str, pretty_name: str,
               license: str | None, source_datasets: list[str], sample_grid: str | None,
               allow_memorized: bool) -> dict[str, Any]:
    """`manifest["extra"]["card"]` for a built folder (contract 4, dataset keys)."""
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
        "configs": [{"config_name": "default",
                     "data_files": [{"split": split, "path": f"{DATA_DIR}/{split}-*"} for split in splits]}],
    }
    if config_name == "real":
        facts.update(per_source=_counts(r.get("source") for r in rows),
                     per_diagnosis=_counts(r.get("diagnosis") for r in rows))
        return facts
    facts.update(
        per_sampler=_by_class(rows, "sampler"),
        per_steps=_by_class(rows, "steps"),
        per_class_sampler_steps=_class_sampler_steps(rows),
        transformation_counts=_counts(tag for r in rows for tag in (r.get("transformations") or [])),
        generation=generation_facts(rows),
        **provenance_facts(rows),
    )
    if config_name == "synthetic":
        facts.update(qa_facts(rows, report, allow_memorized))
    return facts


def _class_sampler_steps(rows: list[dict]) -> list[dict[str, Any]]:
    counts = Counter((r["label"], r.get("sampler") or NOT_RECORDED, r.get("steps")) for r in rows)
    return [{"label": label, "sampler": sampler, "steps": steps, "count": n}
            for (label, sampler, steps), n in sorted(counts.items(), key=lambda i: (i[0][0], i[0][1], i[0][2] or 0))]
