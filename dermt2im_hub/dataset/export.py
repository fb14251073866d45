"""`build_dataset`: run the DermT2IM builder and write a Hub-ready folder that `load_dataset` reads natively.

    DIR/data/<config>/[<sampler>/]<split>-NNNNN-of-NNNNN.parquet   image bytes as on disk minus their metadata
    DIR/data/<config>/sample_grid.png                            (no pixel re-encode); layout: dataset.layout
    DIR/README.md        dataset card with a `configs:` block (the config, and one per sampler), from the manifest
    DIR/manifest.json    stage build_dataset; extra.card = the card's facts

The builder writes the rows itself (`download_and_prepare(file_format="arrow")` into a staging folder), so it
is the one source of truth for features and rows; the staged rows are then written as parquet shards split by
sampler (dataset.layout), which replace the old ones only when the build succeeded. The same inputs give
byte-identical parquet files. A push (`push_dataset`) puts everything of the config under `data/<config>/` of the
repo and merges the repo's card, so one dataset repo holds several configs.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.config import save_config
from dermt2im_hub.dataset.config import A1111, REAL, SYNTHETIC, DatasetConfig, parse_size
from dermt2im_hub.dataset.layout import Layout, sample_grid_path, subset_config_name, write_config_shards
from dermt2im_hub.dataset.stats import card_facts
from dermt2im_hub.hub.gate import BUILD_STAGING_DIR
from dermt2im_hub.manifest import MANIFEST_NAME, fingerprint, try_read_manifest, write_manifest

STAGE = "build_dataset"
STAGING_DIR = BUILD_STAGING_DIR  # the publishing gate refuses a folder that still holds it
CONFIG_NAME = "config.yaml"
DEFAULT_PRETTY_NAMES = {
    SYNTHETIC: "Derm-T2IM synthetic skin lesions",
    A1111: "Derm-T2IM skin lesions (AUTOMATIC1111 images)",
    REAL: "Derm-T2IM real dermoscopy (preprocessed)",
}


@dataclass
class BuildResult:
    output_dir: Path
    num_rows: int
    splits: dict[str, int]
    shards: list[str]
    report: dict[str, Any]
    card: Path | None = None
    pushed: Any = None
    messages: list[str] = field(default_factory=list)


def make_builder(config: DatasetConfig, inputs: Sequence[str | Path], cache_dir: str | Path | None = None):
    """A DermT2IM builder for `config` over `inputs` (what build_dataset runs; usable on its own)."""
    from dermt2im_hub.dataset.builder import DermT2IM, builder_options

    return DermT2IM(inputs=[str(Path(p)) for p in inputs], cache_dir=str(cache_dir) if cache_dir else None,
                    **builder_options(config))


def build_dataset(inputs: Sequence[str | Path], output_dir: str | Path, config: DatasetConfig | None = None, *,
                  progress: bool = True, api=None) -> BuildResult:
    """Build the dataset folder from `inputs` (see module doc); push it when `config.push_to_hub` is set."""
    config = config or DatasetConfig()
    config.validate()
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, [Path(p) for p in inputs])
    _check_input_stages([Path(p) for p in inputs], config.config_name)
    staging = output_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = _build(inputs, output_dir, staging, config, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.card = write_card(output_dir)
    if config.push_to_hub:
        result.pushed = push_dataset(output_dir, config.push_to_hub, private=not config.public,
                                     allow_memorized=config.allow_memorized, api=api)
    return result


def _build(inputs, output_dir: Path, staging: Path, config: DatasetConfig, progress: bool) -> BuildResult:
    """Run the build and leave manifest.json whatever happens (status complete, failed or interrupted)."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    outputs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    fingerprints = {f"input_{i}": {"path": str(Path(p).resolve()), "kind": "folder", "sha256": None}
                    for i, p in enumerate(inputs)}
    status = "failed"
    try:
        result = _build_rows(inputs, output_dir, staging, config, progress, outputs, extra, fingerprints)
        status = "complete"
        return result
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        extra.setdefault("elapsed_seconds", round(time.perf_counter() - clock, 3))
        write_manifest(output_dir, STAGE, config, outputs=outputs, started_at=started, status=status, extra=extra,
                       input_fingerprints=fingerprints)


