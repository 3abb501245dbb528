"""From per-pixel scores to the obstacles a planner receives (ROS-free; node, pebal-bag and pebal-detect).

Per-pixel anomaly scores separate objects on the road well; what a planner sees is decided here. A
region is reported as an obstacle only when all of these hold (each test can be switched off by its
parameter; :class:`PostProcessConfig` defaults to the plain per-pixel behaviour, the node's parameter
table holds the product defaults):

1. **Candidate pixels**: score > ``threshold - hysteresis`` inside the region of interest and outside
   the *excluded zone* (a margin along the image border, the ego vehicle mask, everything above the
   horizon and beyond the range limit). Regions are their 8-connected components. They are not
   clipped to the road: an object at the road's edge, or a near one that reaches above the road
   region, cuts a notch into the road rather than a hole.
2. **Region score**: the region's mean score exceeds ``threshold`` (not single pixels: hysteresis lets
   a region grow over pixels down to ``threshold - hysteresis``, its mean decides).
3. **On the drivable surface** (``restrict_to_drivable``): the pixels just below the region's lower
   boundary (per column, ``FOOTPRINT_ROWS`` rows) lie, for at least ``min_footprint_on_road`` of them,
   on the *drivable surface*: the filled road (predicted road plus every hole the road region
   encloses: an object on the road is rarely labelled road itself, but the road surrounds it) minus a
   band of ``boundary_band`` (fraction of the image height) along its left and right edges (class
   transitions at road edges score high; the far end is the horizon cut's). A blob of vegetation or
   kerb at the road's edge stands on the band, not on the surface. Footprint pixels in the excluded
   zone are not counted (an obstacle just above the hood is judged by what can be seen).
4. **Large enough for its distance**: at least ``min_obstacle_area`` pixels and, when the scale at its
   bottom row is known, at least ``min_width_m`` wide. The scale comes from the camera model (flat
   ground, intrinsics, height, pitch) or, without one, from the road itself: the road's pixel width per
   row is fitted as a line ``w(v) = a (v - v_h)`` (flat road, straight edges), which also gives the
   horizon row ``v_h``; the road is taken to be ``road_width_m`` wide.
5. **Compact** (``min_fill``): a region filling less than that share of its bounding box is a thin line
   (a lane marking seen obliquely, a tar seam, a kerb edge), painted on the road rather than standing on it.
6. **Not the road itself** (``max_surface_share``): a region covering more than that share of the drivable
   surface is the surface's own score (an unfamiliar road texture, wet asphalt, a domain shift), not an
   object on it; reporting it would put one box over the whole road and hide any real obstacle in it.
7. **Not the scenery** (``max_width_share``, ``min_extent_share``): a region wider than that share of the
   image spans the scene, not an object on the lane (guard rails, tree lines, the far background); a region
   whose pixels lie mostly outside the road's own extent (per row, between the road's first and last
   column) is beside the road, whatever its footprint touches.
8. **Not a known road user** (``max_known_share``): a region most of whose pixels the segmentation calls a
   person, rider, car, truck, bus, train, motorcycle or bicycle is a known object (the vehicle's object
   detection handles those); energy is high at their outlines and on distant ones, which is the main
   source of false obstacles on highway footage.

The drivable surface starts from :func:`road_region`: only predicted road connected to the lower part of
the image and below the horizon that road's width per row implies, so road-labelled sky or far background
cannot close the road's outline around the roadside scenery.

Horizon and range: with a camera model the horizon row is ``cy - fy tan(pitch)`` and rows whose ground
point lies beyond ``max_range_m`` are excluded; without one the horizon is ``horizon_row`` when set (a
fraction of the image height, e.g. from a calibration drive), else the road fit's, and rows where the
fitted road is narrower than ``far_road_width`` (fraction of the image width) count as beyond range.
``horizon_margin`` (fraction of the image height) extends the excluded band below the horizon.

``core.pipeline.ObstaclePipeline`` adds what needs memory: persistence over frames (``core.tracking``)
and a horizon smoothed over recent frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from pebal_perception.core.fields import check_ranges, product_values, setting
from pebal_perception.core.limits import MAX_REGIONS_PER_FRAME, check_threshold
from pebal_perception.core.obstacles import DRIVABLE_TRAIN_IDS, ROAD_USER_TRAIN_IDS, Obstacle
from pebal_perception.geometry import pixel_to_ground, valid_intrinsics, valid_mounting

FULL_ROI = (0.0, 0.0, 1.0, 1.0)
# Largest camera mounting height accepted [m]: above it a "flat ground" model makes no sense (and a typo
# such as 1e308 would give absurd positions).
MAX_CAMERA_HEIGHT_M = 1000.0
# Largest min_obstacle_area [px]: 10^8 pixels is far beyond any camera image (the parameter's range).
MAX_MIN_OBSTACLE_AREA = 100_000_000
FOOTPRINT_ROWS = 3  # rows below a region's lower boundary that make up its footprint
MIN_FIT_ROWS = 8  # road rows needed for the width-per-row line fit
ROAD_BOTTOM_SHARE = 0.4  # a road component must reach this lowest share of the rows to be the ego road
ROAD_TOP_SEARCH = 0.05  # the vanishing point is searched down to this share of the height below the fit
ROAD_REWIDENING = 2.0  # road rows above the narrowest one this many times wider: it is the vanishing point
REJECT_REASONS = ("small", "score", "off_road", "narrow", "thin", "too_large", "too_wide", "off_extent",
                  "known_class")


def check_mounting(height_m: float, pitch_rad: float) -> tuple[float, float]:
    """``camera.height_m`` / ``camera.pitch_rad`` as floats; NaN means unknown (no ground positions).

    A known height must lie in (0, MAX_CAMERA_HEIGHT_M] metres and a known pitch in (-pi/2, pi/2);
    anything else (infinite, 1e308, looking straight down) raises ValueError with the reason."""
    height_m, pitch_rad = float(height_m), float(pitch_rad)
    if not math.isnan(height_m) and not (math.isfinite(height_m) and 0.0 < height_m <= MAX_CAMERA_HEIGHT_M):
        raise ValueError(f"camera.height_m must lie in (0, {MAX_CAMERA_HEIGHT_M:g}] m (or NaN = unknown), "
                         f"got {height_m:g}")
    if not math.isnan(pitch_rad) and not (math.isfinite(pitch_rad) and abs(pitch_rad) < math.pi / 2):
        raise ValueError(f"camera.pitch_rad must lie in (-pi/2, pi/2) (or NaN = unknown), got {pitch_rad:g}")
    return height_m, pitch_rad


def validate_roi(roi: Sequence[float]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` normalised to [0, 1] with x0 < x1 and y0 < y1; ValueError otherwise."""
    try:
        values = tuple(float(v) for v in roi)
    except (TypeError, ValueError):
        raise ValueError(f"roi must be 4 numbers [x0, y0, x1, y1], got {roi!r}") from None
    if len(values) != 4:
        raise ValueError(f"roi must have 4 values [x0, y0, x1, y1] (normalised 0..1), got {len(values)}")
    x0, y0, x1, y1 = values
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"roi values must lie in [0, 1], got {list(values)}")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"roi needs x0 < x1 and y0 < y1, got {list(values)}")
    return values  # type: ignore[return-value]


