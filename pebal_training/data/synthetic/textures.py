"""Surface appearance: materials (texture noise amplitudes), colour palettes and fixed noise tiles."""
from __future__ import annotations

import math

import cv2
import numpy as np

# material -> (fine noise amplitude, mid-frequency noise amplitude), multiplicative
_MAT_FLAT, _MAT_BUILDING, _MAT_VEG, _MAT_CAR, _MAT_GLASS, _MAT_CLOTH, _MAT_ANOM, _MAT_ROUGH, _MAT_LIGHT = \
    range(9)
_MAT_AMPS = np.array([[0.03, 0.03], [0.035, 0.035], [0.17, 0.24], [0.02, 0.03], [0.03, 0.06],
                      [0.05, 0.05], [0.07, 0.09], [0.12, 0.14], [0.0, 0.0]], np.float32)

_CAR_COLOURS = np.array([[225, 225, 225], [235, 235, 230], [170, 172, 175], [120, 122, 125], [35, 35, 38],
                         [28, 30, 45], [40, 60, 120], [150, 28, 26], [70, 20, 24], [45, 75, 55],
                         [190, 180, 150], [95, 90, 80], [210, 170, 40]], np.float64)
_CAR_COLOUR_P = np.array([12, 8, 14, 10, 14, 6, 6, 6, 3, 3, 3, 4, 1], np.float64)
_BUILDING_COLOURS = np.array([[200, 190, 170], [215, 205, 185], [175, 165, 150], [150, 90, 70],
                              [170, 110, 85], [140, 140, 140], [185, 185, 180], [205, 195, 150],
                              [160, 175, 185], [200, 170, 150], [120, 110, 100], [225, 220, 210]], np.float64)
_ANOMALY_VIVID = np.array([[235, 120, 25], [210, 40, 150], [35, 190, 205], [235, 215, 35], [125, 55, 175],
                           [140, 215, 40], [30, 85, 225], [240, 240, 240], [215, 30, 35], [245, 150, 190],
                           [255, 90, 60], [20, 160, 110]], np.float64)
_ANIMAL_COLOURS = np.array([[120, 80, 45], [165, 120, 70], [60, 45, 35], [215, 205, 190], [150, 150, 145],
                            [190, 140, 80], [35, 30, 28]], np.float64)

_NOISE_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_GROUND_TILE = 256


def _noise_tiles(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (seed-independent) noise tiles, cached per image size: per-channel sensor noise (h+64, w+64,
    3), fine luminance noise (h+64, w+64) and blurred mid-frequency noise, all ~unit variance."""
    key = (h, w)
    tiles = _NOISE_CACHE.get(key)
    if tiles is None:
        g = np.random.default_rng(0x5EB41)
        sensor = g.standard_normal((h + 64, w + 64, 3), dtype=np.float32)
        fine = cv2.GaussianBlur(g.standard_normal((h + 64, w + 64), dtype=np.float32), (0, 0), 0.8)
        fine /= fine.std() + 1e-6
        mid = cv2.GaussianBlur(g.standard_normal((h + 64, w + 64), dtype=np.float32), (0, 0), 3.0)
        mid /= mid.std() + 1e-6
        tiles = (sensor, fine, mid)
        if len(_NOISE_CACHE) > 8:
            _NOISE_CACHE.clear()
        _NOISE_CACHE[key] = tiles
    return tiles


def _blur_wrap(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a periodic tile (seamless when tiled)."""
    p = int(math.ceil(3 * sigma)) + 1
    big = np.pad(a, p, mode="wrap")
    return cv2.GaussianBlur(big, (0, 0), sigma)[p:-p, p:-p]


def _make_ground_tiles() -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(0x6209D)
    n = _GROUND_TILE
    fine = g.standard_normal((n, n), dtype=np.float32)
    fine = 0.6 * fine + 0.8 * _blur_wrap(fine, 1.0)
    fine /= fine.std()
    coarse = _blur_wrap(g.standard_normal((n, n), dtype=np.float32), 6.0)
    coarse /= coarse.std()
    return fine.astype(np.float32), coarse.astype(np.float32)


_GROUND_FINE, _GROUND_COARSE = _make_ground_tiles()
