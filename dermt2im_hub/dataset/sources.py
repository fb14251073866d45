"""Row readers for the three builder configs, and the scan that turns input folders into dataset rows.

- `synthetic`: a generation output folder (metadata.jsonl rows + PNGs, contract 2), QA columns carried;
  images under `rejected/` and rows with `qa_passed: false` are left out unless asked for.
- `a1111`: any folder of AUTOMATIC1111 PNGs; the label comes from a `benign`/`malignant` folder, else from
  the prompt's class word; metadata from the PNG's infotext (PNGs without one are kept, metadata null).
- `real`: a preprocessed image folder (contract 1); its `split` column gives the dataset splits.

The scan reads every file once before anything is written: it checks the image (corrupt files are skipped),
removes its metadata (`utils.image_metadata`: EXIF, XMP, comments, PNG text chunks but the A1111 `parameters`
chunk of the synthetic and a1111 configs; pixels untouched), hashes the bytes that will be stored (duplicates
are kept once, the first in input order), and assigns the split. The builder reads each file again and removes
the same metadata the same way, so the stored bytes are the ones the `sha256` column describes. Everything
skipped is counted in a `ScanReport`, never dropped silently. Row order is input order, then metadata order
(synthetic, real) or sorted path order (a1111), so the same inputs always give the same rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.dataset import a1111
from dermt2im_hub.dataset.config import A1111, REAL, SPLIT_NAMES, SYNTHETIC
from dermt2im_hub.dataset.images import (
    CorruptImage,
    ImageFacts,
    inspect_image,
    read_file_bytes,
    stored_text_keys,
    walk_images,
)
from dermt2im_hub.dataset.schema import TRAINING_REFERENCE_KEYS, extra_json, is_qa_key
from dermt2im_hub.dataset.splits import hashed_split, split_key
from dermt2im_hub.hub.redact import cut_local_paths, public_name
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.records import METADATA_NAME, ImageRecord
from dermt2im_hub.utils.files import read_jsonl, safe_join, sha256_bytes
from dermt2im_hub.utils.image_metadata import MalformedImage, UnsupportedImage, strip_metadata

REJECTED_DIR = "rejected"
_MAX_EXAMPLES = 20  # per kind of problem, in the report

# Report kinds, in the order a summary lists them.
PROBLEM_KINDS = ("duplicate", "corrupt", "unsupported_format", "unreadable", "missing", "unsafe_name",
                 "invalid_row", "unlabeled", "rejected", "failed_qa", "unsplit", "sha256_mismatch", "no_infotext",
                 "oversized_infotext", "label_conflict", "metadata_removed", "reencoded_png")


class MemorizationError(ValueError):
    """Rows flagged by the memorization audit would be built or published without being allowed."""


@dataclass
class Entry:
    """One admitted image: where its bytes are and the column values that go with them."""

    path: Path
    name: str
    label: str
    split: str
    sha256: str  # of the stored bytes (the file without its metadata; the same as the file's when none was removed)
    values: dict[str, Any]
    stamp: tuple[int, int] = (0, 0)  # (size, mtime_ns) when scanned: a later read checks the file is unchanged
    input_index: int = 0
    file_sha256: str = ""  # of the file as found (input fingerprints, the metadata row's own sha256)
    keep_text: tuple[str, ...] = ()  # PNG text keywords kept in the stored bytes

    def read_unchanged(self) -> bytes:
        """The file's bytes, refusing a file that changed since the scan hashed it."""
        data = read_file_bytes(self.path)
        if file_stamp(self.path) != self.stamp or len(data) != self.stamp[0]:
            raise RuntimeError(f"{self.path} changed while the dataset was being built; run the build again")
        return data

    def read_stored(self) -> bytes:
        """The bytes the dataset stores: the unchanged file without its metadata, exactly as the scan hashed
        them (metadata removal is deterministic)."""
        return strip_metadata(self.read_unchanged(), self.keep_text).data


