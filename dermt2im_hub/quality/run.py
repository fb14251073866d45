"""`run_qa`: the whole QA stage over a generated folder and the real training folder.

    result = run_qa("outputs/generated", "outputs/data", QualityConfig())
    result.report["artifacts"]["pass_rate"], result.memorization_blocked

Passes: (1) the training images -> hashes, local features, embeddings, skin tone; (2) the synthetic images in
batches -> artifact scores, skin tone, memorization audit against (1); then near-duplicates over the whole
synthetic set, fidelity of the kept images, the report, and finally the folder update: per-image keys into
`metadata.jsonl` (atomically) and rejected images moved to `rejected/{label}/`. Nothing is deleted; a re-run
with other thresholds moves images back and forth and rewrites the keys. Measurements are saved batch by batch
(`qa/.cache/`), so an interrupted run resumes and a re-run with other thresholds measures nothing again.

A folder without `metadata.jsonl` (e.g. the authors' A1111 samples) is read-only: scores go to the QA output
folder's `scores.jsonl` only, and an explicit output folder is required.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from dermt2im_hub.config import config_to_dict, save_config
from dermt2im_hub.manifest import StageRun, try_read_manifest
from dermt2im_hub.quality.artifacts import analyze_image, artifact_reasons, lesion_found
from dermt2im_hub.quality.cache import CACHE_DIR, ResultCache, decode_array, encode_array
from dermt2im_hub.quality.config import QualityConfig
from dermt2im_hub.quality.features import FeatureExtractor, build_extractor
from dermt2im_hub.quality.fidelity import fidelity_by_class
from dermt2im_hub.quality.images import (
    QA_DIR,
    REJECTED_DIR,
    UNLABELLED,
    FolderError,
    ImageItem,
    alternative_location,
    generated_items,
    has_metadata,
    load_rgb,
    real_items,
    safe_relative,
)
from dermt2im_hub.quality.memorization import (
    LocalFeatures,
    Nearest,
    Query,
    TrainingReference,
    local_features,
    make_query,
)
from dermt2im_hub.quality.phash import HASH_BYTES, hamming_matrix, phash
from dermt2im_hub.quality.report import card_summaries, plot_ita_histograms, safe_name, save_pair
from dermt2im_hub.quality.skin_tone import ITA_CATEGORIES, category_histogram, image_ita, ita_category
from dermt2im_hub.records import METADATA_NAME
from dermt2im_hub.utils.files import atomic_write_json, write_jsonl
from dermt2im_hub.utils.logging import get_logger

log = get_logger(__name__)

REPORT_NAME = "report.json"
SCORES_NAME = "scores.jsonl"
PAIRS_DIR = "closest_pairs"
ITA_PLOT = "ita_histogram.png"


@dataclass
class Described:
    """The measurements of one image (no verdicts: thresholds are applied later). `scores` None: unreadable."""

    scores: dict | None = None
    hash: np.ndarray | None = None
    ita: float | None = None
    embedding: np.ndarray | None = None
    nearest: Nearest | None = None  # synthetic side, when audited
    local: LocalFeatures | None = None  # training side: kept for the reference
    query: Query | None = None  # synthetic side: what the audit compares, freed after it
    reasons: list[str] = field(default_factory=list)
    duplicate_of: str | None = None

    @property
    def readable(self) -> bool:
        return self.scores is not None

    def to_record(self) -> dict:
        return {"scores": self.scores, "hash": None if self.hash is None else self.hash.tobytes().hex(),
                "ita": self.ita, "embedding": encode_array(self.embedding),
                "nearest": None if self.nearest is None else dataclasses.asdict(self.nearest)}

    @classmethod
    def from_record(cls, record: dict) -> Described:
        return cls(scores=record["scores"],
                   hash=None if record["hash"] is None else np.frombuffer(bytes.fromhex(record["hash"]), np.uint8),
                   ita=record["ita"], embedding=decode_array(record["embedding"]),
                   nearest=None if record["nearest"] is None else Nearest(**record["nearest"]))


@dataclass
class QAResult:
    output_dir: Path
    report: dict
    rows: list[dict]  # one per generated image, in metadata order, with the QA keys
    memorization_blocked: bool  # flagged images would be published and allow_memorized is off

    @property
    def report_path(self) -> Path:
        return self.output_dir / REPORT_NAME


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


def _measure(images: list[np.ndarray | None], config: QualityConfig, extractor: FeatureExtractor | None,
             side: str | None) -> list[Described]:
    """Fresh measurements of a batch of decoded images (None: unreadable). `side`: "training" keeps local
    features for the reference, "synthetic" prepares the audit's query, None neither."""
    described = []
    for rgb in images:
        if rgb is None:
            described.append(Described())
            continue
        analysis = analyze_image(rgb, config.analysis_size)
        d = Described(scores=analysis.scores(), hash=phash(rgb), ita=image_ita(analysis.lab, analysis.skin_mask))
        if side == "training":
            d.local = local_features(rgb, config.memorization.local_features)
        elif side == "synthetic":
            d.query = make_query(rgb, config.memorization)
        described.append(d)
    readable = [i for i, rgb in enumerate(images) if rgb is not None]
    if extractor is not None and readable:
        embeddings = extractor.embed([images[i] for i in readable])
        for row, index in enumerate(readable):
            described[index].embedding = embeddings[row]
    return described


