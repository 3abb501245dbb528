"""Per-pixel rendering of the sky and the ground (bands, markings, texture, shadows, haze)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .camera import Camera
from .ground import _BAND_JOINT, _BAND_TRACK, _BAND_WHITE, _BAND_YELLOW
from .label_space import SKY
from .textures import _GROUND_COARSE, _GROUND_TILE, _noise_tiles

if TYPE_CHECKING:
    from .world import _World


def _ground_start_row(cam: Camera) -> int:
    """First image row strictly below the horizon (rows above it show sky)."""
    return int(min(cam.image_height, max(0, math.floor(cam.horizon_row) + 1)))


def _render_background(world: _World, cam: Camera, ego_z: float, ground_mul: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Sky and ground, per pixel (the ground anchored in world coordinates, so it moves coherently during a
    drive).  ``ground_mul``: brightness factor of the ground rows (shadows, illumination).  Returns (float32
    RGB with the camera gain applied, uint8 labels)."""
    gain = world.gain.astype(np.float32)
    h, w = cam.image_height, cam.image_width
    img = np.empty((h, w, 3), np.float32)
    lab = np.empty((h, w), np.uint8)
    vh = cam.horizon_row
    r0 = _ground_start_row(cam)
    # --- sky gradient and clouds (smooth: rendered at 1/4 resolution, then upsampled)
    if r0 > 0:
        lh, lw_ = max(2, (r0 + 3) // 4), max(2, (w + 3) // 4)
        rows = (np.arange(lh, dtype=np.float32) + 0.5) * (r0 / lh) - 0.5
        t = np.clip((rows - (vh - 1.2 * h)) / (1.2 * h), 0.0, 1.0) ** 1.6
        sky = ((world.sky_zenith[None, :] * (1 - t[:, None]) + world.sky_horizon[None, :] * t[:, None]) * gain
               ).astype(np.float32)
        small = np.repeat(sky[:, None, :], lw_, axis=1)
        if world.cloud_cover > 0.05:
            lo = cv2.resize(world.cloud_field, (lw_, max(2, (h + 3) // 4)), interpolation=cv2.INTER_CUBIC)[:lh]
            alpha = np.clip((lo - (1.2 - world.cloud_cover * 1.4)) * 0.8, 0.0, 0.85)
            alpha *= np.clip((vh - rows) / (0.3 * h) + 0.3, 0.0, 1.0)[:, None].astype(np.float32)
            small += alpha[:, :, None] * (np.array([235, 237, 240], np.float32) * gain - sky)[:, None, :]
        img[:r0] = cv2.resize(small, (w, r0), interpolation=cv2.INTER_LINEAR)
        lab[:r0] = SKY
    if r0 >= h:
        return img, lab
    # --- ground geometry: on image row r the ground point under column c is X = t[r] * dx[c], Z = Z[r], so
    # every lateral band / marking is one column interval per row: painted with +1/-1 marks and a cumsum.
    c, s = math.cos(cam.pitch), math.sin(cam.pitch)
    vrows = np.arange(r0, h, dtype=np.float64)
    dy = (vrows - cam.cy) / cam.fy
    denom = np.maximum(dy * c + s, 1e-6)
    tt = np.minimum(cam.height / denom, 4000.0)
    Z = np.minimum(tt * (c - dy * s), 4000.0)
    R = len(Z)
    dx = (np.arange(w) - cam.cx) / cam.fx
    Zw = Z + ego_z
    rows_all = np.arange(R)

    def cols(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """First column with X >= x on each row (x: (len(rows), K))."""
        return np.searchsorted(dx, x / tt[rows, None])

    def paint(marks: np.ndarray, rows: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> None:
        """Add lateral intervals [x0, x1) (arrays (K,) or (len(rows), K)) on ``rows`` to ``marks``."""
        if len(rows) == 0 or np.size(x0) == 0:
            return
        x0 = np.broadcast_to(x0, (len(rows), np.shape(x0)[-1]))
        x1 = np.broadcast_to(x1, (len(rows), np.shape(x1)[-1]))
        rr = np.broadcast_to(rows[:, None], x0.shape).ravel()
        np.add.at(marks, (rr, cols(x0, rows).ravel()), 1)
        np.add.at(marks, (rr, cols(x1, rows).ravel()), -1)

    def apply(marks: np.ndarray, value: int, r_lo: int = 0) -> None:
        """Set ``band`` to ``value`` inside the painted intervals (rows from ``r_lo`` on)."""
        inside = np.cumsum(marks[r_lo:, :w], axis=1, dtype=np.int16) > 0
        np.putmask(band[r_lo:], inside, value)

    # lateral bands (terrain | sidewalk | kerb | road | kerb | sidewalk | terrain)
    marks = np.zeros((R, w + 1), np.int8)
    ce = np.searchsorted(dx, world.band_edges[None, :] / tt[:, None], side="right")
    np.add.at(marks, (np.broadcast_to(rows_all[:, None], ce.shape).ravel(), ce.ravel()), 1)
    band = np.cumsum(marks[:, :w], axis=1, dtype=np.int8)
    cross = np.zeros(R, bool)
    for za, zb in world.cross:  # cross streets: the whole row is road
        cross |= (Zw >= za) & (Zw < zb)
    if cross.any():
        band[cross] = world.road_band
    main = rows_all[~cross]
    lw = world.lane_w
    n = world.n_lanes
    bx = world.lanes_x0 + lw * np.arange(n + 1)  # lane boundaries
    # tyre tracks: slightly darker bands in each lane
    lanes = world.lanes_x0 + lw * np.arange(n)
    tr0 = np.concatenate([lanes + 0.16 * lw, lanes + 0.70 * lw])
    marks = np.zeros((R, w + 1), np.int16)
    paint(marks, main, tr0, tr0 + 0.14 * lw)
    apply(marks, _BAND_TRACK)
    # paving joints on sidewalks (rows nearer than 30 m)
    near = rows_all[(Z < 30.0) & ~cross]
    if len(near):
        tl = world.tile
        jw = 0.02
        marks = np.zeros((R, w + 1), np.int16)
        zf = (Zw[near] / tl + 0.5) % 1.0
        trans = near[np.abs(zf - 0.5) * tl < jw]
        for side in (-1, 1):
            _road, kerb, walk, _terr = world.edge[side]
            lo, hi = (kerb, walk) if side > 0 else (-walk, -kerb)
            paint(marks, near, np.arange(lo + tl, hi, tl) - jw, np.arange(lo + tl, hi, tl) + jw)
            paint(marks, trans, np.array([lo]), np.array([hi]))
        apply(marks, _BAND_JOINT, int(near[0]))
    # lane markings (labelled road)
    hw = world.mark_w / 2
    dash_rows = main[(Zw[main] % world.dash_period) < world.dash_len]
    centre_k = world.n_oncoming if world.two_way else -99
    dashed = np.array([k for k in range(1, n) if k != centre_k], int)
    white = np.zeros((R, w + 1), np.int16)
    paint(white, dash_rows, bx[dashed] - hw, bx[dashed] + hw)
    if world.edge_lines:
        paint(white, main, bx[[0, n]] - hw, bx[[0, n]] + hw)
    if world.two_way:
        cxl = bx[centre_k]
        if world.centre_double:
            c0 = np.array([cxl - 0.12 - hw * 0.8, cxl + 0.12 - hw * 0.8])
            c1 = c0 + 1.6 * hw
        else:
            c0, c1 = np.array([cxl - hw]), np.array([cxl + hw])
        if world.centre_yellow:
            yellow = np.zeros((R, w + 1), np.int16)
            paint(yellow, main, c0, c1)
            apply(yellow, _BAND_YELLOW)
        else:
            paint(white, main, c0, c1)
    for za, _zb in world.cross:  # zebra crossings and stop lines before intersections
        zr = rows_all[(Zw >= za - 4.5) & (Zw < za - 1.0)]
        st = np.arange(math.floor(world.lanes_x0), world.lanes_x1, 1.0)
        paint(white, zr, np.clip(st, world.lanes_x0, world.lanes_x1),
              np.clip(st + 0.5, world.lanes_x0, world.lanes_x1))
        sr = rows_all[(Zw >= za - 5.3) & (Zw < za - 4.9)]
        paint(white, sr, np.array([world.lanes_x0 + world.n_oncoming * lw]), np.array([world.lanes_x1]))
    apply(white, _BAND_WHITE)
    lab[r0:] = np.take(world.band_label, band)
    base = np.take(world.band_rgb, band, axis=0)
    amp = np.take(world.band_amp, band)
    # --- texture: fine grain (screen space) + world-anchored stains / patches (on a 4x coarser grid)
    _sensor, fine_t, _mid = _noise_tiles(h, w)
    o = world.gtex_off
    oy, ox = int(o[0]) % 64, int(o[1]) % 64
    fine = fine_t[oy + r0:oy + h, ox:ox + w] * np.clip(12.0 / np.maximum(Z, 1e-3), 0.3, 1.0).astype(
        np.float32)[:, None]
    Xs = tt[::4, None] * dx[None, ::4]
    xc_ = (np.floor(Xs * 1.5).astype(np.int64) + o[2]) & (_GROUND_TILE - 1)
    zc_ = (np.floor(Zw[::4] * 1.5).astype(np.int64) + o[3]) & (_GROUND_TILE - 1)
    coarse = cv2.resize(_GROUND_COARSE[zc_[:, None], xc_], (w, R), interpolation=cv2.INTER_LINEAR)
    coarse *= 0.8
    fine += coarse
    fine *= amp
    fine += 1.0
    factor = fine
    if ground_mul is not None:
        factor *= ground_mul
    # --- lighting and haze
    g_shade = world.ambient + (1 - world.ambient) * world.sun[1]
    haze = 1.0 - np.exp(-Z / world.haze_dist)
    factor *= (g_shade * 1.05 * (1.0 - haze)).astype(np.float32)[:, None]
    add = (haze[:, None] * world.haze_colour[None, :]).astype(np.float32) * gain
    img_g = img[r0:]
    np.multiply(base, factor[:, :, None], out=img_g)
    img_g += add[:, None, :]
    return img, lab
