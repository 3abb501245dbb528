"""Image message <-> numpy conversion for the detector node, without cv_bridge.

This module is ROS-free: it never imports rclpy or sensor_msgs and works on the plain message fields
(``encoding, height, width, step, is_bigendian, data`` of ``sensor_msgs/Image``; ``format, data`` of
``sensor_msgs/CompressedImage``). :class:`ImageConverter` only *looks* for the official ``cv_bridge``
when it is constructed, and imports it only when it is the real ROS one (see :func:`find_official_cv_bridge`).

Inbound (:func:`image_to_rgb`, :func:`compressed_to_rgb`) every result is a fresh, writable, C-contiguous
``H x W x 3`` uint8 RGB array that never aliases the message buffer. Every problem with the input raises
:class:`ImageRejected` (a ``ValueError``) whose ``reason`` is one of :data:`REJECT_REASONS`; nothing else
escapes for bad input, so the node can count reasons in its diagnostics and drop the frame.

Encodings (``sensor_msgs/image_encodings`` names; OpenCV ``nUCm`` aliases follow OpenCV's BGR order):

=============  =========================  ================================================================
encoding       aliases                    to RGB
=============  =========================  ================================================================
rgb8           --                         copy
bgr8           8UC3                       channel swap
rgba8          --                         alpha dropped
bgra8          8UC4                       channel swap, alpha dropped
mono8          8UC1                       grey replicated to 3 channels
mono16         16UC1                      ``mono16_scale="shift"`` (default): the high byte (``v >> 8``);
                                          ``"minmax"``: per-frame min..max stretched to 0..255
                                          (a constant frame gives 0); honours ``is_bigendian``
32FC1          --                         finite values clipped to [0, 1] then ``round(v * 255)``;
                                          NaN/Inf -> ``non_finite``; honours ``is_bigendian``
=============  =========================  ================================================================

Rows are read with stride ``step`` (any padding, odd widths and unaligned 16/32-bit rows are fine)
through zero-copy views of the message buffer; the only full-frame pass is the final conversion.
``data`` may be ``bytes``, ``bytearray``, ``memoryview``, ``array.array`` (what rclpy gives), a numpy array
(its raw bytes) or a sequence of ints 0..255. ROS requires ``len(data) == step * height`` exactly;
anything else is ``size_mismatch``.

Limits, checked from the fields or the compressed header before anything is allocated or decoded: at
most ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, 64 M: ``too_large``) and an aspect ratio
within 1:8..8:1 (:data:`MAX_ASPECT_RATIO`: ``bad_aspect_ratio``; a thinner frame would be upscaled to the
network size at a cost of gigabytes). Compressed images are PNG or JPEG only (:data:`ACCEPTED_CODECS`, by
format string and by magic bytes; see :func:`compressed_to_rgb`).

Outbound (:func:`rgb_to_image_fields`) builds the fields of an ``Image`` message (``mono8``, ``32FC1``
little-endian, ``rgb8``; tightly packed, ``is_bigendian=0``) as a dict the node passes to
``sensor_msgs.msg.Image(**fields)``.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import operator
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pebal_perception.core.limits import MAX_ASPECT_RATIO as MAX_ASPECT_RATIO  # re-exported: part of the contract
from pebal_perception.core.limits import MAX_IMAGE_PIXELS, aspect_ratio_problem

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
_UINT32_MAX = 2**32 - 1

#: Every ``ImageRejected.reason`` this module produces (the node can pre-create one counter per reason).
REJECT_REASONS = frozenset({
    "unknown_encoding",    # encoding not supported (or not a string)
    "invalid_field",       # height/width/step/is_bigendian not a non-negative uint32 integer, or missing
    "invalid_data",        # data is not bytes-like / a sequence of ints 0..255
    "empty",               # zero width or height; empty compressed payload
    "bad_step",            # step < width * bytes per pixel
    "size_mismatch",       # len(data) != step * height
    "too_large",           # more than max_pixels pixels (or the conversion ran out of memory)
    "bad_aspect_ratio",    # longer side more than MAX_ASPECT_RATIO times the shorter one
    "non_finite",          # NaN/Inf in a 32FC1 image
    "unsupported_format",  # compressed format other than jpeg/png (format string or magic bytes), compressedDepth
    "decode_failed",       # not a PNG/JPEG payload, an unreadable PNG/JPEG header, or OpenCV cannot decode it
    "conversion_failed",   # the official cv_bridge (or OpenCV) failed on an otherwise valid message
})


class ImageRejected(ValueError):
    """An input image that cannot be converted; ``reason`` is a short key from :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class _Encoding:
    name: str          # canonical name
    channels: int
    itemsize: int      # bytes per channel
    kind: str          # "u8" | "u16" | "f32"
    to_rgb: int | None  # cv2 colour conversion code for 8-bit encodings (None: plain copy)