def _build_rows(inputs, output_dir: Path, staging: Path, config: DatasetConfig, progress: bool,
                outputs: dict, extra: dict, fingerprints: dict) -> BuildResult:
    builder = make_builder(config, inputs, cache_dir=staging / "cache")
    max_shard_size = parse_size(config.max_shard_size)
    with _progress_bars(progress):
        builder.download_and_prepare(output_dir=str(staging / "rows"), file_format="arrow",
                                     max_shard_size=max_shard_size)
    scan = builder.scan
    fingerprints.update(_input_fingerprints(inputs, scan))
    layout = write_config_shards(_staged_shards(staging / "rows", builder.dataset_name), output_dir,
                                 config.config_name, builder.info.features, max_shard_size,
                                 builder._writer_batch_size)
    shards = layout.files
    grid = None
    if config.sample_grid_per_class:
        from dermt2im_hub.dataset.grid import render_sample_grid

        grid = render_sample_grid(scan.entries, output_dir / sample_grid_path(config.config_name),
                                  config.sample_grid_per_class)
    card = card_facts(output_dir, scan.report.summary(), config_name=config.config_name,
                      pretty_name=config.pretty_name or DEFAULT_PRETTY_NAMES[config.config_name],
                      license=config.license, source_datasets=list(config.source_datasets),
                      sample_grid=sample_grid_path(config.config_name) if grid else None,
                      allow_memorized=config.allow_memorized, inputs=input_records(inputs))
    card["dataset_info"] = dataset_info_yaml(builder.info.features, layout, output_dir)
    save_config(config, output_dir / CONFIG_NAME)
    outputs.update(num_rows=card["num_rows"], splits=card["splits"], per_class=card["per_class"], data_files=shards,
                   card="README.md", sample_grid=card["sample_grid"], config=CONFIG_NAME)
    extra.update(card=card, build_report=scan.report.summary())
    return BuildResult(output_dir, card["num_rows"], card["splits"], shards, scan.report.summary(),
                       messages=[scan.report.describe()])


def input_records(inputs) -> list[dict[str, Any]]:
    """What each input folder's own manifest recorded that the dataset card may repeat (the card is rendered
    from this build's manifest alone, so these facts are copied into it now): the stage that wrote the folder,
    a `generate` output's base-model hash and which file it is the sha256 of, and a `preprocess`
    output's source, image size and whether hair was removed. A folder without a manifest records nothing."""
    records = []
    for folder in inputs:
        manifest = try_read_manifest(folder) or {}
        extra = manifest.get("extra") if isinstance(manifest.get("extra"), dict) else {}
        card = extra.get("card") if isinstance(extra.get("card"), dict) else {}
        record: dict[str, Any] = {"input": Path(folder).name, "stage": manifest.get("stage")}
        if manifest.get("stage") == "generate" and isinstance(extra.get("base_model"), dict):
            base = extra["base_model"]
            record["base_model"] = {"sha256": base.get("sha256"), "hashed_file": base.get("hashed_file")}
        if manifest.get("stage") == "preprocess":
            record.update(source=card.get("source"), size=card.get("size"), hair_removal=card.get("hair_removal"))
        records.append(record)
    return records


def _input_fingerprints(inputs, scan) -> dict[str, Any]:
    """A stage output is identified by its manifest (cheap); any other folder by the hashes of the files this
    build admitted, which the scan already computed (no second pass over the images)."""
    fingerprints = {}
    for index, folder in enumerate(inputs):
        role = f"input_{index}"
        if (Path(folder) / MANIFEST_NAME).is_file():
            fingerprints[role] = fingerprint(folder)
        else:
            fingerprints[role] = {"path": str(Path(folder).resolve()), "kind": "folder",
                                  "sha256": scan.fingerprint(input_index=index)}
    return fingerprints


def _check_output_dir(output_dir: Path, inputs: list[Path]) -> None:
    """Refuse to write into an input folder or over another stage's output."""
    target = output_dir.resolve()
    for folder in inputs:
        if target == folder.resolve() or target.is_relative_to(folder.resolve()):
            raise ValueError(f"output {output_dir} is inside input {folder}: write the dataset elsewhere")
    manifest = try_read_manifest(output_dir)
    if manifest is not None and manifest.get("stage") != STAGE:
        raise ValueError(f"{output_dir} holds the output of stage {manifest.get('stage')!r}; choose an empty "
                         "folder or a previous build-dataset output")


# the stages whose folders each config reads (a folder without a manifest is taken as it is)
_INPUT_STAGES = {"synthetic": ("generate",), "a1111": ("generate",), "real": ("preprocess", "phantoms")}


def _check_input_stages(inputs: list[Path], config_name: str) -> None:
    """Refuse an input written by the wrong stage: real patient images must never go out labelled synthetic,
    and a generated folder read as `real` would only yield invalid rows."""
    for folder in inputs:
        stage = (try_read_manifest(folder) or {}).get("stage")
        if stage is None or stage in _INPUT_STAGES.get(config_name, ()):
            continue
        if stage in _INPUT_STAGES["real"]:
            what, hint = "real images", "build it with --config real"
        elif stage in _INPUT_STAGES["synthetic"]:
            what, hint = "generated images", "build it with --config synthetic"
        else:
            what, hint = "no image folder", ("give a generate output (--config synthetic), a folder of A1111 PNGs "
                                             "(a1111) or a preprocess output (real)")
        raise ValueError(f"input {folder} is a {stage!r} output ({what}), not {config_name} input: {hint}")


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    import datasets

    turn_off = not enabled and not datasets.are_progress_bars_disabled()
    if turn_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            datasets.enable_progress_bars()


