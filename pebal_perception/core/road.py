"""The road a frame shows, from its class map (ROS-free): the ego road (predicted road connected to the
lower image, cut at its own horizon and at the vanishing point), the drivable surface (that road with
the holes it encloses), its extent per row and the scale its width gives per row."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pebal_perception.core.obstacles import DRIVABLE_TRAIN_IDS

MIN_FIT_ROWS = 8  # road rows needed for the width-per-row line fit
ROAD_BOTTOM_SHARE = 0.4  # a road component must reach this lowest share of the rows to be the ego road
ROAD_TOP_SEARCH = 0.05  # the vanishing point is searched down to this share of the height below the fit
ROAD_REWIDENING = 2.0  # road rows above the narrowest one this many times wider: it is the vanishing point


def _bottom_connected(road: np.ndarray, share: float = ROAD_BOTTOM_SHARE) -> np.ndarray:
    """The connected components of ``road`` that reach the lowest ``share`` of the image rows."""
    h = road.shape[0]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(road.astype(np.uint8), connectivity=8)
    bottom = stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT]
    keep = np.flatnonzero(bottom >= h * (1.0 - share)) + 1
    if keep.size == n - 1:
        return road
    lut = np.zeros(n, bool)
    lut[keep] = True
    return lut[labels]


def road_region(semantic: np.ndarray) -> np.ndarray:
    """H x W bool: the road the vehicle drives on. The predicted road pixels connected to the lower part of
    the image (the lowest :data:`ROAD_BOTTOM_SHARE` of the rows), cut at the horizon that road's own width
    per row implies (:func:`fit_road_scale`) and at its narrowest row near it (:func:`_road_top`). Sky near
    the horizon or far background that the network calls road is left out: joined to the road at the
    vanishing point it would otherwise close the road's outline around all the roadside scenery in
    between, which then became an "enclosed" hole on the surface."""
    # One drivable class (road): a comparison is several times faster than np.isin on a full frame.
    road = semantic == DRIVABLE_TRAIN_IDS[0] if len(DRIVABLE_TRAIN_IDS) == 1 else np.isin(semantic, DRIVABLE_TRAIN_IDS)
    if not road.any():
        return road
    road = _bottom_connected(road)
    top = _road_top(road)
    if top > 0:
        road[:top] = False
        road = _bottom_connected(road)
    return road


def _road_top(road: np.ndarray) -> int:
    """The first row of the ego road: below the horizon of its width-per-row fit, and not above the row
    where it is narrowest near that horizon when rows above it are more than :data:`ROAD_REWIDENING` times
    as wide (the vanishing point: a road narrows toward it, so what widens again above it is not road).
    The narrowest row is searched from the road's top down to :data:`ROAD_TOP_SEARCH` of the image height
    below the fitted horizon (without a fit: the upper half of the road's rows); 0 when the road has no
    rows."""
    h = road.shape[0]
    widths = road.sum(axis=1)
    rows = np.flatnonzero(widths)
    if rows.size == 0:
        return 0
    fit = fit_road_scale(road)
    top = int(math.ceil(fit.horizon_row)) if fit is not None and fit.horizon_row > 0 else 0
    limit = fit.horizon_row + ROAD_TOP_SEARCH * h if fit is not None else 0.5 * (rows[0] + rows[-1])
    upper = rows[rows <= limit]
    if upper.size:
        narrowest = int(upper[np.flatnonzero(widths[upper] == widths[upper].min())[-1]])
        # Only a real widening above it marks a vanishing point (an occluder on the road narrows it too).
        if widths[:narrowest].max(initial=0) > ROAD_REWIDENING * widths[narrowest]:
            top = max(top, narrowest)
    return top


def drivable_mask(semantic: np.ndarray, fill_holes: bool = True) -> np.ndarray:
    """H x W bool: the :func:`road_region`, plus (``fill_holes``) every hole it encloses."""
    road = road_region(semantic)
    if not fill_holes or not road.any():
        return road
    road_u8 = road.astype(np.uint8)
    contours, _ = cv2.findContours(road_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(road_u8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool) | road


def road_extent(surface: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first and last column of ``surface`` (the road's own extent); a row without surface takes
    the extent of the next row below that has some (above the road: its top row's; below the road: its
    lowest row's). Every row is (0, -1), an empty extent, when there is no surface."""
    h, w = surface.shape
    has = surface.any(axis=1)
    if not has.any():
        return np.zeros(h, np.int64), np.full(h, -1, np.int64)
    first = np.argmax(surface, axis=1)
    last = w - 1 - np.argmax(surface[:, ::-1], axis=1)
    rows = np.flatnonzero(has)
    nearest = rows[np.clip(np.searchsorted(rows, np.arange(h)), 0, rows.size - 1)]
    return first[nearest], last[nearest]


@dataclass(frozen=True)
class RoadScale:
    """The road's pixel width per row fitted as ``w(v) = slope * (v - horizon_row)`` (rows of the image)."""

    horizon_row: float
    slope: float  # road pixels per row below the horizon

    def road_width_px(self, row: np.ndarray | float) -> np.ndarray | float:
        return self.slope * (np.asarray(row, np.float64) - self.horizon_row)


def road_width_rows(road: np.ndarray, hood_share: float = 0.08,
                    min_rows: int = MIN_FIT_ROWS) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows (and their road pixel counts) a width-per-row fit should use; None when fewer than
    ``min_rows`` rows hold road. Rows that would bias the fit are left out when enough others remain:
    the bottom ``hood_share`` of the image (the ego hood), rows where the road reaches the left or right
    image border (their width is cut off) and the upper 20 % of the road's rows (far, noisy; sky or hills
    joined to the road)."""
    h, w = road.shape
    widths = road.sum(axis=1).astype(np.float64)
    rows = np.flatnonzero(widths >= max(3.0, 0.01 * w))
    if rows.size < min_rows:
        return None
    edge = max(2, w // 100)
    for test in (lambda r: r < h * (1.0 - hood_share),
                 lambda r: ~(road[r, :edge].any(axis=1) | road[r, w - edge:].any(axis=1))):
        keep = test(rows)
        if keep.sum() >= min_rows:
            rows = rows[keep]
    lower = rows[rows >= rows[0] + 0.2 * (rows[-1] - rows[0])]
    if lower.size >= min_rows:
        rows = lower
    return rows, widths[rows]


def robust_line(x: np.ndarray, y: np.ndarray, min_points: int = 3) -> tuple[float, float] | None:
    """Least-squares ``y = slope x + intercept``, refitted without points beyond three robust sigmas
    (median absolute deviation) until nothing changes; None with fewer than ``min_points`` points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.ones(x.size, bool)
    slope = intercept = math.nan
    for _ in range(4):
        if keep.sum() < min_points:
            return None
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        resid = y - (slope * x + intercept)
        mad = float(np.median(np.abs(resid[keep] - np.median(resid[keep]))))
        new = np.abs(resid) <= max(3.0 * 1.4826 * mad, 1.0)
        if np.array_equal(new, keep) or new.sum() < min_points:
            break
        keep = new
    return float(slope), float(intercept)


