"""Figures of the evaluation tools, written as files: one PNG per figure, atomically, tagged with the tool
that wrote it (:func:`png_text` reads the tag back without decoding the image)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from pebal_perception.core.io import atomic_write


def save_figure(path: Path, fig, software: str | None = None) -> None:
    """``fig`` (a matplotlib Figure) as a PNG at ``path``, atomically; ``software`` goes into the PNG's
    Software text (a tool that replaces only its own files checks it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": software} if software else None)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The text chunks a plot's tag is in come before the image data, within the first bytes of the file.
PNG_TEXT_BYTES = 1 << 20


def png_text(path: Path, keyword: str, limit: int = PNG_TEXT_BYTES) -> str | None:
    """The ``tEXt`` value of ``keyword`` in the PNG at ``path``, from the chunks before its image data
    within its first ``limit`` bytes; no image is decoded, whatever size its header claims. None when
    the keyword is not there or the file is not a well-formed PNG (another signature, a chunk cut short
    or with a wrong CRC) or cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    wanted, pos = keyword.encode("latin-1"), len(PNG_SIGNATURE)
    while pos + 12 <= len(data):  # length, type, data, CRC
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            return None
        body = data[pos + 8:end]
        if zlib.crc32(kind + body) != struct.unpack_from(">I", data, end)[0]:
            return None
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"tEXt":
            name, sep, value = body.partition(b"\0")
            if sep and name == wanted:
                return value.decode("latin-1")
        pos = end + 4
    return None
