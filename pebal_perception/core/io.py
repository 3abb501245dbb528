"""File output that never leaves a half-written file behind: write a temp file beside, then rename."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Calls ``write(fileobj)`` on a temp file in the target folder and renames it over ``path``.

    The rename is atomic on POSIX, so readers (and a resumed run after a crash) only ever see the old
    file or the complete new one. The temp file is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)  # makes the rename itself durable (power loss, not just a crash)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


_TEMP_SUFFIX = ".tmp"


def temp_target_name(name: str) -> str | None:
    """The file name an :func:`atomic_write` temp file called ``name`` was to become (``.NAME.XXXX.tmp``
    -> ``NAME``), or None when ``name`` is not such a temp file. Lets callers clean up after writers
    that were killed mid-write."""
    if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
        return None
    target, dot, random_part = name[1:-len(_TEMP_SUFFIX)].rpartition(".")
    return target if dot and target and random_part else None


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, allow_nan=True), binary=False)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def encode_image(path: str | os.PathLike, rgb_or_gray: np.ndarray, jpeg_quality: int = 90) -> bytes:
    """Encodes an RGB (H x W x 3) or single-channel image for the file type ``path`` names."""
    ext = Path(path).suffix.lower()
    img = rgb_or_gray
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f"could not encode an image as {ext!r} for {path}")
    return buf.tobytes()


def atomic_save_image(path: str | os.PathLike, rgb_or_gray: np.ndarray, jpeg_quality: int = 90) -> Path:
    return atomic_write_bytes(path, encode_image(path, rgb_or_gray, jpeg_quality))


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as H x W x 3 uint8 RGB; raises ValueError naming the file if it cannot."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
