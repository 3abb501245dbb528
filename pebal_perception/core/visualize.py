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


# Rejected candidate regions in the debug view, by reason (see core.postprocess.REJECT_REASONS).
REASON_COLOURS = {"score": (255, 160, 0), "off_road": (0, 160, 255), "narrow": (255, 255, 255),
                  "small": (128, 128, 128), "too_large": (255, 60, 60), "thin": (255, 255, 120),
                  "too_wide": (255, 90, 180), "off_extent": (90, 200, 255), "known_class": (180, 120, 255)}
SURFACE_COLOUR = np.array((0, 200, 80), dtype=np.uint8)


def debug_overlay(image: np.ndarray, frame) -> np.ndarray:
    """What the post-processing decided (a ``core.postprocess.ProcessedFrame``): the excluded zone
    darkened, the drivable surface tinted green, the horizon in yellow, every candidate region boxed with
    its mean score (magenta = reported, orange = score too low, blue = off the drivable surface, white =
    too narrow for its distance), reported obstacles with their track id."""
    out = image.copy()
    h, w = out.shape[:2]

    def full(mask):  # surface / excluded may be at the post-processing's analysis size
        if mask is None or mask.shape == (h, w):
            return mask
        return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)

    excluded, surface = full(frame.excluded), full(frame.surface)
    if excluded is not None:
        out[excluded] = (out[excluded] * 0.35).astype(np.uint8)
    if surface is not None and surface.any():
        out[surface] = (0.7 * out[surface] + 0.3 * SURFACE_COLOUR).astype(np.uint8)
    thick = max(1, h // 360)
    scale = max(0.4, h / 1400)
    if np.isfinite(frame.horizon_row) and 0 <= frame.horizon_row < h:
        cv2.line(out, (0, int(frame.horizon_row)), (w - 1, int(frame.horizon_row)), (255, 255, 0), thick)
    for region in frame.regions:
        x, y, bw, bh = region.bbox
        colour = REASON_COLOURS.get(region.rejected, tuple(int(c) for c in OBSTACLE_COLOUR))
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), colour, thick)
        text = f"{region.score:.1f}" + (f" {region.rejected}" if region.rejected else "")
        cv2.putText(out, text, (x, max(10, y - 3)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    for obstacle in frame.obstacles:
        x, y, bw, bh = obstacle.bbox
        if obstacle.track_id:
            cv2.putText(out, f"#{obstacle.track_id}", (x, min(h - 2, y + bh + int(14 * scale) + 2)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in OBSTACLE_COLOUR), thick, cv2.LINE_AA)
    return out


GROUND_TRUTH_COLOUR = (0, 255, 255)  # cyan outline of the labelled obstacles
LEGEND = (("reported obstacle (track id, mean score)", tuple(int(c) for c in OBSTACLE_COLOUR)),
          ("ground-truth obstacle", GROUND_TRUTH_COLOUR))


def annotate_obstacles(image: np.ndarray, boxes, ground_truth: np.ndarray | None = None,
                       caption: str = "") -> np.ndarray:
    """A video frame for people: ``image`` (e.g. the node's overlay) with every reported obstacle boxed
    and labelled with its track id and mean score, the labelled obstacles outlined, a legend and a caption.

    ``boxes``: ``(x, y, w, h, track_id, score)`` per reported obstacle; ``ground_truth``: H x W obstacle
    ids or mask (0 = none), or None."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    thick = max(1, h // 360)
    scale = max(0.35, h / 900)
    magenta = LEGEND[0][1]
    if ground_truth is not None and np.any(ground_truth):
        gt = np.asarray(ground_truth)
        for oid in np.unique(gt[gt > 0]):
            contours, _ = cv2.findContours((gt == oid).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, GROUND_TRUTH_COLOUR, thick)
    for x, y, bw, bh, track_id, score in boxes:
        x, y, bw, bh = int(x), int(y), int(bw), int(bh)
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), magenta, thick)
        label = (f"#{int(track_id)} " if track_id else "") + f"{float(score):.1f}"
        cv2.putText(out, label, (x, max(int(12 * scale) + 2, y - 3)), cv2.FONT_HERSHEY_SIMPLEX, scale, magenta,
                    thick, cv2.LINE_AA)
    line = int(18 * scale) + 4
    rows = [(text, colour) for text, colour in LEGEND] + ([(caption, (255, 255, 255))] if caption else [])
    box_w = min(w, int(max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t, _ in rows)
                      + 3 * line))
    panel = out[:line * len(rows) + 4, :box_w]
    panel[:] = (panel * 0.35).astype(np.uint8)  # darkened so the text reads on any scene
    for k, (text, colour) in enumerate(rows):
        y = line * (k + 1) - 4
        if k < len(LEGEND):
            cv2.rectangle(out, (4, y - line + 8), (4 + line - 8, y), colour, -1 if k == 0 else thick)
        cv2.putText(out, text, (line + 2, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return out
