"""One image through the data stage: safe decode, conversion to 8-bit RGB, resize + centre-crop, hair
removal, atomic PNG write. Runs inside worker processes, so it takes and returns plain picklable values.

Decoding is defensive: only still-image formats are accepted, Pillow's decompression-bomb limit is enforced
(its warning counts as a refusal too), truncated files are errors (Pillow's LOAD_TRUNCATED_IMAGES stays off),
and every conversion (CMYK, 16-bit, grayscale, alpha, palette, EXIF rotation, multi-frame) is reported back.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dermt2im_hub.data.config import HairConfig
from dermt2im_hub.data.hair import hair_fraction, remove_hair
from dermt2im_hub.utils.files import atomic_write_bytes, encode_png, sha256_bytes, sha256_file

ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")  # JPEG also opens multi-picture (MPO) files
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageProblem(Exception):
    """An input image that cannot be used; `reason` is a key of dermt2im_hub.data.report.REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageTask:
    """Everything a worker needs for one image (paths as strings: picklable, no shared state)."""

    image_id: str
    input_path: str
    output_path: str
    size: int
    hair_removal: bool
    hair: HairConfig = field(default_factory=HairConfig)
    min_side: int = 128
    max_image_pixels: int | None = None
    png_compress_level: int = 3


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None):
    """Pillow's decompression-bomb limit for the duration of a block (Pillow keeps it in a module global)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _os_error_reason(exc: OSError) -> str:
    # Pillow says "image file is truncated" (pixel data cut) or "Truncated File Read" (header cut)
    return "truncated" if "truncated" in str(exc).lower() else "unreadable"


def _open_checked(path: str, max_pixels: int | None) -> Image.Image:
    Image.init()  # register every format plugin, or `formats=` fails on one not loaded yet (e.g. MPO)
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x the limit; a refused bomb must not depend on that margin
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with pixel_limit(max_pixels):
                return Image.open(path, formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageProblem("decompression_bomb", str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise ImageProblem("unreadable", f"not a {'/'.join(ALLOWED_FORMATS)} image") from exc
        except OSError as exc:
            raise ImageProblem(_os_error_reason(exc), str(exc)) from exc


def _to_rgb(image: Image.Image, conversions: list[tuple[str, str]]) -> Image.Image:
    """8-bit RGB, recording each conversion as (reason, detail)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "CMYK":
        conversions.append(("cmyk_to_rgb", "CMYK -> RGB"))
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(image, dtype=np.float64)
        if samples.min(initial=0) < 0:
            raise ImageProblem("unsupported_mode", f"{mode} image with negative samples has no range to scale from")
        largest = samples.max(initial=0)
        # 32-bit samples ("I") beyond 16 bits use the int32 range: scaling them by 65535 saturated most pixels
        peak = float(2**31 - 1) if largest > 65535 else 65535.0 if largest > 255 or mode.startswith("I;16") else 255.0
        eight_bit = np.clip(samples * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        conversions.append(("16bit_to_8bit", f"{mode} scaled by 255/{peak:g}"))
        conversions.append(("grayscale_to_rgb", "one channel -> RGB"))
        return Image.fromarray(eight_bit, "L").convert("RGB")
    if mode == "F":
        raise ImageProblem("unsupported_mode", "floating-point samples have no fixed range to scale from")
    if mode in ("L", "1"):
        conversions.append(("grayscale_to_rgb", f"{mode} -> RGB"))
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        conversions.append(("alpha_flattened", f"{mode} composited onto black"))
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        converted = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageProblem("unsupported_mode", f"cannot convert {mode} to RGB: {exc}") from exc
    conversions.append(("palette_to_rgb", f"{mode} -> RGB"))
    return converted


def load_rgb(path: str, size: int, min_side: int, max_pixels: int | None) -> tuple[Image.Image, tuple[int, int],
                                                                                     list[tuple[str, str]]]:
    """Decode `path` into an upright 8-bit RGB image; returns (image, original (w, h), conversions)."""
    conversions: list[tuple[str, str]] = []
    image = _open_checked(path, max_pixels)
    with image:
        original = image.size
        if min(original) < min_side:
            raise ImageProblem("too_small", f"{original[0]}x{original[1]} is below min_side {min_side}")
        if getattr(image, "n_frames", 1) > 1:
            conversions.append(("first_frame_only", f"{image.n_frames} frames"))
        # JPEG can decode at 1/2, 1/4, 1/8 scale straight away; never below the output size
        image.draft(None, (size, size))
        try:
            image.load()
        except OSError as exc:
            raise ImageProblem(_os_error_reason(exc), str(exc)) from exc
        orientation = image.getexif().get(0x0112, 1)
        upright = ImageOps.exif_transpose(image) if orientation not in (None, 1) else image
        if upright is not image:
            conversions.append(("exif_rotated", f"EXIF orientation {orientation}"))
            if orientation in (5, 6, 7, 8):  # quarter turns: the upright image is the stored one transposed
                original = (original[1], original[0])
        rgb = _to_rgb(upright, conversions)
        rgb.load()
    return rgb, original, conversions


def process_image(task: ImageTask) -> dict[str, Any]:
    """Run one task; returns a JSON-safe result row (`ok` False with `reason`/`detail` for a bad input).

    Problems with the input are results; a failure to write the output (disk full, permissions) raises.
    """
    result: dict[str, Any] = {"image_id": task.image_id, "ok": False, "conversions": []}
    try:
        result["source_sha256"] = sha256_file(task.input_path)
        rgb, original, conversions = load_rgb(task.input_path, task.size, task.min_side, task.max_image_pixels)
    except ImageProblem as exc:
        return {**result, "reason": exc.reason, "detail": exc.detail}
    except FileNotFoundError as exc:
        return {**result, "reason": "missing_image", "detail": str(exc)}
    except (OSError, ValueError, MemoryError) as exc:
        return {**result, "reason": "unreadable", "detail": f"{type(exc).__name__}: {exc}"}
    result["conversions"] = conversions
    result["original_width"], result["original_height"] = original
    square = ImageOps.fit(rgb, (task.size, task.size), method=Image.Resampling.LANCZOS)
    pixels = np.asarray(square)
    if task.hair_removal:
        removal = remove_hair(pixels, task.hair)
        pixels = removal.image
        result["hair_fraction_before"] = round(removal.fraction_before, 6)
        result["hair_fraction_after"] = round(removal.fraction_after, 6)
    data = encode_png(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), compress_level=task.png_compress_level)
    atomic_write_bytes(task.output_path, data)
    result.update(ok=True, sha256=sha256_bytes(data), width=task.size, height=task.size)
    return result


def measure_hair_fraction(path: str | Path, config: HairConfig | None = None) -> float:
    """Hair fraction of an image file as the detector sees it (for checks on outputs)."""
    with Image.open(path) as image:
        return hair_fraction(np.asarray(image.convert("RGB")), config or HairConfig())
