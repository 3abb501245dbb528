"""Polygon soup with painter's-algorithm rendering: the mesh a world is built into, and its per-frame
projection to fixed-point image polygons."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .camera import Camera
from .textures import _MAT_FLAT

#: Painter's layers: lower layers are drawn first; inside a layer, farther objects first.
_LAYER_SKYLINE, _LAYER_BUILDING, _LAYER_BACK, _LAYER_FRONTAGE, _LAYER_STREET = range(5)


class _Obj:
    __slots__ = ("layer", "x0", "x1", "z0", "z1", "item_start", "item_end", "anomaly", "zmin", "zmax")

    def __init__(self, layer: int, x0: float, x1: float, z0: float, z1: float, anomaly: int):
        self.layer = layer
        self.x0, self.x1, self.z0, self.z1 = x0, x1, z0, z1
        self.anomaly = anomaly
        self.item_start = self.item_end = 0
        self.zmin, self.zmax = math.inf, -math.inf


class _Mesh:
    """Accumulates contours grouped into items (one colour/label each) grouped into objects."""

    _NAN3 = (math.nan, math.nan, math.nan)

    def __init__(self) -> None:
        self.contours: list[np.ndarray] = []
        self.item_c0: list[int] = []
        self.normals: list[Sequence[float]] = []
        self.colours: list[Any] = []
        self.shades: list[float] = []
        self.labels: list[int] = []
        self.mats: list[int] = []
        self.patterned: list[bool] = []
        self.item_obj: list[int] = []
        self.objects: list[_Obj] = []

    def begin(self, layer: int, x0: float, x1: float, z0: float, z1: float, anomaly: int = 0) -> None:
        o = _Obj(layer, min(x0, x1), max(x0, x1), min(z0, z1), max(z0, z1), anomaly)
        o.item_start = o.item_end = len(self.labels)
        self.objects.append(o)

    def add(self, contours: np.ndarray | list[np.ndarray], colour: Any, label: int,
            normal: Sequence[float] | None, shade: float, mat: int = _MAT_FLAT, patterned: bool = False) -> None:
        self.item_c0.append(len(self.contours))
        if isinstance(contours, np.ndarray) and contours.ndim == 2:
            self.contours.append(contours)
        else:
            self.contours.extend(contours)
        self.normals.append(self._NAN3 if normal is None else normal)
        self.colours.append(colour)
        self.shades.append(shade)
        self.labels.append(label)
        self.mats.append(mat)
        self.patterned.append(patterned)
        self.item_obj.append(len(self.objects) - 1)
        self.objects[-1].item_end = len(self.labels)

    def freeze(self) -> None:
        n_items = len(self.labels)
        lens = np.fromiter((len(c) for c in self.contours), np.int64, len(self.contours))
        self.V = np.concatenate(self.contours).astype(np.float64) if self.contours else np.zeros((0, 3))
        self.cstart = (np.cumsum(lens) - lens).astype(np.int64)
        self.cend = self.cstart + lens
        c0 = np.array(self.item_c0 + [len(self.contours)], np.int64)
        self.ic = np.column_stack([c0[:-1], c0[1:]]) if n_items else np.zeros((0, 2), np.int64)
        self.N = np.array(self.normals, np.float64).reshape(-1, 3)
        self.P0 = self.V[self.cstart[c0[:-1]]] if n_items else np.zeros((0, 3))
        self.S = np.array(self.shades, np.float32)
        self.C = np.clip(np.array([np.asarray(c, np.float64) for c in self.colours], np.float64).reshape(-1, 3)
                         * self.S[:, None], 0, 255).astype(np.float32)
        self.L = np.array(self.labels, np.uint8)
        self.M = np.array(self.mats, np.int64)
        self.PAT = np.array(self.patterned, bool)
        self.IO = np.array(self.item_obj, np.int64)
        self.cstart_l, self.cend_l = self.cstart.tolist(), self.cend.tolist()
        self.ic_l = [tuple(r) for r in self.ic.tolist()]
        # z extent of every object (for culling)
        if len(self.V):
            zmin_c = np.minimum.reduceat(self.V[:, 2], self.cstart)
            zmax_c = np.maximum.reduceat(self.V[:, 2], self.cstart)
            for o in self.objects:
                if o.item_end > o.item_start:
                    a, b = c0[o.item_start], c0[o.item_end]
                    o.zmin, o.zmax = float(zmin_c[a:b].min()), float(zmax_c[a:b].max())
        del self.contours, self.colours, self.normals


class _Projected:
    """Per-frame projection of a frozen mesh: yields OpenCV fixed-point polygons per item."""

    SHIFT = 4

    def __init__(self, mesh: _Mesh, cam: Camera, ego_z: float, near: float = 0.25):
        self.mesh = mesh
        w, h = cam.image_width, cam.image_height
        self.cam = cam
        V = mesh.V
        c, s = math.cos(cam.pitch), math.sin(cam.pitch)
        rx = V[:, 0]
        ry = V[:, 1] - cam.height
        rz = V[:, 2] - ego_z
        xc = rx
        yc = -ry * c - rz * s
        zc = -ry * s + rz * c
        self.cc = np.column_stack([xc, yc, zc])
        zs = np.maximum(zc, near)
        u = cam.fx * xc / zs + cam.cx
        v = cam.fy * yc / zs + cam.cy
        # OpenCV fills polygons with far-away vertices correctly; only keep coordinates bounded
        big = 16.0 * max(w, h)
        front = zc >= near
        inside = front & (np.abs(u - cam.cx) < big) & (np.abs(v - cam.cy) < big)
        if len(V):
            self.all_in = np.logical_and.reduceat(inside, mesh.cstart).tolist()
            self.any_front = np.logical_or.reduceat(front, mesh.cstart).tolist()
        else:
            self.all_in = self.any_front = []
        scale = float(1 << self.SHIFT)
        self.fp = np.round(np.column_stack([np.clip(u, -big, big), np.clip(v, -big, big)]) * scale
                           ).astype(np.int32)
        self.near = near
        self.planes = [
            (np.array([0.0, 0.0, 1.0]), near),
            (np.array([cam.fx, 0.0, big * 0.9]), 0.0),
            (np.array([-cam.fx, 0.0, big * 0.9]), 0.0),
            (np.array([0.0, cam.fy, big * 0.9]), 0.0),
            (np.array([0.0, -cam.fy, big * 0.9]), 0.0),
        ]
        cam_pos = np.array([0.0, cam.height, ego_z])
        if len(mesh.N):
            d = np.einsum("ij,ij->i", mesh.N, cam_pos - mesh.P0)
            self.facing = (np.isnan(mesh.N[:, 0]) | (d > 1e-9)).tolist()
        else:
            self.facing = []

    def _clip(self, ci: int) -> np.ndarray | None:
        mesh = self.mesh
        P = self.cc[mesh.cstart[ci]:mesh.cend[ci]]
        for nrm, d in self.planes:
            if len(P) < 3:
                return None
            dist = P @ nrm - d
            inside = dist >= 0
            if inside.all():
                continue
            out = []
            m = len(P)
            for i in range(m):
                j = (i + 1) % m
                if inside[i]:
                    out.append(P[i])
                if inside[i] != inside[j]:
                    t = dist[i] / (dist[i] - dist[j])
                    out.append(P[i] + t * (P[j] - P[i]))
            P = np.array(out) if out else np.zeros((0, 3))
        if len(P) < 3:
            return None
        cam = self.cam
        u = cam.fx * P[:, 0] / P[:, 2] + cam.cx
        v = cam.fy * P[:, 1] / P[:, 2] + cam.cy
        return np.round(np.column_stack([u, v]) * float(1 << self.SHIFT)).astype(np.int32)

    def polys(self, item: int) -> list[np.ndarray]:
        if not self.facing[item]:
            return []
        mesh = self.mesh
        a, b = mesh.ic_l[item]
        all_in, fp, cs, ce = self.all_in, self.fp, mesh.cstart_l, mesh.cend_l
        out = []
        for ci in range(a, b):
            if all_in[ci]:
                out.append(fp[cs[ci]:ce[ci]])
            elif self.any_front[ci]:
                p = self._clip(ci)
                if p is not None:
                    out.append(p)
        return out
