"""The pinhole camera over a flat ground plane that every scene is rendered with."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class Camera:
    """Pinhole camera over a flat ground plane (see the package docstring for the frames)."""

    fx: float
    fy: float
    cx: float
    cy: float
    #: Mounting height above the ground, metres.
    height: float
    #: Pitch in radians, positive = looking down.
    pitch: float
    image_width: int
    image_height: int

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - conventional name
        """3 x 3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def horizon_row(self) -> float:
        """Image row of the horizon (vanishing line of the ground plane)."""
        return self.cy - self.fy * math.tan(self.pitch)

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """``(..., 3)`` points relative to the point under the camera (``X`` right, ``Y`` up, ``Z``
        forward) to camera coordinates ``(x right, y down, z optical axis)``."""
        p = np.asarray(points, np.float64)
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        rx, ry, rz = p[..., 0], p[..., 1] - self.height, p[..., 2]
        return np.stack([rx, -ry * c - rz * s, -ry * s + rz * c], axis=-1)

    def ground_to_pixel(self, x: float | np.ndarray, z: float | np.ndarray) -> tuple[Any, Any]:
        """Project ground point(s) ``(x lateral, z forward)`` to pixel coordinates ``(u, v)``."""
        x = np.asarray(x, np.float64)
        z = np.asarray(z, np.float64)
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        zc = self.height * s + z * c
        yc = self.height * c - z * s
        u = self.fx * x / zc + self.cx
        v = self.fy * yc / zc + self.cy
        return (u[()], v[()])

    def pixel_to_ground(self, u: float | np.ndarray, v: float | np.ndarray) -> tuple[Any, Any]:
        """Intersect the ray through pixel(s) ``(u, v)`` with the ground; returns ``(x, z)`` metres
        (``nan`` at or above the horizon)."""
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        dx = (u - self.cx) / self.fx
        dy = (v - self.cy) / self.fy
        denom = dy * c + s
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(denom > 1e-9, self.height / denom, np.nan)
        return ((t * dx)[()], (t * (c - dy * s))[()])

    def to_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in asdict(self).items()}
