"""dermt2im-hub: the Derm-T2IM study (arXiv 2401.05159) as a Hugging Face-native package.

Stages (each a subpackage; a stage never imports a later one):
data -> training -> generation -> quality -> dataset -> evaluation -> pipeline,
plus the shared layers `config`, `manifest`, `labels`, `records`, `hub`, `testing` and `cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dermt2im-hub")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from dermt2im_hub import _layout

_layout.install()  # dermt2im_hub.dataset_builder / .model_cards from a source checkout's top-level folders

__all__ = ["__version__"]
