"""Frames of a user's own footage (a video file or a folder of images) and its camera calibration.

Shared by ``pebal-bag from-video`` (writes a bag) and ``pebal-camera`` (publishes live); ROS-free
(numpy, OpenCV, PyYAML only).

* :func:`open_source` - a video OpenCV reads, or a folder of PNG/JPEG images in name order (other
  entries, such as a LICENSE or a calibration file beside the frames, are left out with a note: they are
  listed in :attr:`FrameSource.skipped` and logged; each image is read with
  :func:`~pebal_perception.image_conversion.read_image_file`, which checks its header before
  decoding). ``every`` keeps every N-th frame, ``size`` resizes; :meth:`FrameSource.frames` yields
  ``(source index, H x W x 3 uint8 BGR)``. All frames of a folder must have one size (unless resized).
* :func:`load_calibration` - a ``camera_calibration_parsers`` YAML file (``image_width``,
  ``image_height``, ``camera_name``, ``camera_matrix``, ``distortion_model``, ``distortion_coefficients``,
  ``rectification_matrix``, ``projection_matrix``); :meth:`Calibration.fields` gives the CameraInfo
  fields for an image size, the intrinsics scaled when the size differs from the calibrated one.

Every problem with the input raises :class:`FootageError`, one line ``PATH: what``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

DEFAULT_FOLDER_FPS = 10.0
IMAGE_FORMATS = ("png", "jpeg")
# Calibrated and used aspect ratios may differ this much (rounding of odd sizes), relatively.
ASPECT_TOLERANCE = 0.02
NOTE_LIMIT = 5  # skipped entries named in a note; the rest are counted

log = logging.getLogger("pebal.footage")


def wait_until(deadline: float, stop: Any) -> bool:
    """Sleeps until ``time.monotonic()`` reaches ``deadline`` in steps of at most 0.1 s, so that
    ``stop`` (a threading.Event) ends the wait at once; returns False when it was stopped."""
    import time

    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        stop.wait(min(left, 0.1))
    return False


class FootageError(Exception):
    """Unusable footage or calibration; the message is one line ``PATH: what``."""


def camera_info_topic(image_topic: str) -> str:
    """``camera_info`` next to an image topic (``/camera/image_raw`` -> ``/camera/camera_info``)."""
    if "/" not in image_topic:
        return "camera_info"
    return f"{image_topic.rsplit('/', 1)[0]}/camera_info"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resize(bgr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or bgr.shape[:2] == tuple(size):
        return bgr
    import cv2

    height, width = size
    shrink = width * height < bgr.shape[0] * bgr.shape[1]
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class FrameSource:
    """Frames of a video or an image folder; see :func:`open_source`."""

    def __init__(self, path: Path, kind: str, fps: float | None, source_count: int | None,
                 native_size: tuple[int, int], files: list[Path], every: int, size: tuple[int, int] | None,
                 skipped: list[str] | None = None):
        self.path, self.kind = path, kind
        self.skipped = list(skipped or [])  # a folder's entries that are not PNG/JPEG images ("name: why")
        self.native_fps = fps  # the video's own rate (None: a folder, or a video that gives none)
        self.source_count = source_count  # frames in the source (a video's count is OpenCV's estimate)
        self.native_size = native_size  # (height, width) of the first frame
        self.every = every
        self.size = tuple(size) if size is not None else native_size  # (height, width) of what is yielded
        self._files = files

    @property
    def count(self) -> int | None:
        """How many frames :meth:`frames` yields (for a video an estimate)."""
        if self.source_count is None:
            return None
        return math.ceil(self.source_count / self.every)

    def fps(self, override: float | None = None) -> float:
        """The source's frame rate: ``override``, else the video's own, else :data:`DEFAULT_FOLDER_FPS`."""
        return float(override or self.native_fps or DEFAULT_FOLDER_FPS)

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the frame in the source, BGR frame of :attr:`size`) of every ``every``-th frame."""
        if self.kind == "video":
            yield from self._video_frames()
        else:
            yield from self._folder_frames()

    def _video_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        capture = _open_capture(self.path)
        try:
            index = 0
            while True:
                if index % self.every == 0:
                    ok, frame = capture.read()
                else:
                    ok, frame = capture.grab(), None
                if not ok:
                    return
                if frame is not None:
                    yield index, _resize(_to_bgr(frame), self.size)
                index += 1
        finally:
            capture.release()

    def _folder_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(0, len(self._files), self.every):
            path = self._files[index]
            bgr = _read_image(path)
            if bgr.shape[:2] != self.native_size and self.size == self.native_size:
                raise FootageError(f"{path}: is {bgr.shape[1]}x{bgr.shape[0]}, the first image is "
                                   f"{self.native_size[1]}x{self.native_size[0]}; give --size WxH")
            yield index, _resize(bgr, self.size)


