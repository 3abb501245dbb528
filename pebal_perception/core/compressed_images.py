"""Encoded images (``sensor_msgs/CompressedImage`` data and image files), ROS-free: only PNG and JPEG,
recognised by format string and magic bytes; their size is read from the header and checked
(:func:`~pebal_perception.core.image_conversion.check_image_shape`) before anything is decoded, so a
decompression bomb costs nothing. Every problem raises
:class:`~pebal_perception.core.image_conversion.ImageRejected` with a counted reason."""
from __future__ import annotations

import os
import re
import zlib
from typing import Any

import cv2
import numpy as np

from pebal_perception.core.image_conversion import (DEFAULT_MAX_PIXELS, ImageRejected, byte_view, check_image_shape,
                                                    check_max_pixels)

def parse_compressed_format(format: Any) -> tuple[str | None, str | None, str | None]:  # noqa: A002
    """``sensor_msgs/CompressedImage.format`` -> (original encoding, codec, compressed encoding).

    Liberal: ``"jpeg"`` -> (None, "jpeg", None); ``"rgb8; jpeg compressed bgr8"`` -> ("rgb8", "jpeg",
    "bgr8"); ``"16UC1; compressedDepth png"`` -> ("16UC1", "compresseddepth png", None). Unknown parts
    are None; codec is lower-case ("jpg" is reported as "jpeg").
    """
    if not isinstance(format, str):
        return None, None, None
    text = format.strip()
    original = None
    if ";" in text:
        original, text = (part.strip() for part in text.split(";", 1))
        original = original or None
    words = text.lower().split()
    codec = compressed = None
    if words:
        if words[0] == "compresseddepth":
            codec = " ".join(words[:2])
        else:
            codec = "jpeg" if words[0] == "jpg" else words[0]
        if "compressed" in words:
            index = words.index("compressed")
            if index + 1 < len(words):
                compressed = text.split()[index + 1]
    return original, codec, compressed


#: The codecs :func:`compressed_to_rgb` decodes: what cameras and ``image_transport``'s ``compressed``
#: plugin publish (``sensor_msgs/CompressedImage``: "CODEC is one of [jpeg, png]").
ACCEPTED_CODECS = ("jpeg", "png")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
# Magic bytes of the formats OpenCV could decode but we refuse (their headers are never parsed).
_OTHER_MAGIC = (
    (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "bigtiff"), (b"MM\x00+", "bigtiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg 2000"), (b"\xff\x4f\xff\x51", "jpeg 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jpeg xl"), (b"\xff\x0a", "jpeg xl"),
    (b"\x76\x2f\x31\x01", "openexr"), (b"#?RADIANCE", "radiance hdr"), (b"#?RGBE", "radiance hdr"),
    (b"\x59\xa6\x6a\x95", "sun raster"), (b"qoif", "qoi"), (b"\x00\x00\x01\x00", "ico"),
    (b"8BPS", "psd"), (b"gimp xcf", "xcf"),
)
_PNM_MAGIC = re.compile(rb"P[1-7fF][\s#]")
_JPEG_FILL = re.compile(rb"\xff+")
# Segments before the frame header of a real JPEG: about ten (APPn, DQT, DHT, ...); EXIF/XMP/ICC/MPF
# metadata adds a few dozen at most. A bound keeps a payload of stand-alone markers from costing CPU.
_JPEG_MAX_SEGMENTS = 1024
# JPEG frame header markers: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_format(data: Any) -> str | None:
    """The image format of an encoded payload from its magic bytes ("png", "jpeg", "gif", "webp", ...),
    or None when it is none we know."""
    head = bytes(byte_view(data)[:16])
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return "heif/avif"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    if _PNM_MAGIC.match(head):
        return "pnm"
    return None


