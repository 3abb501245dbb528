"""ROS-free frame processing for the detector node: inference with out-of-memory handling, camera_info
checks, the latest-frame mailbox and the diagnostics window. The post-processing itself (score map ->
obstacles a planner receives) is :mod:`pebal_perception.core.postprocess`.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

# The post-processing lives in the core (shared with pebal-detect); re-exported for the node's users.
from pebal_perception.core.postprocess import (FULL_ROI, MAX_CAMERA_HEIGHT_M, MAX_MIN_OBSTACLE_AREA,  # noqa: F401
                                               GroundModel, PostProcessConfig, ProcessedFrame,
                                               bottom_centre_pixel, check_mounting, drivable_mask, finite_max,
                                               obstacle_mask, process_frame, roi_mask, roi_slices, validate_roi)
from pebal_perception.core.pipeline import ObstaclePipeline  # noqa: F401 - re-exported, as above
from pebal_perception.core.engine import infer_maps  # the default inference of OomGuardedInference
from pebal_perception.geometry import valid_intrinsics

# ------------------------------------------------------------------------------------------------------
# Shared by the node (pebal_perception/node/detector_node.py) and offline bag processing
# (``pebal-bag process``), so that both produce the same outputs for the same frame.

OOM_FALLBACK_STEPS = ("fp16", "cpu")


def parse_oom_fallback(text: str) -> tuple[str, ...]:
    """``oom_fallback`` setting -> ordered steps: '' or 'none' -> (), 'fp16', 'cpu', 'fp16,cpu'."""
    steps = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if steps == ["none"]:
        return ()
    unknown = [step for step in steps if step not in OOM_FALLBACK_STEPS]
    if unknown or len(set(steps)) != len(steps):
        raise ValueError(f"oom_fallback must be 'none' or a comma-separated list of {', '.join(OOM_FALLBACK_STEPS)} "
                         f"(each at most once), got {text!r}")
    return tuple(steps)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA (or other device) allocation failures: ``torch.OutOfMemoryError``, and the
    RuntimeErrors cuDNN/cuBLAS raise when their workspace allocation fails."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class FrameOutOfMemory(RuntimeError):
    """A frame could not be processed for lack of device memory, even after the configured fallbacks."""


class OomGuardedInference:
    """:func:`infer_maps` that survives running out of device memory on a frame.

    On an out-of-memory error the allocator's cached blocks are released and the frame is retried
    as it is (fragmentation after an unusually large frame often clears that way). If it fails
    again, the configured ``fallback`` steps are applied in order, each retried on the same frame:
    ``'fp16'`` (autocast half precision: about half the activation memory; CUDA fp32 only) and
    ``'cpu'`` (moves the model to the CPU: slow, but the detector keeps running). An applied step
    stays: a GPU that has just run out of memory is likely to do so again. When nothing is left,
    :class:`FrameOutOfMemory` is raised; the caller drops that frame and carries on.

    ``out_of_memory`` counts the frames that hit the error, ``dropped`` those that could not be
    processed at all, ``degraded`` lists the applied steps. ``infer`` is :func:`infer_maps`
    (replaceable for tests).
    """

    def __init__(self, engine: Any, fallback: Sequence[str] = (), infer=None):
        self.engine = engine
        self.pending = list(fallback)
        self.degraded: list[str] = []
        self.out_of_memory = 0
        self.dropped = 0
        self._infer = infer or infer_maps

    def __call__(self, rgb: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """The maps of ``rgb``; ``kwargs`` (e.g. ``smoothing``) go to every ``infer`` attempt."""
        failure = self._attempt(rgb, kwargs)
        if not isinstance(failure, str):
            return failure
        # Retried outside the except block: the failed attempt's tensors (held by the traceback)
        # must be released before the memory can be reused.
        self.out_of_memory += 1
        for step in [None, *self.pending]:
            if step is not None:
                self.pending.remove(step)
                if not self._apply(step):
                    continue
            self._release_cached_memory()
            failure = self._attempt(rgb, kwargs)
            if not isinstance(failure, str):
                return failure
        self.dropped += 1
        raise FrameOutOfMemory(f"out of memory on a {rgb.shape[1]}x{rgb.shape[0]} frame on {self.engine.device} "
                               f"({self.engine.precision}), no fallback left: {failure}")

    def _attempt(self, rgb: np.ndarray, kwargs: dict[str, Any]):
        """The maps, or a one-line description of an out-of-memory failure (other errors propagate)."""
        try:
            return self._infer(self.engine, rgb, **kwargs)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            text = str(exc).strip()
            return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"

    def _apply(self, step: str) -> bool:
        engine = self.engine
        if step == "fp16":
            if engine.device.type != "cuda" or engine.precision != "fp32":
                return False
            engine.set_precision("fp16")
        elif step == "cpu":
            if engine.device.type == "cpu":
                return False
            engine.to_device("cpu")
        else:  # pragma: no cover - parse_oom_fallback validates
            raise ValueError(f"unknown out-of-memory fallback {step!r}")
        self.degraded.append(step)
        return True

    @staticmethod
    def _release_cached_memory() -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


# Largest camera_info width/height accepted [px]; beyond it the message is garbage (e.g. 2^32 - 1).
MAX_IMAGE_SIDE = 100_000


def check_camera_info(k: Any, width: int, height: int) -> np.ndarray:
    """The 3 x 3 intrinsics of a camera_info (``k`` row-major, calibrated at ``width`` x ``height``), or
    ValueError with the reason when it cannot describe a real pinhole camera: K not 9 finite numbers, all
    zeros (uncalibrated), a last row other than [0, 0, 1], focal lengths not positive, a size of 0 or more
    than MAX_IMAGE_SIDE pixels a side, or a principal point outside that image (K and size disagree).
    Such a camera_info is treated as unknown: no ground positions."""
    try:
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise ValueError("K must be 9 numbers (a row-major 3 x 3 matrix)") from None
    if not np.all(np.isfinite(k)):
        raise ValueError("K has entries that are not finite")
    if not k.any():
        raise ValueError("K is all zeros (an uncalibrated camera)")
    width, height = int(width), int(height)
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise ValueError(f"calibration size {width}x{height} is not an image size "
                         f"(1 to {MAX_IMAGE_SIDE} pixels a side)")
    if not np.array_equal(k[2], (0.0, 0.0, 1.0)):
        raise ValueError(f"K is not a pinhole matrix [fx s cx; 0 fy cy; 0 0 1] (last row {k[2].tolist()})")
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if not (fx > 0 and fy > 0):
        raise ValueError(f"focal lengths fx={fx:g}, fy={fy:g} must be positive")
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        raise ValueError(f"principal point ({cx:g}, {cy:g}) lies outside the {width}x{height} calibration image")
    if not valid_intrinsics(k):
        raise ValueError(f"K is not invertible (fx={fx:g}, fy={fy:g})")
    return k


def rescale_warning(info_size: tuple[int, int], image_size: tuple[int, int]) -> str | None:
    """A one-line warning when images of ``image_size`` (w, h) relate to camera_info's ``info_size`` by
    different x and y factors; None when the sizes are equal or scale uniformly (binning, resizing).
    The intrinsics are then still scaled per axis (right for an anamorphic resize), but such a pair is
    often a camera_info that belongs to another stream."""
    from pebal_perception.geometry import is_uniform_rescale, scale_factors

    info_size, image_size = tuple(info_size), tuple(image_size)
    if info_size == image_size or is_uniform_rescale(info_size, image_size):
        return None
    sx, sy = scale_factors(info_size, image_size)
    return (f"camera_info is for {info_size[0]}x{info_size[1]} images but they are {image_size[0]}x{image_size[1]}: "
            f"intrinsics rescaled by x {sx:.4g}, y {sy:.4g} (different factors; is it this camera's camera_info?)")


def make_ground_model(k: np.ndarray, info_size: tuple[int, int], image_size: tuple[int, int],
                      height_m: float, pitch_rad: float) -> GroundModel | None:
    """Ground model for an image of ``image_size`` (w, h) from camera_info intrinsics ``k`` calibrated
    at ``info_size`` (w, h; rescaled to the image's size per axis), or None when unknown or unusable:
    NaN or refused mounting (check_mounting), refused camera_info (check_camera_info)."""
    from pebal_perception.geometry import scale_intrinsics

    if math.isnan(height_m) or math.isnan(pitch_rad):
        return None
    try:
        check_mounting(height_m, pitch_rad)
        k = check_camera_info(k, *info_size)
    except ValueError:
        return None
    info_size, image_size = tuple(int(v) for v in info_size), tuple(int(v) for v in image_size)
    if info_size != image_size:
        k = scale_intrinsics(k, info_size, image_size)
    model = GroundModel(K=k, height_m=height_m, pitch_rad=pitch_rad)
    return model if model.usable else None


class RecentEvents:
    """The latest event of each kind (when, and what it said), so that a status can reflect what happened
    within the last ``window_s`` seconds instead of everything since start-up (the cumulative counters
    are kept by their owners). Thread-safe; ``clock`` is monotonic seconds (replaceable for tests)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        window_s = float(window_s)
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"the status window must be a positive number of seconds, got {window_s:g}")
        self.window_s = window_s
        self._clock = clock
        self._last: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def note(self, kind: str, text: str = "") -> None:
        with self._lock:
            self._last[kind] = (self._clock(), text)

    def recent(self, kind: str) -> tuple[float, str] | None:
        """``(seconds ago, text)`` of the latest ``kind`` event when it lies within the window, else None."""
        with self._lock:
            last = self._last.get(kind)
        if last is None:
            return None
        age = self._clock() - last[0]
        return (age, last[1]) if age <= self.window_s else None


class LatestFrameMailbox:
    """One slot holding the newest unprocessed frame; ``put`` over an unprocessed frame drops it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Stores ``item``; returns True when it replaced (dropped) an unprocessed frame."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """Waits for a frame (or close); returns it, or None on timeout / close."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> bool:
        """Stops accepting frames; a frame still waiting is discarded (counted in ``dropped``, as it was
        never processed) so that nothing stale is processed after a re-activation. Returns True when one
        was."""
        with self._cond:
            self._closed = True
            discarded = self._item is not None
            if discarded:
                self.dropped += 1
            self._item = None
            self._cond.notify_all()
            return discarded

    def open(self) -> None:
        """Accepts frames again after :meth:`close` (a managed node activated again)."""
        with self._cond:
            self._closed = False