def _staged_shards(staging: Path, dataset_name: str) -> dict[str, list[Path]]:
    """The builder's `NAME-SPLIT[-SSSSS-of-NNNNN].arrow` files per split, in shard order."""
    prefix = f"{dataset_name}-"
    by_split: dict[str, list[Path]] = {}
    for path in sorted(staging.glob(f"{prefix}*.arrow")):
        split = path.name[len(prefix):].split("-")[0].removesuffix(".arrow")
        by_split.setdefault(split, []).append(path)
    return by_split


def dataset_info_yaml(features, layout: Layout, folder: Path) -> list[dict[str, Any]]:
    """The card's `dataset_info` block (features, rows and bytes per split) as `Dataset.push_to_hub` writes it,
    one entry per Hub config (the whole config and each sampler subset; `datasets` checks the row counts when
    it loads a config, so a glob that reads too many or too few rows fails loudly).

    Besides documenting the schema, it matters for local folders: `datasets` caches `load_dataset(DIR)` under
    the folder name and the README's YAML, so a rebuilt folder whose YAML did not change would be served from
    the previous build's cache; the byte and row counts here change with the content."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    def info(counts) -> DatasetInfo:
        splits = SplitDict()
        for name, count in counts.items():
            splits.add(SplitInfo(name=name, num_bytes=count.num_bytes, num_examples=count.num_examples))
        return DatasetInfo(features=features, splits=splits,
                           download_size=sum((folder / p).stat().st_size for c in counts.values() for p in c.files),
                           dataset_size=sum(c.num_bytes for c in counts.values()))

    config_name = layout.config_name
    whole: dict[str, Any] = {}
    for subset_counts in layout.subsets.values():
        for split, count in subset_counts.items():
            total = whole.setdefault(split, type(count)())
            total.num_examples += count.num_examples
            total.num_bytes += count.num_bytes
            total.files.extend(count.files)
    infos = {config_name: info(whole)}
    for slug in sorted(s for s in layout.subsets if s is not None):
        infos[subset_config_name(config_name, slug)] = info(layout.subsets[slug])
    card_data = DatasetCardData()
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    block = card_data.to_dict()["dataset_info"]
    return block if isinstance(block, list) else [block]


def write_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """README.md (with the `configs:` block) from the folder's manifest, through the Hub layer's card builder,
    plus the `dataset_info` block (see dataset_info_yaml); `repo_id` makes the how-to-use snippet load from
    that repo."""
    from dermt2im_hub.hub.cards import render_card

    return render_card(folder, kind="dataset", repo_id=repo_id)


def check_publishable(folder: str | Path, repo_id: str, allow_memorized: bool = False,
                      allow_real_images: bool = False):
    """The publishing gate's decision on a finished build-dataset output (dermt2im_hub.hub.gate.review, the
    rules every push applies); raises ValueError when `folder` is no such output, PushError when a rule refuses
    it (rows flagged by the memorization audit without `allow_memorized`, real images without
    `allow_real_images` ...). Returns the gate's plan."""
    from dermt2im_hub.hub.gate import Permissions, review

    folder = Path(folder)
    if (try_read_manifest(folder) or {}).get("stage") != STAGE:
        raise ValueError(f"{folder} is not a build-dataset output (manifest.json stage {STAGE!r})")
    return review(folder, repo_id, "dataset", Permissions(allow_memorized=allow_memorized,
                                                         allow_real_images=allow_real_images))


def push_dataset(folder: str | Path, repo_id: str, *, private: bool = True, allow_memorized: bool = False,
                 allow_real_images: bool = False, api=None):
    """Push a built folder as a dataset repo (private unless asked) through the publishing gate; the local
    card is re-rendered for `repo_id` too, so its how-to-use snippet names the repo it went to."""
    from dermt2im_hub.hub import push_folder

    folder = Path(folder)
    check_publishable(folder, repo_id, allow_memorized=allow_memorized, allow_real_images=allow_real_images)
    write_card(folder, repo_id=repo_id)
    return push_folder(folder, repo_id, repo_type="dataset", private=private, api=api,
                       allow_memorized=allow_memorized, allow_real_images=allow_real_images,
                       commit_message=f"Upload dataset built by dermt2im build-dataset ({repo_id})")
