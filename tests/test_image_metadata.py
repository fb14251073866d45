"""utils.image_metadata: metadata leaves PNG and JPEG files at the container level, pixels stay bit-identical."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from dermt2im_hub.utils.image_metadata import (
    ORIENTATION_TAG,
    MalformedImage,
    UnsupportedImage,
    orientation_exif,
    strip_metadata,
)

SECRET = "PATIENT Jane Roe MRN 5555"
SERIAL = "SN-CAM-0042-7731"
GPS_IFD = 0x8825


def picture(mode: str = "RGB", size: tuple[int, int] = (40, 24)) -> Image.Image:
    """A small image with distinct pixels everywhere (an orientation change or a lossy step would show)."""
    image = Image.new("RGB", size)
    image.putdata([(x * 6 % 256, y * 10 % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])])
    return image.convert(mode)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def private_exif(orientation: int | None = None) -> Image.Exif:
    """EXIF with GPS coordinates, a camera serial number, a description and (optionally) an orientation."""
    exif = Image.Exif()
    exif[0x010E] = SECRET                  # ImageDescription
    exif[0x010F] = "DermaCam"              # Make
    exif[0xA431] = SERIAL                  # BodySerialNumber
    if orientation is not None:
        exif[0x0112] = orientation
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (53.0, 16.0, 42.0), 3: "W", 4: (9.0, 3.0, 7.0)})
    return exif


def decoded(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


def shown(data: bytes) -> bytes:
    """The pixels as `datasets` shows them (it applies the EXIF orientation)."""
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).tobytes()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def jpeg_markers(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, first payload bytes) of each segment before the first SOS."""
    found, pos = [], 2
    while data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        found.append((data[pos + 1], data[pos + 4:pos + 4 + 14]))
        pos += 2 + length
    return found


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        kinds.append(kind)
        pos += 12 + length
    return kinds


# ------------------------------------------------------------------------------------------ JPEG


def private_jpeg(orientation: int | None = None) -> bytes:
    """A JPEG with JFIF, EXIF (GPS, serial), XMP, an ICC profile, a COM comment and APP3/APP13/APP15 text."""
    buffer = io.BytesIO()
    xmp = f'<x:xmpmeta><rdf:Description dc:creator="{SECRET}"/></x:xmpmeta>'.encode()
    picture().save(buffer, "JPEG", quality=90, exif=private_exif(orientation), icc_profile=srgb_icc(),
                   comment=SECRET.encode(), xmp=xmp)
    data = buffer.getvalue()
    extra = (segment(0xE3, b"META\0" + SECRET.encode()) + segment(0xED, b"Photoshop 3.0\0" + SECRET.encode())
             + segment(0xEF, SERIAL.encode()) + segment(0xE2, b"FPXR\0" + SECRET.encode()))
    return data[:2] + extra + data[2:]  # ahead of everything Pillow wrote


def test_jpeg_loses_exif_xmp_comments_and_app_text_but_keeps_pixels_icc_and_jfif():
    original = private_jpeg()
    assert SECRET.encode() in original and SERIAL.encode() in original
    stripped = strip_metadata(original)
    data = stripped.data
    assert SECRET.encode() not in data and SERIAL.encode() not in data and b"Exif\0\0" not in data
    assert decoded(data) == decoded(original)
    markers = jpeg_markers(data)
    assert all(marker not in (0xE1, 0xE3, 0xED, 0xEF, 0xFE) for marker, _ in markers), markers
    assert [m for m, payload in markers if m == 0xE2] and all(
        payload.startswith(b"ICC_PROFILE\0") for m, payload in markers if m == 0xE2)
    assert markers[0][0] == 0xE0 and markers[0][1].startswith(b"JFIF\0")
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["icc_profile"] == srgb_icc()
        assert not image.getexif() and "comment" not in image.info and "xmp" not in image.info
    assert set(stripped.removed) == {"APP1", "APP2", "APP3", "APP13", "APP15", "COM"}
    # everything from the start of scan on is copied byte for byte
    assert data[data.index(b"\xff\xda"):] == original[original.index(b"\xff\xda"):]


def test_jpeg_keeps_adobe_app14_and_its_colour_transform():
    buffer = io.BytesIO()
    picture("CMYK").save(buffer, "JPEG", quality=95, comment=SECRET.encode())  # Pillow writes APP14 Adobe for CMYK
    original = buffer.getvalue()
    data = strip_metadata(original).data
    assert SECRET.encode() not in data and (0xEE, b"Adobe") in [(m, p[:5]) for m, p in jpeg_markers(data)]
    assert decoded(data) == decoded(original)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_orientation_survives_as_a_minimal_exif_block(orientation):
    original = private_jpeg(orientation)
    stripped = strip_metadata(original)
    assert stripped.orientation == orientation and SERIAL.encode() not in stripped.data
    assert decoded(stripped.data) == decoded(original)
    assert shown(stripped.data) == shown(original), "the image must be shown the same way up"
    with Image.open(io.BytesIO(stripped.data)) as image:
        assert dict(image.getexif()) == {0x0112: orientation}


