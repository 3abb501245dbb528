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
from dataclasses import dataclass, field, replace
from typing import Sequence

import cv2
import numpy as np

from pebal_perception.core.limits import MAX_REGIONS_PER_FRAME
from pebal_perception.core.obstacles import DRIVABLE_TRAIN_IDS, ROAD_USER_TRAIN_IDS, Obstacle
from pebal_perception.core.postprocess_config import FULL_ROI, PostProcessConfig
from pebal_perception.core.road import drivable_mask, fit_road_scale, lateral_erode, road_extent
from pebal_perception.core.geometry import pixel_to_ground, valid_intrinsics, valid_mounting

FOOTPRINT_ROWS = 3  # rows below a region's lower boundary that make up its footprint
REJECT_REASONS = ("small", "score", "off_road", "narrow", "thin", "too_large", "too_wide", "off_extent",
                  "known_class")


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


# ---------------------------------------------------------------------------------------------- road scale


# ---------------------------------------------------------------------------------------------- config


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
    from pebal_perception.core.geometry import pixel_to_ground_point, scale_intrinsics

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
    from pebal_perception.core.geometry import pixel_to_ground_point

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
