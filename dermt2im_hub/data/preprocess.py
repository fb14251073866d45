"""`dermt2im preprocess`: real images in, an image folder (contract 1 of CONTRIBUTING.md) out.

    OUT/benign/*.png, OUT/malignant/*.png   size x size RGB, hair removed unless switched off
    OUT/metadata.jsonl                      one dermt2im_hub.records.ImageRecord per image, split set
    OUT/test_exclusion.json                 the test split (records.TestExclusion) later stages refuse
    OUT/report.json                         every skipped/converted input with its reason, and counts
    OUT/config.yaml                         the resolved DataConfig
    OUT/manifest.json                       stage "preprocess"

Resumable and idempotent: a hidden journal (`OUT/.preprocess-journal.jsonl`) remembers, per image, a key
over the input file (path, size, mtime) and the processing settings; an image whose key is unchanged and
whose output exists is not decoded again, so a second run does no image work. Known-bad inputs are
remembered too. Images run in a process pool (one worker per core by default).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermt2im_hub.config import ConfigError, save_config
from dermt2im_hub.data.collect import collect_records
from dermt2im_hub.data.config import DataConfig
from dermt2im_hub.data.images import ImageTask, process_image
from dermt2im_hub.data.report import Report
from dermt2im_hub.data.sources import InputError, SourceRecord, is_inside, safe_file_stem
from dermt2im_hub.data.splits import assign_splits
from dermt2im_hub.labels import CLASS_NAMES, prompt_for
from dermt2im_hub.manifest import fingerprint, try_read_manifest, write_manifest
from dermt2im_hub.records import EXCLUSION_NAME, SPLITS, ImageRecord, TestExclusion, write_records
from dermt2im_hub.utils.files import append_jsonl, read_jsonl, remove_stale_temp_files, safe_join, write_jsonl
from dermt2im_hub.utils.logging import get_logger

STAGE = "preprocess"
JOURNAL_NAME = ".preprocess-journal.jsonl"
REPORT_NAME = "report.json"
CONFIG_NAME = "config.yaml"
SETTINGS_VERSION = 1  # bump when the image pipeline changes so that old outputs are redone
_JOURNAL_FLUSH_EVERY = 50

log = get_logger(__name__)


@dataclass
class PreprocessResult:
    output: Path
    records: list[ImageRecord]
    report: Report
    processed: int  # images decoded and written by this run
    reused: int  # images whose earlier output (or earlier failure) was kept
    elapsed_seconds: float

    @property
    def usable(self) -> bool:
        return bool(self.records)


# ---------------------------------------------------------------- selection and planning


def select_per_class(records: list[SourceRecord], limit: int | None, seed: int,
                     report: Report) -> list[SourceRecord]:
    """At most `limit` records per class, drawn at random by seed (same input, same pick)."""
    if limit is None:
        return records
    chosen: list[SourceRecord] = []
    for index, label in enumerate(CLASS_NAMES):
        members = [record for record in records if record.label == label]
        if len(members) > limit:
            rng = np.random.default_rng([seed, index])
            members = [members[i] for i in sorted(rng.choice(len(members), size=limit, replace=False))]
        report.note(f"limit_per_class {limit}: {len(members)} {label} image(s) selected")
        chosen.extend(members)
    return sorted(chosen, key=lambda record: record.image_id)


# ---------------------------------------------------------------- sources that are test sets

EXCLUDED_REASON = "in_test_source"
_ID_COLUMNS = ("image_id", "isic_id", "image_name", "image", "name")


def exclusion_from_sources(paths: list[str]) -> TestExclusion:
    """Every image of the given test sources as one exclusion list: a preprocessed folder (its metadata.jsonl:
    ids and sha256s of every split), a test_exclusion.json, or a metadata CSV (image and lesion ids, e.g.
    HAM10000_metadata.csv)."""
    from dermt2im_hub.data.sources import read_csv_rows, rows_as_dicts
    from dermt2im_hub.records import read_records

    merged = TestExclusion(source="exclude_sources")
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            records = read_records(path)
            merged = merged.merge(TestExclusion.from_records(records, source=str(path)))
            # the input files' bytes too: the same download listed under another id in another source
            merged.sha256.update(r.extra.get("source_sha256") for r in records if r.extra.get("source_sha256"))
        elif path.suffix.lower() == ".json":
            merged = merged.merge(TestExclusion.load(path))
        elif path.is_file():
            header, rows = rows_as_dicts(read_csv_rows(path))
            lower = {h.lower(): h for h in header}
            id_column = next((lower[c] for c in _ID_COLUMNS if c in lower), None)
            if id_column is None:
                raise InputError(f"exclude_sources: {path} has none of the id columns {list(_ID_COLUMNS)}")
            for row in rows:
                merged.image_ids.add(row[id_column])
                if row.get(lower.get("lesion_id", "")):
                    merged.lesion_ids.add(row[lower["lesion_id"]])
        else:
            raise InputError(f"exclude_sources: {path} not found (a metadata CSV, a preprocessed folder or a "
                             "test_exclusion.json)")
    merged.image_ids.discard("")
    return merged


def drop_test_source_rows(records: list[SourceRecord], exclusion: TestExclusion, report: Report
                          ) -> list[SourceRecord]:
    """The records whose image id or lesion id is not in a test source's list (the others reported)."""
    kept = []
    for record in records:
        if record.image_id in exclusion.image_ids or (record.lesion_id and record.lesion_id in exclusion.lesion_ids):
            report.skip(EXCLUDED_REASON, record.image_id, record.path, "image or lesion of a test source")
        else:
            kept.append(record)
    return kept