def _png_dimensions(head: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG standard puts first; decode_failed otherwise."""
    if len(head) < 33:
        raise ImageRejected("decode_failed", f"PNG data ends inside its header ({len(head)} bytes)")
    length, kind = int.from_bytes(head[8:12], "big"), head[12:16]
    if kind != b"IHDR" or length != 13:
        raise ImageRejected("decode_failed", f"PNG does not start with a 13-byte IHDR chunk (found {kind!r}, "
                                             f"length {length})")
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        raise ImageRejected("decode_failed", "PNG header (IHDR) fails its CRC check")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ImageRejected("decode_failed", f"PNG header gives an invalid size {width}x{height} (WxH)")
    return width, height


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the first frame header (SOFn: baseline, progressive, lossless, ...), found by
    walking the marker segments from SOI as libjpeg does; decode_failed when there is none before the
    scan or the segments do not parse."""
    pos, size = 2, len(data)
    for _ in range(_JPEG_MAX_SEGMENTS):
        pos = data.find(b"\xff", pos)  # libjpeg skips (and warns about) garbage before a marker
        if pos < 0:
            break
        pos = _JPEG_FILL.match(data, pos).end()  # any number of 0xFF fill bytes
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x00:
            continue  # a stuffed 0xFF 0x00 pair is not a marker
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # TEM, RSTn: no length
        if marker < 0xC0:
            raise ImageRejected("decode_failed", f"JPEG has a reserved marker 0xFF{marker:02X} before its frame header")
        if marker in (0xD8, 0xD9, 0xDA):
            what = {0xD8: "a second start of image", 0xD9: "the end of image", 0xDA: "the start of scan"}[marker]
            raise ImageRejected("decode_failed", f"JPEG has {what} before any frame header")
        if pos + 2 > size:
            break
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            raise ImageRejected("decode_failed", f"JPEG segment 0xFF{marker:02X} has an invalid length {length}")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 7 > size:
                raise ImageRejected("decode_failed", f"JPEG frame header 0xFF{marker:02X} is truncated")
            height = int.from_bytes(data[pos + 3:pos + 5], "big")
            width = int.from_bytes(data[pos + 5:pos + 7], "big")
            if width == 0 or height == 0:  # height 0 = defined later by a DNL marker, which libjpeg refuses
                raise ImageRejected("decode_failed", f"JPEG frame header gives a size of {width}x{height} (WxH)")
            return width, height
        pos += length
    else:
        raise ImageRejected("decode_failed", f"JPEG has no frame header in its first {_JPEG_MAX_SEGMENTS} segments")
    raise ImageRejected("decode_failed", "JPEG data ends before its frame header")


def encoded_image_info(data: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
                       what: str = "compressed image") -> tuple[str, int, int]:
    """``(codec, width, height)`` of a PNG or JPEG payload, read from its header without decoding it.

    This is the one check that runs before anything is decoded (:func:`decode_image`, hence the node's
    ``image/compressed`` and ``pebal-detect``). The format comes from the magic bytes: PNG (the IHDR
    chunk, CRC-checked) and JPEG (the first SOFn frame header: baseline, extended, progressive, lossless)
    are parsed; any other known format is ``unsupported_format`` (GIF, WebP, JPEG 2000, TIFF, BMP, ...: their
    decoders can be made to allocate gigabytes from a few bytes), anything unknown or a header that does
    not parse is ``decode_failed``, and a size over ``max_pixels`` or outside the aspect-ratio limit
    (:data:`MAX_ASPECT_RATIO`) is ``too_large`` / ``bad_aspect_ratio``.
    """
    max_pixels = check_max_pixels(max_pixels)
    buf = byte_view(data)
    if buf.size == 0:
        raise ImageRejected("empty", f"{what} has no data")
    kind = sniff_format(buf)
    if kind == "png":
        width, height = _png_dimensions(bytes(buf[:33]))
    elif kind == "jpeg":
        width, height = _jpeg_dimensions(buf.tobytes())
    elif kind is not None:
        raise ImageRejected("unsupported_format", f"{what} is {kind} data; only "
                                                  f"{' and '.join(ACCEPTED_CODECS)} are decoded")
    else:
        raise ImageRejected("decode_failed", f"{what} ({buf.size} bytes) is neither PNG nor JPEG data "
                                             f"(starts with {bytes(buf[:8])!r})")
    check_image_shape(width, height, max_pixels, what)
    return kind, width, height


def decode_image(data: Any, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "compressed image") -> np.ndarray:
    """A PNG or JPEG payload -> a fresh ``H x W x 3`` uint8 RGB array, after :func:`encoded_image_info`.

    ``cv2.imdecode`` decodes colour, 8-bit (grey is replicated, alpha dropped, 16-bit PNGs keep their high
    byte, JPEG EXIF orientation is applied); the decoded size is checked against the limits again.
    Raises only :class:`ImageRejected`.
    """
    buf = byte_view(data)
    encoded_image_info(buf, max_pixels, what)
    try:
        if hasattr(cv2, "IMREAD_COLOR_RGB"):
            image, swap = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB), False
        else:  # OpenCV < 4.10
            image, swap = cv2.imdecode(buf, cv2.IMREAD_COLOR), True
    except MemoryError:
        raise ImageRejected("too_large", f"out of memory decoding the {what}") from None
    except cv2.error as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ImageRejected("decode_failed", f"OpenCV cannot decode the {what} ({buf.size} bytes): {first}") from None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ImageRejected("decode_failed", f"OpenCV cannot decode the {what} ({buf.size} bytes)")
    check_image_shape(image.shape[1], image.shape[0], max_pixels, f"decoded {what}")
    if image.dtype != np.uint8:  # not produced by IMREAD_COLOR*, but never hand back anything else
        raise ImageRejected("decode_failed", f"decoded image has dtype {image.dtype}, expected uint8")
    if swap:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def read_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A PNG or JPEG file -> a fresh ``H x W x 3`` uint8 RGB array (:func:`decode_image` on its bytes).

    A file larger than any PNG/JPEG of ``max_pixels`` could reasonably be (8 bytes per pixel plus 64 MiB of
    metadata) is ``too_large`` without being read. Raises :class:`ImageRejected` (its message names the
    file) for every bad file and ``OSError`` when it cannot be read at all.
    """
    max_pixels = check_max_pixels(max_pixels)
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        limit = 8 * max_pixels + (64 << 20)
        if size > limit:
            raise ImageRejected("too_large", f"{path}: {size} bytes is larger than an image of max_pixels="
                                             f"{max_pixels} can be ({limit} bytes)")
        data = f.read(limit + 1)
    try:
        return decode_image(data, max_pixels, what="image")
    except ImageRejected as exc:
        raise ImageRejected(exc.reason, f"{path}: {exc.message}") from None


def compressed_to_rgb(format: Any, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:  # noqa: A002
    """The fields of a ``sensor_msgs/CompressedImage`` -> a fresh ``H x W x 3`` uint8 RGB array.

    Only what cameras publish is decoded: ``format`` must name ``jpeg`` (or ``jpg``) or ``png`` as its
    codec (``"jpeg"``, ``"bgr8; jpeg compressed bgr8"``, ...) or be empty (``image_transport`` then
    assumes jpeg); anything else, including ``compressedDepth``, is ``unsupported_format``, and so is a
    payload whose magic bytes are another format whatever ``format`` says. Between PNG and JPEG the magic
    bytes decide (as OpenCV and ``image_transport`` do). The header is checked against ``max_pixels`` and
    :data:`MAX_ASPECT_RATIO` before decoding (:func:`encoded_image_info`). As with the official
    cv_bridge, the decoded pixels are taken to be in OpenCV's BGR order whatever ``format`` says
    (``image_transport`` always compresses BGR).
    """
    max_pixels = check_max_pixels(max_pixels)
    if not isinstance(format, str):
        raise ImageRejected("invalid_field", f"format must be a string, got {type(format).__name__}")
    _, codec, _ = parse_compressed_format(format)
    if codec is not None and codec not in ACCEPTED_CODECS:
        kind = "compressedDepth" if codec.startswith("compresseddepth") else codec
        raise ImageRejected("unsupported_format", f"compressed format {format!r} ({kind}) is not supported; "
                                                  f"only {' and '.join(ACCEPTED_CODECS)} are decoded")
    return decode_image(data, max_pixels)