def validate_polygon(values: Sequence[float], name: str = "ego_mask_polygon") -> tuple[float, ...]:
    """A polygon as a flat ``(x0, y0, x1, y1, ...)`` tuple of normalised [0, 1] image coordinates: empty
    (no polygon) or at least three vertices; ValueError otherwise."""
    try:
        flat = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers x0, y0, x1, y1, ... got {values!r}") from None
    if not flat:
        return ()
    if len(flat) % 2 or len(flat) < 6:
        raise ValueError(f"{name} needs an even number of values, at least 3 vertices (6 values), got {len(flat)}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in flat):
        raise ValueError(f"{name} values must lie in [0, 1] (normalised image coordinates)")
    return flat


def roi_slices(shape: tuple[int, int], roi: Sequence[float]) -> tuple[slice, slice]:
    """Row and column slices of the pixels inside a normalised ROI (pixel i is inside when its left/top
    edge i/W lies in [x0, x1)): columns ``round(x0 * W) .. round(x1 * W)``, same for rows."""
    h, w = shape[:2]
    x0, y0, x1, y1 = roi
    c0, c1 = int(round(x0 * w)), int(round(x1 * w))
    r0, r1 = int(round(y0 * h)), int(round(y1 * h))
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def roi_mask(shape: tuple[int, int], roi: Sequence[float]) -> np.ndarray:
    """H x W bool mask of the ROI."""
    mask = np.zeros(shape[:2], dtype=bool)
    rows, cols = roi_slices(shape, roi)
    mask[rows, cols] = True
    return mask


def polygon_mask(shape: tuple[int, int], polygon: Sequence[float]) -> np.ndarray:
    """H x W bool mask of a normalised polygon (flat x, y list); all False for an empty one."""
    h, w = shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if len(polygon) >= 6:
        pts = np.asarray(polygon, np.float64).reshape(-1, 2) * (w, h)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def mask_to_polygon(mask: np.ndarray, tolerance: float = 0.005) -> tuple[float, ...]:
    """The outline of the largest region of ``mask`` as a normalised polygon (flat x, y tuple; () when
    empty), simplified to ``tolerance`` of the image diagonal: how an estimated ego mask is stored."""
    h, w = mask.shape[:2]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return ()
    largest = max(contours, key=cv2.contourArea)
    approx = cv2.approxPolyDP(largest, tolerance * math.hypot(h, w), True).reshape(-1, 2)
    if len(approx) < 3:
        return ()
    return tuple(float(v) for v in (np.clip(approx / (w, h), 0.0, 1.0)).reshape(-1))


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


# ---------------------------------------------------------------------------------------------- road scale
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


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PostProcessConfig:
    """Run-time adjustable post-processing (the node swaps the whole object atomically). Defaults are the
    plain per-pixel behaviour; each field's ``product`` value is what the node runs by default
    (:data:`PLANNER_DEFAULTS`); each test is described in the module docstring."""

    threshold: float
    restrict_to_drivable: bool = setting(
        False, "Report only regions standing on the drivable surface (predicted road plus the holes it encloses, "
        "minus the boundary band): their footprint, the rows just below them, must lie on it.",
        param="restrict_to_drivable", product=True)
    roi: tuple[float, float, float, float] = setting(
        FULL_ROI, "Region of interest [x0, y0, x1, y1], normalised 0..1 image coordinates (x0 < x1, y0 < y1); "
        "obstacle pixels outside are ignored.", param="roi")
    min_obstacle_area: int = setting(
        1, "Smallest obstacle region in pixels of the input image; smaller blobs are removed from the mask and "
        "not reported.", param="min_obstacle_area", product=50, value_range=(0, MAX_MIN_OBSTACLE_AREA))
    hysteresis: float = setting(
        0.0, "Candidate pixels score above threshold - hysteresis; a region is an obstacle only when its mean "
        "score exceeds the threshold (region score, not single pixels). Score units (nats).",
        param="hysteresis", product=1.0, value_range=(0.0, 1e6))
    boundary_band: float = setting(
        0.0, "Band along the road region's left and right edges excluded from the drivable surface, as a "
        "fraction of the image height (class transitions at road edges score high).",
        param="drivable.boundary_band", product=0.03, value_range=(0.0, 0.5))
    min_footprint_on_road: float = setting(
        0.5, "Share of a region's footprint (the pixel rows just below its lower boundary) that must lie on the "
        "drivable surface for it to be an obstacle (with restrict_to_drivable).",
        param="drivable.min_footprint_on_road", value_range=(0.0, 1.0))
    border_margin: float = setting(
        0.0, "Margin along every image border excluded, as a fraction of the image height.",
        param="border_margin", product=0.01, value_range=(0.0, 0.25))
    ego_mask_polygon: tuple[float, ...] = setting(
        (), "Ego vehicle (hood, mirrors) to exclude: polygon x0, y0, x1, y1, ... in normalised image "
        "coordinates (at least 3 vertices); [] = none, or the one a normal-driving calibration stored in the "
        "checkpoint.", param="ego_mask.polygon")
    horizon_row: float = setting(
        math.nan, "Horizon row as a fraction of the image height; NaN = from camera height/pitch and camera_info "
        "when known, else estimated from the road region (median over recent frames).",
        param="horizon.row", optional_range=(0.0, 1.0))
    horizon_margin: float = setting(
        math.nan, "Rows down to this fraction of the image height below the horizon are excluded (far road, the "
        "horizon band); NaN = no horizon cut.", param="horizon.margin", product=0.0, optional_range=(-1.0, 1.0))
    max_range_m: float = setting(
        math.nan, "With camera height/pitch and camera_info: rows whose flat-ground point lies farther than this "
        "are excluded [m]; NaN = no limit.", param="max_range_m", product=60.0, optional_range=(0.1, 1e4))
    far_road_width: float = setting(
        0.0, "Without a camera model: rows where the road, as fitted (width per row), is narrower than this "
        "fraction of the image width count as beyond range and are excluded; 0 = off.",
        param="far_road_width", product=0.1, value_range=(0.0, 1.0))
    min_width_m: float = setting(
        0.0, "Smallest obstacle width at the distance its bottom row implies [m] (camera model, or the road "
        "width per row taken as road_width_m); 0 = pixel minimum only.",
        param="min_width_m", product=0.1, value_range=(0.0, 100.0))
    road_width_m: float = setting(
        7.0, "Road width assumed for the scale estimated from the road region without a camera model [m].",
        param="road_width_m", value_range=(0.5, 100.0))
    analysis_width: int = setting(
        0, "Regions are found on a copy of the frame scaled to this width (then mapped back to the input "
        "resolution): the score map comes from the network at about that size anyway, and the work no longer "
        "grows with the camera's resolution. 0 = at the input resolution.",
        param="analysis_width", product=1024, value_range=(0, 100_000))
    max_surface_share: float = setting(
        1.0, "A region covering more than this share of the drivable surface is the road's own score "
        "(unfamiliar texture, wet asphalt, domain shift), not an obstacle on it: rejected as too_large (one box "
        "over the whole road would hide any real obstacle in it). 1 = off.",
        param="max_surface_share", product=0.25, value_range=(0.0, 1.0))
    min_fill: float = setting(
        0.0, "Smallest share of its bounding box a region must fill: thinner regions are lines painted on the "
        "road (lane markings seen obliquely, tar seams, kerb edges), rejected as thin. 0 = off.",
        param="min_fill", product=0.3, value_range=(0.0, 1.0))
    max_width_share: float = setting(
        1.0, "A region wider than this share of the image width spans the scene (guard rails, tree lines, the "
        "far background), not an object on the lane: rejected as too_wide. 1 = off.",
        param="max_width_share", product=0.5, value_range=(0.0, 1.0))
    min_extent_share: float = setting(
        0.0, "Smallest share of a region's pixels that must lie within the road's own extent (per row, between "
        "the drivable surface's first and last column): regions mostly beside the road are roadside scenery, "
        "rejected as off_extent. 0 = off.", param="min_extent_share", product=0.5, value_range=(0.0, 1.0))
    max_known_share: float = setting(
        1.0, "A region with more than this share of its pixels segmented as a road user (person, rider, car, "
        "truck, bus, train, motorcycle, bicycle) is a known object, handled by the vehicle's object detection: "
        "rejected as known_class. 1 = off.", param="max_known_share", product=0.5, value_range=(0.0, 1.0))

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "threshold", check_threshold(self.threshold))
        set_(self, "roi", validate_roi(self.roi))
        set_(self, "restrict_to_drivable", bool(self.restrict_to_drivable))
        set_(self, "ego_mask_polygon", validate_polygon(self.ego_mask_polygon))
        check_ranges(self)

    def with_changes(self, **changes: Any) -> "PostProcessConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), e.g. for a calibration's provenance."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


