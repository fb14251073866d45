"""Remove metadata from encoded images without touching their pixels (for anything that gets published).

Image files carry text beside their pixels: EXIF (GPS position, camera serial, dates), XMP, JPEG comments and
PNG text chunks, where a clinic's software may write names and record numbers. `strip_metadata` removes it
at the container level, so the pixel data is never decoded or re-encoded:

- **PNG**: the chunks that affect decoding or colour are kept (IHDR, PLTE, IDAT, IEND, tRNS, gAMA, cHRM,
  sRGB, iCCP, sBIT, pHYs, cICP, mDCv, cLLi, and the APNG frame chunks acTL, fcTL, fdAT); text chunks (tEXt,
  zTXt, iTXt) are kept only when their keyword is in `keep_text` (the AUTOMATIC1111 `parameters` chunk where a
  dataset uses it); everything else (eXIf, tIME, bKGD, private chunks, ...) and any bytes after IEND go.
  Chunks are found by walking their length fields; no chunk is decompressed.
- **JPEG**: APP0 (JFIF), APP2 (ICC profile) and APP14 (Adobe, which says how to convert the colours) and the
  coding segments are kept; APP1 (EXIF, XMP), other APP0/APP2/APP14 payloads, APP3-APP13, APP15, COM and
  stray bytes between segments go. From the first SOS (start of scan) on, the scans and the tables between
  progressive scans are copied unchanged; COM/APPn segments between scans and any bytes after EOI (a phone's
  appended video or second picture) go.
- **Any other format** Pillow reads (TIFF, WebP, GIF, BMP, ...) is decoded once and written as a PNG with no
  metadata, and only if reading that PNG back gives exactly the same pixels; multi-frame images and modes
  PNG cannot hold exactly raise `UnsupportedImage`.

EXIF orientation is the one metadata fact that changes what a decoder shows (`datasets` and
`PIL.ImageOps.exif_transpose` rotate by it), so when a removed EXIF/XMP block said 2-8, a minimal EXIF block
holding only that orientation takes its place. An image whose metadata is all kept comes back as the very
same bytes object, so the common case (our own PNGs, which carry only `parameters`) costs one walk over the
chunk headers.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8\xff"

# PNG chunks that decide how the pixels decode or how their colours are meant (kept whatever the caller asks).
PNG_KEPT_CHUNKS = frozenset({
    b"IHDR", b"PLTE", b"IDAT", b"IEND",                    # critical
    b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
    b"cICP", b"mDCv", b"cLLi",                             # colour space / HDR (PNG third edition)
    b"acTL", b"fcTL", b"fdAT",                             # APNG frames: pixel data of the later frames
})
PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Chunks and text keywords Pillow reads an orientation from (eXIf; "exif", ImageMagick's raw profile, XMP).
_PNG_ORIENTATION_KEYWORDS = frozenset({b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp"})

# JPEG markers: the APPn segments kept when their payload starts with the given signature.
_JPEG_KEPT_APP = {0xE0: (b"JFIF\0",), 0xE2: (b"ICC_PROFILE\0",), 0xEE: (b"Adobe",)}
_JPEG_SOS, _JPEG_EOI, _JPEG_SOI, _JPEG_COM, _JPEG_APP1 = 0xDA, 0xD9, 0xD8, 0xFE, 0xE1
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field

ORIENTATION_TAG = 0x0112
# PNG modes a PNG file holds exactly (what a lossless re-encode may produce).
_PNG_EXACT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})


class MetadataError(ValueError):
    """The image's metadata cannot be removed without changing its pixels."""


class MalformedImage(MetadataError):
    """The PNG or JPEG container structure is broken (truncated chunk, bad length, no image data)."""


class UnsupportedImage(MetadataError):
    """A format that is neither PNG nor JPEG and cannot be re-encoded as a PNG with the same pixels."""


@dataclass(frozen=True)
class Stripped:
    """The image bytes without metadata, and what was taken out (chunk or segment names, no content)."""

    data: bytes
    removed: tuple[str, ...] = ()
    reencoded: bool = False
    orientation: int | None = None  # the EXIF orientation (2-8) written back in a minimal EXIF block

    @property
    def changed(self) -> bool:
        return bool(self.removed) or self.reencoded


def strip_metadata(data: bytes, keep_text: Collection[str] = ()) -> Stripped:
    """`data` without metadata (see the module doc); `keep_text` names PNG text keywords to keep (e.g.
    `("parameters",)`). Raises MalformedImage for a broken PNG/JPEG structure and UnsupportedImage for
    another format that cannot be re-encoded exactly."""
    if data.startswith(PNG_SIGNATURE):
        return strip_png(data, keep_text)
    if data.startswith(JPEG_START):
        return strip_jpeg(data)
    return reencode_as_png(data)


