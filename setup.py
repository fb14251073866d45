"""What pyproject.toml cannot say: the repository keeps `dataset_builder/` and `model_cards/` at its top level
(the layout is fixed), and they are installed inside the package, as `dermt2im_hub.dataset_builder` and
`dermt2im_hub.model_cards`, so no generic top-level names reach site-packages (dermt2im_hub/_layout.py serves the
same names from a source checkout). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

MAPPED = {"dermt2im_hub.dataset_builder": "dataset_builder", "dermt2im_hub.model_cards": "model_cards"}

setup(packages=find_packages(include=["dermt2im_hub", "dermt2im_hub.*"]) + sorted(MAPPED), package_dir=MAPPED)
