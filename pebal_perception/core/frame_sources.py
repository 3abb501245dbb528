"""Frames of a user's own footage (a video file, an image file or a folder of images) and its camera
calibration.

Shared by ``pebal-bag from-video`` (writes a bag) and ``pebal-camera`` (publishes live); ROS-free
(numpy, OpenCV, PyYAML only).

* :func:`open_source` - a video OpenCV reads, one PNG/JPEG image, or a folder of PNG/JPEG images in name
  order (other entries, such as a LICENSE or a calibration file beside the frames, are left out with a
  note: they are listed in :attr:`FrameSource.skipped` and logged; each image is read with
  :func:`~pebal_perception.core.image_conversion.read_image_file`, which checks its header before
  decoding). ``every`` keeps every N-th frame, ``size`` resizes; :meth:`FrameSource.frames` yields
  ``(source index, H x W x 3 uint8 BGR)``. All frames of a folder must have one size (unless resized).
* :func:`load_calibration` - a ``camera_calibration_parsers`` YAML file (``image_width``,
  ``image_height``, ``camera_name``, ``camera_matrix``, ``distortion_model``, ``distortion_coefficients``,
  ``rectification_matrix``, ``projection_matrix``); :meth:`Calibration.fields` gives the CameraInfo
  fields for an image size, the intrinsics scaled when the size differs from the calibrated one.
* :func:`paced_frames` - the frames at a rate, pass after pass (``pebal-camera``).
* :func:`topic_argument` / :func:`bag_topic_argument` - ROS 2 topic names for argparse.

Limits, the ones ``pebal-detect`` and the node hold images to (:mod:`pebal_perception.core.limits`), checked
where frames come in and before anything is decoded: at most 64 M pixels, an aspect ratio within 1:8..8:1,
and (footage only) at least :data:`~pebal_perception.core.limits.MIN_FRAME_SIDE` pixels on a side. Images are
checked from their PNG/JPEG header, videos from the frame size their container gives, and every decoded frame
again. Other still-image formats (GIF, BMP, TIFF, WebP, ...) are refused: their decoders can be made to
allocate gigabytes from a few bytes. Inputs must be regular files (or a folder): a FIFO or a device is
refused before it is opened; a calibration file is read only up to :data:`MAX_CALIBRATION_BYTES`. A video
that ends well before the frame count its container claims gives a warning (:meth:`FrameSource.shortfall`).

Every problem with the input raises :class:`FootageError`, one line ``PATH: what``.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pebal_perception.core.errors import first_line
from pebal_perception.core.limits import frame_size_problem

DEFAULT_FOLDER_FPS = 10.0
IMAGE_FORMATS = ("png", "jpeg")
# A video file may start like one of these (MP4 and MOV share the ISO base media "ftyp" box with HEIF/AVIF);
# any other format sniff_format knows is a still image that only OpenCV's image decoders would read.
VIDEO_LOOKALIKES = ("heif/avif",)
# A camera_calibration_parsers YAML is a few KB; anything past this is not one (or is /dev/zero).
MAX_CALIBRATION_BYTES = 1 << 20
# Frames a video may fall short of the count its container claims (an estimate for some containers)
# before it is reported as truncated: this many, or this share of the claim, whichever is more.
SHORTFALL_FRAMES, SHORTFALL_SHARE = 2, 0.02
# Calibrated and used aspect ratios may differ this much (rounding of odd sizes), relatively.
ASPECT_TOLERANCE = 0.02
NOTE_LIMIT = 5  # skipped entries named in a note; the rest are counted

log = logging.getLogger("pebal.footage")


def wait_until(deadline: float, stop: Any) -> bool:
    """Sleeps until ``time.monotonic()`` reaches ``deadline`` in steps of at most 0.1 s, so that
    ``stop`` (a threading.Event) ends the wait at once; returns False when it was stopped."""
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


# ROS 2 topic names (rcl's validate_topic_name, without {substitutions}): tokens of letters, digits and
# '_' that do not start with a digit, joined by single '/'; an optional leading '/' (absolute) or '~/'
# (private). Derived names (camera_info, <topic>/compressed, '~' expanded to the node name) must stay
# within rmw's 247 characters, hence a shorter limit on what is given.
_TOPIC_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TOPIC_LENGTH = 200
TOPIC_RULES = ("ROS 2 topic names are tokens of letters, digits and '_' that do not start with a digit, joined "
               "by '/', with an optional leading '/' or '~/'")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid ROS 2 topic name, or None when it is."""
    if len(name) > MAX_TOPIC_LENGTH:
        return f"longer than {MAX_TOPIC_LENGTH} characters"
    if name == "~":
        return None
    body = name[2:] if name.startswith("~/") else name[1:] if name.startswith("/") else name
    if not body:
        return "empty" if not name else "no name after the leading '/'"
    for token in body.split("/"):
        if not token:
            return "ends with '/'" if body.endswith("/") else "holds '//'"
        if token[0].isdigit():
            return f"token {token!r} starts with a digit"
        if not _TOPIC_TOKEN.fullmatch(token):
            return f"token {token!r} holds characters other than letters, digits and '_'"
    return None


