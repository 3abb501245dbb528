"""The world of a scene or a drive: all static content in world coordinates, built once.

:class:`_World` holds what every builder shares (config, random generator, camera, lighting, road layout,
occupancy of the road, the object and shadow meshes) and calls the builders in a fixed order, which fixes
the order of the random draws: :mod:`.ground`, :mod:`.frontage`, :mod:`.street_furniture`,
:mod:`.road_users` and :mod:`.anomalies`.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from .anomalies import _AnomalyInfo, place_anomalies
from .camera import Camera
from .config import SceneConfig
from .frontage import build_frontage, build_skyline
from .ground import build_ground_model
from .mesh import _Mesh
from .primitives import _convex_hull_xz, _shrink
from .road_users import build_parked_cars, build_people, build_traffic
from .sampling import _jit, _ri, _u
from .street_furniture import build_street_furniture
from .textures import _CAR_COLOURS, _MAT_FLAT


class _World:
    """All static content of a scene / drive, in world coordinates."""

    def __init__(self, cfg: SceneConfig, rng: np.random.Generator, z_first: float, z_last: float):
        self.cfg = cfg
        self.rng = rng
        self.z_first, self.z_last = z_first, z_last
        self.z_lo = z_first - 25.0  # long objects (buildings) start here
        self.z_small = z_first - 5.0  # small objects (poles, trees, cars) start here
        self.z_hi = z_last + cfg.view_distance
        self.mesh = _Mesh()
        self.shadows = _Mesh()
        self.anomalies: list[_AnomalyInfo] = []
        self.occupied: list[tuple[float, float, float, float]] = []  # (x0, x1, z0, z1) on the road

        w, h = cfg.width, cfg.height
        f = (w / 2.0) / math.tan(math.radians(cfg.hfov_deg) / 2.0)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        if cfg.pitch_deg is not None:
            pitch = math.radians(cfg.pitch_deg)
        else:
            pitch = math.atan((cy - _u(rng, cfg.horizon_range) * h) / f)
        self.camera = Camera(fx=f, fy=f, cx=cx, cy=cy, height=float(cfg.camera_height), pitch=pitch,
                             image_width=w, image_height=h)
        self._lighting()
        self._layout()
        build_ground_model(self)
        build_skyline(self)
        place_anomalies(self)
        for side in (-1, 1):
            build_frontage(self, side)
            build_street_furniture(self, side)
            build_parked_cars(self, side)
        build_traffic(self)
        build_people(self)
        self._hood()
        self.noise_seed = int(rng.integers(0, 2 ** 62))
        self.mesh.freeze()
        self.shadows.freeze()

    # ---- lighting ---------------------------------------------------------------------------------------
    def _lighting(self) -> None:
        rng = self.rng
        self.overcast = bool(rng.random() < self.cfg.overcast_prob)
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(22, 62))
        self.sun = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        self.ambient = rng.uniform(0.78, 0.9) if self.overcast else rng.uniform(0.5, 0.66)
        self.shadow_strength = 0.12 if self.overcast else rng.uniform(0.35, 0.55)
        if self.overcast:
            g = rng.uniform(170, 205)
            self.sky_zenith = np.array([g - 12, g - 6, g + 4])
            self.sky_horizon = np.array([g + 15, g + 17, g + 20])
            self.cloud_cover = 0.0
        else:
            self.sky_zenith = _jit(rng, [70, 125, 200], 12)
            self.sky_horizon = _jit(rng, [185, 208, 232], 8)
            self.cloud_cover = rng.uniform(0.0, 0.9)
        self.cloud_field = rng.standard_normal((12, 24)).astype(np.float32)
        self.haze_colour = self.sky_horizon * 0.9 + 20
        self.haze_dist = rng.uniform(250, 420) if self.overcast else rng.uniform(400, 900)
        self._sun = tuple(float(v) for v in self.sun)
        self._shade_flat = float(self.ambient + (1 - self.ambient) * 0.55)
        self.gain = rng.uniform(0.88, 1.08) * np.array([rng.uniform(0.95, 1.05), 1.0, rng.uniform(0.93, 1.06)])

    def shade(self, normal: Sequence[float] | None) -> float:
        if normal is None:
            return self._shade_flat
        nx, ny, nz = float(normal[0]), float(normal[1]), float(normal[2])
        d = max(0.0, nx * self._sun[0] + ny * self._sun[1] + nz * self._sun[2])
        return min(1.15, self.ambient + (1 - self.ambient) * d + 0.05 * ny)

    def add(self, contours, colour, label, normal=None, mat=_MAT_FLAT, patterned=False) -> None:
        self.mesh.add(contours, colour, label, normal, self.shade(normal), mat, patterned)

    def add_faces(self, faces, colour, label, mat=_MAT_FLAT, patterned=False, skip_top=False) -> None:
        for verts, nrm in faces:
            if skip_top and nrm[1] > 0.99:
                continue
            self.add(verts, colour, label, nrm, mat, patterned)

    def cast_shadow(self, footprint_xz: np.ndarray, height: float, strength: float | None = None) -> None:
        """Ground shadow of a prism with this footprint and height (and a contact shadow)."""
        fp = np.asarray(footprint_xz, np.float64)
        if self.overcast or fp[:, 1].min() > self.z_last + 90.0:  # soft light / too far to matter
            return
        s = self.sun
        off = -np.array([s[0], s[2]]) / max(s[1], 0.25) * height
        hull = _convex_hull_xz(np.vstack([fp, fp + off]))
        st = self.shadow_strength if strength is None else strength
        self.shadows.begin(0, float(hull[:, 0].min()), float(hull[:, 0].max()), float(hull[:, 1].min()),
                           float(hull[:, 1].max()))
        pts = np.column_stack([hull[:, 0], np.full(len(hull), 0.0), hull[:, 1]])
        self.shadows.add(pts, np.array([st, st, st]), 0, None, 1.0)

    def contact_shadow(self, footprint_xz: np.ndarray, strength: float = 0.55) -> None:
        if footprint_xz[:, 1].min() > self.z_last + 120.0:
            return
        fp = _shrink(np.asarray(footprint_xz, np.float64), 1.06)
        self.shadows.begin(1, float(fp[:, 0].min()), float(fp[:, 0].max()), float(fp[:, 1].min()),
                           float(fp[:, 1].max()))
        self.shadows.add(np.column_stack([fp[:, 0], np.zeros(len(fp)), fp[:, 1]]),
                         np.array([strength] * 3), 0, None, 1.0)

    # ---- road layout ------------------------------------------------------------------------------------
    def _layout(self) -> None:
        cfg, rng = self.cfg, self.rng
        n = _ri(rng, cfg.lane_count_range)
        lw = _u(rng, cfg.lane_width_range)
        two_way = n >= 2 and rng.random() < cfg.two_way_prob
        n_oncoming = n // 2 if two_way else 0
        ego_lane = int(rng.integers(n_oncoming, n))
        jitter = rng.uniform(-0.25, 0.25)
        self.n_lanes, self.lane_w, self.two_way, self.n_oncoming = n, lw, two_way, n_oncoming
        self.ego_lane = ego_lane
        self.lanes_x0 = -(ego_lane + 0.5) * lw - jitter
        self.lanes_x1 = self.lanes_x0 + n * lw
        park_l = 2.2 if rng.random() < cfg.parking_prob else 0.0
        park_r = 2.2 if rng.random() < cfg.parking_prob else 0.0
        self.park = {-1: park_l, 1: park_r}
        self.road_x0 = self.lanes_x0 - park_l
        self.road_x1 = self.lanes_x1 + park_r
        self.kerb_w = rng.uniform(0.2, 0.3)
        self.sidewalk_w = {s: _u(rng, cfg.sidewalk_width_range) for s in (-1, 1)}
        self.terrain_w = {s: (_u(rng, cfg.terrain_width_range) if rng.random() < cfg.terrain_prob else 0.0)
                          for s in (-1, 1)}
        # lateral distance of edges from the road centre line outwards, per side
        self.edge = {}
        for s in (-1, 1):
            road_edge = self.road_x1 if s > 0 else -self.road_x0
            kerb = road_edge + self.kerb_w
            walk = kerb + self.sidewalk_w[s]
            terr = walk + self.terrain_w[s]
            self.edge[s] = (road_edge, kerb, walk, terr)
        # cross streets
        self.cross: list[tuple[float, float]] = []
        if cfg.cross_street_spacing > 0:
            z = self.z_first + rng.exponential(cfg.cross_street_spacing) * 0.8 + 15.0
            while z < self.z_hi - 30:
                width = rng.uniform(8.0, 14.0)
                self.cross.append((z, z + width))
                z += width + 40.0 + rng.exponential(cfg.cross_street_spacing)
        self.dash_len = rng.choice([3.0, 3.0, 4.5, 6.0])
        self.dash_period = self.dash_len + rng.choice([6.0, 9.0, 12.0])
        self.mark_w = rng.uniform(0.1, 0.16)
        self.edge_lines = bool(rng.random() < 0.6)
        self.centre_yellow = bool(two_way and rng.random() < 0.3)
        self.centre_double = bool(two_way and rng.random() < 0.5)
        # ego corridor: inliers are kept out of it where the camera drives
        self.occupied.append((-1.4, 1.4, self.z_first - 6.0, self.z_last + 12.0))

    def in_cross(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        return any(z1 > a - margin and z0 < b + margin for a, b in self.cross)

    def next_cross_start(self, z: float) -> float:
        for a, b in self.cross:
            if b > z:
                return a
        return math.inf

    def free(self, x0: float, x1: float, z0: float, z1: float, margin: float = 0.5) -> bool:
        for a0, a1, b0, b1 in self.occupied:
            if x1 + margin > a0 and x0 - margin < a1 and z1 + margin > b0 and z0 - margin < b1:
                return False
        return True

    # ---- ego bonnet -----------------------------------------------------------------------------------------
    def _hood(self) -> None:
        rng, cfg = self.rng, self.cfg
        self.hood = None
        if rng.random() >= cfg.ego_hood_prob:
            return
        h, w = cfg.height, cfg.width
        hh = rng.uniform(0.05, 0.1) * h
        mask = np.zeros((h, w), np.uint8)
        ry = hh * rng.uniform(4.0, 7.0)
        centre = (int(round((w - 1) / 2 + rng.uniform(-0.03, 0.03) * w)), int(round(h - hh + ry)))
        cv2.ellipse(mask, centre, (int(w * rng.uniform(0.65, 0.9)), int(ry)), 0.0, 0.0, 360.0, 1, -1)
        self.hood = mask.astype(bool)
        self.hood_rgb = _CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS))]
        self._hood_img: np.ndarray | None = None

    def hood_image(self) -> tuple[int, np.ndarray]:
        """(first row, RGB float32 image of the bonnet rows from there on; valid where ``self.hood``)."""
        if self._hood_img is None:
            h, w = self.hood.shape
            top = int(np.argmax(self.hood.any(axis=1))) if self.hood.any() else h
            self.hood_top = top
            yy = np.arange(top, h, dtype=np.float32)[:, None]
            grad = np.clip((yy - top) / max(1.0, h - top), 0, 1)
            refl = self.sky_horizon.astype(np.float32) * 0.35 + self.hood_rgb.astype(np.float32) * 0.5
            xx = np.abs(np.arange(w, dtype=np.float32) - w / 2) / (w / 2)
            shine = 1.0 + 0.25 * np.exp(-((grad - 0.15) ** 2) / 0.01) * (1 - xx[None, :])
            img = refl[None, None, :] * ((1.0 - 0.5 * grad) * shine)[:, :, None]
            self._hood_img = np.ascontiguousarray(img * self.gain, np.float32)
        return self.hood_top, self._hood_img