def file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass
class ScanReport:
    config_name: str
    inputs: list[str]
    candidates: int = 0
    kept: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(detail[:300])

    def summary(self) -> dict[str, Any]:
        return {"config_name": self.config_name, "inputs": self.inputs, "candidates": self.candidates,
                "kept": self.kept, "counts": {k: self.counts[k] for k in PROBLEM_KINDS if self.counts[k]},
                "examples": {k: v for k, v in self.examples.items() if v}}

    def describe(self) -> str:
        """One line for the console: kept rows and each kind of skipped or notable file."""
        parts = [f"{self.kept} of {self.candidates} images kept"]
        parts += [f"{self.counts[k]} {k.replace('_', ' ')}" for k in PROBLEM_KINDS if self.counts[k]]
        return "; ".join(parts)


@dataclass
class ScanOptions:
    split_by: str = "none"
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1)
    include_rejected: bool = False
    verify_pixels: bool = False
    include_mem_nearest_id: bool = False


@dataclass
class Scan:
    entries: list[Entry]
    report: ScanReport

    def by_split(self) -> dict[str, list[Entry]]:
        """Entries per split, in train/validation/test order, empty splits left out."""
        grouped = {name: [e for e in self.entries if e.split == name] for name in SPLIT_NAMES}
        return {name: entries for name, entries in grouped.items() if entries}

    def fingerprint(self, input_index: int | None = None) -> str:
        """sha256 over the admitted files' names and content hashes (of one input, or all), in row order."""
        digest = hashlib.sha256()
        for entry in self.entries:
            if input_index is not None and entry.input_index != input_index:
                continue
            digest.update(f"{entry.name}\0{entry.file_sha256 or entry.sha256}\n".encode())
        return digest.hexdigest()

    def flagged(self) -> list[Entry]:
        """Rows the memorization audit flagged (`mem_flagged: true`)."""
        return [e for e in self.entries if e.values.get("mem_flagged") is True]


@dataclass
class _Candidate:
    """A file a reader proposes, with what its metadata row already says."""

    name: str
    label: str | None = None
    split: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    expected_sha256: str | None = None


def input_folders(inputs: Sequence[str | Path]) -> list[Path]:
    folders = [Path(p) for p in inputs]
    if not folders:
        raise ValueError("no input folders given")
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"input folder not found: {folder}")
    return folders


def scan_inputs(config_name: str, inputs: Sequence[str | Path], options: ScanOptions | None = None) -> Scan:
    """Read, check and de-duplicate every image of `inputs` for builder config `config_name`."""
    options = options or ScanOptions()
    readers = {SYNTHETIC: _synthetic_candidates, A1111: _a1111_candidates, REAL: _real_candidates}
    if config_name not in readers:
        raise ValueError(f"unknown config {config_name!r}; expected one of {', '.join(readers)}")
    folders = input_folders(inputs)
    report = ScanReport(config_name, [str(f) for f in folders])
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    # datasets' tqdm follows its global switch, so `build-dataset --quiet` silences this bar too
    from datasets.utils.tqdm import tqdm

    with tqdm(desc=f"Checking {config_name} images", unit=" images") as progress:
        for index, folder in enumerate(folders):
            for candidate in readers[config_name](folder, options, report):
                report.candidates += 1
                where = candidate.name if len(folders) == 1 else f"[input {index}] {candidate.name}"
                entry = _admit(config_name, folder, where, candidate, options, report, seen)
                if entry is not None:
                    entry.input_index = index
                    entries.append(entry)
                progress.update()
    report.kept = len(entries)
    return Scan(entries, report)