#: What the product runs (the node's parameter defaults, config/detector.yaml; pebal-detect, pebal-eval
#: and pebal-calibrate --normal use the same): every PostProcessConfig field whose product value differs
#: from the plain per-pixel behaviour of the dataclass defaults.
PLANNER_DEFAULTS: dict[str, Any] = product_values(PostProcessConfig)


def calibrated_postprocess(meta: Any) -> dict[str, Any]:
    """The post-processing values a normal-driving calibration (``pebal-calibrate --normal``) stored in a
    checkpoint's metadata (``threshold_info["normal_driving"]["postprocess"]``), {} when there are none."""
    info = getattr(meta, "threshold_info", None) or {}
    normal = info.get("normal_driving") if isinstance(info, dict) else None
    post = normal.get("postprocess") if isinstance(normal, dict) else None
    return dict(post) if isinstance(post, dict) else {}


def fill_from_calibration(values: dict[str, Any], calibrated: Mapping[str, Any] | None) -> dict[str, Any]:
    """``values`` (PostProcessConfig fields) with the ego mask and horizon row taken from a calibration
    where they are unset (empty polygon, NaN row)."""
    values = dict(values)
    calibrated = calibrated or {}
    if not values.get("ego_mask_polygon") and calibrated.get("ego_mask_polygon"):
        values["ego_mask_polygon"] = tuple(calibrated["ego_mask_polygon"])
    row = values.get("horizon_row", math.nan)
    if (row is None or math.isnan(row)) and isinstance(calibrated.get("horizon_row"), float):
        values["horizon_row"] = calibrated["horizon_row"]
    return values