def topic_argument(text: str) -> str:
    """A ROS 2 topic name, checked (:func:`topic_name_problem`). For argparse ``type=``."""
    problem = topic_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"invalid topic name {text!r}: {problem}; {TOPIC_RULES}")
    return text


def bag_topic_argument(text: str) -> str:
    """A ROS 2 topic name for a bag, fully qualified as ``ros2 bag record`` writes it (``image`` ->
    ``/image``); a private ``~`` name is refused (a bag has no node for it to belong to). For argparse."""
    name = topic_argument(text)
    if name.startswith("~"):
        raise argparse.ArgumentTypeError(f"invalid topic name {text!r} for a bag: a private '~' name belongs to "
                                         "a node; give an absolute name such as /camera/image_raw")
    return name if name.startswith("/") else f"/{name}"


def _resize(bgr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or bgr.shape[:2] == tuple(size):
        return bgr
    import cv2

    height, width = size
    shrink = width * height < bgr.shape[0] * bgr.shape[1]
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class FrameSource:
    """Frames of a video, an image file or an image folder; see :func:`open_source`."""

    def __init__(self, path: Path, kind: str, fps: float | None, source_count: int | None,
                 native_size: tuple[int, int], files: list[Path], every: int, size: tuple[int, int] | None,
                 skipped: list[str] | None = None):
        self.path, self.kind = path, kind  # kind: "video", "image" or "folder"
        self.skipped = list(skipped or [])  # a folder's entries that are not PNG/JPEG images ("name: why")
        self.native_fps = fps  # the video's own rate (None: images, or a video that gives none)
        self.source_count = source_count  # frames in the source (a video's count is what its container claims)
        self.native_size = native_size  # (height, width) of the first frame
        self.every = every
        self.size = tuple(size) if size is not None else native_size  # (height, width) of what is yielded
        self.frames_read: int | None = None  # source frames the last complete pass went through
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
            yield from self._file_frames()

    def shortfall(self) -> str | None:
        """A one-line warning when the last complete pass over a video ended well before the frame count
        its container claims (a truncated or corrupt file: OpenCV just stops), else None."""
        claimed, read = self.source_count, self.frames_read
        if self.kind != "video" or claimed is None or read is None:
            return None
        if read >= claimed - max(SHORTFALL_FRAMES, int(claimed * SHORTFALL_SHARE)):
            return None
        return (f"{self.path}: the video ended after {read} of the {claimed} frames its container claims "
                "(truncated or corrupt?)")

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
                    self.frames_read = index
                    return
                if frame is not None:
                    yield index, _resize(_checked_frame(frame, self.path, index), self.size)
                index += 1
        finally:
            capture.release()

    def _file_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(0, len(self._files), self.every):
            path = self._files[index]
            bgr = _read_image(path)
            if bgr.shape[:2] != self.native_size and self.size == self.native_size:
                raise FootageError(f"{path}: is {bgr.shape[1]}x{bgr.shape[0]}, the first image is "
                                   f"{self.native_size[1]}x{self.native_size[0]}; give --size WxH")
            yield index, _resize(bgr, self.size)
        self.frames_read = len(self._files)


def paced_frames(source: FrameSource, period: float, stop: Any, loop: bool = False,
                 warn: Callable[[str], None] | None = None) -> Iterator[np.ndarray]:
    """The frames of ``source``, one every ``period`` seconds, until ``stop`` (a threading.Event) is set;
    with ``loop`` pass after pass. ``warn`` gets :meth:`FrameSource.shortfall`'s warning once. A pass that
    gives no frame at all raises :class:`FootageError`: looping over it again would only spin."""
    due = time.monotonic()
    warned = False
    while not stop.is_set():
        yielded = 0
        for _, bgr in source.frames():
            if not wait_until(due, stop):
                return
            due = max(due + period, time.monotonic() - period)  # no burst after a stall
            yielded += 1
            yield bgr
        if yielded == 0:
            raise FootageError(f"{source.path}: a whole pass over the source gave no frame; stopping")
        warning = source.shortfall()
        if warning is not None and warn is not None and not warned:
            warn(warning)
            warned = True
        if not loop:
            return


def _check_frame_size(width: int, height: int, path: Path, what: str) -> None:
    problem = frame_size_problem(width, height, what)
    if problem is not None:
        raise FootageError(f"{path}: {problem}")


def _checked_frame(frame: np.ndarray, path: Path, index: int) -> np.ndarray:
    """A decoded video frame as BGR, once its size is within the limits (the container's size is a claim)."""
    _check_frame_size(frame.shape[1], frame.shape[0], path, f"frame {index}")
    return _to_bgr(frame)


def _read_image(path: Path) -> np.ndarray:
    """A PNG/JPEG file as BGR: its header is checked (pixels, aspect ratio) before it is decoded, the
    shortest side once it is decoded (a tiny image costs nothing to decode)."""
    from pebal_perception.core.compressed_images import read_image_file
    from pebal_perception.core.image_conversion import ImageRejected

    try:
        rgb = read_image_file(path)
    except ImageRejected as exc:
        raise FootageError(exc.message) from None
    except OSError as exc:
        raise FootageError(f"{path}: cannot read ({exc.strerror or first_line(exc)})") from None
    _check_frame_size(rgb.shape[1], rgb.shape[0], path, "image")
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
    # FFmpeg's own lines ("overread 8") on a damaged file: our one-line warning or error says it instead.
    # Read when OpenCV first starts FFmpeg; a user's own setting is kept.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise FootageError(f"{path}: cannot be read as a video (OpenCV cannot open it)")
    return capture


def _check_claimed_size(capture: Any, path: Path) -> None:
    """Refuses a video from the frame size its container gives, before a frame is decoded (a 15 MB AVI
    can hold frames of 16000x16000). 0 means the container does not say: the decoded frames are checked."""
    import cv2

    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width > 0 and height > 0:
        _check_frame_size(width, height, path, "video")


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _input_is_folder(path: Path) -> bool:
    """True for a folder, False for a regular file; FootageError for anything else, before it is opened
    (a FIFO would block the open, a device would stream forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FootageError(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise FootageError(f"{path}: cannot read ({exc.strerror or first_line(exc)})") from None
    if stat.S_ISDIR(mode):
        return True
    if not stat.S_ISREG(mode):
        raise FootageError(f"{path}: is {_file_type(mode)}, not a regular file; give a video file, an image "
                           "or a folder of images")
    return False


def _sniff_file(path: Path) -> str | None:
    from pebal_perception.core.compressed_images import sniff_format

    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(16))
    except OSError as exc:
        raise FootageError(f"{path}: cannot read ({exc.strerror or first_line(exc)})") from None


def _folder_files(path: Path) -> tuple[list[Path], list[str]]:
    """The PNG/JPEG images of a folder in name order (told by their first bytes, not their names) and
    the entries left out (``"name: why"``): sub-folders, special files, other data (a LICENSE, a
    calibration YAML). Hidden entries are ignored; a folder without any image is an error."""
    files, skipped = [], []
    for entry in sorted(os.listdir(path)):
        if entry.startswith("."):
            continue
        file = path / entry
        if not file.is_file():  # never opened: a FIFO would block, a device would stream
            skipped.append(f"{entry}: not a regular file")
            continue
        kind = _sniff_file(file)
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
    """A video file, a PNG/JPEG image or a folder of images. ``every``: keep frames 0, N, 2N, ...; ``size``:
    (height, width) to resize to. Checks the limits and reads the first frame (size, readability); raises
    :class:`FootageError`."""
    path = Path(path)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if _input_is_folder(path):
        files, skipped = _folder_files(path)
        first = _read_image(files[0])
        return FrameSource(path, "folder", None, len(files), first.shape[:2], files, every, size, skipped)
    kind = _sniff_file(path)
    if kind in IMAGE_FORMATS:  # one image: read through the header check, never by OpenCV's video reader
        first = _read_image(path)
        return FrameSource(path, "image", None, 1, first.shape[:2], [path], every, size)
    if kind is not None and kind not in VIDEO_LOOKALIKES:
        raise FootageError(f"{path}: is {kind} data; give a video, PNG/JPEG images or a folder of them")
    return _open_video(path, every, size)


def _open_video(path: Path, every: int, size: tuple[int, int] | None) -> FrameSource:
    import cv2

    capture = _open_capture(path)
    try:
        _check_claimed_size(capture, path)
        ok, first = capture.read()
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if not ok or first is None:
        raise FootageError(f"{path}: the video has no frames OpenCV can decode")
    first = _checked_frame(first, path, 0)
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


def _read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; FootageError for anything else (a FIFO, a
    device such as /dev/zero, a file too large), OSError when it cannot be opened."""
    # O_NONBLOCK: opening a FIFO does not wait for a writer, so it can be looked at and refused.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    too_large = FootageError(f"{path}: is larger than {limit} bytes, more than a camera calibration holds")
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FootageError(f"{path}: is {_file_type(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise too_large
        data = f.read(limit + 1)  # bounded: the file may have grown since
    if len(data) > limit:
        raise too_large
    return data


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Reads a ``camera_calibration_parsers`` YAML file (a regular file of at most
    :data:`MAX_CALIBRATION_BYTES`); raises :class:`FootageError` (one line)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(_read_small_file(path, MAX_CALIBRATION_BYTES).decode("utf-8"))
    except OSError as exc:
        raise FootageError(f"{path}: cannot read ({exc.strerror or first_line(exc)})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FootageError(f"{path}: not valid YAML ({first_line(exc)})") from None
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