def _admit(config_name: str, folder: Path, where: str, candidate: _Candidate, options: ScanOptions,
           report: ScanReport, seen: dict[str, str]) -> Entry | None:
    """The Entry for one candidate, or None (with the reason noted) when it is unsafe, missing, corrupt, a
    duplicate or unlabelled."""
    path = safe_join(folder, candidate.name)
    if path is None:
        report.note("unsafe_name", repr(candidate.name)[:200])
        return None
    keep_text = stored_text_keys(config_name)
    try:
        stamp = file_stamp(path)
        data = read_file_bytes(path)
        file_digest = sha256_bytes(data)
        if file_digest in seen:
            report.note("duplicate", f"{where} has the same bytes as {seen[file_digest]}")
            return None
        facts = inspect_image(data, want_infotext=config_name != REAL, verify_pixels=options.verify_pixels)
        if facts.infotext_oversized:  # flagged, and not published: the stored bytes drop it with the rest
            keep_text = ()
        stored = strip_metadata(data, keep_text)
    except FileNotFoundError:
        report.note("missing", where)
        return None
    except (CorruptImage, MalformedImage) as exc:
        report.note("corrupt", f"{where}: {exc}")
        return None
    except UnsupportedImage as exc:
        report.note("unsupported_format", f"{where}: {exc}")
        return None
    except OSError as exc:  # permissions, I/O errors: the file is skipped, the build goes on
        report.note("unreadable", f"{where}: {type(exc).__name__}: {exc}"[:300])
        return None
    digest = sha256_bytes(stored.data) if stored.changed else file_digest
    if digest in seen:
        report.note("duplicate", f"{where} has the same image bytes (without metadata) as {seen[digest]}")
        return None
    if candidate.expected_sha256 and candidate.expected_sha256 != file_digest:
        report.note("sha256_mismatch", where)
    label, values = _complete(config_name, candidate, facts, where, report)
    if label is None:
        report.note("unlabeled", where)
        return None
    # only admitted files count as originals: a labelled copy of a skipped file stays
    seen[digest] = seen[file_digest] = where
    if stored.reencoded:
        report.note("reencoded_png", f"{where}: {', '.join(stored.removed)}")
    elif stored.removed:  # names of what went (chunk types, segment markers), never its content
        report.note("metadata_removed", f"{where}: {', '.join(stored.removed)}")
    values.update(file_name=candidate.name, sha256=digest, width=facts.width, height=facts.height)
    split = candidate.split or _split_for(options, values, digest)
    return Entry(path=path, name=candidate.name, label=label, split=split, sha256=digest, values=values,
                 stamp=stamp, file_sha256=file_digest, keep_text=keep_text)


def _complete(config_name: str, candidate: _Candidate, facts: ImageFacts, where: str,
              report: ScanReport) -> tuple[str | None, dict[str, Any]]:
    """Label and column values once the file's own facts (infotext) are known."""
    values = dict(candidate.values)
    extra = dict(candidate.extra)
    label = candidate.label
    if config_name != REAL:
        if facts.infotext_oversized:
            report.note("oversized_infotext", where)
        if facts.infotext is None:
            report.note("no_infotext", where)
    if config_name == SYNTHETIC:
        values["infotext"] = facts.infotext
    elif config_name == A1111:
        parsed = a1111.row_from_infotext(facts.infotext)
        extra.update(parsed.pop("_extra", {}))
        values.update(parsed)
        label = _a1111_label(candidate.name, values.get("prompt"), where, report)
    values["extra"] = extra_json(extra)
    return label, values


def _a1111_label(name: str, prompt: str | None, where: str, report: ScanReport) -> str | None:
    from_folder = a1111.label_from_path(name)
    from_prompt = a1111.label_from_prompt(prompt)
    if from_folder and from_prompt and from_folder != from_prompt:
        report.note("label_conflict", f"{where}: folder says {from_folder}, prompt says {from_prompt}")
    return from_folder or from_prompt


def _split_for(options: ScanOptions, values: dict[str, Any], digest: str) -> str:
    if options.split_by == "none":
        return SPLIT_NAMES[0]
    return hashed_split(split_key(options.split_by, values, digest), options.split_fractions)


# ------------------------------------------------------------------------------------------ readers


def _metadata_rows(folder: Path, config_name: str) -> list[dict]:
    path = folder / METADATA_NAME
    if not path.is_file():
        hint = " (for a plain folder of A1111 PNGs use the a1111 config)" if config_name == SYNTHETIC else ""
        raise FileNotFoundError(f"{folder} has no {METADATA_NAME}: not a {config_name} folder{hint}")
    return [row for row in read_jsonl(path) if isinstance(row, dict)]