def _describe_all(items: list[ImageItem], config: QualityConfig, extractor, desc: str, cache: ResultCache,
                  reference: TrainingReference | None = None, keep_local: bool = False) -> list[Described]:
    """Measure every image in batches, reusing the cache; audit fresh synthetic images against `reference`.
    `keep_local`: the training side, whose local features are recomputed even for cached images."""
    out: list[Described] = []
    with _progress(len(items), desc, config.progress) as bar:
        for start in range(0, len(items), config.batch_size):
            chunk = items[start:start + config.batch_size]
            cached = [cache.get(item.path) for item in chunk]
            fresh_at = [i for i, record in enumerate(cached) if record is None]
            side = "training" if keep_local else ("synthetic" if reference is not None else None)
            fresh = _measure([load_rgb(chunk[i].path) for i in fresh_at], config, extractor, side)
            if reference is not None:
                _audit(reference, fresh)
            cache.put([(chunk[i].path, d.to_record()) for i, d in zip(fresh_at, fresh)])
            described = [None if record is None else Described.from_record(record) for record in cached]
            for i, d in zip(fresh_at, fresh):
                described[i] = d
            if keep_local:
                for item, d in zip(chunk, described):
                    if d.readable and d.local is None:
                        rgb = load_rgb(item.path)
                        d.local = local_features(rgb, config.memorization.local_features) if rgb is not None else None
            out.extend(described)
            bar.update(len(chunk))
    return out


def _audit(reference: TrainingReference, described: list[Described]) -> None:
    readable = [d for d in described if d.readable]
    if not readable:
        return
    results = reference.audit([d.query for d in readable], np.stack([d.embedding for d in readable]))
    for item, result in zip(readable, results):
        item.nearest = result
        item.query = None  # free the descriptors: only the training side keeps them


def _mark_near_duplicates(items: list[ImageItem], described: list[Described], max_distance: int) -> None:
    """Greedy in metadata order: an image that passed everything else and lies within `max_distance` bits of an
    earlier kept image is rejected as its duplicate (the first of a group is kept)."""
    kept_hashes: list[np.ndarray] = []
    kept_names: list[str] = []
    for item, d in zip(items, described):
        if d.reasons or d.hash is None:
            continue
        if kept_hashes:
            distances = hamming_matrix(d.hash[None], np.stack(kept_hashes))[0]
            nearest = int(np.argmin(distances))
            if distances[nearest] <= max_distance:
                d.reasons.append("near_duplicate")
                d.duplicate_of = kept_names[nearest]
                continue
        kept_hashes.append(d.hash)
        kept_names.append(item.file_name)