def _read_image(path: Path) -> np.ndarray:
    from pebal_perception.image_conversion import ImageRejected, read_image_file

    try:
        rgb = read_image_file(path)
    except ImageRejected as exc:
        raise FootageError(exc.message) from None
    except OSError as exc:
        raise FootageError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    return np.ascontiguousarray(rgb[..., ::-1])


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _open_capture(path: Path) -> Any:
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # an OpenCV without the logging utilities
        pass
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise FootageError(f"{path}: cannot be read as a video (OpenCV cannot open it)")
    return capture


def _folder_files(path: Path) -> tuple[list[Path], list[str]]:
    """The PNG/JPEG images of a folder in name order (told by their first bytes, not their names) and
    the entries left out (``"name: why"``): sub-folders, special files, other data (a LICENSE, a
    calibration YAML). Hidden entries are ignored; a folder without any image is an error."""
    from pebal_perception.image_conversion import sniff_format

    files, skipped = [], []
    for entry in sorted(os.listdir(path)):
        if entry.startswith("."):
            continue
        file = path / entry
        if not file.is_file():  # never opened: a FIFO would block, a device would stream
            skipped.append(f"{entry}: not a regular file")
            continue
        try:
            with open(file, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise FootageError(f"{file}: cannot read ({exc.strerror or _first_line(exc)})") from None
        kind = sniff_format(head)
        if kind not in IMAGE_FORMATS:
            skipped.append(f"{entry}: {kind} data" if kind else f"{entry}: not an image")
            continue
        files.append(file)
    if not files:
        raise FootageError(f"{path}: the folder holds no PNG or JPEG images")
    if skipped:
        log.warning("note: %s: left out %d entr%s that %s not PNG/JPEG images: %s", path, len(skipped),
                    "y" if len(skipped) == 1 else "ies", "is" if len(skipped) == 1 else "are",
                    "; ".join(skipped[:NOTE_LIMIT]) + ("; ..." if len(skipped) > NOTE_LIMIT else ""))
    return files, skipped


def open_source(path: str | os.PathLike, every: int = 1, size: tuple[int, int] | None = None) -> FrameSource:
    """A video file or a folder of images. ``every``: keep frames 0, N, 2N, ...; ``size``: (height, width)
    to resize to. Reads the first frame (size, readability); raises :class:`FootageError`."""
    path = Path(path)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not path.exists():
        raise FootageError(f"{path}: no such file or folder")
    if path.is_dir():
        files, skipped = _folder_files(path)
        first = _read_image(files[0])
        return FrameSource(path, "folder", None, len(files), first.shape[:2], files, every, size, skipped)
    import cv2

    capture = _open_capture(path)
    try:
        ok, first = capture.read()
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if not ok or first is None:
        raise FootageError(f"{path}: the video has no frames OpenCV can decode")
    fps = float(fps) if math.isfinite(fps) and 0 < fps < 1000 else None
    return FrameSource(path, "video", fps, count if count > 0 else None, first.shape[:2], [], every, size)


# ---------------------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    """A camera calibration (``camera_calibration_parsers`` YAML) for ``width`` x ``height`` images."""

    path: Path
    camera_name: str
    width: int
    height: int
    k: tuple[float, ...]  # 3x3 row-major
    distortion_model: str
    d: tuple[float, ...]
    r: tuple[float, ...]  # 3x3
    p: tuple[float, ...]  # 3x4

    def fields(self, size: tuple[int, int]) -> dict[str, Any]:
        """The CameraInfo fields (``height, width, distortion_model, d, k, r, p``) for images of
        ``size`` = (height, width): K and P scaled by the ratio of the sizes (as a resize scales them);
        distortion and rectification do not change. An aspect ratio other than the calibrated one is
        a :class:`FootageError`."""
        height, width = size
        sx, sy = width / self.width, height / self.height
        if abs(sx / sy - 1.0) > ASPECT_TOLERANCE:
            raise FootageError(f"{self.path}: the calibration is for {self.width}x{self.height} images, the frames "
                               f"are {width}x{height} (another aspect ratio)")
        k = list(self.k)
        k[0], k[1], k[2] = k[0] * sx, k[1] * sx, k[2] * sx
        k[3], k[4], k[5] = k[3] * sy, k[4] * sy, k[5] * sy
        p = list(self.p)
        p[0], p[1], p[2], p[3] = p[0] * sx, p[1] * sx, p[2] * sx, p[3] * sx
        p[4], p[5], p[6], p[7] = p[4] * sy, p[5] * sy, p[6] * sy, p[7] * sy
        return {"height": int(height), "width": int(width), "distortion_model": self.distortion_model,
                "d": list(self.d), "k": k, "r": list(self.r), "p": p}


def _matrix(doc: dict, key: str, rows: int | None, cols: int | None, path: Path) -> tuple[float, ...]:
    value = doc.get(key)
    if not isinstance(value, dict) or "data" not in value:
        raise FootageError(f"{path}: {key} must be a mapping with rows, cols and data")
    data = value["data"]
    try:
        r, c = int(value.get("rows", rows or 1)), int(value.get("cols", len(data) if isinstance(data, list) else 0))
        numbers = tuple(float(v) for v in data)
    except (TypeError, ValueError):
        raise FootageError(f"{path}: {key}: rows, cols and data must be numbers") from None
    if (rows is not None and r != rows) or (cols is not None and c != cols) or len(numbers) != r * c:
        want = f"{rows}x{cols}" if rows is not None and cols is not None else "rows x cols"
        raise FootageError(f"{path}: {key} must be {want} with rows*cols numbers (got {r}x{c}, {len(numbers)} numbers)")
    if not all(math.isfinite(v) for v in numbers):
        raise FootageError(f"{path}: {key} holds a value that is not finite")
    return numbers


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Reads a ``camera_calibration_parsers`` YAML file; raises :class:`FootageError` (one line)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FootageError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FootageError(f"{path}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise FootageError(f"{path}: not a camera calibration (expected a mapping with image_width, "
                           "image_height, camera_matrix, ...)")
    sizes = []
    for key in ("image_width", "image_height"):
        value = doc.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise FootageError(f"{path}: {key} must be a positive integer, got {value!r}")
        sizes.append(value)
    k = _matrix(doc, "camera_matrix", 3, 3, path)
    if k[0] <= 0 or k[4] <= 0:
        raise FootageError(f"{path}: camera_matrix has non-positive focal lengths ({k[0]}, {k[4]})")
    d = _matrix(doc, "distortion_coefficients", None, None, path) if "distortion_coefficients" in doc else ()
    r = _matrix(doc, "rectification_matrix", 3, 3, path) if "rectification_matrix" in doc \
        else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    p = _matrix(doc, "projection_matrix", 3, 4, path) if "projection_matrix" in doc \
        else (k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0)
    model = doc.get("distortion_model", "plumb_bob" if d else "")
    if not isinstance(model, str):
        raise FootageError(f"{path}: distortion_model must be a string, got {model!r}")
    name = doc.get("camera_name", "")
    return Calibration(path=path, camera_name=str(name) if name is not None else "", width=sizes[0],
                       height=sizes[1], k=k, distortion_model=model, d=d, r=r, p=p)
