"""Reading image files from untrusted folders: safe relative names, size limits and cheap integrity checks.

File names (from metadata.jsonl or a directory walk) and PNG metadata come from outside: a name must stay
inside its folder (`utils.files.safe_join`: no absolute paths, no `..`, no backslash, no symlink that leads
out), files and pixel counts are capped,
and a file Pillow cannot open or whose PNG chunk checksums fail is reported as corrupt, never stored. What
is stored is the file without its metadata (`utils.image_metadata`); `stored_text_keys` says which PNG text
chunks a config keeps.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dermt2im_hub.dataset.config import A1111, SYNTHETIC
from dermt2im_hub.generation.infotext import PARAMETERS_KEY, read_infotext

MAX_FILE_BYTES = 64 * 2**20
MAX_PIXELS = 8192 * 8192
MAX_INFOTEXT_CHARS = 65536
IMAGE_SUFFIXES = (".png",)


def stored_text_keys(config_name: str) -> tuple[str, ...]:
    """PNG text keywords the stored bytes keep: the A1111 `parameters` chunk where the config reads infotext
    (synthetic, a1111; it is also the `infotext` column), none for real images."""
    return (PARAMETERS_KEY,) if config_name in (SYNTHETIC, A1111) else ()


class CorruptImage(ValueError):
    """A file that is not a readable image (the message says why)."""


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    format: str
    infotext: str | None
    infotext_oversized: bool = False


def walk_images(root: Path, skip_dirs: frozenset[str] = frozenset()) -> Iterator[str]:
    """Relative POSIX names of the image files below `root`, sorted, hidden entries and `skip_dirs` left out,
    symlinked folders not followed."""
    for current, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip_dirs)
        rel_dir = Path(current).relative_to(root)
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            yield (rel_dir / name).as_posix()


def read_file_bytes(path: Path) -> bytes:
    """The file's bytes, refusing anything that is not a regular file or is larger than MAX_FILE_BYTES."""
    if not path.is_file():
        raise FileNotFoundError(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CorruptImage(f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
    return path.read_bytes()


def inspect_image(data: bytes, want_infotext: bool = True, verify_pixels: bool = False) -> ImageFacts:
    """Size, format and A1111 infotext of encoded image bytes; raises CorruptImage when Pillow cannot open
    them, a PNG checksum fails, the data is truncated or the image is implausibly large."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                fmt = image.format or "unknown"
                if width * height > MAX_PIXELS:
                    raise CorruptImage(f"{width}x{height} pixels is over the {MAX_PIXELS} pixel limit")
                # read_infotext may decode the image when the chunk sits after the pixel data, so it gets its
                # own handle; verify() must be the first call on a freshly opened one.
                infotext = read_infotext(image) if want_infotext else None
            with Image.open(io.BytesIO(data)) as image:
                if verify_pixels:
                    image.load()
                else:
                    image.verify()
    except CorruptImage:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, zlib.error, ...) for bad input
        raise CorruptImage(f"{type(exc).__name__}: {exc}"[:300]) from None
    oversized = infotext is not None and len(infotext) > MAX_INFOTEXT_CHARS
    return ImageFacts(width, height, fmt, None if oversized else infotext, oversized)