def processing_settings(config: DataConfig) -> dict[str, Any]:
    """The settings that decide an output image's pixels (the rest, e.g. prompts, live only in metadata)."""
    return {
        "version": SETTINGS_VERSION,
        "size": config.size,
        "hair_removal": config.hair_removal,
        "hair": dataclasses.asdict(config.hair) if config.hair_removal else None,
        "min_side": config.min_side,
        "max_image_pixels": config.max_image_pixels,
    }


def task_key(settings: dict[str, Any], input_path: Path, file_name: str) -> str:
    stat = input_path.stat()
    identity = {"settings": settings, "input": str(input_path.resolve()), "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "output": file_name}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def output_file_name(record: SourceRecord) -> str:
    return f"{record.label}/{safe_file_stem(record.image_id)}.png"


class Journal:
    """Per-image results of earlier runs (latest row per image id wins); appended in batches."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {row["image_id"]: row for row in read_jsonl(path)
                                                if isinstance(row, dict) and isinstance(row.get("image_id"), str)}
        self._pending: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows[row["image_id"]] = row
        self._pending.append(row)
        if len(self._pending) >= _JOURNAL_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            append_jsonl(self.path, self._pending)
            self._pending = []

    def compact(self, keep: set[str]) -> None:
        self.flush()
        write_jsonl(self.path, (row for image_id, row in sorted(self.rows.items()) if image_id in keep))


def _reusable(row: dict[str, Any] | None, key: str, out: Path, selected_ids: set[str]) -> bool:
    if row is None or row.get("key") != key:
        return False
    if row.get("ok"):
        return (out / row["file_name"]).is_file()
    if row.get("reason") == "duplicate_content":  # only while the image it duplicates is still selected
        return row.get("duplicate_of") in selected_ids
    return row.get("reason") not in (None, "worker_error")


# ---------------------------------------------------------------- running the pool


def worker_count(requested: int, tasks: int) -> int:
    if requested <= 0:
        requested = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(requested, tasks))


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool already keeps every core busy; nested threads only contend


def _pool_context():
    # forkserver: workers start from a clean process (no inherited threads or locks), with the image
    # libraries imported once by the server instead of once per worker
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["dermt2im_hub.data.images"])
        return context
    return multiprocessing.get_context("spawn")


def run_tasks(tasks: list[ImageTask], workers: int, progress: bool) -> Iterator[tuple[ImageTask, dict[str, Any]]]:
    """(task, result) as results arrive; a crashed task yields a `worker_error` result."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="preprocess", unit="img", disable=not progress or not tasks)
    try:
        if workers <= 1:
            for task in tasks:
                yield task, process_image(task)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_init_worker) as pool:
            futures: dict[Future, ImageTask] = {pool.submit(process_image, task): task for task in tasks}
            try:
                for future in as_completed(futures):
                    task = futures[future]
                    try:
                        result = future.result()
                    except Exception as exc:  # a worker that died or raised: report, keep going
                        result = {"image_id": task.image_id, "ok": False, "reason": "worker_error",
                                  "detail": f"{type(exc).__name__}: {exc}", "conversions": []}
                    yield task, result
                    bar.update()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


# ---------------------------------------------------------------- the stage


def _check_output(config: DataConfig) -> Path:
    if not config.output:
        raise ConfigError("output is required (--output DIR)")
    out = Path(config.output)
    for item in [config.images, *config.metadata]:
        if item and Path(item).is_dir() and (out.resolve() == Path(item).resolve() or is_inside(out, Path(item))):
            raise InputError(f"output {out} lies inside the input folder {item}: choose a separate folder")
    manifest = try_read_manifest(out)
    if manifest is not None and manifest.get("stage") != STAGE:
        raise InputError(f"{out} holds the output of stage {manifest.get('stage')!r}; "
                         "preprocess writes into an empty folder or an earlier preprocess output")
    return out


