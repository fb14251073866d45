"""One image through the data stage: conversions and refusals (made in tmp_path), and hair removal on the real
hair-sample and segmentation-mask images in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from dermt2im_hub.config import ConfigError
from dermt2im_hub.data.config import HairConfig
from dermt2im_hub.data.hair import line_kernel, remove_hair
from dermt2im_hub.data.images import ImageTask, process_image

# Hair removal must not repaint the lesion: inside the ground-truth lesion mask, the mean grey level may move by
# at most this many levels (of 255) and at most this share of lesion pixels may be inpainted. Measured on the
# two masked ISIC images: 0.7 / 1.2 grey levels and 5% / 10% of lesion pixels.
MAX_LESION_MEAN_SHIFT = 3.0
MAX_LESION_SHARE_INPAINTED = 0.15


def _fit(path: Path, size: int = 512, method=Image.Resampling.LANCZOS) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.fit(image.convert("RGB") if image.mode != "L" else image, (size, size), method=method)


def _run(tmp_path: Path, source: Path, **overrides) -> dict:
    options = dict(size=64, hair_removal=False, min_side=32)
    options.update(overrides)
    return process_image(ImageTask(source.stem, str(source), str(tmp_path / "out" / f"{source.stem}.png"), **options))


def _gradient(height=96, width=128) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------- conversions and refusals


def _make(tmp_path: Path, kind: str) -> Path:
    rgb = _gradient()
    path = tmp_path / f"{kind}.png"
    if kind == "cmyk":
        path = path.with_suffix(".jpg")
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    elif kind == "gray16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)  # full 16-bit range
    elif kind == "gray":
        Image.fromarray(rgb[..., 0], "L").save(path)
    elif kind == "rgba":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:, :10] = 0  # a transparent strip
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif kind == "palette":
        Image.fromarray(rgb).quantize(16).save(path)
    elif kind == "float":
        path = path.with_suffix(".tif")
        Image.fromarray(rgb[..., 0].astype(np.float32) / 255.0, "F").save(path)
    elif kind == "tiny":
        Image.fromarray(rgb[:20, :24]).save(path)
    elif kind == "truncated":
        path = path.with_suffix(".jpg")
        Image.fromarray(rgb).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:1000])  # header intact, pixel data cut
    elif kind == "truncated_header":
        path = path.with_suffix(".jpg")
        Image.fromarray(rgb).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:400])  # cut inside the JPEG header
    elif kind == "garbage":
        path = path.with_suffix(".jpg")
        path.write_bytes(b"definitely not a jpeg" * 50)
    elif kind == "rotated":
        path = path.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
        Image.fromarray(rgb).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("kind,conversions", [
    ("cmyk", {"cmyk_to_rgb"}),
    ("gray16", {"16bit_to_8bit", "grayscale_to_rgb"}),
    ("gray", {"grayscale_to_rgb"}),
    ("rgba", {"alpha_flattened"}),
    ("palette", {"palette_to_rgb"}),
    ("rotated", {"exif_rotated"}),
])
def test_odd_images_are_converted_with_a_reason(tmp_path, kind, conversions):
    result = _run(tmp_path, _make(tmp_path, kind))
    assert result["ok"], result
    assert {reason for reason, _ in result["conversions"]} == conversions
    with Image.open(tmp_path / "out" / f"{kind}.png") as out:
        assert out.mode == "RGB" and out.size == (64, 64)
        pixels = np.asarray(out)
    if kind == "gray16":  # scaled, not clipped: the 16-bit ramp keeps its full 8-bit range
        assert pixels.max() > 200 and pixels.min() < 40
    if kind == "rotated":  # upright is 96 wide, 128 high
        assert (result["original_width"], result["original_height"]) == (96, 128)


@pytest.mark.parametrize("kind,reason", [
    ("tiny", "too_small"), ("truncated", "truncated"), ("truncated_header", "truncated"), ("garbage", "unreadable"), ("float", "unsupported_mode"),
])
def test_unusable_images_are_skipped_with_a_reason(tmp_path, kind, reason):
    result = _run(tmp_path, _make(tmp_path, kind))
    assert not result["ok"] and result["reason"] == reason, result
    assert result["detail"]
    assert not (tmp_path / "out").exists()  # nothing written for a refused input


def test_decompression_bombs_are_refused(tmp_path):
    path = _make(tmp_path, "gray")  # 128 x 96 = 12,288 pixels
    result = _run(tmp_path, path, max_image_pixels=10_000)  # between 1x and 2x: Pillow would only warn
    assert result["reason"] == "decompression_bomb"
    assert _run(tmp_path, path, max_image_pixels=2_000)["reason"] == "decompression_bomb"
    assert Image.MAX_IMAGE_PIXELS != 10_000  # the limit is restored afterwards
    assert _run(tmp_path, path, max_image_pixels=20_000)["ok"]


def test_outputs_are_resized_centre_cropped_and_hashed(tmp_path):
    result = _run(tmp_path, _make(tmp_path, "cmyk"), size=48)
    out = tmp_path / "out" / "cmyk.png"
    import hashlib

    assert result["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (result["width"], result["height"], result["original_width"], result["original_height"]) == (48, 48,
                                                                                                        128, 96)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic write left no temp file


# ---------------------------------------------------------------- hair removal


def test_line_kernels_are_one_pixel_lines():
    assert line_kernel(7, 0).sum() == 7 and line_kernel(7, 90)[:, 3].sum() == 7
    assert line_kernel(7, 45).trace() == 7 or np.fliplr(line_kernel(7, 45)).trace() == 7
    with pytest.raises(ConfigError):
        HairConfig(threshold=300).validate()


def test_hair_fraction_drops_on_the_hair_sample(shared_data):
    folder = shared_data / "hair-sample"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    paths = sorted(folder.rglob("*.jpg"))
    assert len(paths) == 8
    before, after = [], []
    for path in paths:
        removal = remove_hair(np.asarray(_fit(path)))
        before.append(removal.fraction_before)
        after.append(removal.fraction_after)
        assert removal.fraction_before > 0.01, path.name  # every image has visible hair
        assert removal.fraction_after <= 0.25 * removal.fraction_before, (path.name, removal)
    assert np.mean(before) > 0.05 and np.mean(after) < 0.01


def test_hair_removal_preserves_the_lesion(shared_data):
    folder = shared_data / "isic-seg-masks"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    for image_id in ("ISIC_0000193", "ISIC_0000494"):
        rgb = np.asarray(_fit(folder / "images" / f"{image_id}.jpg"))
        lesion = np.asarray(_fit(folder / "masks" / f"{image_id}_segmentation.png",
                                 method=Image.Resampling.NEAREST)) > 127
        assert 0.05 < lesion.mean() < 0.9
        removal = remove_hair(rgb)
        gray_before = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(float)
        gray_after = cv2.cvtColor(removal.image, cv2.COLOR_RGB2GRAY).astype(float)
        shift = abs(gray_before[lesion].mean() - gray_after[lesion].mean())
        inpainted = ((removal.mask > 0) & lesion).sum() / lesion.sum()
        assert shift < MAX_LESION_MEAN_SHIFT, (image_id, shift)
        assert inpainted < MAX_LESION_SHARE_INPAINTED, (image_id, inpainted)