def _row_keys(d: Described, config: QualityConfig, ids: list[str] | None) -> dict:
    """The per-image keys written into metadata.jsonl; `ids` are the training ids (None: not audited)."""
    keys: dict = {"qa_sharpness": None, "qa_clipping": None, "qa_noise": None, "qa_lesion_area": None,
                  "qa_lesion_contrast": None, "qa_lesion_solidity": None, "qa_lesion_found": None}
    if d.readable:
        keys.update(d.scores)
        keys["qa_lesion_found"] = lesion_found(d.scores, config.artifacts)
    keys.update({"qa_near_duplicate_of": d.duplicate_of, "qa_passed": not d.reasons, "qa_reasons": list(d.reasons)})
    if d.nearest is not None and ids is not None:
        keys.update(d.nearest.row(ids, config.memorization))
    else:
        keys.update({"mem_nearest_id": None, "mem_phash_distance": None, "mem_cosine": None,
                     "mem_match_inliers": None, "mem_evidence": [],
                     "mem_flagged": None if ids is None or not d.readable else False})
    keys["ita"] = None if d.ita is None else round(d.ita, 3)
    keys["ita_category"] = ita_category(d.ita)
    return keys


def _stats(values) -> dict | None:
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return None
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"min": float(values.min()), "p5": float(p5), "median": float(median), "p95": float(p95),
            "max": float(values.max())}


def _artifact_report(items: list[ImageItem], rows: list[dict], config: QualityConfig,
                     real_pass_rate: float | None) -> dict:
    passed = sum(r["qa_passed"] for r in rows)
    per_class: dict = {}
    for item, row in zip(items, rows):
        entry = per_class.setdefault(item.label or UNLABELLED, {"num_images": 0, "passed": 0})
        entry["num_images"] += 1
        entry["passed"] += int(row["qa_passed"])
    for entry in per_class.values():
        entry["pass_rate"] = entry["passed"] / entry["num_images"]
    score_keys = ("qa_sharpness", "qa_clipping", "qa_noise", "qa_lesion_area", "qa_lesion_contrast",
                  "qa_lesion_solidity")
    return {
        "num_images": len(rows), "passed": passed, "rejected": len(rows) - passed,
        "pass_rate": passed / len(rows) if rows else None,
        "reasons": dict(Counter(reason for r in rows for reason in r["qa_reasons"]).most_common()),
        "per_class": per_class, "thresholds": config_to_dict(config.artifacts),
        "score_distribution": {k: _stats(r[k] for r in rows) for k in score_keys},
        "real_reference_pass_rate": real_pass_rate,
        "rejected_images": [{"file_name": i.file_name, "reasons": r["qa_reasons"],
                             **({"duplicate_of": r["qa_near_duplicate_of"]} if r["qa_near_duplicate_of"] else {})}
                            for i, r in zip(items, rows) if not r["qa_passed"]],
    }


def _closest_pairs(items, rows, described, reals, out_dir: Path, config: QualityConfig) -> list[dict]:
    """Side-by-side PNGs of the synthetic images closest to a training image (flagged ones first)."""
    pairs_dir = out_dir / PAIRS_DIR
    if pairs_dir.is_dir():
        for stale in pairs_dir.glob("*.png"):  # our own previous output, not data
            stale.unlink()
    audited = [i for i, d in enumerate(described) if d.nearest is not None]
    audited.sort(key=lambda i: (not rows[i]["mem_flagged"], -described[i].nearest.match_inliers,
                                described[i].nearest.hash_distance, -described[i].nearest.cosine))
    pairs = []
    for rank, index in enumerate(audited[:config.top_k_pairs], start=1):
        row, partner = rows[index], described[index].nearest.partner(config.memorization)
        synthetic, real = load_rgb(items[index].path), load_rgb(reals[partner].path)
        if synthetic is None or real is None:
            continue
        caption = (f"{'FLAGGED ' if row['mem_flagged'] else ''}inliers {row['mem_match_inliers']}  "
                   f"hash {row['mem_phash_distance']}/256  cos {row['mem_cosine']:.3f}")
        name = f"{rank:02d}-{safe_name(items[index].image_id)}--{safe_name(reals[partner].image_id)}.png"
        save_pair(pairs_dir / name, synthetic, real, caption)
        pairs.append({"rank": rank, "png": f"{PAIRS_DIR}/{name}", "synthetic": items[index].file_name,
                      "real_id": reals[partner].image_id, "flagged": row["mem_flagged"],
                      "evidence": row["mem_evidence"], "match_inliers": row["mem_match_inliers"],
                      "phash_distance": row["mem_phash_distance"], "cosine": row["mem_cosine"]})
    return pairs