_CANONICAL = {
    "rgb8": _Encoding("rgb8", 3, 1, "u8", None),
    "bgr8": _Encoding("bgr8", 3, 1, "u8", cv2.COLOR_BGR2RGB),
    "rgba8": _Encoding("rgba8", 4, 1, "u8", cv2.COLOR_RGBA2RGB),
    "bgra8": _Encoding("bgra8", 4, 1, "u8", cv2.COLOR_BGRA2RGB),
    "mono8": _Encoding("mono8", 1, 1, "u8", cv2.COLOR_GRAY2RGB),
    "mono16": _Encoding("mono16", 1, 2, "u16", None),
    "32FC1": _Encoding("32FC1", 1, 4, "f32", None),
}
_ALIASES = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8", "16UC1": "mono16"}

#: Encodings :func:`image_to_rgb` accepts (canonical names first, then the OpenCV-style aliases).
SUPPORTED_ENCODINGS = tuple(_CANONICAL) + tuple(_ALIASES)
#: Encodings :func:`rgb_to_image_fields` produces.
OUTPUT_ENCODINGS = ("mono8", "32FC1", "rgb8")
MONO16_SCALES = ("shift", "minmax")

_BY_NAME = {**_CANONICAL, **{alias: _CANONICAL[name] for alias, name in _ALIASES.items()}}
_BY_FOLDED = {name.lower(): spec for name, spec in _BY_NAME.items()}


def lookup_encoding(encoding: Any) -> _Encoding | None:
    """The spec of a supported encoding (exact name, else case-insensitive), or None."""
    if not isinstance(encoding, str):
        return None
    spec = _BY_NAME.get(encoding)
    if spec is None:
        spec = _BY_FOLDED.get(encoding.strip().lower())
    return spec


def check_max_pixels(max_pixels: int) -> int:
    try:
        value = operator.index(max_pixels)
    except TypeError:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}") from None
    if value <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return value


def _check_mono16_scale(mono16_scale: str) -> str:
    if mono16_scale not in MONO16_SCALES:
        raise ValueError(f"mono16_scale must be one of {MONO16_SCALES}, got {mono16_scale!r}")
    return mono16_scale


def check_image_shape(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> None:
    """``too_large`` / ``bad_aspect_ratio`` for a ``width x height`` (both > 0) image, before allocating it."""
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{what} is {width}x{height} (WxH) = {width * height} pixels, over "
                                         f"max_pixels={max_pixels}")
    problem = aspect_ratio_problem(width, height, what)
    if problem is not None:
        raise ImageRejected("bad_aspect_ratio", problem)


def _uint_field(name: str, value: Any) -> int:
    """A ROS uint32 field as a Python int; ``invalid_field`` for anything else."""
    try:
        number = operator.index(value)
    except TypeError:
        raise ImageRejected("invalid_field", f"{name} must be an integer, got {type(value).__name__}") from None
    if number < 0 or number > _UINT32_MAX:
        raise ImageRejected("invalid_field", f"{name}={number} is outside the uint32 range")
    return number


def byte_view(data: Any) -> np.ndarray:
    """``data`` as a 1-D uint8 array, without copying whenever it exposes a contiguous buffer."""
    try:
        if isinstance(data, (bytes, bytearray)):
            return np.frombuffer(data, dtype=np.uint8)
        if isinstance(data, np.ndarray):
            arr = data
        elif isinstance(data, str):
            raise TypeError("a str is not image data")
        else:
            try:
                view = memoryview(data)
            except TypeError:
                view = None
            if view is not None:
                if view.c_contiguous:
                    return np.frombuffer(view, dtype=np.uint8)
                arr = np.asarray(view)
            else:  # a plain sequence of ints, e.g. a list: values must be 0..255
                arr = np.asarray(data)
                if arr.ndim != 1:
                    raise ValueError(f"a sequence of {arr.ndim} dimensions")
                if arr.size == 0:
                    return np.zeros(0, dtype=np.uint8)
                if arr.dtype.kind not in "iub" or int(arr.min()) < 0 or int(arr.max()) > 255:
                    raise ValueError("a sequence must hold integers 0..255")
                return arr.astype(np.uint8)
        if arr.dtype.hasobject or arr.dtype.itemsize == 0:
            raise TypeError(f"numpy dtype {arr.dtype}")
        return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - anything the caller passed as data that is not bytes-like
        raise ImageRejected("invalid_data", f"data of type {type(data).__name__} is not bytes-like ({exc})") from None


