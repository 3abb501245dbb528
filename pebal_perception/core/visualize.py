"""Colour-coded overlays for people: Cityscapes class colours, obstacles highlighted."""
from __future__ import annotations

import cv2
import numpy as np

from .constants import CITYSCAPES_PALETTE

# trainId -> colour; every other index (255 void included) is drawn black.
_LUT = np.zeros((256, 3), dtype=np.uint8)
_LUT[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
OBSTACLE_COLOUR = np.array((255, 0, 255), dtype=np.uint8)  # magenta: no Cityscapes class uses it


def colorize(semantic: np.ndarray) -> np.ndarray:
    """H x W trainIds -> H x W x 3 uint8 RGB."""
    return _LUT[semantic]


def overlay(image: np.ndarray, semantic: np.ndarray, obstacle: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blends class colours over the RGB image and paints obstacles magenta with an outline."""
    out = cv2.addWeighted(image, 1.0 - alpha, colorize(semantic), alpha, 0.0)
    mask = obstacle.astype(bool)
    if mask.any():
        out[mask] = (0.35 * out[mask] + 0.65 * OBSTACLE_COLOUR).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 0), max(1, image.shape[0] // 360))
    return out


def score_to_colour(score: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Anomaly score map -> colour image (inferno-like OpenCV map), robustly scaled to percentiles."""
    finite = score[np.isfinite(score)]
    if low is None or high is None:
        lo, hi = (np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0))
        low = lo if low is None else low
        high = hi if high is None else high
    scaled = np.clip((score - low) / max(high - low, 1e-6), 0, 1)
    grey = np.nan_to_num(scaled * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
