"""The `datasets` builder for Derm-T2IM (GeneratorBasedBuilder), installed as `dermt2im_hub.dataset_builder`.

`DermT2IM` (configs synthetic, a1111, real) is used directly, since `datasets` >= 4 runs no loading scripts;
`dermt2im build-dataset` (`dermt2im_hub.dataset.export.build_dataset`) runs it and writes parquet shards plus a
dataset card that `load_dataset(DIR)` reads natively. The logic lives in `dermt2im_hub.dataset.builder`.

    from dermt2im_hub.dataset_builder import DermT2IM
"""

from dermt2im_hub.dataset.builder import DermT2IM, DermT2IMConfig, builder_options
from dermt2im_hub.dataset.sources import MemorizationError

__all__ = ["DermT2IM", "DermT2IMConfig", "MemorizationError", "builder_options"]