def test_clean_jpeg_comes_back_as_the_same_bytes():
    buffer = io.BytesIO()
    picture().save(buffer, "JPEG", quality=90)
    original = buffer.getvalue()
    stripped = strip_metadata(original)
    assert stripped.data is original and not stripped.changed


def test_broken_jpeg_is_malformed():
    with pytest.raises(MalformedImage):
        strip_metadata(b"\xff\xd8\xff\xe1\x00\x40Exif\0\0")  # segment runs past the end, no image data
    buffer = io.BytesIO()
    picture().save(buffer, "JPEG")
    data = buffer.getvalue()
    with pytest.raises(MalformedImage):
        strip_metadata(data[:data.index(b"\xff\xda")])  # no SOS


# ------------------------------------------------------------------------------------------ PNG


def private_png(infotext: str | None = "benign mole\nSteps: 20, Sampler: Euler, Seed: 1") -> bytes:
    """A PNG with `parameters`, a Comment tEXt, a zTXt, an XMP iTXt, eXIf (GPS), tIME, an ICC profile, a
    private chunk and bytes after IEND."""
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    info.add_text("Comment", SECRET)
    info.add_text("Author", SERIAL, zip=True)
    info.add_itxt("XML:com.adobe.xmp", f'<x:xmpmeta dc:creator="{SECRET}"/>')
    info.add(b"tIME", b"\x07\xe8\x01\x02\x03\x04\x05")
    info.add(b"prVt", SECRET.encode())
    buffer = io.BytesIO()
    picture().save(buffer, "PNG", pnginfo=info, exif=private_exif(), icc_profile=srgb_icc())
    return buffer.getvalue() + SECRET.encode()


def test_png_keeps_parameters_and_colour_chunks_and_nothing_else():
    original = private_png()
    assert SECRET.encode() in original
    stripped = strip_metadata(original, keep_text=("parameters",))
    data = stripped.data
    assert SECRET.encode() not in data and b"Author" not in data
    assert decoded(data) == decoded(original)
    assert png_chunks(data) == [b"IHDR", b"iCCP", b"tEXt", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["parameters"].startswith("benign mole") and image.info["icc_profile"] == srgb_icc()
        assert "Comment" not in image.info and "Author" not in image.info and not image.getexif()
    assert set(stripped.removed) == {"tEXt", "zTXt", "iTXt", "eXIf", "tIME", "prVt", "data after IEND"}


def test_png_parameters_go_too_when_the_config_does_not_use_infotext():
    data = strip_metadata(private_png(), keep_text=()).data
    assert b"parameters" not in data and png_chunks(data) == [b"IHDR", b"iCCP", b"IDAT", b"IEND"]
    assert decoded(data) == decoded(private_png())


def test_png_keeps_palette_and_transparency():
    image = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info, transparency=3)
    original = buffer.getvalue()
    data = strip_metadata(original).data
    assert SECRET.encode() not in data and {b"PLTE", b"tRNS"} <= set(png_chunks(data))
    assert decoded(data) == decoded(original)
    with Image.open(io.BytesIO(data)) as back, Image.open(io.BytesIO(original)) as front:
        assert back.convert("RGBA").tobytes() == front.convert("RGBA").tobytes()


def test_our_own_png_with_only_parameters_comes_back_as_the_same_bytes():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "malignant mole\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 9")
    buffer = io.BytesIO()
    picture().save(buffer, "PNG", pnginfo=info)
    original = buffer.getvalue()
    stripped = strip_metadata(original, keep_text=("parameters",))
    assert stripped.data is original and not stripped.changed


def test_png_orientation_survives_as_a_minimal_exif_chunk():
    buffer = io.BytesIO()
    picture().save(buffer, "PNG", exif=private_exif(orientation=6))
    original = buffer.getvalue()
    stripped = strip_metadata(original)
    assert SERIAL.encode() not in stripped.data and stripped.orientation == 6
    assert png_chunks(stripped.data) == [b"IHDR", b"eXIf", b"IDAT", b"IEND"]
    assert shown(stripped.data) == shown(original) and decoded(stripped.data) == decoded(original)


def test_png_orientation_from_xmp_alone_is_kept():
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", f'<x:xmpmeta tiff:Orientation="8" dc:creator="{SECRET}"/>')
    buffer = io.BytesIO()
    picture().save(buffer, "PNG", pnginfo=info)
    original = buffer.getvalue()
    stripped = strip_metadata(original)
    assert SECRET.encode() not in stripped.data and stripped.orientation == 8
    assert shown(stripped.data) == shown(original)