def _image_record(source: SourceRecord, row: dict[str, Any], config: DataConfig) -> ImageRecord:
    extra = dict(source.extra)
    extra.update(source_file=source.path.name if source.path else None, source_sha256=row.get("source_sha256"))
    if row.get("conversions"):
        extra["conversions"] = [reason for reason, _ in row["conversions"]]
    return ImageRecord(
        file_name=row["file_name"], image_id=source.image_id, label=source.label, source=source.source,
        diagnosis=source.diagnosis, lesion_id=source.lesion_id, patient_id=source.patient_id,
        prompt=prompt_for(source.label, config.prompt_template), width=row.get("width"), height=row.get("height"),
        original_width=row.get("original_width"), original_height=row.get("original_height"),
        sha256=row.get("sha256"), hair_fraction_before=row.get("hair_fraction_before"),
        hair_fraction_after=row.get("hair_fraction_after"), age=source.age, sex=source.sex, site=source.site,
        extra=extra,
    )


def _mark_content_duplicates(selected: list[SourceRecord], journal: Journal, out: Path) -> None:
    """Byte-identical inputs (e.g. one image under two ids): the first by id stays, the others become
    `duplicate_content` in the journal and their outputs are removed."""
    first_with_hash: dict[str, str] = {}
    for source in selected:
        row = journal.rows.get(source.image_id)
        if not row or not row.get("ok") or not row.get("source_sha256"):
            continue
        first = first_with_hash.setdefault(row["source_sha256"], source.image_id)
        if first != source.image_id:
            path = safe_join(out, row.get("file_name"))  # the journal is a file in the folder: never trust it
            if path is not None:
                path.unlink(missing_ok=True)
            journal.add({**row, "ok": False, "reason": "duplicate_content", "duplicate_of": first,
                         "detail": f"same bytes as {first}"})


def _remove_stale_outputs(out: Path, old_rows: dict[str, dict[str, Any]], keep_files: set[str]) -> int:
    """Delete images an earlier run wrote that this run no longer lists (e.g. a label or selection changed)."""
    removed = 0
    for row in old_rows.values():
        name = row.get("file_name")
        if not row.get("ok") or not isinstance(name, str) or name in keep_files:
            continue
        path = safe_join(out, name)
        if path is not None and path.parent.name in CLASS_NAMES and path.is_file():
            path.unlink()
            removed += 1
    return removed