def _unknown_encoding(encoding: Any) -> ImageRejected:
    shown = encoding if isinstance(encoding, str) else type(encoding).__name__
    return ImageRejected("unknown_encoding", f"encoding {shown!r} is not supported "
                                             f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")


def _validated_rows(encoding: Any, height: Any, width: Any, step: Any, data: Any, max_pixels: int,
                    allow_unknown: bool = False) -> tuple[_Encoding | None, int, int, int, np.ndarray | None]:
    """Checks the fields; returns (spec, height, width, step, rows) where rows is the height x row_bytes
    uint8 view of the pixels. An unsupported encoding raises ``unknown_encoding`` first, unless
    ``allow_unknown``: then the sizes are checked as well as they can be (at least one byte per pixel)
    and (None, height, width, step, None) is returned."""
    spec = lookup_encoding(encoding)
    if spec is None and not allow_unknown:
        raise _unknown_encoding(encoding)
    height = _uint_field("height", height)
    width = _uint_field("width", width)
    step = _uint_field("step", step)
    if height == 0 or width == 0:
        raise ImageRejected("empty", f"image has zero size ({width}x{height}, WxH)")
    check_image_shape(width, height, max_pixels)
    if spec is None:
        buf = byte_view(data)
        if step < width:
            raise ImageRejected("bad_step", f"step={step} is smaller than width={width} ({encoding!r})")
        if buf.size != step * height:
            raise ImageRejected("size_mismatch", f"len(data)={buf.size} but step*height={step}*{height}="
                                                 f"{step * height} ({width}x{height} {encoding!r})")
        return None, height, width, step, None
    row_bytes = width * spec.channels * spec.itemsize
    if step < row_bytes:
        raise ImageRejected("bad_step", f"step={step} is smaller than width*bytes_per_pixel="
                                        f"{width}*{spec.channels * spec.itemsize}={row_bytes} ({spec.name})")
    buf = byte_view(data)
    expected = step * height
    if buf.size != expected:
        raise ImageRejected("size_mismatch", f"len(data)={buf.size} but step*height={step}*{height}={expected} "
                                             f"({width}x{height} {spec.name})")
    rows = buf.reshape(height, step)[:, :row_bytes]  # a view: padding is skipped, not copied
    return spec, height, width, step, rows


def image_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: int | bool, data: Any,
                 max_pixels: int = DEFAULT_MAX_PIXELS, mono16_scale: str = "shift") -> np.ndarray:
    """The fields of a ``sensor_msgs/Image`` -> a fresh ``height x width x 3`` uint8 RGB array.

    Raises :class:`ImageRejected` for every bad input (see the module docstring for the encodings and
    :data:`REJECT_REASONS`); ``ValueError`` only for bad ``max_pixels``/``mono16_scale`` settings.
    """
    max_pixels = check_max_pixels(max_pixels)
    mono16_scale = _check_mono16_scale(mono16_scale)
    spec, height, width, _, rows = _validated_rows(encoding, height, width, step, data, max_pixels)
    assert spec is not None and rows is not None
    if spec.itemsize > 1:
        try:
            big = _uint_field("is_bigendian", is_bigendian) != 0
        except ImageRejected:
            raise ImageRejected("invalid_field", f"is_bigendian must be 0 or 1, got {is_bigendian!r}") from None
    else:
        big = False  # byte order is meaningless for 8-bit data
    try:
        return _convert(spec, rows, height, width, big, mono16_scale)
    except MemoryError:
        raise ImageRejected("too_large", f"out of memory converting {width}x{height} {spec.name}") from None
    except cv2.error as exc:
        raise ImageRejected("conversion_failed", f"OpenCV failed on {width}x{height} {spec.name}: {exc}") from None


