"""Flat-ground back-projection (ROS-free).

A pinhole camera with intrinsics ``K`` is mounted ``height_m`` above a flat ground plane and pitched
down by ``pitch_rad`` (positive = looking down; no roll). The ray through pixel ``(u, v)`` (integer
coordinates at pixel centres, OpenCV convention) is intersected with the ground plane; the result is
expressed in the camera's *optical* frame: ``x`` right, ``y`` down, ``z`` forward along the optical
axis, metres (REP 103 ``*_optical_frame``).

In the optical frame the ground plane is ``n . p = height_m`` with the unit "down" vector
``n = (0, cos(pitch), sin(pitch))``. A ray ``t * (dx, dy, 1)`` with ``(dx, dy, 1) = K^-1 (u, v, 1)``
hits it at ``t = height_m / (dy * cos(pitch) + sin(pitch))`` when that denominator is positive; rays at
or above the horizon never reach the ground and give NaN.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

_NAN3 = (float("nan"),) * 3
_EPS = 1e-9


def valid_intrinsics(K: Any) -> bool:  # noqa: N803 - conventional name
    """True for a finite, invertible 3 x 3 pinhole matrix (last row [0, 0, 1]) with positive focal lengths."""
    try:
        k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0 and np.array_equal(k[2], (0.0, 0.0, 1.0))
                and abs(np.linalg.det(k)) > _EPS)


def valid_mounting(height_m: float, pitch_rad: float) -> bool:
    """A usable ground model: finite positive height and a pitch strictly between -90 and +90 degrees."""
    return (math.isfinite(height_m) and height_m > 0 and math.isfinite(pitch_rad)
            and abs(pitch_rad) < math.pi / 2)


def pixel_to_ground(u: Any, v: Any, K: Any, height_m: float, pitch_rad: float) -> np.ndarray:  # noqa: N803
    """Back-projects pixel(s) onto the flat ground; returns ``(..., 3)`` points (x, y, z) in the optical
    frame, NaN where the ray does not hit the ground (or the camera model is unusable)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    shape = np.broadcast(u, v).shape
    if not (valid_intrinsics(K) and valid_mounting(float(height_m), float(pitch_rad))):
        return np.full(shape + (3,), np.nan)
    k_inv = np.linalg.inv(np.asarray(K, dtype=np.float64).reshape(3, 3))
    pix = np.stack(np.broadcast_arrays(u, v, np.ones(shape)), axis=-1)
    rays = pix @ k_inv.T
    rays = rays / rays[..., 2:3]  # (dx, dy, 1)
    c, s = math.cos(pitch_rad), math.sin(pitch_rad)
    denom = rays[..., 1] * c + s
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(denom > _EPS, float(height_m) / denom, np.nan)
    return rays * t[..., None]


def pixel_to_ground_point(u: float, v: float, K: Any, height_m: float, pitch_rad: float) -> tuple[float, float, float]:  # noqa: N803
    """One pixel -> one ``(x, y, z)`` tuple of Python floats (NaN, NaN, NaN when not on the ground)."""
    p = pixel_to_ground(u, v, K, height_m, pitch_rad)
    if not np.all(np.isfinite(p)):
        return _NAN3
    return float(p[0]), float(p[1]), float(p[2])


def camera_to_pixel(points: Any, K: Any) -> np.ndarray:  # noqa: N803
    """Projects ``(..., 3)`` optical-frame points to ``(..., 2)`` pixel coordinates (the inverse check)."""
    p = np.asarray(points, dtype=np.float64)
    k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    q = p @ k.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return q[..., :2] / q[..., 2:3]


def scale_factors(from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[float, float]:
    """``(sx, sy)`` that map an image of ``from_size`` (width, height) onto ``to_size``."""
    return to_size[0] / from_size[0], to_size[1] / from_size[1]


def is_uniform_rescale(from_size: tuple[int, int], to_size: tuple[int, int]) -> bool:
    """True when ``to_size`` is ``from_size`` scaled by one factor for both axes, up to the rounding of
    a resize: each side, scaled by the other side's factor, lands within one pixel of the target."""
    sx, sy = scale_factors(from_size, to_size)
    return abs(from_size[0] * sy - to_size[0]) <= 1.0 and abs(from_size[1] * sx - to_size[1]) <= 1.0


def scale_intrinsics(K: Any, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:  # noqa: N803
    """Intrinsics of a camera calibrated at ``from_size`` (width, height) for images of ``to_size``
    (e.g. a camera_info for the full sensor, images binned or resized by the driver)."""
    k = np.asarray(K, dtype=np.float64).reshape(3, 3).copy()
    if from_size == to_size or from_size[0] <= 0 or from_size[1] <= 0:
        return k
    sx, sy = scale_factors(from_size, to_size)
    k[0, 0] *= sx
    k[0, 1] *= sx
    k[1, 1] *= sy
    # Pixel centres at integer coordinates: x' + 0.5 = (x + 0.5) * s.
    k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return k