def _images_fingerprint(config: DataConfig, records: list[ImageRecord]) -> dict[str, Any]:
    """Identify the input images by content without re-hashing the folder: the workers hashed each file."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.image_id):
        digest.update(f"{record.image_id}\0{record.extra.get('source_sha256')}\n".encode())
    return {"path": str(Path(config.images).resolve()) if config.images else None, "kind": "images",
            "sha256": digest.hexdigest(), "num_images": len(records)}


def _count_summary(records: list[ImageRecord]) -> dict[str, Any]:
    return {
        "per_class": {label: sum(r.label == label for r in records) for label in CLASS_NAMES},
        "per_split": {split: sum(r.split == split for r in records) for split in SPLITS},
    }


def run_preprocess(config: DataConfig, progress: bool = True) -> PreprocessResult:
    """Run the data stage for `config`; returns what was written (no exception for bad images).

    Input errors (missing metadata file, unknown CSV format) raise InputError before anything is written.
    """
    config.validate()
    out = _check_output(config)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report = Report()
    candidates = collect_records(config, report)
    test_sources = exclusion_from_sources(config.exclude_sources) if config.exclude_sources else None
    if test_sources is not None:  # before selection, so limit_per_class counts only usable images
        candidates = drop_test_source_rows(candidates, test_sources, report)
        report.note(f"exclude_sources: {report.skipped.get(EXCLUDED_REASON, 0)} row(s) dropped: their image or "
                    "lesion belongs to a test source")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    try:
        selected = select_per_class(candidates, config.limit_per_class, config.seed, report)
        journal = Journal(out / JOURNAL_NAME)
        old_rows = dict(journal.rows)
        processed, reused = _process(config, out, selected, journal, progress)
        return _finish(config, out, selected, journal, old_rows, report, processed, reused, started, started_at,
                       test_sources)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_manifest(out, STAGE, config, started_at=started_at, status=status,
                       extra={"error": f"{type(exc).__name__}: {exc}"},
                       input_fingerprints={f"metadata_{i}": fingerprint(m) for i, m in enumerate(config.metadata)})
        raise


def _process(config: DataConfig, out: Path, selected: list[SourceRecord], journal: Journal,
             progress: bool) -> tuple[int, int]:
    """Decode and write every selected image the journal cannot vouch for; returns (processed, reused)."""
    selected_ids = {record.image_id for record in selected}
    settings = processing_settings(config)
    tasks, planned, reused = [], {}, 0
    for source in selected:
        file_name = output_file_name(source)
        key = task_key(settings, source.path, file_name)
        if _reusable(journal.rows.get(source.image_id), key, out, selected_ids):
            reused += 1
            continue
        planned[source.image_id] = {"image_id": source.image_id, "key": key, "file_name": file_name}
        tasks.append(ImageTask(source.image_id, str(source.path), str(out / file_name), config.size,
                               config.hair_removal, config.hair, config.min_side, config.max_image_pixels,
                               config.png_compress_level))
    workers = worker_count(config.num_workers, len(tasks))
    log.info("preprocess: %d image(s) to process, %d reused, %d worker(s)", len(tasks), reused, workers)
    try:
        for task, result in run_tasks(tasks, workers, progress):
            row = {**planned[task.image_id], **result}
            if row.get("reason") == "worker_error":
                journal.rows[task.image_id] = row  # reported, and retried by the next run
            else:
                journal.add(row)
    finally:
        journal.flush()
    _mark_content_duplicates(selected, journal, out)
    return len(tasks), reused


def split_unit(records) -> str:
    """What the splits keep apart: patients and lesions where the inputs name them, else single images."""
    if any(r.patient_id or r.lesion_id for r in records):
        return "patient and lesion (images without ids: by image)"
    return "image (the inputs carry no lesion or patient ids: images of one lesion may sit in two splits)"


def _finish(config: DataConfig, out: Path, selected: list[SourceRecord], journal: Journal,
            old_rows: dict[str, dict[str, Any]], report: Report, processed: int, reused: int, started: float,
            started_at: str, test_sources: TestExclusion | None = None) -> PreprocessResult:
    records: list[ImageRecord] = []
    for source in selected:
        row = journal.rows[source.image_id]
        for reason, detail in row.get("conversions") or []:
            report.convert(reason, source.image_id, source.path, detail)
        if row.get("ok") and test_sources is not None and ({row.get("sha256"), row.get("source_sha256")}
                                                          & test_sources.sha256):
            # a test image under another id: the same bytes after the same preprocessing
            report.skip(EXCLUDED_REASON, source.image_id, source.path, "same image bytes as a test-source image")
        elif row.get("ok"):
            records.append(_image_record(source, row, config))
        else:
            report.skip(row.get("reason") or "worker_error", source.image_id, source.path, row.get("detail"))
    split = assign_splits(records, config.split_fractions, config.seed)
    for record, name in zip(records, split.splits):
        record.split = name
    for note in split.notes:
        report.note(f"split: {note}")
    if len(records) > 1 and not any(r.lesion_id or r.patient_id for r in records):
        report.note("split: no lesion or patient ids in the inputs, so images are split one by one; images of one "
                    "lesion may land in two splits (HAM10000: use --source ham10000; ISIC 2019: add "
                    "ISIC_2019_Training_Metadata.csv to --metadata)")
    keep_files = {record.file_name for record in records}
    stale = _remove_stale_outputs(out, old_rows, keep_files)
    journal.compact({source.image_id for source in selected})
    elapsed = time.perf_counter() - started
    report.counts = {"candidates": len(selected), "images": len(records), "processed": processed,
                     "reused": reused, "stale_removed": stale, **_count_summary(records)}
    outputs = {"num_images": len(records), **_count_summary(records), "size": config.size,
               "report": REPORT_NAME, "config": CONFIG_NAME}
    if records:
        write_records(out, records)
        TestExclusion.from_records([r for r in records if r.split == "test"], source=str(out.resolve())).save(
            out / EXCLUSION_NAME)
        outputs.update(metadata="metadata.jsonl", test_exclusion=EXCLUSION_NAME)
    report.save(out / REPORT_NAME)
    save_config(config, out / CONFIG_NAME)
    extra = {"elapsed_seconds": round(elapsed, 3), "processed": processed, "reused": reused,
             "images_per_second": round(processed / elapsed, 2) if processed and elapsed > 0 else None,
             "skipped": dict(report.skipped), "converted": dict(report.converted),
             "excluded_test_source_rows": report.skipped.get(EXCLUDED_REASON, 0) if test_sources else None,
             "card": {"source": config.source, "num_images": len(records), "size": config.size,
                      "hair_removal": config.hair_removal, "split_by": split_unit(records),
                      **_count_summary(records)}}
    inputs = {"images": _images_fingerprint(config, records),
              **{f"metadata_{i}": fingerprint(m) for i, m in enumerate(config.metadata)}}
    write_manifest(out, STAGE, config, outputs=outputs, started_at=started_at,
                   status="complete" if records else "failed", extra=extra, input_fingerprints=inputs)
    return PreprocessResult(out, records, report, processed, reused, elapsed)