def _convert(spec: _Encoding, rows: np.ndarray, height: int, width: int, big: bool,
             mono16_scale: str) -> np.ndarray:
    if spec.kind == "u8":
        pixels = rows.reshape(height, width, spec.channels) if spec.channels > 1 else rows
        if spec.to_rgb is None:
            return np.array(pixels, dtype=np.uint8, order="C", copy=True)
        return cv2.cvtColor(pixels, spec.to_rgb)
    if spec.kind == "u16":
        if mono16_scale == "shift":
            high = rows[:, 0::2] if big else rows[:, 1::2]  # v >> 8 is the most significant byte: a view
            return cv2.cvtColor(high, cv2.COLOR_GRAY2RGB)
        values = rows.view(">u2" if big else "<u2").astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            values -= lo
            values *= 255.0 / (hi - lo)
            values += 0.5
            grey = values.astype(np.uint8)
        else:
            grey = np.zeros((height, width), dtype=np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    # f32
    values = rows.view(">f4" if big else "<f4").astype(np.float32)  # native, contiguous
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        raise ImageRejected("non_finite", f"32FC1 image has {bad} NaN/Inf value(s) of {values.size}")
    np.clip(values, 0.0, 1.0, out=values)
    values *= 255.0
    values += 0.5
    return cv2.cvtColor(values.astype(np.uint8), cv2.COLOR_GRAY2RGB)


# ----------------------------------------------------------------------------------------------- outbound

def rgb_to_image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """An array -> the fields of a ``sensor_msgs/Image`` (``Image(**fields)`` builds the message).

    ``mono8``: ``H x W`` (or ``H x W x 1``) uint8; ``32FC1``: ``H x W`` (or ``H x W x 1``) floating point,
    written as little-endian float32; ``rgb8``: ``H x W x 3`` uint8. Rows are tightly packed
    (``step = width * bytes_per_pixel``), ``is_bigendian = 0``, ``data`` is ``bytes``.
    Raises ``ValueError`` for an array that does not match the encoding (a programming error).
    """
    if encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"output encoding must be one of {OUTPUT_ENCODINGS}, got {encoding!r}")
    arr = np.asarray(array)
    if encoding in ("mono8", "32FC1") and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if encoding == "rgb8":
        ok_shape, ok_dtype, wire = arr.ndim == 3 and arr.shape[2] == 3, arr.dtype == np.uint8, np.dtype(np.uint8)
        what = "H x W x 3 uint8"
    elif encoding == "mono8":
        ok_shape, ok_dtype, wire = arr.ndim == 2, arr.dtype == np.uint8, np.dtype(np.uint8)
        what = "H x W uint8"
    else:
        ok_shape, ok_dtype, wire = arr.ndim == 2, np.issubdtype(arr.dtype, np.floating), np.dtype("<f4")
        what = "H x W floating point"
    if not (ok_shape and ok_dtype):
        raise ValueError(f"{encoding} needs an {what} array, got {arr.shape} {arr.dtype}")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot publish an empty {arr.shape} image")
    if height > _UINT32_MAX or width > _UINT32_MAX:
        raise ValueError(f"image {arr.shape} is too large for a sensor_msgs/Image")
    channels = 3 if encoding == "rgb8" else 1
    packed = np.ascontiguousarray(arr, dtype=wire)
    return {
        "encoding": encoding,
        "height": int(height),
        "width": int(width),
        "step": int(width * channels * wire.itemsize),
        "is_bigendian": 0,
        "data": packed.tobytes(),
    }


# ------------------------------------------------------------------------------------------------ backend

