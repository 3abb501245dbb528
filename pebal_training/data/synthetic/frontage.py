"""What lines the road behind the sidewalks (buildings, walls, fences, hedges, with trees and low
buildings behind them) and the distant skyline that closes the view."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .label_space import BUILDING, FENCE, VEGETATION, WALL
from .mesh import _LAYER_BACK, _LAYER_BUILDING, _LAYER_FRONTAGE, _LAYER_SKYLINE
from .primitives import _box, _rect_x
from .sampling import _jit
from .street_furniture import add_tree
from .textures import _BUILDING_COLOURS, _MAT_BUILDING, _MAT_CAR, _MAT_GLASS, _MAT_ROUGH, _MAT_VEG

if TYPE_CHECKING:
    from .world import _World


def build_skyline(world: _World) -> None:
    """A distant skyline of buildings (or vegetation) that closes the view beyond the generated content."""
    rng = world.rng
    z = world.z_hi + 15.0
    span = 0.9 * z
    xs, ys = [-span], [0.0]
    x = -span
    kind_veg = rng.random() < 0.3
    while x < span:
        hgt = rng.uniform(4, 14) if kind_veg else rng.uniform(6, 38) * (0.4 + rng.random() * 0.8)
        step = rng.uniform(8, 30)
        xs += [x, x + step]
        ys += [hgt, hgt]
        x += step
    xs.append(span)
    ys.append(0.0)
    pts = np.column_stack([xs, ys, np.full(len(xs), z)])
    world.mesh.begin(_LAYER_SKYLINE, -span, span, z, z)
    col = _jit(rng, [95, 110, 95] if kind_veg else [140, 140, 145], 10)
    world.add(pts, col, VEGETATION if kind_veg else BUILDING, None, _MAT_BUILDING)
    if not kind_veg and rng.random() < 0.5:
        # a distant tree line in front of the buildings
        xs2 = np.linspace(-span, span, 90)
        ys2 = np.clip(3.0 + 2.5 * np.sin(xs2 * 0.11 + rng.uniform(0, 6)) + rng.normal(0, 1.2, 90), 0.5, 9)
        pts2 = np.column_stack([np.r_[xs2, span, -span], np.r_[ys2, 0, 0], np.full(92, z - 20)])
        world.mesh.begin(_LAYER_SKYLINE, -span, span, z - 20, z - 20)
        world.add(pts2, _jit(rng, [70, 90, 60], 8), VEGETATION, None, _MAT_VEG)


def build_frontage(world: _World, side: int) -> None:
    """Buildings, walls, fences and hedges along one side (``side``: -1 left, +1 right)."""
    cfg, rng = world.cfg, world.rng
    line = world.edge[side][3]  # outer edge of terrain (or sidewalk)
    z = world.z_lo - rng.uniform(0, 10)
    style_h = rng.choice([0, 1, 2], p=[0.45, 0.35, 0.2])  # urban / suburban / mixed
    while z < world.z_hi:
        nc = world.next_cross_start(z)
        if world.in_cross(z, z + 0.1):
            for a, b in world.cross:
                if z < b and a < z + 0.1:  # inside it, or just before it (z alone would never advance)
                    z = b + rng.uniform(0.5, 3.0)
            continue
        if rng.random() < cfg.building_prob:
            length = min(rng.uniform(8.0, 40.0), nc - z - 0.5)
            if length < 4.0:
                z = nc
                continue
            setback = line + (rng.uniform(0.0, 5.0) if rng.random() < 0.35 else 0.0)
            _building(world, side, setback, z, z + length, style_h)
            z += length + (rng.uniform(1.0, 10.0) if rng.random() < 0.35 else 0.0)
        else:
            length = min(rng.uniform(10.0, 45.0), nc - z - 0.5)
            if length < 3.0:
                z = nc
                continue
            r = rng.random()
            if r < cfg.wall_prob:
                _wall(world, side, line, z, z + length)
            elif r < cfg.wall_prob + cfg.fence_prob:
                _fence(world, side, line, z, z + length)
            else:
                _hedge(world, side, line, z, z + length)
            # trees / low buildings behind
            zz = z + rng.uniform(0, 6)
            while zz < z + length:
                add_tree(world, side * (line + rng.uniform(2.0, 9.0)), zz, layer=_LAYER_BACK,
                         scale=rng.uniform(1.0, 1.6))
                zz += rng.uniform(4.0, 10.0)
            if rng.random() < 0.5:
                _building(world, side, line + rng.uniform(10.0, 18.0), z, z + length, 1)
            z += length


def _building(world: _World, side: int, setback: float, z0: float, z1: float, style: int) -> None:
    rng = world.rng
    depth = rng.uniform(10, 20)
    floors = int(rng.integers(5, 11)) if style == 0 else int(rng.integers(1, 4)) if style == 1 else \
        int(rng.integers(2, 7))
    fh = rng.uniform(2.9, 3.6)
    height = floors * fh + rng.uniform(0.4, 1.5)
    base = _BUILDING_COLOURS[rng.integers(0, len(_BUILDING_COLOURS))]
    col = _jit(rng, base, 10)
    xf = side * setback
    xb = side * (setback + depth)
    nrm = np.array([-float(side), 0.0, 0.0])
    world.mesh.begin(_LAYER_BUILDING, xf, xb, z0, z1)
    # near end face (perpendicular to the road) first, then the facade
    world.add(np.array([[xf, 0, z0], [xb, 0, z0], [xb, height, z0], [xf, height, z0]]), col * 0.97, BUILDING,
              np.array([0.0, 0.0, -1.0]), _MAT_BUILDING)
    world.add(_rect_x(xf, z0, z1, 0.0, height), col, BUILDING, nrm, _MAT_BUILDING)
    xw = xf - side * 0.02
    # parapet / cornice band
    world.add(_rect_x(xw, z0, z1, height - rng.uniform(0.3, 0.8), height), col * 0.8, BUILDING, nrm,
              _MAT_BUILDING)
    # windows, grouped into a few colours (one fillPoly call per group)
    spacing = rng.uniform(2.2, 4.0)
    ww = spacing * rng.uniform(0.4, 0.65)
    wh = fh * rng.uniform(0.4, 0.62)
    length = z1 - z0
    nwin = max(1, int((length - 1.0) / spacing))
    margin = (length - nwin * spacing) / 2.0
    zc = z0 + margin + spacing * (np.arange(nwin) + 0.5)
    shop = rng.random() < (0.6 if style == 0 else 0.25)
    first_floor = 1 if shop else 0
    fl = np.arange(first_floor, floors)
    yc = fl * fh + fh * 0.55
    if len(fl):
        Z, Y = np.meshgrid(zc, yc)
        Z, Y = Z.ravel(), Y.ravel()
        k = len(Z)
        wins = np.empty((k, 4, 3))
        wins[:, :, 0] = xw
        wins[:, 0, 1] = wins[:, 1, 1] = Y - wh / 2
        wins[:, 2, 1] = wins[:, 3, 1] = Y + wh / 2
        wins[:, 0, 2] = wins[:, 3, 2] = Z - ww / 2
        wins[:, 1, 2] = wins[:, 2, 2] = Z + ww / 2
        group = rng.choice(3, size=k, p=[0.6, 0.3, 0.1])
        glass = [_jit(rng, [45, 55, 65], 8), _jit(rng, [110, 130, 150], 10), _jit(rng, [150, 140, 110], 10)]
        frame = col * 0.75 if rng.random() < 0.5 else np.array([225.0, 225, 220])
        # frames (slightly larger) in one call, then glass groups
        fr = wins.copy()
        fr[:, 0:2, 1] -= 0.08
        fr[:, 2:4, 1] += 0.08
        fr[:, [0, 3], 2] -= 0.08
        fr[:, [1, 2], 2] += 0.08
        world.add(list(fr), frame, BUILDING, nrm, _MAT_BUILDING)
        for g in range(3):
            sel = wins[group == g]
            if len(sel):
                world.add(list(sel), glass[g], BUILDING, nrm, _MAT_GLASS)
    if shop:
        shop_col = _jit(rng, [50, 55, 60], 10)
        n_shop = max(1, int(length / rng.uniform(4, 9)))
        edges = np.linspace(z0 + 0.5, z1 - 0.5, n_shop + 1)
        panes = [_rect_x(xw, a + 0.3, b - 0.3, 0.4, fh * 0.85) for a, b in zip(edges[:-1], edges[1:])
                 if b - a > 1.0]
        if panes:
            world.add(panes, shop_col, BUILDING, nrm, _MAT_GLASS)
        world.add(_rect_x(xw - side * 0.01, z0, z1, fh * 0.88, fh * 1.02), _jit(rng, col * 0.6, 20), BUILDING,
                  nrm, _MAT_BUILDING)
    else:
        dz = rng.uniform(z0 + 1.0, max(z0 + 1.1, z1 - 2.0))
        world.add(_rect_x(xw, dz, dz + 1.1, 0.0, 2.2), _jit(rng, [90, 65, 45], 15), BUILDING, nrm,
                  _MAT_BUILDING)
    fp = np.array([[min(xf, xb), z0], [max(xf, xb), z0], [max(xf, xb), z1], [min(xf, xb), z1]])
    world.cast_shadow(fp, height)


def _wall(world: _World, side: int, line: float, z0: float, z1: float) -> None:
    rng = world.rng
    h = rng.uniform(0.8, 2.6)
    col = _jit(rng, [[170, 168, 160], [160, 120, 100], [190, 185, 170], [120, 120, 118]][rng.integers(0, 4)], 8)
    x = side * (line + 0.05)
    xb = x + side * 0.3
    nrm = np.array([-float(side), 0.0, 0.0])
    world.mesh.begin(_LAYER_FRONTAGE, x, xb, z0, z1)
    world.add(np.array([[x, 0, z0], [xb, 0, z0], [xb, h, z0], [x, h, z0]]), col, WALL, np.array([0, 0, -1.0]),
              _MAT_BUILDING)
    world.add(_rect_x(x, z0, z1, 0.0, h), col, WALL, nrm, _MAT_BUILDING)
    world.add(_rect_x(x - side * 0.01, z0, z1, h - 0.12, h), col * 0.8, WALL, nrm, _MAT_BUILDING)
    world.cast_shadow(np.array([[min(x, xb), z0], [max(x, xb), z0], [max(x, xb), z1], [min(x, xb), z1]]), h)


def _fence(world: _World, side: int, line: float, z0: float, z1: float) -> None:
    rng = world.rng
    h = rng.uniform(1.0, 2.0)
    x = side * (line + 0.05)
    nrm = np.array([-float(side), 0.0, 0.0])
    world.mesh.begin(_LAYER_FRONTAGE, x, x, z0, z1)
    if rng.random() < 0.4:  # solid wooden fence with planks
        col = _jit(rng, [125, 95, 65], 12)
        world.add(_rect_x(x, z0, z1, 0.0, h), col, FENCE, nrm, _MAT_ROUGH)
        zs = np.arange(z0, z1, rng.uniform(0.12, 0.2))
        planks = [_rect_x(x - side * 0.01, a, a + 0.02, 0.0, h) for a in zs[1:]]
        if planks:
            world.add(planks, col * 0.7, FENCE, nrm, _MAT_ROUGH)
    else:  # metal posts and rails
        col = _jit(rng, [[90, 95, 95], [60, 80, 65], [160, 160, 155]][rng.integers(0, 3)], 8)
        gap = rng.uniform(0.12, 0.25) if rng.random() < 0.5 else rng.uniform(1.8, 2.6)
        zs = np.arange(z0, z1, gap)
        pw = 0.03 if gap < 0.5 else 0.07
        posts = [_rect_x(x, a, a + pw, 0.0, h) for a in zs]
        world.add(posts, col, FENCE, nrm, _MAT_CAR)
        rails = [_rect_x(x - side * 0.01, z0, z1, y, y + 0.05) for y in (0.1, h * 0.5, h - 0.05)]
        world.add(rails, col * 0.9, FENCE, nrm, _MAT_CAR)


def _hedge(world: _World, side: int, line: float, z0: float, z1: float) -> None:
    rng = world.rng
    h = rng.uniform(0.8, 1.8)
    x = side * (line + 0.1)
    xb = x + side * rng.uniform(0.6, 1.2)
    world.mesh.begin(_LAYER_FRONTAGE, x, xb, z0, z1)
    col = _jit(rng, [55, 85, 40], 10)
    faces = _box(min(x, xb), max(x, xb), 0.0, h, z0, z1)
    world.add_faces(faces, col, VEGETATION, _MAT_VEG)
    world.cast_shadow(np.array([[min(x, xb), z0], [max(x, xb), z0], [max(x, xb), z1], [min(x, xb), z1]]), h)
