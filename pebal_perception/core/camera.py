"""The camera behind a stream of frames: checks of a camera_info (intrinsics and their size) and the
flat-ground model that places obstacles on the road from it (:mod:`pebal_perception.core.geometry`)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from pebal_perception.core.postprocess import GroundModel
from pebal_perception.core.postprocess_config import check_mounting
from pebal_perception.core.geometry import valid_intrinsics

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
    from pebal_perception.core.geometry import is_uniform_rescale, scale_factors

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
    from pebal_perception.core.geometry import scale_intrinsics

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
