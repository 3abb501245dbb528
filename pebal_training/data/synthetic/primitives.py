"""Geometry helpers: polygons and solids in world coordinates (all return float64 arrays of world points)."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np


def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.cos(a), np.sin(a)


_C16 = _circle(16)
_C24 = _circle(24)
_C12 = _circle(12)


def _ellipse_z(z: float, cx: float, cy: float, rx: float, ry: float, n: int = 16) -> np.ndarray:
    """Ellipse in the vertical plane ``Z = z`` (a billboard facing the camera)."""
    c, s = _C24 if n == 24 else (_C12 if n == 12 else _C16)
    out = np.empty((len(c), 3))
    out[:, 0] = c
    out[:, 0] *= rx
    out[:, 0] += cx
    out[:, 1] = s
    out[:, 1] *= ry
    out[:, 1] += cy
    np.maximum(out[:, 1], 0.0, out=out[:, 1])
    out[:, 2] = z
    return out


def _poly_z(z: float, xy: Sequence[Sequence[float]]) -> np.ndarray:
    a = np.asarray(xy, np.float64)
    out = np.empty((len(a), 3))
    out[:, :2] = a
    out[:, 2] = z
    return out


def _rect_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)


def _rect_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], np.float64)


def _ellipse_x(x: float, cz: float, cy: float, rz: float, ry: float, n: int = 16) -> np.ndarray:
    """Ellipse in the vertical plane ``X = x`` (e.g. a wheel on a car side)."""
    c, s = _C16 if n == 16 else _C12
    out = np.empty((len(c), 3))
    out[:, 0] = x
    out[:, 1] = s
    out[:, 1] *= ry
    out[:, 1] += cy
    np.maximum(out[:, 1], 0.0, out=out[:, 1])
    out[:, 2] = c
    out[:, 2] *= rz
    out[:, 2] += cz
    return out


def _prism(footprint_xz: np.ndarray, y0: float, y1: float, top_scale: float = 1.0,
           top_shift: tuple[float, float] = (0.0, 0.0)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces (without the bottom) of a convex prism / frustum over a convex footprint: ``[(verts, normal)]``
    with outward normals; the top face comes last."""
    fp = np.asarray(footprint_xz, np.float64)
    n = len(fp)
    centre = fp.mean(axis=0)
    top = centre + (fp - centre) * top_scale + np.asarray(top_shift)
    bottom3 = np.column_stack([fp[:, 0], np.full(n, y0), fp[:, 1]])
    top3 = np.column_stack([top[:, 0], np.full(n, y1), top[:, 1]])
    j = np.roll(np.arange(n), -1)
    quads = np.stack([bottom3, bottom3[j], top3[j], top3], axis=1)  # (n, 4, 3)
    e1 = quads[:, 1] - quads[:, 0]
    e2 = quads[:, 3] - quads[:, 0]
    nrm = np.column_stack([e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                           e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]])
    ln = np.sqrt((nrm ** 2).sum(axis=1))
    ok = ln > 1e-12
    nrm[ok] /= ln[ok, None]
    solid_c = np.array([centre[0], 0.5 * (y0 + y1), centre[1]])
    flip = ((quads.mean(axis=1) - solid_c) * nrm).sum(axis=1) < 0
    nrm[flip] *= -1.0
    faces = [(quads[i], nrm[i]) for i in range(n) if ok[i]]
    faces.append((top3, np.array([0.0, 1.0, 0.0])))
    return faces


_BOX_NORMALS = (np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]),
                np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 5 faces (no bottom) of an axis-aligned box, with outward normals (same layout as :func:`_prism`)."""
    v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x1, y0, z0], [x1, y0, z1], [x1, y1, z1], [x1, y1, z0],
                  [x1, y0, z1], [x0, y0, z1], [x0, y1, z1], [x1, y1, z1],
                  [x0, y0, z1], [x0, y0, z0], [x0, y1, z0], [x0, y1, z1],
                  [x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]], np.float64).reshape(5, 4, 3)
    return [(v[i], _BOX_NORMALS[i]) for i in range(5)]


def _shrink(poly: np.ndarray, f: float) -> np.ndarray:
    """Scale a polygon about its vertex centroid."""
    c = poly.sum(axis=0) / len(poly)
    return c + (poly - c) * f


def _convex_hull_xz(pts: np.ndarray) -> np.ndarray:
    hull = cv2.convexHull(np.asarray(pts, np.float32).reshape(-1, 1, 2))
    return hull.reshape(-1, 2).astype(np.float64)


def _rot_rect(cx: float, cz: float, w: float, length: float, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    loc = np.array([[-w / 2, -length / 2], [w / 2, -length / 2], [w / 2, length / 2], [-w / 2, length / 2]])
    return np.column_stack([cx + loc[:, 0] * c - loc[:, 1] * s, cz + loc[:, 0] * s + loc[:, 1] * c])