def test_broken_png_is_malformed():
    original = private_png()
    with pytest.raises(MalformedImage):
        strip_metadata(original[:60])
    signature_and_ihdr = original[:33]
    with pytest.raises(MalformedImage):
        strip_metadata(signature_and_ihdr + png_chunk(b"IDAT", b"x")[:-2])
    with pytest.raises(MalformedImage):
        strip_metadata(signature_and_ihdr + png_chunk(b"\x00\x01ab", b""))


# ------------------------------------------------------------------------------------------ other formats


def test_tiff_is_reencoded_as_a_png_with_the_same_pixels_and_no_metadata():
    buffer = io.BytesIO()
    picture().save(buffer, "TIFF", exif=private_exif(orientation=3), icc_profile=srgb_icc(),
                   description=SECRET)
    original = buffer.getvalue()
    assert SECRET.encode() in original
    stripped = strip_metadata(original)
    assert stripped.reencoded and stripped.data.startswith(b"\x89PNG") and SECRET.encode() not in stripped.data
    assert decoded(stripped.data) == decoded(original) and shown(stripped.data) == shown(original)
    with Image.open(io.BytesIO(stripped.data)) as image:
        assert image.info["icc_profile"] == srgb_icc()


@pytest.mark.parametrize("fmt, mode, options, orientation", [
    ("WEBP", "RGB", {"lossless": True, "exif": private_exif(orientation=6)}, 6),
    ("GIF", "P", {"comment": SECRET}, None),
])
def test_webp_lossless_and_gif_are_reencoded_exactly(fmt, mode, options, orientation):
    buffer = io.BytesIO()
    picture(mode).save(buffer, fmt, **options)
    original = buffer.getvalue()
    stripped = strip_metadata(original)
    assert stripped.reencoded and SECRET.encode() not in stripped.data and SERIAL.encode() not in stripped.data
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(stripped.data)) as b:
        assert a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()
    assert stripped.orientation == orientation and shown(stripped.data) == shown(original)


def test_formats_a_png_cannot_hold_exactly_are_refused():
    frames = [picture(), picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedImage, match="frames"):
        strip_metadata(buffer.getvalue())
    buffer = io.BytesIO()
    picture("CMYK").save(buffer, "TIFF")
    with pytest.raises(UnsupportedImage, match="CMYK"):
        strip_metadata(buffer.getvalue())
    with pytest.raises(UnsupportedImage):
        strip_metadata(b"not an image at all")


# ------------------------------------------------------------------------------------------ real samples


def test_real_dermoscopy_jpegs_lose_exif_and_keep_their_pixels(shared_data):
    """The promise: no EXIF leaves except, where the original said 2-8, a minimal block holding only the
    orientation (so the image is shown as before). Two of isic-binary-train's JPEGs (malignant/740.jpg and
    748.jpg) carry a 39 KB APP1 whose orientation is 6: they keep a 34-byte orientation-only block."""
    files = sorted(shared_data.glob("**/*.jpg"))
    if not files:
        pytest.skip("no JPEG samples under the shared data folder")
    with_exif = rotated = 0
    for path in files:
        original = path.read_bytes()
        stripped = strip_metadata(original)
        with_exif += "APP1" in stripped.removed
        header = stripped.data.split(b"\xff\xda", 1)[0]
        if stripped.orientation is None:
            assert b"Exif\0\0" not in header, path.name
        else:
            rotated += 1
            assert header.count(b"Exif\0\0") == 1, path.name
            assert b"Exif\0\0" + orientation_exif(stripped.orientation) in header, path.name
            with Image.open(io.BytesIO(stripped.data)) as image:
                assert dict(image.getexif()) == {ORIENTATION_TAG: stripped.orientation}, path.name
        assert decoded(stripped.data) == decoded(original), path.name
        assert shown(stripped.data) == shown(original), path.name
    assert with_exif > 0, "the ISIC samples include files with EXIF blocks"
    if (shared_data / "isic-binary-train").is_dir():
        assert rotated >= 2, "isic-binary-train's malignant/740.jpg and 748.jpg carry orientation 6"


def test_jpeg_segments_between_progressive_scans_and_data_after_eoi_go():
    """A COM segment between progressive scans and bytes after EOI (a phone's appended video or second
    picture) are dropped; the tables between scans stay, so the pixels are unchanged."""
    import io

    import numpy as np
    from PIL import Image

    from dermt2im_hub.utils.image_metadata import strip_metadata

    pixels = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    comment = b"PATIENT Jane Roe"
    tagged = (data[:second_scan] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
              + data[second_scan:] + b"MOTION-PHOTO-VIDEO-BYTES")
    stripped = strip_metadata(tagged)
    assert b"Jane Roe" not in stripped.data and b"MOTION-PHOTO" not in stripped.data
    assert set(stripped.removed) == {"COM", "data after EOI"}
    assert stripped.data == data  # exactly the file before the additions
    with Image.open(io.BytesIO(stripped.data)) as image:
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(data))))
