"""`DermT2IM`: the `datasets` GeneratorBasedBuilder for Derm-T2IM-style skin-lesion image sets.

`datasets` >= 4 no longer runs loading scripts, so this builder is used directly (and by
`dermt2im build-dataset`, which exports its output as a Hub-ready parquet folder):

    from dermt2im_hub.dataset_builder import DermT2IM     # the repository's dataset_builder/ entry point
    builder = DermT2IM(config_name="a1111", data_dir="../shared/data/dermt2im-sample")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")            # or builder.as_streaming_dataset(split="train")

Configs: `synthetic` (a generation output folder), `a1111` (any folder of AUTOMATIC1111 PNGs) and `real`
(a preprocessed image folder; its split column gives the splits). Several folders: `inputs=[dir1, dir2]`.
Rows, features and checks live beside it in `dermt2im_hub.dataset` (sources, schema), shared with the export;
`builder_options(DatasetConfig)` gives the builder the options a dataset config sets. Images are stored without
their metadata (EXIF, XMP, comments, PNG text but A1111's `parameters`; pixels untouched).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.builder import Key

from dermt2im_hub.dataset.config import A1111, CONFIG_NAMES, REAL, SYNTHETIC, DatasetConfig
from dermt2im_hub.dataset.schema import STRING_LIST, clean_row, discover_qa_columns, features_for
from dermt2im_hub.dataset.sources import MemorizationError, Scan, ScanOptions, input_folders, scan_inputs
from dermt2im_hub.records import METADATA_NAME
from dermt2im_hub.utils.files import read_jsonl

CITATION = """\
@article{farooq2024dermt2im,
  title={Derm-T2IM: Harnessing Synthetic Skin Lesion Data via Stable Diffusion Models for Enhanced Skin
         Disease Classification using ViT and CNN},
  author={Farooq, Muhammad Ali and Yao, Wang and Schukat, Michael and Little, Mark A and Corcoran, Peter},
  journal={arXiv preprint arXiv:2401.05159},
  year={2024}
}
"""

_DESCRIPTIONS = {
    SYNTHETIC: "Synthetic benign/malignant skin-lesion images from `dermt2im generate`, with per-image "
               "generation provenance and quality/privacy scores.",
    A1111: "Skin-lesion images generated with the AUTOMATIC1111 web UI, with the generation parameters read "
           "from each PNG's infotext.",
    REAL: "Preprocessed real dermoscopy images (hair removed, resized) with leakage-safe train/validation/test "
          "splits, for hybrid classifier training.",
}


@dataclass
class DermT2IMConfig(datasets.BuilderConfig):
    """A builder config plus where the images come from and how they are split and checked."""

    inputs: tuple[str, ...] = ()
    split_by: str = "none"
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    include_rejected: bool = False
    verify_pixels: bool = False
    allow_memorized: bool = False
    include_mem_nearest_id: bool = False

    def input_paths(self) -> list[Path]:
        paths = list(self.inputs) or ([self.data_dir] if self.data_dir else [])
        if not paths:
            raise ValueError(f"the {self.name} config needs its image folder(s): pass data_dir= or inputs=")
        return input_folders(paths)

    def scan_options(self) -> ScanOptions:
        return ScanOptions(split_by=self.split_by, split_fractions=tuple(self.split_fractions),
                           include_rejected=self.include_rejected, verify_pixels=self.verify_pixels,
                           include_mem_nearest_id=self.include_mem_nearest_id)


# DermT2IMConfig's own options (beyond datasets.BuilderConfig's name, data_dir ...) that come from where the
# builder runs, not from the dataset config
RUN_OPTIONS = frozenset({"inputs"})


def builder_option_names() -> list[str]:
    """The options DermT2IMConfig adds to datasets.BuilderConfig, in declaration order."""
    inherited = {f.name for f in dataclasses.fields(datasets.BuilderConfig)}
    return [f.name for f in dataclasses.fields(DermT2IMConfig) if f.name not in inherited]


def builder_options(config: DatasetConfig) -> dict[str, Any]:
    """The builder options a dataset config sets: every DermT2IMConfig option but the inputs, read from the
    DatasetConfig field of the same name (a builder option the dataset config lacks is an error, so a new
    option cannot be silently left at its default)."""
    names = [name for name in builder_option_names() if name not in RUN_OPTIONS]
    missing = [name for name in names if not hasattr(config, name)]
    if missing:
        raise AttributeError(f"DatasetConfig has no field for the builder option(s) {', '.join(missing)}")
    return {"config_name": config.config_name, **{name: getattr(config, name) for name in names}}


def input_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """A cheap fingerprint (names, sizes, modification times) of the input folders, used as the builder's
    cache hash so a changed folder is never served from a stale cache."""
    digest = hashlib.sha256()
    for root in paths:
        digest.update(os.path.abspath(root).encode() + b"\0")
        for current, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                try:
                    stat = os.stat(os.path.join(current, name))
                except OSError:  # a link loop or a vanished file: the build skips and reports it
                    continue
                # os.fsencode: a name that is not UTF-8 is hashed by its bytes instead of stopping the build
                digest.update(os.fsencode(f"{current}/{name}") + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class DermT2IM(datasets.GeneratorBasedBuilder):
    """Derm-T2IM images with label (ClassLabel benign/malignant) and generation/QA/provenance metadata."""

    BUILDER_CONFIG_CLASS = DermT2IMConfig
    BUILDER_CONFIGS = [DermT2IMConfig(name=name, description=_DESCRIPTIONS[name]) for name in CONFIG_NAMES]
    DEFAULT_CONFIG_NAME = SYNTHETIC
    VERSION = datasets.Version("1.0.0")
    # Rows are whole PNGs (~0.3-0.8 MB at 512 px): 100 per parquet row group keeps memory and row groups small.
    DEFAULT_WRITER_BATCH_SIZE = 100

    def __init__(self, *args, inputs: Sequence[str | os.PathLike] | None = None, **kwargs):
        if inputs is not None:
            kwargs["inputs"] = tuple(str(p) for p in inputs)
        if "split_fractions" in kwargs:
            kwargs["split_fractions"] = tuple(kwargs["split_fractions"])
        paths = kwargs.get("inputs") or ([kwargs["data_dir"]] if kwargs.get("data_dir") else [])
        if paths and kwargs.get("hash") is None:
            kwargs["hash"] = input_fingerprint(paths)
        self.scan: Scan | None = None
        super().__init__(*args, **kwargs)

    def _qa_columns(self) -> dict[str, str] | None:
        """QA columns of a synthetic build: discovered from the inputs' metadata rows (all of them, so the
        schema does not depend on which rows the filters keep)."""
        if self.config.name != SYNTHETIC or not (self.config.inputs or self.config.data_dir):
            return None
        rows = []
        for folder in self.config.input_paths():
            rows.extend(read_jsonl(folder / METADATA_NAME))
        return discover_qa_columns((r for r in rows if isinstance(r, dict)),
                                   include_training_references=self.config.include_mem_nearest_id)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.config.description or _DESCRIPTIONS.get(self.config.name, ""),
            features=features_for(self.config.name, self._qa_columns()),
            homepage="https://arxiv.org/abs/2401.05159",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager):
        scan = scan_inputs(self.config.name, self.config.input_paths(), self.config.scan_options())
        self.scan = scan
        if not scan.entries:
            raise ValueError(f"no usable images in {', '.join(scan.report.inputs)}: {scan.report.describe()}")
        flagged = scan.flagged()
        if flagged and not self.config.allow_memorized:
            shown = ", ".join(e.name for e in flagged[:5])
            raise MemorizationError(
                f"{len(flagged)} image(s) were flagged by the memorization audit (mem_flagged: true), e.g. "
                f"{shown}. They may reproduce training images; remove them, or pass allow_memorized "
                "(--allow-memorized) after reviewing the audit report.")
        return [datasets.SplitGenerator(name=split, gen_kwargs={"entries": entries})
                for split, entries in scan.by_split().items()]

    def _generate_examples(self, entries):
        columns = column_kinds(self.info.features)  # the declared schema decides what each row holds
        for index, entry in enumerate(entries):
            # the file without its metadata (EXIF, XMP, comments, PNG text but `parameters`), pixels untouched:
            # the bytes the scan hashed into the sha256 column; the stored path is the name inside the input folder
            row = {"image": {"bytes": entry.read_stored(), "path": entry.name}, "label": entry.label}
            row.update(clean_row(entry.values, columns))
            yield Key(0, index), row


def column_kinds(features: datasets.Features) -> dict[str, str]:
    """Column name -> schema kind for every feature but image and label."""
    return {name: STRING_LIST if isinstance(feature, datasets.List) else feature.dtype
            for name, feature in features.items() if name not in ("image", "label")}
