"""core.postprocess: candidates and region score (hysteresis), drivable surface (holes, notches, boundary band,
footprint), excluded zone (border, ego polygon, horizon, range), road-derived and camera scale, config
validation, polygons, and ObstaclePipeline with tracking. Small synthetic arrays only (Cityscapes trainIds)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pebal_perception.core.pipeline import ObstaclePipeline
from pebal_perception.core.postprocess import (GroundModel, at_analysis_width, mask_to_polygon, polygon_mask,
                                               process_frame)
from pebal_perception.core.postprocess_config import PostProcessConfig
from pebal_perception.core.road import drivable_mask, fit_road_scale, road_extent, road_region
from pebal_perception.core.tracking import TrackingConfig

ROAD, VEGETATION, SKY, CAR = 0, 8, 10, 13
H, W = 60, 80
MS_NS, S_NS = 1_000_000, 1_000_000_000


def blank(value: float = 0.0, shape=(H, W)) -> np.ndarray:
    return np.full(shape, value, np.float32)


def road_scene() -> np.ndarray:
    """Sky above row 20; road rows 20..59, columns 10..59; vegetation left and right of it."""
    sem = np.full((H, W), VEGETATION, np.uint8)
    sem[:20] = SKY
    sem[20:, 10:60] = ROAD
    return sem


def trapezoid_road(h: int = 120, w: int = 160, apex: float = 40.0, slope: float = 1.5) -> np.ndarray:
    """Road of width ``slope * (v - apex)`` pixels per row, centred, never touching the side borders."""
    v = np.arange(h, dtype=np.float64)[:, None]
    u = np.arange(w, dtype=np.float64)[None, :] + 0.5
    return np.abs(u - w / 2) < slope * (v - apex) / 2


# ---------------------------------------------------------------------------------------------- defaults
def test_defaults_are_plain_per_pixel_regions_with_labels():
    score = blank()
    score[5:10, 5:10] = 2.0  # region 1 (first in raster order)
    score[30, 30] = score[31, 31] = 2.0  # diagonal neighbours: one 8-connected region
    score[50:52, 60:70] = 2.0
    score[40, 5] = 1.0  # == threshold: not a candidate
    score[45, 45] = np.nan  # NaN never counts
    cfg = PostProcessConfig(threshold=1.0)
    frame = process_frame(None, score, cfg)
    assert [o.area for o in frame.obstacles] == [25, 2, 20]
    assert [o.id for o in frame.obstacles] == [0, 1, 2]
    assert [o.bbox for o in frame.obstacles] == [(5, 5, 5, 5), (30, 30, 2, 2), (60, 50, 10, 2)]
    np.testing.assert_array_equal(frame.mask, score > 1.0)
    for o in frame.obstacles:
        x, y, bw, bh = o.bbox
        box = frame.labels[y:y + bh, x:x + bw]
        assert set(np.unique(box[score[y:y + bh, x:x + bw] > 1.0])) == {o.id + 1}
    assert frame.excluded is None and frame.surface is None
    assert all(r.rejected == "" for r in frame.regions) and all(math.isnan(o.drivable_fraction)
                                                                for o in frame.obstacles)
    assert frame.anomalous_fraction == pytest.approx(47 / (H * W))
    # min_obstacle_area: smaller regions are dropped without being listed; the labels renumber.
    frame = process_frame(None, score, cfg.with_changes(min_obstacle_area=3))
    assert [o.area for o in frame.obstacles] == [25, 20] and len(frame.regions) == 2
    assert set(np.unique(frame.labels)) == {0, 1, 2} and not frame.mask[30, 30]


# ---------------------------------------------------------------------------------------------- drivable
DRIVE = PostProcessConfig(threshold=1.0, restrict_to_drivable=True)


def test_object_in_a_road_hole_is_on_the_surface():
    sem = road_scene()
    sem[30:45, 30:40] = CAR  # enclosed by road: a hole
    score = blank()
    score[30:38, 30:40] = 2.0  # its footprint (rows 38..40) is the car's own lower part, inside the hole
    assert drivable_mask(sem)[40, 35] and not drivable_mask(sem, fill_holes=False)[40, 35]
    for band in (0.0, 0.1):
        frame = process_frame(sem, score, DRIVE.with_changes(boundary_band=band))
        assert len(frame.obstacles) == 1, band
        assert frame.obstacles[0].drivable_fraction == 1.0 and frame.regions[0].footprint_on_road == 1.0
        assert frame.surface[40, 35]


def test_vegetation_blob_at_the_road_edge_stands_on_the_band():
    sem = road_scene()
    sem[30:38, 54:62] = VEGETATION  # a bush reaching into the road from its right edge
    score = blank()
    score[30:38, 54:62] = 2.0  # footprint columns 54..59 road, 60..61 vegetation: 6/8
    frame = process_frame(sem, score, DRIVE)
    assert len(frame.obstacles) == 1 and frame.regions[0].footprint_on_road == pytest.approx(0.75)
    frame = process_frame(sem, score, DRIVE.with_changes(boundary_band=0.1))  # 6 px band
    assert frame.obstacles == [] and not frame.mask.any()
    assert [r.rejected for r in frame.regions] == ["off_road"] and frame.regions[0].footprint_on_road == 0.0


def test_blob_entirely_beside_the_road_is_off_road():
    score = blank()
    score[30:38, 65:75] = 2.0
    frame = process_frame(road_scene(), score, DRIVE)
    assert frame.obstacles == [] and frame.regions[0].rejected == "off_road"


def test_object_notching_the_road_edge_is_reported_when_its_footprint_is_on_the_surface():
    sem = road_scene()
    sem[30:40, 50:60] = CAR  # touches the vegetation at column 60: a notch, not a hole
    score = blank()
    score[30:40, 50:60] = 2.0
    frame = process_frame(sem, score, DRIVE)
    assert not frame.surface[35, 55]  # not filled
    assert len(frame.obstacles) == 1 and frame.obstacles[0].drivable_fraction == 1.0


def test_near_object_reaching_above_the_road_is_reported_with_a_boundary_band():
    sem = road_scene()
    sem[10:41, 30:40] = CAR  # in the middle of the road, its top above the road's top row (20)
    score = blank()
    score[10:41, 30:40] = 2.0  # footprint rows 41..43: plain road, 20 px from the road's side edges
    frame = process_frame(sem, score, DRIVE.with_changes(boundary_band=0.05))  # 3 px band
    assert len(frame.obstacles) == 1, [(r.rejected, r.footprint_on_road) for r in frame.regions]


def test_min_footprint_on_road_edge():
    score = blank()
    score[30:38, 56:64] = 2.0  # footprint columns 56..59 road, 60..63 vegetation: exactly 0.5
    frame = process_frame(road_scene(), score, DRIVE.with_changes(min_footprint_on_road=0.5))
    assert len(frame.obstacles) == 1 and frame.obstacles[0].drivable_fraction == 0.5
    frame = process_frame(road_scene(), score, DRIVE.with_changes(min_footprint_on_road=0.51))
    assert frame.obstacles == [] and frame.regions[0].rejected == "off_road"


def test_region_at_the_image_bottom_is_judged_by_its_lowest_pixels():
    score = blank()
    score[50:60, 30:40] = 2.0
    assert len(process_frame(road_scene(), score, DRIVE).obstacles) == 1
    score = blank()
    score[50:60, 65:75] = 2.0
    assert process_frame(road_scene(), score, DRIVE).regions[0].rejected == "off_road"


def test_near_object_reaching_the_bottom_margin_is_reported():
    score = blank()
    score[45:60, 30:40] = 2.0  # on the road, reaching the image bottom
    assert len(process_frame(road_scene(), score, DRIVE).obstacles) == 1
    frame = process_frame(road_scene(), score, DRIVE.with_changes(border_margin=0.1))  # 6 px
    assert len(frame.obstacles) == 1, [(r.bbox, r.rejected, r.footprint_on_road) for r in frame.regions]


# ---------------------------------------------------------------------------------------------- hysteresis
def test_hysteresis_region_mean_decides():
    score = blank()
    score[5:15, 5:15] = 0.8  # just below the threshold ...
    score[5:7, 5:7] = 1.5  # ... a few pixels above: mean 0.828
    score[30:40, 30:40] = 0.8
    score[30:35, 30:40] = 1.5  # half above: mean 1.15
    score[50:55, 60:70] = 0.8  # none above
    cfg = PostProcessConfig(threshold=1.0, hysteresis=0.5)
    frame = process_frame(None, score, cfg)
    assert [(r.area, r.rejected) for r in frame.regions] == [(100, "score"), (100, ""), (50, "score")]
    assert frame.regions[0].score == pytest.approx(0.828, abs=1e-5)
    (obstacle,) = frame.obstacles
    assert obstacle.area == 100 and obstacle.mean_score == pytest.approx(1.15, abs=1e-5)
    assert frame.mask[38, 35] and not frame.mask[10, 10]  # grown over pixels below threshold
    # No hysteresis: candidates are score > threshold, so both regions are their pixels above it.
    frame = process_frame(None, score, cfg.with_changes(hysteresis=0.0))
    assert [o.area for o in frame.obstacles] == [4, 50]
    np.testing.assert_array_equal(frame.mask, score > 1.0)


# ---------------------------------------------------------------------------------------------- excluded
def test_a_region_over_most_of_the_road_is_the_road_not_an_obstacle():
    sem = road_scene()  # 40 x 50 road pixels
    score = blank()
    score[25:60, 12:58] = 2.0  # the whole road scores high (an unfamiliar surface)
    frame = process_frame(sem, score, DRIVE.with_changes(max_surface_share=0.25))
    assert not frame.obstacles and [r.rejected for r in frame.regions] == ["too_large"]
    assert len(process_frame(sem, score, DRIVE.with_changes(max_surface_share=1.0)).obstacles) == 1
    small = blank()
    small[30:40, 30:40] = 2.0  # 100 px, 5 % of the road
    assert len(process_frame(sem, small, DRIVE.with_changes(max_surface_share=0.25)).obstacles) == 1


def highway_with_road_labelled_sky(h: int = 120, w: int = 160) -> np.ndarray:
    """A trapezoid road narrowing to a vanishing point at row 40, vegetation beside it, and a band of sky
    above the horizon that the network calls road, joined to the road at the vanishing point and reaching
    down both image sides (the outline that used to enclose all the scenery between)."""
    sem = np.full((h, w), VEGETATION, np.uint8)
    sem[:30] = SKY
    sem[trapezoid_road(h, w, apex=40.0, slope=1.5)] = ROAD
    sem[30:38, :] = ROAD  # road-labelled sky just above the horizon ...
    sem[36:44, w // 2 - 2:w // 2 + 2] = ROAD  # ... joined to the road at the vanishing point
    sem[30:, :4] = ROAD  # ... and down the image sides (concrete barriers) to the road at the bottom
    sem[30:, -4:] = ROAD
    sem[-4:, :] = ROAD
    return sem


def test_road_region_ignores_road_labelled_sky_joined_at_the_vanishing_point():
    sem = highway_with_road_labelled_sky()
    road = road_region(sem)
    assert not road[30:38].any() and not road[:40, :4].any() and not road[:40, -4:].any()
    assert road[100, 80] and road[60, 80]
    surface = drivable_mask(sem)
    assert not surface[60, 20] and not surface[50, 140]  # the scenery is not an "enclosed" hole any more
    score = blank(0.0, sem.shape)
    score[50:60, 15:30] = 2.0  # roadside vegetation scoring high
    frame = process_frame(sem, score, DRIVE.with_changes(min_extent_share=0.5))
    assert not frame.obstacles
    # A road with a hood below it (no road pixel in the last rows) is still the ego road.
    hooded = sem.copy()
    hooded[-15:] = CAR
    assert road_region(hooded)[95, 80]
    # Road pieces that reach nowhere near the bottom (a far parking lot, a bridge) are not the ego road.
    island = road_scene()
    island[:15, 60:75] = ROAD
    assert not road_region(island)[:15, 60:75].any() and road_region(island)[50, 30]


def test_a_region_spanning_the_scene_is_not_an_obstacle():
    sem = road_scene()
    score = blank()
    score[22:26, 2:78] = 2.0  # a band across the whole image (a guard rail, the far tree line)
    score[40:46, 30:36] = 2.0
    frame = process_frame(sem, score, DRIVE.with_changes(max_width_share=0.5, boundary_band=0.0,
                                                         min_footprint_on_road=0.0))
    assert [o.bbox for o in frame.obstacles] == [(30, 40, 6, 6)]
    assert sorted(r.rejected for r in frame.regions) == ["", "too_wide"]


def test_a_region_mostly_beside_the_road_is_scenery():
    sem = road_scene()  # road columns 10..59
    score = blank()
    score[30:40, 55:75] = 2.0  # 5 of its 20 columns over the road: its footprint touches the road edge
    score[45:50, 8:16] = 2.0  # an object at the road's edge, mostly on it
    cfg = DRIVE.with_changes(min_footprint_on_road=0.0)
    frame = process_frame(sem, score, cfg.with_changes(min_extent_share=0.5))
    assert [o.bbox for o in frame.obstacles] == [(8, 45, 8, 5)]
    assert sorted(r.rejected for r in frame.regions) == ["", "off_extent"]
    assert len(process_frame(sem, score, cfg).obstacles) == 2  # 0 = off
    first, last = road_extent(drivable_mask(sem))
    assert (first[20:] == 10).all() and (last[20:] == 59).all()
    assert first[5] == 10 and last[5] == 59  # above the road: its top row's extent
    empty = road_extent(np.zeros((4, 5), bool))
    assert (empty[0] > empty[1]).all()


def test_a_region_segmented_as_a_road_user_is_a_known_object():
    sem = road_scene()
    sem[30:40, 20:30] = CAR  # a car on the road (the segmentation names it)
    score = blank()
    score[28:40, 20:30] = 2.0  # high energy on the car and just above it: 10 of 12 rows are car
    score[45:52, 40:47] = 2.0  # an unnamed object on the road
    cfg = DRIVE.with_changes(max_known_share=0.5)
    frame = process_frame(sem, score, cfg)
    assert [o.bbox for o in frame.obstacles] == [(40, 45, 7, 7)]
    assert sorted(r.rejected for r in frame.regions) == ["", "known_class"]
    assert len(process_frame(sem, score, DRIVE).obstacles) == 2  # 1 = off
    assert len(process_frame(None, score, PostProcessConfig(threshold=1.0, max_known_share=0.5)).obstacles) == 2


def test_a_thin_oblique_line_is_a_marking_not_an_obstacle():
    sem = road_scene()
    score = blank()
    for k in range(30):  # a 2 px wide diagonal (a lane marking seen obliquely): fills ~7 % of its box
        score[25 + k, 20 + k:22 + k] = 2.0
    score[40:50, 12:22] = 2.0  # a compact object
    frame = process_frame(sem, score, DRIVE.with_changes(min_fill=0.2))
    assert [o.bbox for o in frame.obstacles] == [(12, 40, 10, 10)]
    assert sorted(r.rejected for r in frame.regions) == ["", "thin"]
    assert len(process_frame(sem, score, DRIVE).obstacles) == 2


def test_border_margin():
    score = blank()
    score[0:4, 20:30] = 2.0  # inside the 6-px margin
    score[20:30, 74:80] = 2.0  # inside it too (right border)
    score[2:12, 40:50] = 2.0  # clipped to rows 6..11
    frame = process_frame(None, score, PostProcessConfig(threshold=1.0, border_margin=0.1))
    assert [o.bbox for o in frame.obstacles] == [(40, 6, 10, 6)]
    assert frame.excluded[:6].all() and frame.excluded[-6:].all() and frame.excluded[:, -6:].all()
    assert not frame.excluded[6:-6, 6:-6].any()


def test_ego_mask_polygon_removes_the_hood():
    score = blank()
    score[50:60, :] = 3.0  # the hood scores high
    score[20:30, 30:40] = 2.0
    hood = (0.0, 0.8, 1.0, 0.8, 1.0, 1.0, 0.0, 1.0)
    assert len(process_frame(None, score, PostProcessConfig(threshold=1.0)).obstacles) == 2
    frame = process_frame(None, score, PostProcessConfig(threshold=1.0, ego_mask_polygon=hood))
    assert [o.bbox for o in frame.obstacles] == [(30, 20, 10, 10)]
    assert frame.excluded[50:].all() and not frame.excluded[:45].any()


def test_horizon_row_and_margin_exclude_the_rows_above():
    score = blank()
    score[20:31, 30:40] = 2.0  # above row 36
    score[40:46, 30:40] = 2.0
    cfg = PostProcessConfig(threshold=1.0, horizon_row=0.5, horizon_margin=0.1)  # 30 + 6 rows
    frame = process_frame(None, score, cfg)
    assert frame.horizon_row == 30.0 and [o.bbox for o in frame.obstacles] == [(30, 40, 10, 6)]
    assert frame.excluded[:36].all() and not frame.excluded[36:].any()
    frame = process_frame(None, score, cfg.with_changes(horizon_margin=math.nan))  # no horizon cut
    assert frame.excluded is None and len(frame.obstacles) == 2


# ---------------------------------------------------------------------------------------------- scale
def test_fit_road_scale_on_a_trapezoid():
    fit = fit_road_scale(trapezoid_road(apex=40.0, slope=1.5))
    assert fit is not None
    assert abs(fit.horizon_row - 40.0) < 3.0 and fit.slope == pytest.approx(1.5, rel=0.05)
    assert fit.road_width_px(100.0) == pytest.approx(90.0, rel=0.05)


def test_fit_road_scale_none_for_tiny_or_absent_road():
    assert fit_road_scale(np.zeros((120, 160), bool)) is None
    tiny = np.zeros((120, 160), bool)
    tiny[100:105, 70:90] = True  # 5 rows < MIN_FIT_ROWS
    assert fit_road_scale(tiny) is None
    assert fit_road_scale(trapezoid_road()[::-1].copy()) is None  # widens toward the top: no horizon


def test_road_derived_width_and_min_width():
    road = trapezoid_road()
    sem = np.where(road, ROAD, VEGETATION).astype(np.uint8)
    fit = fit_road_scale(drivable_mask(sem))
    score = blank(shape=road.shape)
    score[95:101, 78:81] = 2.0  # 3 px wide, bottom row 100
    score[60:66, 70:90] = 2.0  # 20 px wide, bottom row 65
    cfg = PostProcessConfig(threshold=1.0, min_width_m=0.5, road_width_m=7.0)
    frame = process_frame(sem, score, cfg)
    assert frame.horizon_row == pytest.approx(fit.horizon_row)
    ppm = {row: fit.road_width_px(row) / 7.0 for row in (65, 100)}
    by_row = {r.bbox[1] + r.bbox[3] - 1: r for r in frame.regions}
    assert by_row[100].width_m == pytest.approx(3 / ppm[100], rel=1e-6) and by_row[100].rejected == "narrow"
    assert by_row[65].width_m == pytest.approx(20 / ppm[65], rel=1e-6) and by_row[65].rejected == ""
    assert [o.bbox for o in frame.obstacles] == [(70, 60, 20, 6)]
    assert len(process_frame(sem, score, cfg.with_changes(min_width_m=0.0)).obstacles) == 2


def test_ground_model_horizon_and_max_range():
    k = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]])
    ground = GroundModel(K=k, height_m=1.5, pitch_rad=0.1)
    assert ground.usable and ground.horizon_row() == pytest.approx(60 - 100 * math.tan(0.1))
    # Range of the ground point under the centre column of each row, computed here independently.
    v = np.arange(120, dtype=np.float64)
    dy = (v - 60) / 100
    denom = dy * math.cos(0.1) + math.sin(0.1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ranges = np.where(denom > 0, 1.5 / denom * np.sqrt(1 + dy**2), np.inf)
    far_row = int(np.flatnonzero(ranges <= 20.0)[0])
    assert ground.horizon_row() < far_row < 100
    score = blank(shape=(120, 160))
    score[far_row - 4:far_row - 1, 70:80] = 2.0  # beyond 20 m
    score[100:110, 70:80] = 2.0
    frame = process_frame(None, score, PostProcessConfig(threshold=1.0, max_range_m=20.0), ground)
    assert frame.horizon_row == pytest.approx(ground.horizon_row())
    assert frame.excluded[:far_row].all() and not frame.excluded[far_row:].any()
    (obstacle,) = frame.obstacles
    assert obstacle.bbox == (70, 100, 10, 10) and all(math.isfinite(c) for c in obstacle.ground_position)
    assert obstacle.width_m == pytest.approx(10 * obstacle.ground_position[2] / 100, rel=0.05)
    assert len(process_frame(None, score, PostProcessConfig(threshold=1.0), ground).obstacles) == 2


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name, value", [
    ("threshold", math.inf), ("min_obstacle_area", -1), ("hysteresis", -0.1), ("hysteresis", math.nan),
    ("boundary_band", 0.6), ("min_footprint_on_road", 1.5), ("border_margin", 0.3), ("far_road_width", 2.0),
    ("min_width_m", -1.0), ("road_width_m", 0.1), ("horizon_row", 1.5), ("horizon_margin", 2.0),
    ("max_range_m", 0.01), ("max_range_m", math.inf), ("roi", (0.5, 0.0, 0.2, 1.0)), ("max_surface_share", 1.5),
    ("min_fill", -0.1),
])
def test_config_out_of_range_names_the_field(name, value):
    kwargs = {"threshold": 1.0, name: value}
    with pytest.raises(ValueError, match=name):
        PostProcessConfig(**kwargs)


@pytest.mark.parametrize("polygon", [
    (0.0, 0.0, 1.0, 0.0, 1.0),  # odd count
    (0.0, 0.0, 1.0, 1.0),  # two vertices
    (0.0, 0.0, 1.5, 0.0, 1.0, 1.0),  # outside [0, 1]
    (0.0, 0.0, math.nan, 0.0, 1.0, 1.0),
])
def test_polygon_validation(polygon):
    with pytest.raises(ValueError, match="ego_mask_polygon"):
        PostProcessConfig(threshold=1.0, ego_mask_polygon=polygon)


def test_optional_fields_accept_nan_and_polygon_may_be_empty():
    cfg = PostProcessConfig(threshold=1.0, ego_mask_polygon=[0, 0.8, 1, 0.8, 1, 1])
    assert cfg.ego_mask_polygon == (0.0, 0.8, 1.0, 0.8, 1.0, 1.0)
    cfg = PostProcessConfig(threshold=1.0)
    assert cfg.ego_mask_polygon == () and all(math.isnan(getattr(cfg, n))
                                              for n in ("horizon_row", "horizon_margin", "max_range_m"))


def test_mask_to_polygon_round_trip():
    shape = (120, 160)
    polygon = (0.1, 0.6, 0.9, 0.6, 1.0, 1.0, 0.0, 1.0)
    mask = polygon_mask(shape, polygon)
    assert mask[110, 80] and not mask[50, 80]
    back = polygon_mask(shape, mask_to_polygon(mask))
    assert abs(int(back.sum()) - int(mask.sum())) < 0.05 * mask.sum()
    assert (back & mask).sum() > 0.95 * mask.sum()
    assert mask_to_polygon(np.zeros(shape, bool)) == ()
    assert not polygon_mask(shape, ()).any()


# ---------------------------------------------------------------------------------------------- pipeline
TRACK = TrackingConfig(confirm_hits=2, confirm_window=3, hold_frames=1)
PLAIN = PostProcessConfig(threshold=1.0)


def test_pipeline_static_object_confirm_hold_and_vanish():
    pipe = ObstaclePipeline(TRACK)
    score = blank()
    score[20:30, 30:40] = 2.0
    out = [pipe.process(None, score, PLAIN, stamp_ns=1000 * (i + 1)) for i in range(3)]
    assert out[0].obstacles == [] and not out[0].mask.any() and not out[0].labels.any()
    ids = {f.obstacles[0].track_id for f in out[1:]}
    assert len(ids) == 1 and ids.pop() > 0
    assert [f.obstacles[0].age_frames for f in out[1:]] == [2, 3]
    assert all(f.obstacles[0].first_seen_ns == 1000 and not f.obstacles[0].held for f in out[1:])
    np.testing.assert_array_equal(out[2].mask, score > 1.0)
    track_id = out[2].obstacles[0].track_id
    held = pipe.process(None, blank(), PLAIN, stamp_ns=4000)
    (obstacle,) = held.obstacles
    assert obstacle.held and obstacle.track_id == track_id and obstacle.bbox == (30, 20, 10, 10)
    assert not held.mask.any() and not held.labels.any()
    assert pipe.process(None, blank(), PLAIN, stamp_ns=5000).obstacles == []


def test_pipeline_a_new_size_is_a_stream_of_its_own():
    pipe = ObstaclePipeline(TRACK)
    score = blank()
    score[20:30, 30:40] = 2.0
    first = [pipe.process(None, score, PLAIN, stamp_ns=1000 * (i + 1)) for i in range(2)]
    old_id = first[1].obstacles[0].track_id
    bigger = blank(shape=(H + 10, W))
    bigger[20:30, 30:40] = 2.0
    assert pipe.process(None, bigger, PLAIN, stamp_ns=3000).obstacles == []  # tentative in the new stream
    (obstacle,) = pipe.process(None, bigger, PLAIN, stamp_ns=4000).obstacles
    assert obstacle.track_id != old_id and obstacle.first_seen_ns == 3000 and obstacle.age_frames == 2
    assert pipe.counters.streams == 2 and pipe.counters.obstacles_forgotten == 0


def _persistent_obstacle(shape=(H, W)) -> np.ndarray:
    score = blank(shape=shape)
    h, w = shape
    score[h // 3:h // 2, w // 3:w // 2] = 2.0
    return score


def _reported_in_last(frames, n: int = 15) -> int:
    return sum(bool(f.obstacles) for f in frames[-n:])


DEFAULT_TRACKING = TrackingConfig()  # the node's: k 2 of n 3, hold 2


def test_pipeline_keeps_a_persistent_obstacle_when_sizes_alternate():
    """Two cameras (or a source switching resolution) on one topic: each size keeps its own tracks."""
    pipe = ObstaclePipeline(DEFAULT_TRACKING)
    small, large = _persistent_obstacle((H, W)), _persistent_obstacle((2 * H, 2 * W))
    frames = [pipe.process(None, small if i % 2 else large, PLAIN, stamp_ns=(i + 1) * 100 * MS_NS)
              for i in range(30)]
    assert _reported_in_last(frames) == 15
    assert pipe.counters.jump_back_resets == 0 and pipe.counters.obstacles_forgotten == 0


@pytest.mark.parametrize("stamps", [
    [10 * S_NS - i * 100 * MS_NS for i in range(30)],  # a clock stepping backwards by 100 ms per frame
    [10 * S_NS + (i // 2) * 100 * MS_NS - (i % 2) for i in range(30)],  # t, t - 1 ns: two sources on one topic
])
def test_pipeline_keeps_a_persistent_obstacle_when_stamps_step_back(stamps):
    pipe = ObstaclePipeline(DEFAULT_TRACKING)
    score = _persistent_obstacle()
    frames = [pipe.process(None, score, PLAIN, stamp_ns=t) for t in stamps]
    assert _reported_in_last(frames) == 15
    assert pipe.counters.jump_back_resets == 0


def test_pipeline_counts_and_announces_a_restart_when_time_jumps_back():
    """A bag replayed in a loop: tracking restarts, and the reported obstacle it forgets is said."""
    said = []
    pipe = ObstaclePipeline(DEFAULT_TRACKING, on_forget=lambda text, lost: said.append((text, lost)))
    score = _persistent_obstacle()
    frames = [pipe.process(None, score, PLAIN, stamp_ns=10 * S_NS + i * 500 * MS_NS) for i in range(5)]
    assert frames[-1].obstacles
    after = pipe.process(None, score, PLAIN, stamp_ns=10 * S_NS)  # the loop starts over
    assert after.obstacles == []  # to be confirmed again
    counters = pipe.counters
    assert (counters.jump_back_resets, counters.obstacles_forgotten) == (1, 1)
    assert len(said) == 1 and "jumped back" in said[0][0] and "1 reported obstacle" in said[0][0] and said[0][1] == 1


def test_pipeline_tells_cameras_apart_by_frame_id_with_unique_track_ids():
    pipe = ObstaclePipeline(DEFAULT_TRACKING)
    left, right = _persistent_obstacle(), blank()
    right[40:50, 60:70] = 2.0
    frames = {"left": [], "right": []}
    for i in range(10):
        for name, score in (("left", left), ("right", right)):
            frames[name].append(pipe.process(None, score, PLAIN, stamp_ns=(i + 1) * 100 * MS_NS - (name == "left"),
                                             stream=name))
    left_ids = {o.track_id for f in frames["left"][-5:] for o in f.obstacles}
    right_ids = {o.track_id for f in frames["right"][-5:] for o in f.obstacles}
    assert len(left_ids) == len(right_ids) == 1 and not left_ids & right_ids
    assert pipe.counters.streams == 2


def test_pipeline_bounds_its_streams_and_counts_what_it_forgets():
    said = []
    pipe = ObstaclePipeline(DEFAULT_TRACKING, max_streams=2, on_forget=lambda text, lost: said.append((text, lost)))
    score = _persistent_obstacle()
    for i in range(4):
        pipe.process(None, score, PLAIN, stamp_ns=i, stream="a")
    for name in ("b", "c"):  # "a", least recently seen, goes
        pipe.process(None, score, PLAIN, stamp_ns=5, stream=name)
    counters = pipe.counters
    assert (counters.streams, counters.streams_forgotten, counters.obstacles_forgotten) == (2, 1, 1)
    assert len(said) == 1 and "'a'" in said[0][0] and said[0][1] == 1


def test_pipeline_labels_follow_the_reported_order():
    pipe = ObstaclePipeline(TRACK)
    a = blank()
    a[40:46, 30:40] = 2.0  # lower blob: first track
    both = a.copy()
    both[10:16, 50:60] = 2.0  # upper blob: first in raster order, second track
    pipe.process(None, a, PLAIN, stamp_ns=1)
    pipe.process(None, both, PLAIN, stamp_ns=2)
    frame = pipe.process(None, both, PLAIN, stamp_ns=3)
    assert [o.bbox for o in frame.obstacles] == [(30, 40, 10, 6), (50, 10, 10, 6)]
    assert [o.id for o in frame.obstacles] == [0, 1]
    assert frame.obstacles[0].track_id < frame.obstacles[1].track_id
    assert frame.obstacles[0].age_frames == 3 and frame.obstacles[1].age_frames == 2
    for o in frame.obstacles:
        x, y, bw, bh = o.bbox
        assert (frame.labels[y:y + bh, x:x + bw] == o.id + 1).all()
    assert set(np.unique(frame.labels)) == {0, 1, 2}
    np.testing.assert_array_equal(frame.mask, frame.labels > 0)


# ---------------------------------------------------------------------------------------------- analysis width
def test_analysis_width_finds_regions_on_a_smaller_copy_and_maps_them_back():
    sem = np.repeat(np.repeat(road_scene(), 4, axis=0), 4, axis=1)  # 240 x 320
    score = blank(shape=sem.shape)
    score[120:160, 120:160] = 2.0  # an object on the road
    score[200:204, 200:202] = 2.0  # 8 pixels: below min_obstacle_area at full resolution
    cfg = PostProcessConfig(threshold=1.0, restrict_to_drivable=True, min_obstacle_area=40)
    full = process_frame(sem, score, cfg)
    assert process_frame(sem, score, cfg.with_changes(analysis_width=320)).labels.tolist() == full.labels.tolist()
    small = process_frame(sem, score, cfg.with_changes(analysis_width=80))
    assert small.mask.shape == sem.shape and small.labels.shape == sem.shape
    assert len(small.obstacles) == len(full.obstacles) == 1
    o, f = small.obstacles[0], full.obstacles[0]
    assert o.bbox == f.bbox == (120, 120, 40, 40)
    assert o.area == int(small.mask.sum()) == f.area
    assert o.mean_score == pytest.approx(2.0)
    assert small.surface.shape == (60, 80)  # the debug masks stay at the analysis size
    from pebal_perception.core.visualize import debug_overlay

    assert debug_overlay(np.zeros((*sem.shape, 3), np.uint8), small).shape == (*sem.shape, 3)


def test_analysis_width_keeps_ground_positions_at_full_resolution():
    k = np.array([[200.0, 0, 160.0], [0, 200.0, 120.0], [0, 0, 1]])
    ground = GroundModel(K=k, height_m=1.5, pitch_rad=0.05)
    sem = np.zeros((240, 320), np.uint8)
    score = blank(shape=sem.shape)
    score[180:200, 150:170] = 2.0
    cfg = PostProcessConfig(threshold=1.0)
    full = process_frame(sem, score, cfg, ground).obstacles[0]
    small = process_frame(sem, score, cfg.with_changes(analysis_width=160), ground).obstacles[0]
    assert small.bbox == full.bbox
    np.testing.assert_allclose(small.ground_position, full.ground_position, rtol=1e-9)
    assert small.width_m == pytest.approx(full.width_m, rel=0.1)


def test_at_analysis_width_scales_scores_linearly_and_labels_nearest():
    score = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (100, 1))
    sem = np.zeros((100, 200), np.uint8)
    sem[:, 100:] = CAR
    small, small_sem, none = at_analysis_width(100, score, sem, None)
    assert small.shape == (50, 100) and small_sem.shape == (50, 100) and none is None
    assert set(np.unique(small_sem)) == {0, CAR} and 0.0 <= small.min() and small.max() <= 1.0
    same = at_analysis_width(400, score, sem)
    assert same[0] is score and same[1] is sem  # already narrower: unchanged
    assert at_analysis_width(0, score)[0] is score


def test_boundary_band_lies_along_the_image_border_where_the_road_reaches_it():
    """Road up to the left image border (a barrier the network calls road, cut by the frame): a region there
    stands on the band, not on the surface; the same region away from the border is on the surface."""
    sem = np.full((H, W), VEGETATION, np.uint8)
    sem[:20] = SKY
    sem[20:, :60] = ROAD  # reaches the left border
    score = blank()
    score[40:46, 0:4] = 2.0  # at the border, 4 px wide (the band is 6 px)
    score[40:46, 30:34] = 2.0
    frame = process_frame(sem, score, DRIVE.with_changes(boundary_band=0.1))
    assert [o.bbox for o in frame.obstacles] == [(30, 40, 4, 6)]
    assert sorted(r.rejected for r in frame.regions) == ["", "off_road"]
    assert not frame.surface[50, :6].any() and frame.surface[50, 6:54].all()


# ---------------------------------------------------------------------------------------------- bounded cost
def _speckle(shape=(1080, 1920), period: int = 12) -> np.ndarray:
    """A 2x2 blob every ``period`` pixels: 14,400 candidate regions at 1920x1080."""
    score = blank(shape=shape)
    for dy in (0, 1):
        for dx in (0, 1):
            score[dy::period, dx::period] = 2.0
    score[500:540, 900:980] = 3.0  # one real-sized region among them
    return score


def test_candidate_regions_are_capped_largest_first_and_counted():
    from pebal_perception.core.limits import MAX_REGIONS_PER_FRAME

    score = _speckle()
    config = PostProcessConfig(threshold=1.0, min_obstacle_area=1)
    frame = process_frame(None, score, config)
    total = int(cv2.connectedComponents((score > 1.0).astype(np.uint8))[0]) - 1
    assert len(frame.regions) == MAX_REGIONS_PER_FRAME
    assert frame.regions_over_cap == total - MAX_REGIONS_PER_FRAME
    assert max(r.area for r in frame.regions) >= 80 * 40  # the largest is always examined


def test_a_frame_full_of_regions_tracks_only_the_capped_ones():
    """The tracker and the relabelling see at most MAX_REGIONS_PER_FRAME detections per frame: their
    cost stays bounded (tracking compares every track with every detection)."""
    from pebal_perception.core.limits import MAX_REGIONS_PER_FRAME

    pipe = ObstaclePipeline(TrackingConfig(confirm_hits=1, confirm_window=1, hold_frames=0))
    config = PostProcessConfig(threshold=1.0, min_obstacle_area=1)
    frame = pipe.process(None, _speckle(), config, stamp_ns=1)
    assert len(frame.obstacles) == MAX_REGIONS_PER_FRAME
    assert frame.labels.max() == MAX_REGIONS_PER_FRAME and frame.mask.sum() == sum(o.area for o in frame.obstacles)
    for obstacle in frame.obstacles[:5]:
        x, y, w, h = obstacle.bbox
        assert (frame.labels[y:y + h, x:x + w] == obstacle.id + 1).all()
