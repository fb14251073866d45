"""`dermt2im_hub.dataset_builder` and `dermt2im_hub.model_cards` in a source checkout.

The repository keeps `dataset_builder/` and `model_cards/` at its top level (the layout is fixed). An installed
wheel carries them inside the package (setup.py maps them there), so no generic top-level names reach
site-packages. In a source checkout (PYTHONPATH, or an editable install whose mapping points at another tree)
this finder serves the two names from the folders beside this package, so the same imports work everywhere.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MAPPED = ("dataset_builder", "model_cards")


class SourceLayoutFinder(importlib.abc.MetaPathFinder):
    """Finds `dermt2im_hub.<name>` for the MAPPED names in the repository folder `<name>/`."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != PACKAGE_DIR.name or name not in MAPPED:
            return None
        folder = self.root / name
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def install() -> None:
    """Serve the mapped folders from this source tree when the package does not hold them itself."""
    root = PACKAGE_DIR.parent
    if (PACKAGE_DIR / MAPPED[1]).is_dir() or not (root / MAPPED[1] / "__init__.py").is_file():
        return  # an installed wheel, or a tree without the folders
    if not any(isinstance(finder, SourceLayoutFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceLayoutFinder(root))