def _memorization_report(items, rows, described, reference, config: QualityConfig, pairs) -> dict:
    memo_config = config.memorization
    methods = ["perceptual hash (256-bit DCT)", "SIFT + RANSAC affine verification"]
    if memo_config.min_cosine is not None:
        methods.append("embedding cosine")
    if memo_config.check_mirrored:
        methods.append("hash and SIFT also on the mirror image")
    if reference is None:
        return {"audited": False, "num_training_images": 0, "flagged": None, "flagged_published": None,
                "result": "not audited (no real training folder given)", "methods": methods,
                "thresholds": config_to_dict(memo_config), "flagged_images": [], "closest_pairs": []}
    flagged = [(i, r) for i, r in zip(items, rows) if r["mem_flagged"]]
    published = [pair for pair in flagged if pair[1]["qa_passed"]]
    result = ("no synthetic image matches a training image" if not flagged else
              f"{len(flagged)} synthetic image(s) match a training image ({len(published)} among the kept ones)")
    nearest = [d.nearest for d in described if d.nearest is not None]
    return {
        "audited": True, "num_training_images": len(reference), "flagged": len(flagged),
        "flagged_published": len(published), "result": result, "methods": methods,
        "thresholds": config_to_dict(memo_config),
        "flagged_images": [{"file_name": i.file_name, "nearest_id": r["mem_nearest_id"],
                            "evidence": r["mem_evidence"], "match_inliers": r["mem_match_inliers"],
                            "phash_distance": r["mem_phash_distance"], "cosine": r["mem_cosine"],
                            "qa_passed": r["qa_passed"]} for i, r in flagged],
        "closest_pairs": pairs,
        # to choose min_cosine for a pretrained extractor: copies sit far above the real-to-real neighbours
        "cosine_calibration": {"real_to_nearest_real": _stats(reference.nearest_real_cosines()),
                               "synthetic_to_nearest_real": _stats(n.cosine for n in nearest)},
        "hash_distance_distribution": _stats(n.hash_distance for n in nearest),
        "match_inliers_distribution": _stats(n.match_inliers for n in nearest),
    }


def _skin_tone_report(real_itas, synthetic_itas, out_dir: Path) -> dict:
    real_categories = category_histogram(ita_category(v) for v in real_itas)
    synthetic_categories = category_histogram(ita_category(v) for v in synthetic_itas)
    real_values = [v for v in real_itas if v is not None]
    synthetic_values = [v for v in synthetic_itas if v is not None]
    plot_ita_histograms(out_dir / ITA_PLOT, real_categories, synthetic_categories, real_values, synthetic_values)
    return {
        "method": "ITA = atan2(L* - 50, b*) in degrees from median L*, b* of non-lesion skin (CIELAB, D65)",
        "category_lower_bounds": {name: (None if not np.isfinite(low) else low) for name, low in ITA_CATEGORIES},
        "real": {"num_images": len(real_itas), "categories": real_categories,
                 "median_ita": float(np.median(real_values)) if real_values else None},
        "synthetic": {"num_images": len(synthetic_itas), "categories": synthetic_categories,
                      "median_ita": float(np.median(synthetic_values)) if synthetic_values else None,
                      "evaluated_on": "kept synthetic images"},
        "histogram": ITA_PLOT,
    }


def _unique_destination(folder: Path, rel: str) -> str:
    path, number = PurePosixPath(rel), 1
    candidate = rel
    while safe_relative(folder, candidate).exists():
        candidate = str(path.with_name(f"{path.stem}-{number}{path.suffix}"))
        number += 1
    return candidate


def _apply_to_folder(folder: Path, items: list[ImageItem], rows: list[dict], move: bool) -> dict:
    """Move rejected images to rejected/{label}/ (and back when they pass now), then rewrite metadata."""
    moved = {"to_rejected": 0, "restored": 0}
    for item, keys in zip(items, rows):
        in_rejected = PurePosixPath(item.file_name).parts[0] == REJECTED_DIR
        if move and item.path.is_file() and keys["qa_passed"] == in_rejected:
            target = _unique_destination(folder, alternative_location(item.file_name, item.label))
            destination = safe_relative(folder, target)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item.path, destination)
            moved["restored" if in_rejected else "to_rejected"] += 1
            item.file_name, item.path = target, destination
        item.row.update(keys)
        item.row["file_name"] = item.file_name
    write_jsonl(folder / METADATA_NAME, (item.row for item in items))
    return moved


