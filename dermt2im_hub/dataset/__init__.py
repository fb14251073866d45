"""Stage 5: the `datasets` dataset (parquet export, A1111 import) behind `load_dataset("dermt2im")`.

    from dermt2im_hub.dataset import DatasetConfig, build_dataset, push_dataset
    result = build_dataset(["outputs/generated"], "dermt2im", DatasetConfig(config_name="synthetic"))
    push_dataset("dermt2im", "my-org/dermt2im")            # private; refuses memorization-flagged rows

The rows come from the `DermT2IM` GeneratorBasedBuilder (`builder`, re-exported by the repository's
`dataset_builder/` entry point); `sources` reads the three kinds
of input (synthetic, a1111, real), `schema` declares the columns, `export` writes the Hub-ready folder and
`stats` computes the card's facts. Names below are imported lazily (the `datasets` import is slow).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DatasetConfig": "config", "BuildResult": "export", "build_dataset": "export", "push_dataset": "export",
    "check_publishable": "export", "write_card": "export", "make_builder": "export",
    "MemorizationError": "sources", "ScanReport": "sources", "scan_inputs": "sources",
    "features_for": "schema", "read_rows": "stats", "DermT2IM": "builder", "builder_options": "builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
