"""Anomalies: out-of-distribution objects (boxes, crates, tyres, animals, debris, rocks) placed on the road,
and what the renderer needs to pattern their surfaces and report them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .label_space import ROAD
from .mesh import _LAYER_STREET
from .primitives import _C12, _convex_hull_xz, _ellipse_z, _poly_z, _prism, _rect_z, _rot_rect, _shrink
from .sampling import _jit, _ri, _u
from .textures import _ANIMAL_COLOURS, _ANOMALY_VIVID, _MAT_ANOM, _MAT_CAR, _MAT_FLAT, _MAT_ROUGH

if TYPE_CHECKING:
    from .world import _World


@dataclass
class _AnomalyInfo:
    kind: str
    x_center: float
    z_near: float
    size: tuple[float, float, float]
    pattern: str
    c1: np.ndarray
    c2: np.ndarray
    period: float
    angle: float
    spots: np.ndarray  # (n, 3): x, y offsets (metres, relative to the reference point) and radius
    ref_y: float


def place_anomalies(world: _World) -> None:
    """Place the requested anomalies (in the first view, apart from each other) and build them."""
    cfg, rng = world.cfg, world.rng
    n = _ri(rng, cfg.anomaly_count_range)
    travel = world.z_last - world.z_first
    placed: list[tuple[float, float, float]] = []
    half_fov = math.tan(math.radians(cfg.hfov_deg) / 2.0)
    for _ in range(n):
        kind = str(cfg.anomaly_kinds[int(rng.integers(0, len(cfg.anomaly_kinds)))])
        size = _u(rng, cfg.anomaly_size_range)
        for _attempt in range(30):
            if rng.random() < cfg.anomaly_ego_lane_prob or world.n_lanes == 1:
                lane = world.ego_lane
            else:
                lane = int(rng.integers(0, world.n_lanes))
            half = world.lane_w / 2.0 - min(size, world.lane_w * 0.8) / 2.0
            xc = world.lanes_x0 + (lane + 0.5) * world.lane_w + rng.uniform(-half, half) * 0.8
            d = rng.uniform(cfg.anomaly_distance_range[0], cfg.anomaly_distance_range[1] + travel)
            z = world.z_first + d
            if abs(xc) + size > 0.9 * d * half_fov:  # out of the (first) view
                continue
            if all(abs(z - pz) > (size + ps) * 0.8 + 0.5 or abs(xc - px) > (size + ps) * 0.8 + 0.3
                   for px, pz, ps in placed):
                break
        else:
            continue
        placed.append((xc, z, size))
        _build_anomaly(world, len(world.anomalies) + 1, kind, xc, z, size)


def _build_anomaly(world: _World, idx: int, kind: str, xc: float, z: float, size: float) -> None:
    """Build anomaly ``idx`` with its near contact point at ``(xc, z)``."""
    rng = world.rng
    pattern = str(rng.choice(["solid", "stripes", "checker", "spots"], p=[0.3, 0.3, 0.2, 0.2]))
    c1 = _ANOMALY_VIVID[rng.integers(0, len(_ANOMALY_VIVID))]
    c2 = _ANOMALY_VIVID[rng.integers(0, len(_ANOMALY_VIVID))]
    if np.abs(c1 - c2).sum() < 120:
        c2 = 255.0 - c1
    spots = np.zeros((0, 3))
    mat = _MAT_ANOM
    yaw = rng.uniform(-0.7, 0.7)
    ref_y = size * 0.4
    label = ROAD  # the support surface
    if kind in ("box", "crate"):
        w = size * rng.uniform(0.5, 1.0)
        length = size * rng.uniform(0.5, 1.0)
        h = size * rng.uniform(0.4, 0.9)
        if rng.random() < 0.5:
            w = size
        else:
            length = size
        fp = _rot_rect(0.0, 0.0, w, length, yaw)
        fp[:, 0] += xc
        fp[:, 1] += z - fp[:, 1].min()
        if kind == "box" and rng.random() < 0.35:
            c1 = _jit(rng, [175, 135, 85], 12)  # cardboard with coloured tape / print
            pattern = "solid"
        if kind == "crate" and rng.random() < 0.5:
            c1 = _jit(rng, [170, 125, 70], 12)  # wooden crate
            c2 = c1 * 0.6
            pattern = "stripes"
        faces = _prism(fp, 0.0, h)
        size3 = (float(np.ptp(fp[:, 0])), h, float(np.ptp(fp[:, 1])))
        world.mesh.begin(_LAYER_STREET, float(fp[:, 0].min()), float(fp[:, 0].max()), z,
                         float(fp[:, 1].max()), anomaly=idx)
        world.add_faces(faces, c1, label, mat, patterned=True)
        if kind == "box":
            top = faces[-1][0]
            tape = _shrink(top, 1.0)
            mid = (tape[0] + tape[1]) / 2, (tape[3] + tape[2]) / 2
            dirv = (tape[1] - tape[0]) * 0.08
            strip = np.array([mid[0] - dirv, mid[0] + dirv, mid[1] + dirv, mid[1] - dirv])
            strip[:, 1] += 0.005
            world.add(strip, _jit(rng, [225, 200, 120], 20), label, np.array([0, 1.0, 0]), _MAT_FLAT)
        else:  # crate slats: darker horizontal lines on the side faces
            for verts, nrm in faces[:-1]:
                for t in (0.33, 0.66):
                    b0 = verts[0] + (verts[3] - verts[0]) * t
                    b1 = verts[1] + (verts[2] - verts[1]) * t
                    dy = np.array([0, 0.02 * size, 0])
                    world.add(np.array([b0 - dy, b1 - dy, b1 + dy, b0 + dy]) + nrm * 0.005, c1 * 0.45, label,
                              nrm, _MAT_ROUGH)
        ref_y = h / 2
    elif kind == "tyre":
        r = size / 2
        rubber = np.array([28.0, 28, 30])
        rim = _jit(rng, [175, 175, 180], 10) if rng.random() < 0.6 else c1
        if rng.random() < 0.5:  # lying flat
            t = r * rng.uniform(0.35, 0.5)
            c, s = _C12
            fp = np.column_stack([xc + r * c, z + r + r * s])
            z_near = float(fp[:, 1].min())
            fp[:, 1] += z - z_near
            faces = _prism(fp, 0.0, t)
            world.mesh.begin(_LAYER_STREET, xc - r, xc + r, z, z + 2 * r, anomaly=idx)
            world.add_faces(faces, rubber, label, _MAT_FLAT, skip_top=True)
            top = faces[-1][0]
            hole = _shrink(top, 0.55)
            world.add([top, hole], rubber * 1.3, label, np.array([0, 1.0, 0]), _MAT_FLAT)
            size3 = (2 * r, t, 2 * r)
            ref_y = t
        else:  # standing, facing the camera (squashed when turned)
            t = r * rng.uniform(0.4, 0.6)
            rx = r * max(0.45, abs(math.cos(yaw)))
            world.mesh.begin(_LAYER_STREET, xc - rx, xc + rx, z, z + t, anomaly=idx)
            world.add(_ellipse_z(z + t, xc, r, rx, r, 24), rubber * 0.9, label, None, _MAT_FLAT)
            front = np.array([0.0, 0.0, -1.0])
            world.add(_ellipse_z(z, xc, r, rx, r, 24), rubber, label, front, _MAT_FLAT)
            world.add(_ellipse_z(z - 0.01, xc, r, rx * 0.55, r * 0.55, 24), rim, label, front, _MAT_CAR)
            world.add(_ellipse_z(z - 0.02, xc, r, rx * 0.2, r * 0.2, 12), rim * 0.6, label, front, _MAT_CAR)
            size3 = (2 * rx, 2 * r, t)
            ref_y = r
            fp = np.array([[xc - rx, z], [xc + rx, z], [xc + rx, z + t], [xc - rx, z + t]])
        pattern = "solid"
    elif kind == "animal":
        L = size
        hgt = L * rng.uniform(0.6, 0.95)
        body_c = _ANIMAL_COLOURS[rng.integers(0, len(_ANIMAL_COLOURS))]
        c1 = _jit(rng, body_c, 10)
        c2 = _jit(rng, _ANIMAL_COLOURS[rng.integers(0, len(_ANIMAL_COLOURS))], 10)
        pattern = "spots" if rng.random() < 0.35 else "solid"
        facing = 1.0 if rng.random() < 0.5 else -1.0
        along = abs(math.cos(yaw))  # how side-on we see it
        bl = L * max(0.35, along)  # apparent body length
        leg_top = hgt * 0.55
        body_h = hgt * 0.35
        world.mesh.begin(_LAYER_STREET, xc - bl / 2 - 0.2 * L, xc + bl / 2 + 0.2 * L, z, z + 0.3, anomaly=idx)
        lw = L * 0.05
        legs_x = [xc - bl * 0.35, xc + bl * 0.35]
        for i, lx in enumerate(legs_x):  # far legs, darker
            world.add(_rect_z(z + 0.02, lx - lw + 0.03 * L, lx + lw + 0.03 * L, 0.0, leg_top + 0.02),
                      c1 * 0.7, label, None, mat, patterned=False)
        tail = [[xc - facing * bl * 0.48, leg_top + body_h * 0.8], [xc - facing * bl * 0.5, leg_top + body_h],
                [xc - facing * (bl * 0.62), leg_top + body_h * 0.2], [xc - facing * (bl * 0.58), leg_top]]
        world.add(_poly_z(z + 0.01, tail), c1 * 0.8, label, None, mat)
        world.add(_ellipse_z(z, xc, leg_top + body_h / 2, bl / 2, body_h / 2 + 0.02 * L, 16), c1, label, None,
                  mat, patterned=True)
        for lx in legs_x:
            world.add(_rect_z(z - 0.01, lx - lw, lx + lw, 0.0, leg_top + 0.02), c1 * 0.9, label, None, mat)
        hx = xc + facing * bl * 0.5
        neck = [[hx - facing * 0.12 * L, leg_top + body_h * 0.5], [hx + facing * 0.02 * L, leg_top + body_h * 0.4],
                [hx + facing * 0.12 * L, hgt - 0.02 * L], [hx + facing * 0.02 * L, hgt]]
        world.add(_poly_z(z - 0.005, neck), c1, label, None, mat)
        head_x = hx + facing * 0.12 * L
        world.add(_ellipse_z(z - 0.02, head_x, hgt - 0.06 * L, 0.13 * L, 0.08 * L, 12), c1 * 0.95, label, None,
                  mat)
        ear = [[head_x - facing * 0.06 * L, hgt - 0.02 * L], [head_x - facing * 0.01 * L, hgt + 0.08 * L],
               [head_x + facing * 0.02 * L, hgt - 0.02 * L]]
        world.add(_poly_z(z - 0.025, ear), c1 * 0.7, label, None, mat)
        spots = np.column_stack([rng.uniform(-bl / 2, bl / 2, 6), rng.uniform(-body_h / 2, body_h / 2, 6),
                                 rng.uniform(0.06, 0.14, 6) * L])
        size3 = (bl + 0.3 * L, hgt + 0.08 * L, 0.3)
        fp = np.array([[xc - bl / 2, z], [xc + bl / 2, z], [xc + bl / 2, z + 0.3 * L], [xc - bl / 2, z + 0.3 * L]])
        ref_y = leg_top + body_h / 2
    else:  # debris / rock: convex prism or frustum over a random convex footprint
        k = int(rng.integers(6, 10))
        ang = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = size / 2 * rng.uniform(0.6, 1.0, k)
        squash = rng.uniform(0.4, 1.0) if kind == "debris" else rng.uniform(0.6, 1.0)
        pts = np.column_stack([rad * np.cos(ang), rad * np.sin(ang) * squash])
        c, s = math.cos(yaw), math.sin(yaw)
        pts = pts @ np.array([[c, s], [-s, c]])
        fp = _convex_hull_xz(pts)
        fp[:, 0] += xc
        fp[:, 1] += z - fp[:, 1].min()
        if kind == "debris":
            h = size * rng.uniform(0.06, 0.3)
            faces = _prism(fp, 0.0, h)
            if rng.random() < 0.3:
                c1 = _jit(rng, [185, 190, 195], 15)  # scrap metal
                mat = _MAT_CAR
        else:
            h = size * rng.uniform(0.35, 0.7)
            faces = _prism(fp, 0.0, h, top_scale=rng.uniform(0.3, 0.6),
                           top_shift=(rng.uniform(-0.1, 0.1) * size, rng.uniform(-0.1, 0.1) * size))
            c1 = _jit(rng, [[170, 150, 120], [150, 110, 90], [200, 185, 150], [130, 125, 140]][rng.integers(0, 4)],
                      12)
            c2 = c1 * 0.65
            pattern = "spots" if rng.random() < 0.6 else "solid"
            mat = _MAT_ROUGH
            spots = np.column_stack([rng.uniform(-size / 2, size / 2, 8), rng.uniform(0, h, 8) - h / 2,
                                     rng.uniform(0.04, 0.12, 8) * size])
        world.mesh.begin(_LAYER_STREET, float(fp[:, 0].min()), float(fp[:, 0].max()), z, float(fp[:, 1].max()),
                         anomaly=idx)
        world.add_faces(faces, c1, label, mat, patterned=True)
        size3 = (float(np.ptp(fp[:, 0])), h, float(np.ptp(fp[:, 1])))
        ref_y = h / 2
    if kind in ("box", "crate", "debris", "rock") or (kind == "tyre" and size3[1] < size3[0] * 0.6):
        x_center = float((fp[:, 0].min() + fp[:, 0].max()) / 2)
    else:
        x_center = float(xc)
    if pattern == "spots" and len(spots) == 0:
        spots = np.column_stack([rng.uniform(-size / 2, size / 2, 7), rng.uniform(-size / 3, size / 3, 7),
                                 rng.uniform(0.05, 0.12, 7) * size])
    world.anomalies.append(_AnomalyInfo(kind=kind, x_center=x_center, z_near=float(z), size=size3,
                                        pattern=pattern, c1=np.asarray(c1, float), c2=np.asarray(c2, float),
                                        period=size * rng.uniform(0.12, 0.3), angle=rng.uniform(0, math.pi),
                                        spots=spots, ref_y=ref_y))
    height = size3[1]
    world.cast_shadow(fp, height, world.shadow_strength * 0.95)
    world.contact_shadow(fp, 0.45)
    world.occupied.append((float(fp[:, 0].min()) - 0.3, float(fp[:, 0].max()) + 0.3, z - 1.0,
                           float(fp[:, 1].max()) + 1.0))