_IMAGE_STAGES = ("generate", "preprocess", "phantoms")  # stages whose folders are images + metadata.jsonl


def _check_stage_folders(generated_dir: Path, real_dir: str | Path | None, output_dir: str | Path | None):
    """Refuse folders from the wrong stage (a built dataset holds parquet, a LoRA folder sample images: auditing
    those would report "no memorization" for nothing); return the generated folder's stage (None: no manifest).
    Only a `generate` folder is updated in place; a data-stage folder is only read."""
    stage = (try_read_manifest(generated_dir) or {}).get("stage")
    if stage and stage not in _IMAGE_STAGES:
        raise FolderError(f"{generated_dir} holds the output of stage {stage!r}, not images: give a "
                          "`dermt2im generate` output or any folder of PNGs")
    real_stage = (try_read_manifest(real_dir) or {}).get("stage") if real_dir is not None else None
    if real_stage and real_stage not in ("preprocess", "phantoms"):
        raise FolderError(f"--real {real_dir} holds the output of stage {real_stage!r}, not the real training "
                          "images: give the `dermt2im preprocess` folder (or image folder) the LoRA was trained on")
    out_stage = (try_read_manifest(output_dir) or {}).get("stage") if output_dir is not None else None
    if out_stage and out_stage != "qa":
        raise FolderError(f"--output {output_dir} holds the output of stage {out_stage!r}; choose an empty folder "
                          "or an earlier QA report folder")
    return stage


def run_qa(generated_dir: str | Path, real_dir: str | Path | None = None, config: QualityConfig | None = None,
           output_dir: str | Path | None = None, extractor: FeatureExtractor | None = None) -> QAResult:
    """Score, audit and (for a generated folder with metadata) update `generated_dir`; see the module docs.

    `real_dir=None` runs the artifact filter and skin tone only (mem_flagged stays null: not audited).
    `extractor` overrides `config.features` with any `FeatureExtractor`.
    """
    config = config or QualityConfig()
    config.validate()
    generated_dir = Path(generated_dir)
    if not generated_dir.is_dir():
        raise FolderError(f"generated folder not found: {generated_dir}")
    generated_stage = _check_stage_folders(generated_dir, real_dir, output_dir)
    writable = has_metadata(generated_dir) and generated_stage in (None, "generate")
    if output_dir is None and not writable:
        why = (f"it holds the output of stage {generated_stage!r}" if generated_stage not in (None, "generate")
               else f"it has no {METADATA_NAME}")
        raise FolderError(f"{generated_dir} is read-only here ({why}), so give an output folder for the QA "
                          "report (--output DIR)")
    out_dir = Path(output_dir) if output_dir is not None else generated_dir / QA_DIR
    if out_dir.resolve() == generated_dir.resolve():
        raise FolderError("the QA output folder must differ from the generated folder (default: GENERATED/qa)")
    items = generated_items(generated_dir, out_dir)
    reals = real_items(real_dir) if real_dir is not None else []
    timings: dict[str, float] = {}
    inputs = {"generated": generated_dir} | ({"real": Path(real_dir)} if real_dir is not None else {})
    with StageRun(out_dir, "qa", config, inputs=inputs) as run:
        if reals and extractor is None:
            extractor = build_extractor(config.features)
        started = time.perf_counter()
        reference, real_described = None, []
        if reals:
            reference, reals, real_described = _training_reference(reals, config, extractor, out_dir)
        timings["training_images_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        cache = ResultCache(out_dir / CACHE_DIR / "synthetic.jsonl", {
            "side": "synthetic", "analysis_size": config.analysis_size,
            "extractor": extractor.describe() if reference is not None else None,
            "reference": reference.digest() if reference is not None else None,
            "candidates": config.memorization.candidates, "mirrored": config.memorization.check_mirrored},
            enabled=config.cache)
        described = _describe_all(items, config, extractor if reference else None, "qa: synthetic images", cache,
                                  reference)
        _judge(items, described, config)
        ids = reference.ids if reference is not None else None
        rows = [_row_keys(d, config, ids) for d in described]
        timings["synthetic_images_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        report = _build_report(items, rows, described, reals, real_described, reference, config, extractor,
                               out_dir)
        timings["report_seconds"] = time.perf_counter() - started
        report.update({"generated_dir": str(generated_dir), "real_dir": None if real_dir is None else str(real_dir),
                       "mode": "update folder" if writable else "read-only"})
        if writable:
            report["moved"] = _apply_to_folder(generated_dir, items, rows, config.move_rejected)
        report["timings"] = {k: round(v, 2) for k, v in timings.items()}
        write_jsonl(out_dir / SCORES_NAME, ({"file_name": i.file_name, "label": i.label, **r}
                                            for i, r in zip(items, rows)))
        atomic_write_json(out_dir / REPORT_NAME, report)
        save_config(config, out_dir / "config.yaml")
        blocked = bool(report["memorization"]["flagged_published"]) and not config.allow_memorized
        run.outputs = {"report": REPORT_NAME, "scores": SCORES_NAME, "closest_pairs": PAIRS_DIR,
                       "ita_histogram": ITA_PLOT, "num_images": len(rows),
                       "passed": report["artifacts"]["passed"]}
        run.extra["card"] = card_summaries(report)
        run.extra["memorization_blocked"] = blocked
        run.extra["feature_extractor"] = report.get("feature_extractor")
    return QAResult(out_dir, report, rows, blocked)