def planner_config(threshold: float, meta: Any = None, **overrides: Any) -> PostProcessConfig:
    """The product's post-processing (:data:`PLANNER_DEFAULTS`, ``overrides`` on top) at ``threshold``,
    with the calibrated ego mask / horizon of ``meta`` (a checkpoint's ModelMeta) where unset."""
    values = fill_from_calibration({**PLANNER_DEFAULTS, **overrides}, calibrated_postprocess(meta))
    return PostProcessConfig(threshold=threshold, **values)


@dataclass(frozen=True)
class GroundModel:
    """Camera intrinsics (for the image size the node receives) + mounting for ground positions."""

    K: np.ndarray
    height_m: float
    pitch_rad: float

    @property
    def usable(self) -> bool:
        return valid_intrinsics(self.K) and valid_mounting(self.height_m, self.pitch_rad)

    def horizon_row(self) -> float:
        """Image row of the horizon (a flat ground's vanishing line, no roll)."""
        k = np.asarray(self.K, np.float64).reshape(3, 3)
        return float(k[1, 2] - k[1, 1] * math.tan(self.pitch_rad))

    def row_geometry(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per image row (centre column): the ground point's range [m] and pixels per metre across the
        image at that distance; NaN above the horizon."""
        k = np.asarray(self.K, np.float64).reshape(3, 3)
        rows = np.arange(height, dtype=np.float64)
        points = pixel_to_ground(np.full(height, k[0, 2]), rows, k, self.height_m, self.pitch_rad)
        ranges = np.linalg.norm(points, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ppm = k[0, 0] / points[:, 2]
        return ranges, ppm


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Region:
    """One candidate region and what was decided about it (for debugging views and tuning)."""

    bbox: tuple[int, int, int, int]
    area: int
    score: float  # mean score over the region
    footprint_on_road: float  # NaN without the drivable test
    width_m: float  # NaN when no scale is known
    rejected: str = ""  # one of REJECT_REASONS, '' = reported


@dataclass
class ProcessedFrame:
    mask: np.ndarray  # H x W bool, the published obstacle mask (pixels of the reported regions)
    obstacles: list[Obstacle]
    anomalous_fraction: float  # share of all pixels with score > threshold (before any test)
    max_score: float  # largest finite score in the image (NaN when none is finite)
    regions: list[Region] = field(default_factory=list)  # every candidate, reported or not
    # For the debug view, at the analysis size (PostProcessConfig.analysis_width; the frame's own size
    # when 0): the drivable surface (None without the drivable test) and the excluded zone (None when
    # nothing is excluded).
    surface: np.ndarray | None = None
    excluded: np.ndarray | None = None
    horizon_row: float = math.nan  # the horizon used [row], NaN when none
    labels: np.ndarray | None = None  # H x W int32: reported obstacle i+1 at its pixels, 0 elsewhere
    road_fit_horizon: float = math.nan  # this frame's own road-fit horizon [row] (NaN without a fit)
    regions_over_cap: int = 0  # candidate regions left out beyond MAX_REGIONS_PER_FRAME (the smallest)


def bottom_centre_pixel(bbox: tuple[int, int, int, int]) -> tuple[float, float]:
    """(u, v) of the bottom-centre pixel of an ``x, y, w, h`` box (pixel centres at integers)."""
    x, y, w, h = bbox
    return x + (w - 1) / 2.0, float(y + h - 1)


def finite_max(score: np.ndarray) -> float:
    """The largest finite value of ``score`` (NaN when none is finite). One pass when the plain maximum is
    finite (then no NaN or +inf is present), the masked copy only otherwise."""
    if score.size == 0:
        return float("nan")
    peak = float(score.max())
    if math.isfinite(peak):
        return peak
    finite = np.isfinite(score)
    return float(score[finite].max()) if finite.any() else float("nan")


# ---------------------------------------------------------------------------------------------- the frame
@dataclass
class _Scene:
    """Per-frame geometry: horizon, range cut-off row and pixels-per-metre per row (or None)."""

    horizon: float = math.nan
    far_row: int = 0  # rows above it are excluded (0 = none)
    ppm: np.ndarray | None = None
    fit_horizon: float = math.nan  # the road fit's own horizon (NaN without a fit)


def _first_row(within: np.ndarray, h: int) -> int:
    """The first row where ``within`` holds (rows above it are beyond range); ``h`` when none does."""
    rows = np.flatnonzero(within)
    return int(rows[0]) if rows.size else h


def _scene_geometry(shape: tuple[int, int], filled_road: np.ndarray | None, config: PostProcessConfig,
                    ground: GroundModel | None, horizon_hint: float = math.nan) -> _Scene:
    h, w = shape
    scene = _Scene()
    rows = np.arange(h, dtype=np.float64)
    if ground is not None and ground.usable:
        ranges, ppm = ground.row_geometry(h, w)
        scene.horizon, scene.ppm = ground.horizon_row(), ppm
        if not math.isnan(config.max_range_m):
            scene.far_row = _first_row(ranges <= config.max_range_m, h)  # NaN (above the horizon): beyond
    else:
        fit = fit_road_scale(filled_road) if filled_road is not None else None
        if fit is not None:
            scene.fit_horizon = fit.horizon_row
        if not math.isnan(config.horizon_row):
            scene.horizon = config.horizon_row * h
        elif not math.isnan(horizon_hint):
            scene.horizon = horizon_hint
        elif fit is not None:
            scene.horizon = fit.horizon_row
        if fit is not None:  # then scene.horizon is set (the fit's own at least)
            road_px = fit.slope * (rows - scene.horizon)
            scene.ppm = np.where(road_px > 0, road_px / config.road_width_m, np.nan)
            if config.far_road_width > 0:
                scene.far_row = _first_row(road_px >= config.far_road_width * w, h)
    if not math.isnan(config.horizon_margin) and not math.isnan(scene.horizon):
        scene.far_row = max(scene.far_row, int(math.ceil(scene.horizon + config.horizon_margin * h)))
    scene.far_row = int(min(max(scene.far_row, 0), h))
    return scene


def _excluded_zone(shape: tuple[int, int], config: PostProcessConfig, scene: _Scene) -> np.ndarray | None:
    h, w = shape
    if not (config.border_margin > 0 or config.ego_mask_polygon or scene.far_row > 0):
        return None
    excluded = polygon_mask(shape, config.ego_mask_polygon) if config.ego_mask_polygon else np.zeros(shape, bool)
    m = int(round(config.border_margin * h))
    if m > 0:
        excluded[:m] = excluded[-m:] = True
        excluded[:, :m] = excluded[:, -m:] = True
    excluded[:scene.far_row] = True
    return excluded


def _footprint_share(region: np.ndarray, surface_box: np.ndarray, known_box: np.ndarray | None) -> float:
    """Share of the footprint pixels (``FOOTPRINT_ROWS`` below each column's lowest region pixel) on the
    surface, counting only pixels outside the excluded zone (``known_box``; an obstacle right above the
    bottom margin or the hood is judged by the footprint pixels that can be seen, not rejected).
    ``region``, ``surface_box`` and ``known_box`` cover the region's box extended by the footprint rows.
    Without any such footprint pixel the region's own lowest pixels are judged."""
    hb = region.shape[0]
    present = region.any(axis=0)
    if not present.any():
        return 0.0
    lowest = hb - 1 - np.argmax(region[::-1], axis=0)  # per column, the region's lowest row
    cols = np.flatnonzero(present)
    on = total = 0
    for k in range(1, FOOTPRINT_ROWS + 1):
        r = lowest[cols] + k
        inside = r < hb
        rr, cc = r[inside], cols[inside]
        if known_box is not None:
            seen = known_box[rr, cc]
            rr, cc = rr[seen], cc[seen]
        total += int(rr.size)
        on += int(surface_box[rr, cc].sum())
    if total == 0:  # at the image bottom or above the excluded zone: judge its own lowest pixels
        return float(surface_box[lowest[cols], cols].mean())
    return on / total


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


def at_analysis_width(width: int, score: np.ndarray, *label_maps: np.ndarray | None) -> tuple:
    """``score`` (linear) and each label map (nearest; None stays None) scaled to ``width`` columns, as
    :func:`process_frame` scales a frame before finding regions; unchanged when already at most that wide
    (or ``width`` is 0). Offline sweeps call it once per frame to run the frame at many thresholds.
    Linear, not area: the score map is already smooth (upsampled from the network, Gaussian-smoothed) and
    a non-integer area resize of a full frame costs more than the whole region analysis."""
    h, w = score.shape
    if not 0 < width < w:
        return (score, *label_maps)
    size = (int(width), max(1, int(round(h * width / w))))
    return (cv2.resize(score, size, interpolation=cv2.INTER_LINEAR),
            *(None if m is None else cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in label_maps))


def process_frame(semantic: np.ndarray | None, score: np.ndarray, config: PostProcessConfig,
                  ground: GroundModel | None = None, horizon_hint: float = math.nan) -> ProcessedFrame:
    """Regions, the reported obstacles and frame statistics for one frame; every output is at the score's
    resolution.

    With ``config.analysis_width`` smaller than the frame's width the regions are found on a copy scaled
    to that width (score area-averaged, classes nearest) and mapped back: masks by nearest neighbour,
    boxes scaled, areas counted on the full-resolution mask, ground positions from the full-resolution
    box; ``surface`` and ``excluded`` (debug only) stay at the analysis size. The score map comes from the
    network at about that size anyway (bilinearly upsampled), so little is lost, and the work grows less
    with the camera's resolution.

    ``horizon_hint`` (a row; NaN = none) replaces the road fit's horizon when no camera model and no
    ``horizon_row`` are configured: ``core.pipeline.ObstaclePipeline`` passes one smoothed over recent frames."""
    score = np.asarray(score, dtype=np.float32)
    h, w = score.shape
    if not 0 < config.analysis_width < w:
        return _process(semantic, score, config, ground, horizon_hint)
    from pebal_perception.geometry import pixel_to_ground_point, scale_intrinsics

    score_s, semantic_s = at_analysis_width(config.analysis_width, score, semantic)
    small = score_s.shape
    sx, sy = w / small[1], h / small[0]
    ground_s = None
    if ground is not None and ground.usable:
        ground_s = replace(ground, K=scale_intrinsics(ground.K, (w, h), small[::-1]))
    config_s = replace(config, min_obstacle_area=int(math.ceil(config.min_obstacle_area / (sx * sy))))
    frame = _process(semantic_s, score_s, config_s, ground_s, horizon_hint / sy if math.isfinite(horizon_hint)
                     else horizon_hint)

    labels = cv2.resize(frame.labels, (w, h), interpolation=cv2.INTER_NEAREST)
    areas = np.bincount(labels.ravel(), minlength=len(frame.obstacles) + 1)

    def scale_box(b):
        x0, y0 = int(math.floor(b[0] * sx)), int(math.floor(b[1] * sy))
        x1, y1 = int(math.ceil((b[0] + b[2]) * sx)), int(math.ceil((b[1] + b[3]) * sy))
        return x0, y0, min(w, x1) - x0, min(h, y1) - y0

    for region in frame.regions:
        region.bbox = scale_box(region.bbox)
        region.area = int(round(region.area * sx * sy))
    for k, obstacle in enumerate(frame.obstacles):
        obstacle.bbox, obstacle.area = scale_box(obstacle.bbox), int(areas[k + 1])
        if ground is not None and ground.usable:
            u, v = bottom_centre_pixel(obstacle.bbox)
            obstacle.ground_position = pixel_to_ground_point(u, v, ground.K, ground.height_m, ground.pitch_rad)
    raw = score > config.threshold
    # surface / excluded stay at the analysis size (only the debug view draws them; it rescales them).
    return ProcessedFrame(mask=labels > 0, obstacles=frame.obstacles,
                          anomalous_fraction=float(raw.mean()) if raw.size else 0.0, max_score=finite_max(score),
                          regions=frame.regions, surface=frame.surface, excluded=frame.excluded,
                          horizon_row=frame.horizon_row * sy, labels=labels,
                          road_fit_horizon=frame.road_fit_horizon * sy, regions_over_cap=frame.regions_over_cap)


def _largest_components(components: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, int]:
    """At most MAX_REGIONS_PER_FRAME of the connected ``components`` (label ids), the largest by area, in
    label (raster) order; and how many were left out. Bounds a frame's cost and its outputs, whatever
    the scores look like (noise over a whole frame gives tens of thousands of components)."""
    over = max(0, components.size - MAX_REGIONS_PER_FRAME)
    if over:
        largest = np.argsort(-areas[components], kind="stable")[:MAX_REGIONS_PER_FRAME]
        components = np.sort(components[largest])
    return components, over


def _process(semantic: np.ndarray | None, score: np.ndarray, config: PostProcessConfig,
             ground: GroundModel | None, horizon_hint: float) -> ProcessedFrame:
    """:func:`process_frame` at the score's own resolution."""
    from pebal_perception.geometry import pixel_to_ground_point

    shape = score.shape
    raw = score > config.threshold  # NaN scores compare False: never obstacles
    drivable = config.restrict_to_drivable and semantic is not None
    filled = drivable_mask(semantic) if semantic is not None else None
    scene = _scene_geometry(shape, filled, config, ground, horizon_hint)
    excluded = _excluded_zone(shape, config, scene)
    candidates = score > (config.threshold - config.hysteresis) if config.hysteresis > 0 else raw.copy()
    if tuple(config.roi) != FULL_ROI:
        candidates &= roi_mask(shape, config.roi)
    if excluded is not None:
        candidates &= ~excluded
    surface = None
    if drivable:
        # Candidates are not clipped to the road: an object at the road's edge, or a near one reaching
        # above the road region, is a notch in the road, not an enclosed hole. The footprint test
        # decides whether a region stands on the road.
        surface = lateral_erode(filled, int(round(config.boundary_band * shape[0])))
    regions: list[Region] = []
    obstacles: list[Obstacle] = []
    labels_out = np.zeros(shape, np.int32)
    # the too_large test's reference, only when that test is on (a full-frame sum per call)
    surface_area = int(surface.sum()) if surface is not None and config.max_surface_share < 1.0 else 0
    # the off_extent test's reference: per row, the road's own left and right end
    extent = road_extent(filled) if drivable and config.min_extent_share > 0 else None
    over_cap = 0
    if candidates.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
        h = shape[0]
        # cheapest test first: smaller components are noise, not listed
        components = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= config.min_obstacle_area) + 1
        components, over_cap = _largest_components(components, stats[:, cv2.CC_STAT_AREA])
        for i in components:
            x, y, bw, bh = (int(v) for v in stats[i, :4])
            area = int(stats[i, cv2.CC_STAT_AREA])
            y1 = min(h, y + bh + FOOTPRINT_ROWS)
            region = labels[y:y + bh, x:x + bw] == i
            values = score[y:y + bh, x:x + bw][region]
            mean = float(values.mean())
            footprint = math.nan
            if surface is not None:
                box = np.zeros((y1 - y, bw), bool)
                box[:bh] = region
                footprint = _footprint_share(box, surface[y:y1, x:x + bw],
                                             None if excluded is None else ~excluded[y:y1, x:x + bw])
            bottom = y + bh - 1
            width_m = math.nan
            if scene.ppm is not None and math.isfinite(scene.ppm[bottom]) and scene.ppm[bottom] > 0:
                width_m = bw / float(scene.ppm[bottom])
            reason = ""
            if not mean > config.threshold:
                reason = "score"
            elif surface is not None and not footprint >= config.min_footprint_on_road:
                reason = "off_road"
            elif config.min_width_m > 0 and math.isfinite(width_m) and width_m < config.min_width_m:
                reason = "narrow"
            elif area < config.min_fill * bw * bh:
                reason = "thin"
            elif (surface_area
                  and int(surface[y:y + bh, x:x + bw][region].sum()) > config.max_surface_share * surface_area):
                reason = "too_large"
            elif bw > config.max_width_share * shape[1]:
                reason = "too_wide"
            elif extent is not None and _extent_share(region, x, y, extent) < config.min_extent_share:
                reason = "off_extent"
            elif (config.max_known_share < 1.0 and semantic is not None
                  and _known_share(semantic[y:y + bh, x:x + bw][region]) > config.max_known_share):
                reason = "known_class"
            regions.append(Region(bbox=(x, y, bw, bh), area=area, score=mean, footprint_on_road=footprint,
                                  width_m=width_m, rejected=reason))
            if reason:
                continue
            labels_out[y:y + bh, x:x + bw][region] = len(obstacles) + 1
            obstacle = Obstacle(id=len(obstacles), bbox=(x, y, bw, bh), area=area, mean_score=mean,
                                max_score=float(values.max()),
                                drivable_fraction=footprint if surface is not None else _below_fraction(
                                    semantic, x, y, bw, bh),
                                width_m=width_m)
            if ground is not None and ground.usable:
                u, v = bottom_centre_pixel(obstacle.bbox)
                obstacle.ground_position = pixel_to_ground_point(u, v, ground.K, ground.height_m, ground.pitch_rad)
            obstacles.append(obstacle)
    fraction = float(raw.mean()) if raw.size else 0.0
    return ProcessedFrame(mask=labels_out > 0, obstacles=obstacles, anomalous_fraction=fraction,
                          max_score=finite_max(score), regions=regions, surface=surface, excluded=excluded,
                          horizon_row=scene.horizon, labels=labels_out,
                          road_fit_horizon=scene.fit_horizon, regions_over_cap=over_cap)


def _extent_share(region: np.ndarray, x: int, y: int, extent: tuple[np.ndarray, np.ndarray]) -> float:
    """Share of a region's pixels (``region``: its box, at ``x, y``) that lie within the road's per-row
    extent (:func:`road_extent`)."""
    rows, cols = np.nonzero(region)
    first, last = extent[0][rows + y], extent[1][rows + y]
    cols = cols + x
    return float(((cols >= first) & (cols <= last)).mean()) if rows.size else 0.0


def _known_share(classes: np.ndarray) -> float:
    """Share of a region's pixels segmented as a road user (:data:`ROAD_USER_TRAIN_IDS`)."""
    return float(np.isin(classes, ROAD_USER_TRAIN_IDS).mean()) if classes.size else 0.0


def obstacle_mask(score: np.ndarray, semantic: np.ndarray | None, config: PostProcessConfig) -> np.ndarray:
    """The published obstacle mask (bool) of one frame: the pixels of its reported regions."""
    return process_frame(semantic, score, config).mask


def _below_fraction(semantic: np.ndarray | None, x: int, y: int, w: int, h: int) -> float:
    """Share of the rows just below the box predicted drivable (the box's own bottom rows at the image
    bottom); NaN without a semantic map. Used when the drivable-surface test is off."""
    if semantic is None:
        return math.nan
    y0, y1 = y + h, min(semantic.shape[0], y + h + FOOTPRINT_ROWS)
    below = semantic[y0:y1, x:x + w]
    if below.size == 0:
        below = semantic[max(y, y + h - FOOTPRINT_ROWS):y + h, x:x + w]
    return float(np.isin(below, DRIVABLE_TRAIN_IDS).mean()) if below.size else math.nan
