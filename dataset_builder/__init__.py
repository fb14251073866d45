"""The `datasets` builder for Derm-T2IM (GeneratorBasedBuilder) and its export to a Hub-ready parquet folder.

`DermT2IM` (configs synthetic, a1111, real) is used directly, since `datasets` >= 4 runs no loading scripts;
`dermt2im build-dataset` (`dermt2im_hub.dataset.export.build_dataset`) runs it and writes parquet shards plus a
dataset card that `load_dataset(DIR)` reads natively.
"""

from dataset_builder.dermt2im import DermT2IM, DermT2IMConfig, MemorizationError

__all__ = ["DermT2IM", "DermT2IMConfig", "MemorizationError"]