# metadata.jsonl keys of a generated folder that map onto columns (the rest goes to `extra`)
_SYNTHETIC_DIRECT = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "transformations")
_SYNTHETIC_HANDLED = frozenset(_SYNTHETIC_DIRECT) | {"file_name", "label", "sha256", "width", "height",
                                                     "base_model", "base_model_hash"}


def _synthetic_candidates(folder: Path, options: ScanOptions, report: ScanReport) -> Iterator[_Candidate]:
    for row in _metadata_rows(folder, SYNTHETIC):
        name = row.get("file_name")
        if not isinstance(name, str) or row.get("label") not in CLASS_NAMES:
            report.note("invalid_row", repr(row)[:200])
            continue
        if not options.include_rejected and name.startswith(REJECTED_DIR + "/"):
            report.note("rejected", name)
            continue
        if not options.include_rejected and row.get("qa_passed") is False:
            report.note("failed_qa", name)
            continue
        extra = {k: v for k, v in row.items() if k not in _SYNTHETIC_HANDLED and not is_qa_key(k)}
        yield _Candidate(name=name, label=row["label"], values=_synthetic_values(row, options),
                         extra=cut_local_paths(extra),  # e.g. adapters[].id: a local LoRA folder's path
                         expected_sha256=row.get("sha256") if isinstance(row.get("sha256"), str) else None)


def _synthetic_values(row: dict[str, Any], options: ScanOptions) -> dict[str, Any]:
    values = {key: row.get(key) for key in _SYNTHETIC_DIRECT}
    adapters = row.get("adapters") if isinstance(row.get("adapters"), list) else []
    # parquet is published as it is (push redacts text files only): a local model is named by its last part
    adapter_ids = [public_name(str(a["id"])) for a in adapters if isinstance(a, dict) and a.get("id")]
    version = row.get("package_version")
    base_model = row.get("base_model")
    values.update(model=public_name(base_model) if isinstance(base_model, str) else None,
                  model_hash=row.get("base_model_hash"),
                  adapter="+".join(adapter_ids) or None, source=SYNTHETIC,
                  version=f"dermt2im-hub {version}" if version else None)
    # the QA stage's keys become columns, except the names of real training images (the memorization audit's
    # nearest match), which reveal training-set membership and need include_mem_nearest_id
    values.update({key: value for key, value in row.items() if is_qa_key(key)
                   and (options.include_mem_nearest_id or key not in TRAINING_REFERENCE_KEYS)})
    return values


def _a1111_candidates(folder: Path, options: ScanOptions, report: ScanReport) -> Iterator[_Candidate]:
    skip = frozenset() if options.include_rejected else frozenset({REJECTED_DIR})
    for name in walk_images(folder, skip_dirs=skip):
        yield _Candidate(name=name, values={"source": A1111})


_REAL_VALUE_FIELDS = ("prompt", "image_id", "diagnosis", "lesion_id", "patient_id", "age", "sex", "site",
                      "source")
_REAL_EXTRA_FIELDS = ("hair_fraction_before", "hair_fraction_after", "original_width", "original_height")


def _real_candidates(folder: Path, options: ScanOptions, report: ScanReport) -> Iterator[_Candidate]:
    records = []
    for row in _metadata_rows(folder, REAL):
        try:
            records.append(ImageRecord.from_dict(row))
        except (TypeError, ValueError) as exc:
            report.note("invalid_row", f"{exc}"[:200])
    # A folder that was never split is one train split; in a split folder, an unsplit row is left out
    # rather than guessed into a split (it could be a test image).
    any_split = any(r.split is not None for r in records)
    for record in records:
        split = record.split if any_split else SPLIT_NAMES[0]
        if split not in SPLIT_NAMES:
            report.note("unsplit", f"{record.file_name}: split {record.split!r}")
            continue
        extra = dict(record.extra)
        extra.update({k: getattr(record, k) for k in _REAL_EXTRA_FIELDS})
        yield _Candidate(name=record.file_name, label=record.label, split=split,
                         values={k: getattr(record, k) for k in _REAL_VALUE_FIELDS}, extra=extra,
                         expected_sha256=record.sha256)
