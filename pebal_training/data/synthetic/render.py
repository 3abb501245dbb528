"""Rendering one frame of a world: shadows, background, objects (painter's algorithm), anomaly surface
patterns and obstacle records, the bonnet, blur and sensor noise."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .background import _ground_start_row, _render_background
from .label_space import VOID
from .mesh import _Projected
from .scene import Obstacle, Scene
from .textures import _MAT_AMPS, _noise_tiles

if TYPE_CHECKING:
    from .world import _World


def _render(world: _World, ego_z: float, frame_rng: np.random.Generator, timestamp: float = 0.0,
            frame_index: int = 0) -> Scene:
    cfg = world.cfg
    cam = world.camera
    h, w = cam.image_height, cam.image_width
    r0 = _ground_start_row(cam)

    # --- low-frequency illumination variation, shadows on the ground
    small = frame_rng.standard_normal((6, 12)).astype(np.float32)
    illum = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    illum *= 0.06
    illum += 1.0
    ground_mul = illum[r0:].copy()
    if r0 < h and len(world.shadows.L):
        shadow = np.zeros((h, w), np.float32)
        sp = _Projected(world.shadows, cam, ego_z)
        for oi in np.argsort([o.layer for o in world.shadows.objects], kind="stable"):
            o = world.shadows.objects[oi]
            if o.zmax < ego_z or o.zmin > ego_z + cfg.view_distance:
                continue
            for it in range(o.item_start, o.item_end):
                for p in sp.polys(it):
                    cv2.fillPoly(shadow, [p], float(world.shadows.C[it, 0]), cv2.LINE_8, sp.SHIFT)
        ground_mul *= 1.0 - cv2.GaussianBlur(shadow[r0:], (5, 5), 1.2)
    img, lab = _render_background(world, cam, ego_z, ground_mul)

    # --- objects, painter's algorithm: layer, then far to near
    mesh = world.mesh
    proj = _Projected(mesh, cam, ego_z)
    keys = []
    for oi, o in enumerate(mesh.objects):
        if o.zmax < ego_z + 0.3 or o.zmin > ego_z + cfg.view_distance + 40.0:
            continue
        dxn = 0.0 if o.x0 <= 0.0 <= o.x1 else min(abs(o.x0), abs(o.x1))
        dzn = 0.0 if o.z0 <= ego_z <= o.z1 else min(abs(o.z0 - ego_z), abs(o.z1 - ego_z))
        keys.append((o.layer, -math.hypot(dxn, dzn), oi))
    keys.sort()
    pid = np.zeros((h, w), np.int32)
    for _layer, _d, oi in keys:
        o = mesh.objects[oi]
        for it in range(o.item_start, o.item_end):
            polys = proj.polys(it)
            if polys:
                cv2.fillPoly(pid, polys, it + 1, cv2.LINE_8, proj.SHIFT)

    # --- per-item appearance for this frame (aerial perspective by distance)
    n_items = len(mesh.L)
    ox0 = np.array([ob.x0 for ob in mesh.objects])
    ox1 = np.array([ob.x1 for ob in mesh.objects])
    oz = np.array([0.5 * (ob.z0 + ob.z1) for ob in mesh.objects]) - ego_z
    obj_dist = np.hypot(0.5 * (ox0 + ox1), np.maximum(oz, 0.0)) if len(mesh.objects) else np.zeros(0)
    hz = (1.0 - np.exp(-obj_dist / world.haze_dist)).astype(np.float32)[mesh.IO]
    haze_col = world.haze_colour.astype(np.float32)
    col_lut = np.zeros((n_items + 1, 3), np.float32)
    col_lut[1:] = (mesh.C + hz[:, None] * (haze_col - mesh.C)) * world.gain.astype(np.float32)
    lab_lut = np.zeros(n_items + 1, np.uint8)
    lab_lut[1:] = mesh.L
    amp_lut = np.zeros((2, n_items + 1), np.float32)
    amp_lut[:, 1:] = (_MAT_AMPS[mesh.M] * (1.0 - hz[:, None])).T
    an_lut = np.zeros(n_items + 1, np.uint8)
    obj_anom = np.array([ob.anomaly for ob in mesh.objects], np.uint8)
    if n_items:
        an_lut[1:] = obj_anom[mesh.IO]

    mask8 = (pid > 0).view(np.uint8)
    sensor, fine_t, mid_t = _noise_tiles(h, w)
    oy, ox = (int(v) for v in frame_rng.integers(0, 64, 2))
    tex = np.take(amp_lut[0], pid)
    tex *= fine_t[oy:oy + h, ox:ox + w]
    tex += np.take(amp_lut[1], pid) * mid_t[oy:oy + h, ox:ox + w]
    tex += 1.0
    tex *= illum
    obj_rgb = np.take(col_lut, pid, axis=0)
    obj_rgb *= tex[:, :, None]
    img = cv2.copyTo(obj_rgb, mask8, img)
    semantic = cv2.copyTo(np.take(lab_lut, pid), mask8, lab)
    anomaly_obj = np.take(an_lut, pid)

    # --- anomaly surface patterns, obstacles
    obstacles: list[Obstacle] = []
    hood = world.hood
    if world.anomalies:
        obstacles = _anomaly_pass(world, proj, pid, anomaly_obj, img, tex, ego_z, hood)

    # --- the bonnet, blur, sensor noise
    if hood is not None:
        top, himg = world.hood_image()
        img[top:] = cv2.copyTo(himg, hood[top:].view(np.uint8), img[top:])
    if cfg.blur_sigma > 0:
        k = 2 * int(math.ceil(2.0 * cfg.blur_sigma)) + 1
        img = cv2.GaussianBlur(img, (k, k), cfg.blur_sigma)
    if cfg.noise_sigma > 0:
        sy, sx = (int(v) for v in frame_rng.integers(0, 64, 2))
        img += np.float32(cfg.noise_sigma) * sensor[sy:sy + h, sx:sx + w]
    np.clip(img, 0, 255, out=img)
    image = img.astype(np.uint8)

    anomaly = (anomaly_obj > 0).view(np.uint8)
    instances = anomaly_obj.astype(np.uint8, copy=True)
    if hood is not None:
        semantic[hood] = VOID
        anomaly[hood] = VOID
        instances[hood] = 0
    return Scene(image=image, semantic=semantic, anomaly=anomaly, obstacles=obstacles,
                 camera=cam, ego_z=float(ego_z), timestamp=float(timestamp), frame_index=int(frame_index),
                 instances=instances)


def _anomaly_pass(world: _World, proj: _Projected, pid: np.ndarray, anomaly_obj: np.ndarray, img: np.ndarray,
                  tex: np.ndarray, ego_z: float, hood: np.ndarray | None) -> list[Obstacle]:
    mesh = world.mesh
    cam = world.camera
    h, w = pid.shape
    out = []
    for o in mesh.objects:
        if not o.anomaly or o.zmax < ego_z + 0.3:
            continue
        info = world.anomalies[o.anomaly - 1]
        # full (unoccluded) footprint in the image
        full = np.zeros((h, w), np.uint8)
        drew = False
        for it in range(o.item_start, o.item_end):
            polys = proj.polys(it)
            if polys:
                cv2.fillPoly(full, polys, 1, cv2.LINE_8, proj.SHIFT)
                drew = True
        if not drew:
            continue
        if hood is not None:
            full[hood] = 0
        ys, xs = np.nonzero(full)
        if len(ys) == 0:
            continue
        fy0, fy1, fx0, fx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        vis = anomaly_obj[fy0:fy1, fx0:fx1] == o.anomaly
        if hood is not None:
            vis &= ~hood[fy0:fy1, fx0:fx1]
        area = int(vis.sum())
        if area == 0:
            continue
        # surface pattern in object-anchored screen coordinates
        crop_pid = pid[fy0:fy1, fx0:fx1]
        patt = vis & mesh.PAT[np.maximum(crop_pid - 1, 0)] & (crop_pid > 0)
        dz = max(info.z_near - ego_z, 0.3)
        ppm = cam.fx / dz  # pixels per metre at the object's distance
        if patt.any() and info.pattern != "solid":
            u0, v0 = cam.ground_to_pixel(info.x_center, dz)
            v0 = v0 - info.ref_y * ppm
            vv, uu = np.mgrid[fy0:fy1, fx0:fx1].astype(np.float32)
            lu = (uu - u0) / ppm
            lv = (v0 - vv) / ppm
            if info.pattern == "stripes":
                ca, sa = math.cos(info.angle), math.sin(info.angle)
                sel = ((lu * ca + lv * sa) / info.period) % 1.0 < 0.5
            elif info.pattern == "checker":
                sel = ((np.floor(lu / info.period) + np.floor(lv / info.period)) % 2) == 0
            else:  # spots
                sel = np.zeros(lu.shape, bool)
                for sx, sy, sr in info.spots:
                    sel |= (lu - sx) ** 2 + (lv - sy) ** 2 < sr * sr
            shade = mesh.S[np.maximum(crop_pid - 1, 0)]
            colour = np.where(sel[..., None], info.c2.astype(np.float32), info.c1.astype(np.float32))
            colour = colour * (shade * tex[fy0:fy1, fx0:fx1])[..., None]
            haze = float(1.0 - math.exp(-dz / world.haze_dist))
            colour += haze * (world.haze_colour.astype(np.float32) - colour)
            colour *= world.gain.astype(np.float32)
            region = img[fy0:fy1, fx0:fx1]
            region[patt] = colour[patt]
        vys, vxs = np.nonzero(vis)
        bbox = (int(fx0 + vxs.min()), int(fy0 + vys.min()), int(fx0 + vxs.max() + 1), int(fy0 + vys.max() + 1))
        full_area = int(full[fy0:fy1, fx0:fx1].sum())
        truncated = bool(fx0 == 0 or fy0 == 0 or fx1 == w or fy1 == h)
        if hood is not None and not truncated:
            ring = cv2.dilate(full[fy0:fy1, fx0:fx1], np.ones((3, 3), np.uint8)).astype(bool)
            truncated = bool((ring & hood[fy0:fy1, fx0:fx1]).any())
        out.append(Obstacle(id=int(o.anomaly), kind=info.kind, bbox=bbox, area=area, full_area=full_area,
                            ground_position=(float(info.x_center), float(info.z_near - ego_z)),
                            world_position=(float(info.x_center), float(info.z_near)),
                            size=tuple(float(v) for v in info.size), truncated=truncated))
    out.sort(key=lambda ob: ob.ground_position[1])
    return out