def fit_road_scale(road: np.ndarray, hood_share: float = 0.08) -> RoadScale | None:
    """The road's width per row fitted as ``w(v) = slope (v - horizon)`` (:func:`road_width_rows`,
    :func:`robust_line`). None when the road is too small or the fit is not a road that narrows toward a
    horizon above it."""
    selected = road_width_rows(road, hood_share)
    if selected is None:
        return None
    rows, widths = selected
    line = robust_line(rows, widths, MIN_FIT_ROWS)
    if line is None:
        return None
    slope, intercept = line
    if not (math.isfinite(slope) and slope > 1e-3):
        return None
    horizon = -intercept / slope
    if not (math.isfinite(horizon) and -road.shape[0] <= horizon < rows.min()):
        return None
    return RoadScale(horizon_row=float(horizon), slope=float(slope))


def lateral_erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` shrunk by ``radius`` pixels sideways only (a 1 x (2 radius + 1) element): the band along
    the road's left and right edges, where kerbs, vegetation and walls meet it. The road's lower edge
    under a near object that reaches above the road region (a notch) stays: the full-width road below
    it has no lateral edge there. The far end is the horizon / range cut's job. Where the road reaches the
    left or right image border its edge is out of view, so the band lies along the border (what the
    network calls road there is as often a barrier or kerb cut by the frame)."""
    if radius <= 0 or not mask.any():
        return mask
    kernel = np.ones((1, 2 * radius + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
