"""Where a built folder keeps its parquet shards, and the Hub configs (the card's `configs:` block) reading them.

    data/<config>/<sampler-slug>/<split>-NNNNN-of-NNNNN.parquet   synthetic, a1111: one folder per sampler
    data/<config>/<split>-NNNNN-of-NNNNN.parquet                  real
    data/<config>/sample_grid.png

Everything a config publishes sits under `data/<config>/` (a push adds its manifest.json and config.yaml there),
so several builder configs share one dataset repo without a file-name collision. The Hub configs:

- `<config>` (synthetic, a1111, real; the default): every shard of the config (`data/synthetic/*/train-*.parquet`);
- `<config>-<sampler-slug>` (synthetic and a1111): one sampler's rows (`data/synthetic/euler-a/train-*.parquet`),
  like DiffusionDB's subsets. The slug is the sampler name in lower case, `+` read as `p` and every other run of
  characters but letters and digits as `-`: "Euler a" -> `euler-a`, "DPM++ 2M Karras" -> `dpmpp-2m-karras`;
  rows without a sampler go to `not-recorded`. Sampler names that give one slug share its subset.

Each sampler folder is a subset of the builder's rows in the builder's order, written with `datasets`' own
ParquetWriter, `max_shard_size` and row-group size, so the same inputs give the same bytes. `load_dataset(DIR,
"synthetic")` reads the sampler folders in path order: rows come grouped by sampler, in input order within one.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.dataset.config import A1111, SYNTHETIC

DATA_DIR = "data"
SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
SAMPLE_GRID = "sample_grid.png"
SUBSET_CONFIGS = (SYNTHETIC, A1111)  # the configs split by sampler
SUBSET_COLUMN = "sampler"
UNRECORDED_SLUG = "not-recorded"
MAX_SLUG_CHARS = 48
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


def sampler_slug(sampler: Any) -> str:
    """The Hub-safe name of a sampler's subset (module doc). Sampler names come from untrusted infotext: the slug
    holds only [a-z0-9-], is at most 48 characters, and a name with no letter or digit gets a hash-based slug."""
    if sampler is None or not str(sampler).strip():
        return UNRECORDED_SLUG
    text = str(sampler).lower().replace("+", "p")
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:MAX_SLUG_CHARS].strip("-")
    return slug or "sampler-" + hashlib.sha256(str(sampler).encode("utf-8", "replace")).hexdigest()[:8]


def config_dir(config_name: str) -> str:
    return f"{DATA_DIR}/{config_name}"


def sample_grid_path(config_name: str) -> str:
    return f"{config_dir(config_name)}/{SAMPLE_GRID}"


def subset_config_name(config_name: str, slug: str) -> str:
    return f"{config_name}-{slug}"


def shard_pattern(config_name: str, split: str, subset: str | None = None) -> str:
    """The data_files glob of one split: a sampler's folder, every sampler folder (`*`), or the config's own
    folder for a config without subsets."""
    if config_name not in SUBSET_CONFIGS:
        return f"{config_dir(config_name)}/{split}-*.parquet"
    return f"{config_dir(config_name)}/{subset or '*'}/{split}-*.parquet"


def _split_key(split: str) -> tuple[int, str]:
    return SPLIT_ORDER.get(split, 3), split


def shard_files(folder: str | Path) -> dict[str, list[Path]]:
    """Every parquet shard of a built folder per split (train, validation, test, others sorted), each split's in
    path order: the order `load_dataset(DIR, CONFIG)` reads them."""
    found: dict[str, list[Path]] = {}
    data_dir = Path(folder) / DATA_DIR
    for path in sorted(data_dir.rglob("*.parquet"), key=Path.as_posix) if data_dir.is_dir() else []:
        if match := SHARD_RE.match(path.name):
            found.setdefault(match["split"], []).append(path)
    return dict(sorted(found.items(), key=lambda item: _split_key(item[0])))


def subset_of(folder: str | Path, shard: Path) -> str | None:
    """The sampler slug a shard belongs to (its folder under data/<config>/), None for a config without subsets."""
    parts = shard.relative_to(Path(folder) / DATA_DIR).parts
    return parts[1] if len(parts) == 3 else None


@dataclass
class SplitCount:
    num_examples: int = 0
    num_bytes: int = 0
    files: list[str] = field(default_factory=list)


@dataclass
class Layout:
    """What was written: per subset (None: the config has none) and split, rows, bytes and shard paths."""

    config_name: str
    subsets: dict[str | None, dict[str, SplitCount]] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return [path for splits in self.subsets.values() for count in splits.values() for path in count.files]


def hub_configs(config_name: str, splits: Iterable[str], subsets: dict[str | None, Iterable[str]]) -> list[dict]:
    """The card's `configs:` entries: the whole config (default), then one per sampler subset in slug order."""
    ordered = sorted(splits, key=_split_key)
    configs = [{"config_name": config_name, "default": True,
                "data_files": [{"split": s, "path": shard_pattern(config_name, s)} for s in ordered]}]
    for slug in sorted(s for s in subsets if s is not None):
        subset_splits = sorted(subsets[slug], key=_split_key)
        configs.append({"config_name": subset_config_name(config_name, slug),
                        "data_files": [{"split": s, "path": shard_pattern(config_name, s, slug)}
                                       for s in subset_splits]})
    return configs


