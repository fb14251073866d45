"""The `datasets` builder entry point: `DermT2IM` (configs synthetic, a1111, real) and its config.

The builder's logic lives in the library (`dermt2im_hub.dataset.builder`); this module re-exports it so the
repository's `dataset_builder/` folder stays the place a reader looks for the builder. Installed, it is
`dermt2im_hub.dataset_builder.dermt2im` (no generic top-level `dataset_builder` package reaches site-packages).
"""

from dermt2im_hub.dataset.builder import DermT2IM, DermT2IMConfig, builder_options
from dermt2im_hub.dataset.sources import MemorizationError

__all__ = ["DermT2IM", "DermT2IMConfig", "MemorizationError", "builder_options"]
