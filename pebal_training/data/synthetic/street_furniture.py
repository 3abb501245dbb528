"""Street furniture along the sidewalks: trees, lamp posts, sign posts and traffic lights."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .label_space import POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION
from .mesh import _LAYER_STREET
from .primitives import _C16, _ellipse_z, _poly_z, _rect_z, _shrink
from .sampling import _jit, _u
from .textures import _MAT_CAR, _MAT_FLAT, _MAT_LIGHT, _MAT_ROUGH, _MAT_VEG

if TYPE_CHECKING:
    from .world import _World


def add_tree(world: _World, x: float, z: float, layer: int = _LAYER_STREET, scale: float = 1.0) -> None:
    """One tree (trunk, blobby crown) with the shadow of its crown."""
    rng = world.rng
    crown_y = rng.uniform(3.5, 6.0) * scale
    r = rng.uniform(1.5, 3.0) * scale
    trunk_w = rng.uniform(0.2, 0.35) * scale
    world.mesh.begin(layer, x - 0.2, x + 0.2, z - 0.2, z + 0.2)
    world.add(_rect_z(z, x - trunk_w / 2, x + trunk_w / 2, 0.0, crown_y), _jit(rng, [80, 65, 50], 10),
              VEGETATION, None, _MAT_ROUGH)
    base = _jit(rng, [[60, 90, 40], [75, 100, 45], [50, 75, 40], [90, 110, 55]][rng.integers(0, 4)], 8)
    nb = int(rng.integers(4, 8))
    u = rng.random((nb, 4))
    rr = r * (0.55 + 0.3 * u[:, 2])
    c, s = _C16
    blobs = np.empty((nb, 16, 3))
    blobs[:, :, 0] = (x + (u[:, 0] * 1.4 - 0.7) * r)[:, None] + (rr * (0.9 + 0.3 * u[:, 3]))[:, None] * c
    blobs[:, :, 1] = (crown_y + (u[:, 1] - 0.4) * r)[:, None] + rr[:, None] * s
    blobs[:, :, 2] = (z - 0.01 * np.arange(nb))[:, None]
    for i in range(nb):
        world.add(blobs[i], base * (0.75 + 0.4 * i / max(1, nb - 1)), VEGETATION, None, _MAT_VEG)
    # crown shadow: offset ellipse on the ground
    if not world.overcast and z < world.z_last + 90.0:
        c, s = _C16
        off = -np.array([world.sun[0], world.sun[2]]) / max(world.sun[1], 0.5) * crown_y
        rj = r * 0.85 * (0.75 + 0.25 * rng.random(16))  # leafy, irregular outline
        world.shadows.begin(0, x - r + off[0], x + r + off[0], z - r + off[1], z + r + off[1])
        pts = np.column_stack([x + off[0] + rj * c, np.zeros(16), z + off[1] + rj * s])
        world.shadows.add(pts, np.array([world.shadow_strength * 0.8] * 3), 0, None, 1.0)


def _pole(world: _World, x: float, z: float, side: int, kind: str) -> None:
    rng = world.rng
    grey = _jit(rng, [[120, 122, 125], [70, 75, 72], [150, 150, 148]][rng.integers(0, 3)], 6)
    pw = rng.uniform(0.1, 0.18)
    if kind == "lamp":
        h = rng.uniform(6.0, 9.0)
        arm = rng.uniform(1.2, 2.5)
        xa = x - side * arm
        world.mesh.begin(_LAYER_STREET, x - pw, x + pw, z - pw, z + pw)
        world.add(_rect_z(z, x - pw / 2, x + pw / 2, 0.0, h), grey, POLE, None, _MAT_CAR)
        world.add(_rect_z(z, min(x, xa), max(x, xa), h - 0.1, h), grey, POLE, None, _MAT_CAR)
        world.add(_rect_z(z - 0.01, xa - 0.35, xa + 0.35, h - 0.25, h - 0.02), grey * 0.8, POLE, None, _MAT_CAR)
        if rng.random() < world.cfg.sign_prob:
            _sign_plate(world, x, z - 0.05, rng.uniform(2.2, 2.8))
    elif kind == "sign":
        h = rng.uniform(2.6, 3.4)
        world.mesh.begin(_LAYER_STREET, x - pw, x + pw, z - pw, z + pw)
        world.add(_rect_z(z, x - 0.04, x + 0.04, 0.0, h), grey, POLE, None, _MAT_CAR)
        _sign_plate(world, x, z - 0.03, h - 0.4)
    elif kind == "light":
        h = rng.uniform(3.0, 4.2)
        world.mesh.begin(_LAYER_STREET, x - pw, x + pw, z - pw, z + pw)
        world.add(_rect_z(z, x - pw / 2, x + pw / 2, 0.0, h), grey, POLE, None, _MAT_CAR)
        _traffic_light(world, x, z - 0.05, h)
        if rng.random() < 0.5:  # overhead arm with a second light
            arm = rng.uniform(3.0, 6.0)
            xa = x - side * arm
            world.add(_rect_z(z, min(x, xa), max(x, xa), h + 1.0, h + 1.15), grey, POLE, None, _MAT_CAR)
            world.add(_rect_z(z, x - pw / 2, x + pw / 2, h, h + 1.15), grey, POLE, None, _MAT_CAR)
            _traffic_light(world, xa + side * 0.3, z - 0.05, h + 1.0)
    world.cast_shadow(np.array([[x - pw / 2, z - pw / 2], [x + pw / 2, z - pw / 2], [x + pw / 2, z + pw / 2],
                                [x - pw / 2, z + pw / 2]]), h, world.shadow_strength * 0.9)


def _sign_plate(world: _World, x: float, z: float, y: float) -> None:
    rng = world.rng
    shape = rng.integers(0, 4)
    s = rng.uniform(0.55, 0.8)
    front = np.array([0.0, 0.0, -1.0])
    if shape == 0:  # round prohibition sign
        world.add(_ellipse_z(z, x, y, s / 2, s / 2, 24), [200, 30, 35], TRAFFIC_SIGN, front, _MAT_FLAT)
        world.add(_ellipse_z(z - 0.005, x, y, s * 0.38, s * 0.38, 24), [235, 235, 235], TRAFFIC_SIGN, front,
                  _MAT_FLAT)
        world.add(_rect_z(z - 0.01, x - s * 0.2, x + s * 0.2, y - s * 0.1, y + s * 0.1), [30, 30, 30],
                  TRAFFIC_SIGN, front, _MAT_FLAT)
    elif shape == 1:  # warning triangle
        tri = [[x - s / 2, y - s * 0.4], [x + s / 2, y - s * 0.4], [x, y + s * 0.5]]
        world.add(_poly_z(z, tri), [205, 35, 35], TRAFFIC_SIGN, front, _MAT_FLAT)
        world.add(_shrink(_poly_z(z - 0.005, tri), 0.72), [240, 235, 225], TRAFFIC_SIGN, front, _MAT_FLAT)
    elif shape == 2:  # blue mandatory / information
        world.add(_ellipse_z(z, x, y, s / 2, s / 2, 24) if rng.random() < 0.5 else
                  _rect_z(z, x - s / 2, x + s / 2, y - s / 2, y + s / 2), [30, 80, 170], TRAFFIC_SIGN, front,
                  _MAT_FLAT)
        world.add(_rect_z(z - 0.005, x - s * 0.08, x + s * 0.08, y - s * 0.3, y + s * 0.25), [235, 235, 235],
                  TRAFFIC_SIGN, front, _MAT_FLAT)
    else:  # priority diamond / rectangle
        d = [[x, y - s / 2], [x + s / 2, y], [x, y + s / 2], [x - s / 2, y]]
        world.add(_poly_z(z, d), [240, 240, 240], TRAFFIC_SIGN, front, _MAT_FLAT)
        world.add(_shrink(_poly_z(z - 0.005, d), 0.6), [230, 190, 30], TRAFFIC_SIGN, front, _MAT_FLAT)


def _traffic_light(world: _World, x: float, z: float, y: float) -> None:
    rng = world.rng
    front = np.array([0.0, 0.0, -1.0])
    w, h = 0.32, 0.9
    world.add(_rect_z(z, x - w / 2, x + w / 2, y - h, y), [35, 35, 35], TRAFFIC_LIGHT, front, _MAT_CAR)
    lit = rng.integers(0, 3)
    cols = [[255, 60, 40], [255, 180, 40], [60, 230, 120]]
    for i in range(3):
        c = cols[i] if i == lit else [60, 60, 55]
        yy = y - 0.15 - i * 0.29
        world.mesh.add(_ellipse_z(z - 0.01, x, yy, 0.1, 0.1, 12), np.array(c, float), TRAFFIC_LIGHT, front,
                       1.0 if i == lit else world.shade(front), _MAT_LIGHT)


def build_street_furniture(world: _World, side: int) -> None:
    """Lamp posts, sign posts, traffic lights at intersections and street trees along one side."""
    cfg, rng = world.cfg, world.rng
    road_edge, kerb, walk, terr = world.edge[side]
    # lamp posts
    z = world.z_small + rng.uniform(0, cfg.pole_spacing_range[1])
    while z < world.z_hi:
        if not world.in_cross(z - 1, z + 1):
            _pole(world, side * (kerb + 0.4), z, side, "lamp")
        z += _u(rng, cfg.pole_spacing_range)
    # sign posts
    z = world.z_small + rng.uniform(0, 60)
    while z < world.z_hi:
        if not world.in_cross(z - 1, z + 1):
            _pole(world, side * (kerb + 0.3), z, side, "sign")
        z += rng.uniform(35, 110)
    # traffic lights at intersections (right side before, left side after)
    for a, b in world.cross:
        zl = a - 1.0 if side > 0 else b + 1.0
        if world.z_small < zl < world.z_hi:
            _pole(world, side * (kerb + 0.5), zl, side, "light")
    # street trees
    if rng.random() < cfg.tree_prob:
        in_terrain = world.terrain_w[side] > 1.2
        xt = side * ((walk + terr) / 2 if in_terrain else kerb + min(1.0, world.sidewalk_w[side] / 2))
        z = world.z_small + rng.uniform(0, 8)
        while z < world.z_hi:
            if not world.in_cross(z - 3, z + 3):
                add_tree(world, xt + rng.uniform(-0.2, 0.2), z)
            z += _u(rng, cfg.tree_spacing_range)