# ---------------------------------------------------------------------------------------------- writing


class _SubsetWriter:
    """The shards of one (subset, split): rows arrive in builder order and are written in batches of the
    builder's writer_batch_size, opening a new shard once the current one holds more than max_shard_size bytes
    (the test the builder applies before each example, which only changes after a batch is written)."""

    def __init__(self, folder: Path, split: str, features, max_shard_size: int | None, batch_size: int):
        self.folder, self.split, self.features = folder, split, features
        self.max_shard_size, self.batch_size = max_shard_size, batch_size
        self.pending: list[Any] = []
        self.pending_rows = 0
        self.writer = None
        self.parts: list[Path] = []
        self.count = SplitCount()

    def add(self, table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.batch_size:
            self._flush(self.batch_size)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.pending)
        self.pending = [table.slice(rows)] if table.num_rows > rows else []
        self.pending_rows = table.num_rows - rows if table.num_rows > rows else 0
        self._write(table.slice(0, rows))

    def _write(self, table) -> None:
        from datasets.arrow_writer import ParquetWriter

        if self.writer is not None and self.max_shard_size is not None and self.writer._num_bytes > self.max_shard_size:
            self._close_part()
        if self.writer is None:
            self.parts.append(self.folder / f".{self.split}-{len(self.parts):05d}.parquet.part")
            self.writer = ParquetWriter(features=self.features, path=str(self.parts[-1]),
                                        writer_batch_size=self.batch_size, embed_local_files=True)
        self.writer.write_table(table)

    def _close_part(self) -> None:
        examples, size = self.writer.finalize()
        self.writer.close()
        self.writer = None
        self.count.num_examples += examples
        self.count.num_bytes += size

    def close(self, relative_to: Path) -> SplitCount:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is not None:
            self._close_part()
        for index, part in enumerate(self.parts):
            final = self.folder / f"{self.split}-{index:05d}-of-{len(self.parts):05d}.parquet"
            part.rename(final)
            self.count.files.append(final.relative_to(relative_to).as_posix())
        return self.count


def write_config_shards(staged: dict[str, list[Path]], output_dir: Path, config_name: str, features,
                        max_shard_size: int | None, batch_size: int) -> Layout:
    """Write the builder's staged shards (`{split: [arrow files in order]}`, datasets' stream format) as this
    module's layout under `output_dir/data/<config>/`, replacing whatever data/ held (a smaller rebuild or a
    build of another config must not leave stale shards behind). Returns what was written."""
    import pyarrow as pa

    data_dir = output_dir / DATA_DIR
    shutil.rmtree(data_dir, ignore_errors=True)
    root = output_dir / config_dir(config_name)
    by_sampler = config_name in SUBSET_CONFIGS
    layout = Layout(config_name)
    for split in sorted(staged, key=_split_key):
        writers: dict[str | None, _SubsetWriter] = {}
        for path in staged[split]:
            with pa.memory_map(str(path)) as source:
                for batch in pa.ipc.open_stream(source):
                    table = pa.Table.from_batches([batch])
                    for slug, rows in _group_rows(table, by_sampler):
                        if slug not in writers:
                            folder = root / slug if slug is not None else root
                            folder.mkdir(parents=True, exist_ok=True)
                            writers[slug] = _SubsetWriter(folder, split, features, max_shard_size, batch_size)
                        writers[slug].add(rows)
        for slug, writer in sorted(writers.items(), key=lambda item: item[0] or ""):
            layout.subsets.setdefault(slug, {})[split] = writer.close(output_dir)
    return layout


def _group_rows(table, by_sampler: bool):
    """(slug, rows of that slug in order) for a batch; the whole batch under None for a config without subsets."""
    if not by_sampler:
        yield None, table
        return
    import pyarrow as pa

    slugs = [sampler_slug(value) for value in table.column(SUBSET_COLUMN).to_pylist()]
    for slug in sorted(set(slugs)):
        yield slug, table.take(pa.array([i for i, s in enumerate(slugs) if s == slug], type=pa.int64()))