def _training_reference(reals: list[ImageItem], config: QualityConfig, extractor, out_dir: Path):
    """(reference, readable training items, their measurements)."""
    cache = ResultCache(out_dir / CACHE_DIR / "training.jsonl", {
        "side": "training", "analysis_size": config.analysis_size, "extractor": extractor.describe()},
        enabled=config.cache)
    described = _describe_all(reals, config, extractor, "qa: training images", cache, keep_local=True)
    known = [(item, d) for item, d in zip(reals, described) if d.readable and d.local is not None]
    if not known:
        raise FolderError("no readable image in the real training folder")
    if len(known) < len(reals):
        log.warning("%d training image(s) could not be read and are left out", len(reals) - len(known))
    reference = TrainingReference([item.image_id for item, _ in known],
                                  np.stack([d.hash for _, d in known]).reshape(-1, HASH_BYTES),
                                  np.stack([d.embedding for _, d in known]), [d.local for _, d in known],
                                  config.memorization)
    return reference, [item for item, _ in known], [d for _, d in known]


def _judge(items: list[ImageItem], described: list[Described], config: QualityConfig) -> None:
    """Apply the thresholds: artifact reasons, quarantined copies, then near-duplicates among the rest."""
    for d in described:
        if not d.readable:
            d.reasons.append("unreadable")
            continue
        d.reasons.extend(artifact_reasons(d.scores, config.artifacts))
        if config.quarantine_memorized and d.nearest is not None and d.nearest.evidence(config.memorization):
            d.reasons.append("memorized")
    _mark_near_duplicates(items, described, config.artifacts.max_duplicate_distance)


def _build_report(items, rows, described, reals, real_described, reference, config, extractor, out_dir) -> dict:
    real_pass_rate = None
    if real_described:
        real_pass_rate = float(np.mean([not artifact_reasons(d.scores, config.artifacts) for d in real_described]))
    report: dict = {"stage": "qa", "feature_extractor": extractor.describe() if extractor is not None else None}
    report["artifacts"] = _artifact_report(items, rows, config, real_pass_rate)
    pairs = _closest_pairs(items, rows, described, reals, out_dir, config) if reference else []
    report["memorization"] = _memorization_report(items, rows, described, reference, config, pairs)
    kept = [d for d, r in zip(described, rows) if r["qa_passed"]]
    report["skin_tone"] = _skin_tone_report([d.ita for d in real_described], [d.ita for d in kept], out_dir)
    report["fidelity"] = None
    if reference is not None and config.fidelity.enabled and kept:
        kept_items = [i for i, r in zip(items, rows) if r["qa_passed"]]
        report["fidelity"] = {
            "feature_extractor": extractor.describe()["name"], "evaluated_on": "kept synthetic images",
            **fidelity_by_class(np.stack([d.embedding for d in real_described]), [i.label for i in reals],
                                np.stack([d.embedding for d in kept]), [i.label for i in kept_items],
                                config.fidelity),
        }
    return report
