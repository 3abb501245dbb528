"""The settings of the post-processing (:class:`PostProcessConfig`): every field declared once with its node
parameter, product default, range and description (:mod:`pebal_perception.core.fields`), and the checks
and calibrated values around them (ROS-free)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence


from pebal_perception.core.fields import check_ranges, product_values, setting
from pebal_perception.core.limits import check_threshold

FULL_ROI = (0.0, 0.0, 1.0, 1.0)
# Largest camera mounting height accepted [m]: above it a "flat ground" model makes no sense (and a typo
# such as 1e308 would give absurd positions).
MAX_CAMERA_HEIGHT_M = 1000.0
# Largest min_obstacle_area [px]: 10^8 pixels is far beyond any camera image (the parameter's range).
MAX_MIN_OBSTACLE_AREA = 100_000_000


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
