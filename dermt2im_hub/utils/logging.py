"""One logger namespace for the package, configured once by the CLI."""

from __future__ import annotations

import logging
import os
import sys

_ROOT = "dermt2im_hub"


def get_logger(name: str) -> logging.Logger:
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (pytest and notebooks swap it after configuration)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property ignores the assignment
        pass


def configure_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("DERMT2IM_LOG_LEVEL", "INFO")
    logger = logging.getLogger(_ROOT)
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