def find_official_cv_bridge() -> Any | None:
    """The official ROS ``cv_bridge`` module, or None when there is none (or only the PyPI port).

    Detection rule: the importable ``cv_bridge`` must be a package whose directory holds the compiled
    ``boost/cv_bridge_boost`` extension module (``cv_bridge_boost*.so``/``.pyd``, any Python ABI suffix)
    that the ROS package (``vision_opencv``, from /opt/ros or a colcon workspace) builds and the
    pure-Python PyPI port (``cv-bridge`` 1.13, broken with numpy >= 2.3 / OpenCV 5) lacks. This is checked
    on the file system *before* importing, so the broken port is never imported; only then is
    ``cv_bridge`` imported and required to provide ``CvBridge.imgmsg_to_cv2``. Any failure -> None.
    ``PEBAL_CV_BRIDGE=0`` in the environment disables the official bridge.
    """
    if os.environ.get("PEBAL_CV_BRIDGE", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        spec = importlib.util.find_spec("cv_bridge")
        if spec is None or not spec.submodule_search_locations:
            return None
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        has_boost = False
        for location in spec.submodule_search_locations:
            boost_dir = os.path.join(location, "boost")
            if os.path.isdir(boost_dir) and any(
                    name.startswith("cv_bridge_boost") and name.endswith(suffixes) for name in os.listdir(boost_dir)):
                has_boost = True
                break
        if not has_boost:
            return None
        module = importlib.import_module("cv_bridge")
        bridge_class = getattr(module, "CvBridge", None)
        if bridge_class is None or not callable(getattr(bridge_class, "imgmsg_to_cv2", None)):
            return None
        return module
    except Exception:  # noqa: BLE001 - a broken install means "no official bridge"
        return None


_MISSING = object()


def _fields(msg: Any, names: tuple[str, ...]) -> list[Any]:
    values = [getattr(msg, name, _MISSING) for name in names]
    missing = [name for name, value in zip(names, values) if value is _MISSING]
    if missing:
        raise ImageRejected("invalid_field", f"{type(msg).__name__} has no field(s) {', '.join(missing)}")
    return values


class ImageConverter:
    """Message -> RGB array (and array -> message fields) for the node, with a backend choice.

    ``official`` chooses how the official ``cv_bridge`` (when :func:`find_official_cv_bridge` finds the
    real one) is used for ``sensor_msgs/Image``:

    * ``"fallback"`` (default): this module converts every encoding it supports (identical results and
      rejection reasons on every install); the official bridge converts only the others (yuv422,
      bayer_*, rgb16, ...), after the same field/size checks. ``backend == "pebal+cv_bridge"``.
    * ``"prefer"``: the official bridge converts everything (``desired_encoding="rgb8"``), after the same
      field/size checks; if it fails, this module tries. ``backend == "cv_bridge"``.
    * ``"never"``: this module only. ``backend == "pebal"`` (also for the modes above without the
      official bridge).

    Compressed images and outbound fields always use this module (the official bridge would call the
    same ``cv2.imdecode``). Every method raises only :class:`ImageRejected` for bad messages.
    """

    def __init__(self, official: str = "fallback", mono16_scale: str = "shift",
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if official not in ("fallback", "prefer", "never"):
            raise ValueError(f"official must be 'fallback', 'prefer' or 'never', got {official!r}")
        self.mono16_scale = _check_mono16_scale(mono16_scale)
        self.max_pixels = check_max_pixels(max_pixels)
        self.official = official
        self._bridge = None
        module = find_official_cv_bridge() if official != "never" else None
        if module is not None:
            try:
                self._bridge = module.CvBridge()
            except Exception:  # noqa: BLE001
                self._bridge = None
        if self._bridge is None:
            self.backend = "pebal"
        else:
            self.backend = "cv_bridge" if official == "prefer" else "pebal+cv_bridge"

    def to_rgb(self, msg: Any) -> np.ndarray:
        """A ``sensor_msgs/Image`` (or anything with its fields) -> fresh H x W x 3 uint8 RGB."""
        encoding, height, width, step, is_bigendian, data = _fields(
            msg, ("encoding", "height", "width", "step", "is_bigendian", "data"))
        if self._bridge is not None:
            known = lookup_encoding(encoding) is not None
            if self.official == "prefer" or not known:
                _, rows_h, rows_w, _, _ = _validated_rows(encoding, height, width, step, data, self.max_pixels,
                                                          allow_unknown=True)
                try:
                    return self._official_to_rgb(msg, rows_h, rows_w)
                except ImageRejected:
                    if not known:
                        raise
        return image_to_rgb(encoding, height, width, step, is_bigendian, data,
                            max_pixels=self.max_pixels, mono16_scale=self.mono16_scale)

    def _official_to_rgb(self, msg: Any, height: int, width: int) -> np.ndarray:
        try:
            out = self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as exc:  # noqa: BLE001 - CvBridgeError, TypeError, cv2.error, ...
            reason = "unknown_encoding" if "encoding" in str(exc).lower() else "conversion_failed"
            raise ImageRejected(reason, f"cv_bridge: {exc}") from None
        if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (height, width, 3)):
            shape = getattr(out, "shape", None)
            raise ImageRejected("conversion_failed", f"cv_bridge returned {type(out).__name__} {shape}, "
                                                     f"expected ({height}, {width}, 3) uint8")
        if not (out.flags.c_contiguous and out.flags.writeable and out.flags.owndata):
            out = np.array(out, order="C", copy=True)  # never alias the message buffer
        return out

    def compressed_to_rgb(self, msg: Any) -> np.ndarray:
        """A ``sensor_msgs/CompressedImage`` (or anything with ``format``/``data``) -> H x W x 3 uint8 RGB."""
        format_, data = _fields(msg, ("format", "data"))
        from pebal_perception.core.compressed_images import compressed_to_rgb  # it builds on this module

        return compressed_to_rgb(format_, data, max_pixels=self.max_pixels)

    @staticmethod
    def from_array(array: np.ndarray, encoding: str, header: Any = None) -> dict[str, Any]:
        """:func:`rgb_to_image_fields`, plus ``header`` when given: ``Image(**fields)`` is the message."""
        fields = rgb_to_image_fields(array, encoding)
        if header is not None:
            fields["header"] = header
        return fields
