"""Road users: vehicles (driving and parked), pedestrians and cyclists."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .label_space import BICYCLE, BUS, CAR, PERSON, RIDER, TRUCK
from .mesh import _LAYER_STREET
from .primitives import _box, _ellipse_x, _ellipse_z, _poly_z, _prism, _rect_x, _rect_z, _shrink
from .sampling import _jit, _ri, _u
from .textures import _CAR_COLOUR_P, _CAR_COLOURS, _MAT_CAR, _MAT_CLOTH, _MAT_FLAT, _MAT_GLASS, _MAT_LIGHT

if TYPE_CHECKING:
    from .world import _World


# ---- vehicles ---------------------------------------------------------------------------------------------
def _vehicle(world: _World, xc: float, z0: float, forward: bool, kind: str, parked: bool = False) -> float:
    """Add a vehicle whose near end is at ``z0``; returns its length.  ``forward``: drives along +Z
    (we see its rear); otherwise oncoming (we see its front)."""
    rng = world.rng
    if kind == "car":
        L, W, H = rng.uniform(3.9, 4.9), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.65)
        label = CAR
    elif kind == "van":
        L, W, H = rng.uniform(4.8, 5.5), rng.uniform(1.9, 2.05), rng.uniform(1.9, 2.5)
        label = CAR
    elif kind == "truck":
        L, W, H = rng.uniform(7.0, 11.0), rng.uniform(2.3, 2.5), rng.uniform(3.0, 3.8)
        label = TRUCK
    else:  # bus
        L, W, H = rng.uniform(11.0, 13.0), 2.55, rng.uniform(3.0, 3.3)
        label = BUS
    z1 = z0 + L
    x0, x1 = xc - W / 2, xc + W / 2
    col = _CAR_COLOURS[rng.choice(len(_CAR_COLOURS), p=_CAR_COLOUR_P / _CAR_COLOUR_P.sum())]
    if kind == "bus":
        col = _jit(rng, [[200, 40, 40], [240, 190, 40], [230, 230, 225], [40, 110, 180]][rng.integers(0, 4)], 10)
    col = _jit(rng, col, 6)
    dark = np.array([22.0, 22, 24])
    glass = _jit(rng, [40, 50, 60], 6)
    world.mesh.begin(_LAYER_STREET, x0, x1, z0, z1)
    wr = 0.33 if kind in ("car", "van") else 0.5
    clear = 0.25 if kind in ("car", "van") else 0.45
    axles = (z0 + 0.8 + wr * 0.5, z1 - 0.8 - wr * 0.5) if kind in ("car", "van") else (z0 + 1.6, z1 - 2.5)
    # tyres and underbody: one dark silhouette (the body hides most of it)
    under = [f for f, _n in _box(x0 + 0.06, x1 - 0.06, 0.0, clear + 0.1, axles[0] - wr, axles[1] + wr)]
    world.add(under, dark, label, None, _MAT_FLAT)
    near = np.array([0.0, 0.0, -1.0])
    if kind == "car":
        hb = clear + rng.uniform(0.55, 0.7)
        world.add_faces(_box(x0, x1, clear, hb, z0, z1), col, label, _MAT_CAR)
        a, b = (0.28, 0.18) if forward else (0.18, 0.3)
        cab = np.array([[x0 + 0.06, z0 + a * L], [x1 - 0.06, z0 + a * L], [x1 - 0.06, z1 - b * L],
                        [x0 + 0.06, z1 - b * L]])
        faces = _prism(cab, hb, H, top_scale=0.78)
        for verts, nrm in faces:
            world.add(verts, col, label, nrm, _MAT_CAR)
            if nrm[1] < 0.9:
                win = _shrink(verts, 0.82)
                win[:, 1] = np.minimum(win[:, 1], H - 0.06)
                world.add(win + nrm * 0.01, glass, label, nrm, _MAT_GLASS)
    else:
        world.add_faces(_box(x0, x1, clear, H, z0, z1), col, label, _MAT_CAR)
        ybot = H * (0.45 if kind == "bus" else 0.55)
        for sx, nrm in ((x0 - 0.01, np.array([-1.0, 0, 0])), (x1 + 0.01, np.array([1.0, 0, 0]))):
            if kind == "bus":
                world.add(_rect_x(sx, z0 + 0.3, z1 - 0.3, ybot, H - 0.35), glass, label, nrm, _MAT_GLASS)
            else:
                cab_z = (z0 + 0.3, z0 + 1.6) if not forward else (z1 - 1.6, z1 - 0.3)
                world.add(_rect_x(sx, cab_z[0], cab_z[1], ybot, H - 0.5), glass, label, nrm, _MAT_GLASS)
        if kind != "truck" or not forward:
            world.add(_rect_z(z0 - 0.01, x0 + 0.15, x1 - 0.15, ybot, H - 0.3), glass, label, near, _MAT_GLASS)
    # wheels on the side that can face the camera (the camera stays at X = 0)
    sides = [(x0 - 0.01, np.array([-1.0, 0, 0]))] if x0 > 0 else [(x1 + 0.01, np.array([1.0, 0, 0]))] \
        if x1 < 0 else []
    for sx, nrm in sides:
        world.add([_ellipse_x(sx, az, wr, wr, wr) for az in axles], dark, label, nrm, _MAT_FLAT)
        if z0 < world.z_last + 60.0:
            world.add([_ellipse_x(sx + nrm[0] * 0.01, az, wr, wr * 0.5, wr * 0.5) for az in axles],
                      [150, 150, 150], label, nrm, _MAT_CAR)
    # lights and plate on the visible end
    ly = clear + 0.35 if kind in ("car", "van") else clear + 0.4
    lamp = ([110, 30, 30] if parked else [170, 25, 25]) if forward else [235, 235, 220]
    world.add([_rect_z(z0 - 0.02, x0 + 0.08, x0 + 0.35, ly, ly + 0.14),
               _rect_z(z0 - 0.02, x1 - 0.35, x1 - 0.08, ly, ly + 0.14)], lamp, label, near, _MAT_LIGHT)
    world.add(_rect_z(z0 - 0.02, xc - 0.26, xc + 0.26, clear + 0.1, clear + 0.22), [230, 230, 225], label, near,
              _MAT_FLAT)
    if rng.random() < 0.6 and kind in ("car", "van"):  # bumper
        world.add(_rect_z(z0 - 0.015, x0, x1, clear, clear + 0.08), col * 0.5 + 20, label, near, _MAT_CAR)
    fp = np.array([[x0, z0], [x1, z0], [x1, z1], [x0, z1]])
    world.cast_shadow(fp, H * 0.85)
    world.contact_shadow(fp, 0.6)
    world.occupied.append((x0, x1, z0, z1))
    return L


def _vehicle_kind(world: _World) -> str:
    r = world.rng.random()
    if r < world.cfg.truck_prob:
        return "truck"
    if r < world.cfg.truck_prob + world.cfg.bus_prob:
        return "bus"
    return "van" if world.rng.random() < 0.12 else "car"


def build_traffic(world: _World) -> None:
    """Vehicles in the driving lanes (the ego lane kept clear up to beyond its anomalies)."""
    cfg, rng = world.cfg, world.rng
    n = _ri(rng, cfg.car_count_range)
    zmin, zmax = world.z_first + 6.0, world.z_last + min(cfg.view_distance, 160.0)
    # keep the ego lane free of vehicles up to beyond its farthest anomaly (they would hide it)
    ego_lane_x = world.lanes_x0 + (world.ego_lane + 0.5) * world.lane_w
    ego_clear = max([a.z_near + a.size[2] + 8.0 for a in world.anomalies
                     if abs(a.x_center - ego_lane_x) < world.lane_w / 2 + 0.3], default=-math.inf)
    for _ in range(n):
        for _attempt in range(8):
            lane = int(rng.integers(0, world.n_lanes))
            if lane == world.ego_lane and rng.random() < 0.5:
                continue  # fewer vehicles straight ahead
            if lane == world.ego_lane:
                zmin_l = max(zmin, ego_clear)
            else:
                zmin_l = zmin
            oncoming = lane < world.n_oncoming
            kind = _vehicle_kind(world)
            xc = world.lanes_x0 + (lane + 0.5) * world.lane_w + rng.uniform(-0.3, 0.3)
            z0 = rng.uniform(zmin_l, zmax) if rng.random() < 0.3 else zmin_l + rng.exponential(30.0)
            L = {"car": 4.9, "van": 5.5, "truck": 11.0, "bus": 13.0}[kind]
            if z0 > zmax or not world.free(xc - 1.3, xc + 1.3, z0, z0 + L, margin=1.5):
                continue
            _vehicle(world, xc, z0, not oncoming, kind)
            break


def build_parked_cars(world: _World, side: int) -> None:
    """Parked cars along one side, where it has a parking strip."""
    rng = world.rng
    if world.park[side] <= 0:
        return
    density = _u(rng, world.cfg.parked_car_density)
    xc = side * (world.edge[side][0] - 1.1)
    z = world.z_small - 4.0 + rng.uniform(0, 6)
    while z < min(world.z_hi, world.z_last + 150):
        if rng.random() < density * 6.0 and not world.in_cross(z - 1, z + 6, margin=2.0):
            kind = "van" if rng.random() < 0.12 else "car"
            if world.free(xc - 0.9, xc + 0.9, z, z + 5.0, margin=0.3):
                L = _vehicle(world, xc + rng.uniform(-0.15, 0.15), z, True if side > 0 else rng.random() < 0.5,
                             kind, parked=True)
                z += L + rng.uniform(0.6, 2.0)
                continue
        z += rng.uniform(2.0, 8.0)


# ---- people -----------------------------------------------------------------------------------------------
def _person(world: _World, x: float, z: float, label: int = PERSON, height: float | None = None,
            pose: float | None = None, y0: float = 0.0, sitting: bool = False) -> None:
    rng = world.rng
    H = height if height is not None else rng.uniform(1.55, 1.92)
    s = H / 1.75
    skin = _jit(rng, [[225, 185, 155], [190, 140, 105], [120, 80, 55], [235, 200, 175]][rng.integers(0, 4)], 8)
    shirt = _jit(rng, [[40, 40, 45], [180, 30, 30], [40, 70, 140], [220, 220, 215], [90, 110, 70],
                       [140, 90, 50], [200, 170, 60], [100, 100, 105]][rng.integers(0, 8)], 12)
    pants = _jit(rng, [[30, 35, 55], [35, 35, 38], [150, 130, 100], [70, 70, 75]][rng.integers(0, 4)], 8)
    hair = _jit(rng, [[30, 25, 20], [90, 60, 35], [180, 150, 90], [60, 55, 50]][rng.integers(0, 4)], 6)
    spread = (rng.uniform(0.0, 0.18) if pose is None else pose) * s
    if label == PERSON:
        world.mesh.begin(_LAYER_STREET, x - 0.3, x + 0.3, z - 0.2, z + 0.2)
    hip = y0 + 0.92 * s if not sitting else y0
    sh = hip + 0.55 * s
    lw = 0.075 * s
    if not sitting:
        for sgn in (-1, 1):
            foot = x + sgn * (0.07 * s + spread)
            leg = [[x + sgn * 0.02 * s - lw, hip], [x + sgn * 0.02 * s + lw, hip], [foot + lw, y0],
                   [foot - lw, y0]]
            world.add(_poly_z(z + 0.01, leg), pants, label, None, _MAT_CLOTH)
    else:
        world.add(_rect_z(z + 0.01, x - 0.16 * s, x + 0.16 * s, y0 - 0.45 * s, y0 + 0.05), pants, label, None,
                  _MAT_CLOTH)
    torso = [[x - 0.15 * s, hip], [x + 0.15 * s, hip], [x + 0.2 * s, sh], [x - 0.2 * s, sh]]
    for sgn in (-1, 1):
        arm = [[x + sgn * 0.17 * s, sh], [x + sgn * 0.23 * s, sh - 0.02], [x + sgn * 0.26 * s, hip - 0.05 * s],
               [x + sgn * 0.19 * s, hip - 0.05 * s]]
        world.add(_poly_z(z + 0.005, arm), shirt * 0.85, label, None, _MAT_CLOTH)
    world.add(_poly_z(z, torso), shirt, label, None, _MAT_CLOTH)
    world.add(_rect_z(z - 0.001, x - 0.04 * s, x + 0.04 * s, sh - 0.02, sh + 0.08 * s), skin, label, None,
              _MAT_CLOTH)
    world.add(_ellipse_z(z - 0.002, x, sh + 0.17 * s, 0.1 * s, 0.12 * s, 12), skin, label, None, _MAT_CLOTH)
    world.add(_ellipse_z(z - 0.003, x, sh + 0.22 * s, 0.105 * s, 0.075 * s, 12), hair, label, None, _MAT_CLOTH)
    if label == PERSON:
        fp = np.array([[x - 0.25, z - 0.15], [x + 0.25, z - 0.15], [x + 0.25, z + 0.15], [x - 0.25, z + 0.15]])
        world.cast_shadow(fp, H * 0.9, world.shadow_strength * 0.9)


def _rider(world: _World, x: float, z: float, crossing: bool) -> None:
    rng = world.rng
    frame = _jit(rng, [[30, 30, 30], [180, 30, 30], [30, 60, 150], [200, 200, 200]][rng.integers(0, 4)], 8)
    dark = np.array([25.0, 25, 25])
    world.mesh.begin(_LAYER_STREET, x - 0.9, x + 0.9, z - 0.3, z + 0.3)
    if crossing:  # side view: bicycle along X
        r = 0.34
        for wx in (x - 0.52, x + 0.52):
            outer = _ellipse_z(z + 0.02, wx, r, r, r, 24)
            inner = _ellipse_z(z + 0.02, wx, r, r * 0.86, r * 0.86, 24)
            world.add([outer, inner], dark, BICYCLE, None, _MAT_FLAT)
        bars = [[[x - 0.52, r], [x, r + 0.02], [x + 0.1, r + 0.45], [x - 0.2, r + 0.45]],
                [[x, r], [x + 0.52, r], [x + 0.4, r + 0.5], [x + 0.32, r + 0.5]]]
        for b in bars:
            world.add(_poly_z(z + 0.015, b), frame, BICYCLE, None, _MAT_CAR)
        _person(world, x - 0.05, z, RIDER, height=rng.uniform(1.6, 1.85), y0=r + 0.5, sitting=True)
    else:  # seen from behind, riding along the road
        world.add(_rect_z(z + 0.05, x - 0.03, x + 0.03, 0.0, 0.68), dark, BICYCLE, None, _MAT_FLAT)
        world.add(_rect_z(z + 0.04, x - 0.05, x + 0.05, 0.35, 0.8), frame, BICYCLE, None, _MAT_CAR)
        world.add(_rect_z(z + 0.06, x - 0.28, x + 0.28, 1.0, 1.04), frame, BICYCLE, None, _MAT_CAR)
        _person(world, x, z, RIDER, height=rng.uniform(1.6, 1.85), y0=0.8, sitting=True)
    fp = np.array([[x - 0.4, z - 0.4], [x + 0.4, z - 0.4], [x + 0.4, z + 0.4], [x - 0.4, z + 0.4]])
    world.cast_shadow(fp, 1.6, world.shadow_strength * 0.9)
    world.occupied.append((x - 0.9, x + 0.9, z - 0.5, z + 0.5))


def build_people(world: _World) -> None:
    """Pedestrians (on the sidewalks, some crossing at intersections) and possibly one cyclist."""
    cfg, rng = world.cfg, world.rng
    n = _ri(rng, cfg.person_count_range)
    for _ in range(n):
        if world.cross and rng.random() < 0.25:
            a, _b = world.cross[int(rng.integers(0, len(world.cross)))]
            z = a - rng.uniform(1.5, 4.0)
            x = rng.uniform(world.road_x0 + 0.5, world.road_x1 - 0.5)
            if not world.free(x - 0.3, x + 0.3, z - 0.3, z + 0.3, margin=0.3):
                continue
            world.occupied.append((x - 0.3, x + 0.3, z - 0.3, z + 0.3))
        else:
            side = 1 if rng.random() < 0.5 else -1
            _, kerb, walk, _ = world.edge[side]
            x = side * rng.uniform(kerb + 0.3, walk - 0.2)
            z = world.z_first + 4.0 + rng.exponential(30.0)
            if world.in_cross(z - 1, z + 1):
                continue
        _person(world, x, z)
        if rng.random() < 0.3:  # walking in pairs
            _person(world, x + rng.choice([-0.6, 0.6]), z + rng.uniform(-0.5, 0.5))
    if rng.random() < cfg.rider_prob:
        crossing = bool(world.cross) and rng.random() < 0.3
        for _attempt in range(6):
            if crossing:
                a, _b = world.cross[int(rng.integers(0, len(world.cross)))]
                z = a - rng.uniform(1.5, 4.0)
                x = rng.uniform(world.road_x0 + 1.0, world.road_x1 - 1.0)
            else:
                x = world.lanes_x1 - rng.uniform(0.6, 1.0)
                z = world.z_first + rng.uniform(8.0, 60.0)
            if world.free(x - 0.9, x + 0.9, z - 0.5, z + 0.5, margin=0.5):
                _rider(world, x, z, crossing)
                break