# ------------------------------------------------------------------------------------------ PNG


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _chunk_name(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalpha() else repr(kind)


def strip_png(data: bytes, keep_text: Collection[str] = ()) -> Stripped:
    """A PNG without the chunks that are neither needed to decode it nor text chunks named in `keep_text`."""
    kept_keywords = tuple(k.encode("latin-1") + b"\0" for k in keep_text)
    view = memoryview(data)
    pieces: list[memoryview] = [view[:len(PNG_SIGNATURE)]]
    removed: list[str] = []
    orientation_source = False
    first_idat = None  # index in pieces: where a minimal eXIf chunk goes (it must precede the image data)
    pos, size = len(PNG_SIGNATURE), len(data)
    while True:
        if pos + 12 > size:
            raise MalformedImage("PNG ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise MalformedImage(f"PNG chunk {_chunk_name(kind)} runs past the end of the file")
        if not kind.isalpha():
            raise MalformedImage(f"PNG chunk type {kind!r} is not four letters")
        if kind in PNG_KEPT_CHUNKS:
            keep = True
        elif kind in PNG_TEXT_CHUNKS:
            keyword_end = data.find(b"\0", pos + 8, min(pos + 8 + 80, end))
            keyword = data[pos + 8:keyword_end + 1] if keyword_end >= 0 else b""
            keep = bool(keyword) and keyword in kept_keywords
            orientation_source |= not keep and keyword[:-1] in _PNG_ORIENTATION_KEYWORDS
        else:
            keep = False
            orientation_source |= kind == b"eXIf"
        if keep:
            if kind == b"IDAT" and first_idat is None:
                first_idat = len(pieces)
            pieces.append(view[pos:end])
        elif _chunk_name(kind) not in removed:
            removed.append(_chunk_name(kind))
        pos = end
        if kind == b"IEND":
            break
    if pos < size:
        removed.append("data after IEND")
    if not removed:
        return Stripped(data)
    orientation = _pillow_orientation(data) if orientation_source else None
    if orientation is not None and first_idat is not None:
        pieces.insert(first_idat, memoryview(png_chunk(b"eXIf", orientation_exif(orientation))))
    return Stripped(b"".join(pieces), tuple(removed), orientation=orientation)


# ------------------------------------------------------------------------------------------ JPEG


def _jpeg_marker_name(marker: int) -> str:
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    return "COM" if marker == _JPEG_COM else f"marker 0x{marker:02X}"


def _keep_jpeg_segment(marker: int, payload: memoryview) -> bool:
    if marker == _JPEG_COM:
        return False
    if 0xE0 <= marker <= 0xEF:
        return any(bytes(payload[:len(sig)]) == sig for sig in _JPEG_KEPT_APP.get(marker, ()))
    return True


def strip_jpeg(data: bytes) -> Stripped:
    """A JPEG without APP1/APP3-13/APP15/COM segments (and APP0/APP2/APP14 payloads other than JFIF, ICC
    profile and Adobe); everything from the first SOS on is copied unchanged."""
    view = memoryview(data)
    pieces: list[memoryview] = [view[:2]]
    removed: list[str] = []
    orientation_source = False
    jfif_first = None  # whether the first segment is a kept APP0 (a minimal EXIF block goes after it)
    pos, size = 2, len(data)

    def note(name: str) -> None:
        if name not in removed:
            removed.append(name)

    while True:
        if pos >= size:
            raise MalformedImage("JPEG ends before its image data (no SOS segment)")
        if data[pos] != 0xFF:  # bytes between segments: decoders skip them, so they go
            following = data.find(b"\xff", pos)
            if following < 0:
                raise MalformedImage("JPEG ends before its image data (no SOS segment)")
            note("bytes between segments")
            pos = following
            continue
        start = pos
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            raise MalformedImage("JPEG ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker == 0x00:  # a stuffed 0xFF00 outside a scan is stray data
            note("bytes between segments")
            continue
        if marker in _JPEG_STANDALONE:
            pieces.append(view[start:pos])
            continue
        if marker in (_JPEG_SOI, _JPEG_EOI):
            raise MalformedImage(f"JPEG has marker 0x{marker:02X} before its image data")
        if pos + 2 > size:
            raise MalformedImage("JPEG ends inside a segment header")
        length = (data[pos] << 8) | data[pos + 1]
        end = pos + length
        if length < 2 or end > size:
            raise MalformedImage(f"JPEG segment {_jpeg_marker_name(marker)} runs past the end of the file")
        if marker == _JPEG_SOS:
            pieces.extend(_jpeg_scans(data, start, note))
            break
        keep = _keep_jpeg_segment(marker, view[pos + 2:end])
        if jfif_first is None:
            jfif_first = keep and marker == 0xE0
        if keep:
            pieces.append(view[start:end])
        else:
            orientation_source |= marker == _JPEG_APP1
            note(_jpeg_marker_name(marker))
        pos = end
    if not removed:
        return Stripped(data)
    orientation = _pillow_orientation(data) if orientation_source else None
    if orientation is not None:
        exif = b"Exif\0\0" + orientation_exif(orientation)
        pieces.insert(2 if jfif_first else 1, memoryview(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif))
    return Stripped(b"".join(pieces), tuple(removed), orientation=orientation)


def _jpeg_scans(data: bytes, start: int, note) -> list[memoryview]:
    """The image data from the first SOS to EOI: entropy-coded scans and the table segments between
    progressive scans are kept; COM/APPn segments between scans and anything after EOI (a phone's appended
    video or second picture) go. A file without EOI keeps everything (a truncated image still decodes)."""
    view, size = memoryview(data), len(data)
    pieces: list[memoryview] = []
    kept_from, pos = start, start
    while True:
        found = data.find(b"\xff", pos)
        if found < 0 or found + 1 >= size:
            pieces.append(view[kept_from:])
            return pieces
        marker = data[found + 1]
        if marker == 0x00 or marker == 0xFF or marker in _JPEG_STANDALONE:  # stuffing, fill, RSTn: scan data
            pos = found + 1
            continue
        if marker == _JPEG_EOI:
            pieces.append(view[kept_from:found + 2])
            if found + 2 < size:
                note("data after EOI")
            return pieces
        if found + 4 > size:
            pieces.append(view[kept_from:])
            return pieces
        end = found + 2 + ((data[found + 2] << 8) | data[found + 3])
        if marker == _JPEG_COM or 0xE0 <= marker <= 0xEF:
            pieces.append(view[kept_from:found])
            note(_jpeg_marker_name(marker))
            kept_from = end
        pos = max(end, found + 2)  # DHT/DQT/SOS/DRI between progressive scans are kept as they are


# ------------------------------------------------------------------------------------------ other formats


def reencode_as_png(data: bytes) -> Stripped:
    """Any other single-frame image Pillow reads, as a PNG without metadata (ICC profile, transparency and
    orientation kept); refused unless the PNG decodes to exactly the same pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or "unknown"
            if getattr(image, "n_frames", 1) > 1:
                raise UnsupportedImage(f"{fmt} with {image.n_frames} frames: only single images are stored")
            image.load()
            # read after load(), as `datasets` does before it applies the orientation (Pillow finds no TIFF
            # orientation then, so a TIFF is shown unrotated there and stays so)
            orientation = _orientation_of(image)
            if image.mode not in _PNG_EXACT_MODES:
                raise UnsupportedImage(f"{fmt} image in mode {image.mode}, which a PNG cannot hold exactly")
            options: dict = {"format": "PNG", "compress_level": 6}
            if icc := image.info.get("icc_profile"):
                options["icc_profile"] = icc
            if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
                options["transparency"] = image.info["transparency"]
            if orientation is not None:
                options["exif"] = orientation_exif(orientation)
            buffer = io.BytesIO()
            image.save(buffer, **options)
            encoded = buffer.getvalue()
            with Image.open(io.BytesIO(encoded)) as back:
                back.load()
                same = back.mode == image.mode and back.size == image.size and back.tobytes() == image.tobytes()
                if same and image.mode == "P":
                    same = back.convert("RGBA").tobytes() == image.convert("RGBA").tobytes()
    except MetadataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"cannot read the image to re-encode it: {type(exc).__name__}: {exc}"[:300]) from None
    if not same:
        raise UnsupportedImage(f"{fmt} image in mode {image.mode} does not survive a PNG round trip exactly")
    return Stripped(encoded, (f"{fmt} container",), reencoded=True, orientation=orientation)


# ------------------------------------------------------------------------------------------ orientation


def orientation_exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block (no "Exif\\0\\0" prefix) holding only the Orientation tag."""
    return (b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", ORIENTATION_TAG, 3, 1, orientation, 0) + struct.pack(">I", 0))


def _orientation_of(image) -> int | None:
    """The orientation a decoder applies (2-8), as Pillow reads it (EXIF, else XMP), or None."""
    try:
        value = image.getexif().get(ORIENTATION_TAG)
    except Exception:  # a damaged EXIF block: Pillow's own readers give up on it too
        return None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


def _pillow_orientation(data: bytes) -> int | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return _orientation_of(image)
    except Exception:  # the caller has checked the image; an unreadable EXIF block means no orientation
        return None
