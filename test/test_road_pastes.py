"""Real road frames with on-road obstacle pastes (pebal_training.data.road_pastes): geometry, placement,
instance bookkeeping and normal variants on synthetic inputs; one check on the shared real assets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pebal_training.data import road_pastes as rp

H, W = 480, 640
APEX = 200  # row where the trapezoid's sides meet (the true horizon)
TOP = 260   # first road row


def trapezoid_road(h: int = H, w: int = W, apex: int = APEX, top: int = TOP, spread: float = 1.2) -> np.ndarray:
    """Road of a flat straight road: width grows linearly from the apex row, cut at ``top``."""
    half = lambda v: (v - apex) * spread  # noqa: E731
    pts = np.array([[w / 2 - half(top), top], [w / 2 + half(top), top],
                    [w / 2 + half(h - 1), h - 1], [w / 2 - half(h - 1), h - 1]])
    road = np.zeros((h, w), np.uint8)
    cv2.fillPoly(road, [np.round(pts).astype(np.int32)], 1)
    return road > 0


def fake_frame(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 110, np.uint8)
    img[: h // 2] = (150, 180, 220)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def box_cutouts() -> list[rp.Cutout]:
    cuts = []
    for k, (ch, cw, col) in enumerate([(40, 60, (200, 30, 30)), (60, 40, (30, 200, 30)), (30, 30, (240, 240, 20))]):
        mask = np.ones((ch, cw), bool)
        mask[:3, :3] = False  # not quite a rectangle
        cuts.append(rp.Cutout(np.full((ch, cw, 3), col, np.uint8), mask, f"box{k}", f"fake_{k}"))
    return cuts


def test_horizon_of_a_trapezoid_is_its_apex():
    geo = rp.road_geometry(trapezoid_road())
    assert geo is not None and geo.fit_ok
    assert abs(geo.horizon_row - APEX) < 3
    # road width 2 * 1.2 px per row over 7 m
    assert geo.slope == pytest.approx(2.4 / 7.0, rel=0.03)
    assert rp.estimate_horizon(trapezoid_road()) == pytest.approx(geo.horizon_row)
    # the pinhole alternative: only the horizon from the mask
    assert rp.road_geometry(trapezoid_road(), camera_height_m=1.5).slope == pytest.approx(1 / 1.5)
    # an implausible mask (width shrinking downwards) falls back to the topmost road row
    inverted = trapezoid_road()[::-1].copy()
    geo_bad = rp.road_geometry(inverted)
    assert geo_bad is not None and not geo_bad.fit_ok
    assert geo_bad.horizon_row == np.flatnonzero(inverted.any(axis=1))[0]


def test_pastes_lie_on_the_road_and_shrink_toward_the_horizon():
    road, frame, cuts = trapezoid_road(), fake_frame(), box_cutouts()
    geo = rp.road_geometry(road)
    metas = []
    for s in range(12):
        rgb, inst, meta = rp.paste_on_road(frame, road, cuts, np.random.default_rng(s), count=(2, 3),
                                           width_m=(1.0, 1.0), min_visible_px=1)
        assert rgb.shape == frame.shape and rgb.dtype == np.uint8 and inst.dtype == np.int32
        assert inst.max() == len(meta)
        for m in meta:
            v, u = m["bottom_row"], m["bottom_col"]
            assert road[v, u] and m["on_road"]
            assert v < H * (1 - rp.HOOD_FRACTION)
            assert v > geo.horizon_row + 0.12 * (H - geo.horizon_row)
            assert m["width_px"] >= 12
            assert m["area_px"] == int((inst == m["id"]).sum()) > 0
            assert m["kind"].startswith("box") and m["width_m"] == 1.0
        metas += meta
    assert len(metas) >= 20
    rows = np.array([m["bottom_row"] for m in metas], float)
    widths = np.array([m["width_px"] for m in metas], float)
    # width = 1 m * px_per_m(row), linear in the distance to the horizon (up to rounding)
    np.testing.assert_allclose(widths, geo.px_per_m(rows), atol=0.51)
    assert np.corrcoef(rows, widths)[0, 1] > 0.99
    order = np.argsort(rows)
    assert np.all(np.diff(widths[order]) >= 0)


def test_instance_pixels_carry_the_object_and_the_rest_is_untouched():
    road, frame = trapezoid_road(), fake_frame()
    cut = rp.Cutout(np.full((30, 30, 3), (250, 0, 250), np.uint8), np.ones((30, 30), bool), "sq", "sq")
    rgb, inst, meta = rp.paste_on_road(frame, road, [cut], np.random.default_rng(1), count=(1, 1), width_m=(1.0, 1.5))
    assert len(meta) == 1
    changed = np.any(rgb != frame, axis=2)
    assert not changed[inst == 0].any()  # feathering goes inwards only: no halo outside the mask
    inside = rgb[inst == 1].astype(int)
    assert np.all(inside[:, 1] < inside[:, 0])  # magenta-ish (brightness matching keeps the hue)


def test_pastes_are_deterministic_under_the_seed():
    road, frame, cuts = trapezoid_road(), fake_frame(), box_cutouts()
    a = rp.paste_on_road(frame, road, cuts, np.random.default_rng(7))
    b = rp.paste_on_road(frame, road, cuts, np.random.default_rng(7))
    c = rp.paste_on_road(frame, road, cuts, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[1], c[1])


def test_occlusion_bookkeeping_drops_hidden_objects_and_renumbers():
    inst = np.zeros((50, 50), np.int32)
    inst[0:20, 0:20] = 1    # 400 px, then partly covered by 3
    inst[30:32, 30:32] = 2  # 4 px visible: dropped
    inst[10:30, 10:30] = 3  # 400 px, covers part of 1
    placed = [dict(id=i, kind="k", name=f"n{i}") for i in (1, 2, 3, 4)]  # 4 fully covered (no pixel left)
    out, meta = rp._drop_occluded(inst, placed, min_visible_px=100)
    assert [m["id"] for m in meta] == [1, 2] and [m["name"] for m in meta] == ["n1", "n3"]
    assert meta[0]["area_px"] == 400 - 100 and meta[1]["area_px"] == 400
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 2).sum() == 400 and (out == 1).sum() == 300
    # many overlapping pastes: ids stay 1..k, each with >= min_visible_px pixels and its metadata
    road = np.zeros((H, W), bool)
    road[300:440, 280:360] = True
    for s in range(6):
        _, inst2, meta2 = rp.paste_on_road(fake_frame(), road, box_cutouts(), np.random.default_rng(s), count=(6, 6),
                                           width_m=(1.0, 1.5), road_width_m=0.5)
        assert [m["id"] for m in meta2] == list(range(1, len(meta2) + 1))
        assert set(np.unique(inst2)) - {0} == set(range(1, len(meta2) + 1))
        for m in meta2:
            assert m["area_px"] == int((inst2 == m["id"]).sum()) >= 100


@pytest.mark.parametrize("kind", ["empty", "tiny", "hood_only"])
def test_no_usable_road_gives_no_paste(kind):
    frame = fake_frame()
    road = np.zeros((H, W), bool)
    if kind == "tiny":
        road[400:404, 300:306] = True
    elif kind == "hood_only":
        road[int(H * 0.95):, :] = True
    rgb, inst, meta = rp.paste_on_road(frame, road, box_cutouts(), np.random.default_rng(0))
    np.testing.assert_array_equal(rgb, frame)
    assert meta == [] and not inst.any() and inst.shape == (H, W)
    # no cutouts: also nothing
    _, inst, meta = rp.paste_on_road(frame, trapezoid_road(), [], np.random.default_rng(0))
    assert meta == [] and not inst.any()


def test_paste_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        rp.paste_on_road(fake_frame(), np.ones((10, 10), bool), box_cutouts(), np.random.default_rng(0))
    with pytest.raises(ValueError):
        rp.paste_on_road(fake_frame().astype(np.float32), trapezoid_road(), box_cutouts(), np.random.default_rng(0))


def test_normal_variants_shapes_and_determinism():
    frame = fake_frame(120, 160)
    a = rp.normal_variants(frame, np.random.default_rng(3), 5)
    b = rp.normal_variants(frame, np.random.default_rng(3), 5)
    assert len(a) == 5
    for x, y in zip(a, b):
        assert x.shape == frame.shape and x.dtype == np.uint8
        np.testing.assert_array_equal(x, y)
    assert len({x.tobytes() for x in a}) == 5  # distinct
    assert all(not np.array_equal(x, frame) for x in a)
    assert rp.normal_variants(frame, np.random.default_rng(0), 0) == []


def test_build_road_benchmark_names_scenes_and_labels():
    frames = [rp.RealFrame("b", fake_frame(seed=1), "fake"), rp.RealFrame("a", fake_frame(seed=2), "fake")]
    small_road = trapezoid_road()[::4, ::4]  # any resolution: resized to the frame
    samples = rp.build_road_benchmark(frames, {"a": small_road, "b": trapezoid_road()}, box_cutouts(), seed=5,
                                      pastes_per_frame=3, variants_per_frame=2)
    assert [s.name for s in samples] == ["b_n00", "b_n01", "b_p00", "b_p01", "b_p02",
                                         "a_n00", "a_n01", "a_p00", "a_p01", "a_p02"]
    assert [s.scene for s in samples] == ["b"] * 5 + ["a"] * 5
    np.testing.assert_array_equal(samples[0].rgb, frames[0].rgb)  # n00 is the frame itself
    for s in samples:
        assert s.rgb.shape == (H, W, 3) and s.instances.shape == (H, W) and s.instances.dtype == np.int32
        if s.normal:
            assert not s.instances.any() and s.meta == []
        else:
            assert s.instances.max() == len(s.meta) >= 1
    # deterministic, and a frame's samples do not depend on the other frames
    again = rp.build_road_benchmark(frames[1:], [small_road], box_cutouts(), seed=5, pastes_per_frame=3,
                                    variants_per_frame=2)
    for x, y in zip(samples[5:], again):
        assert x.name == y.name
        np.testing.assert_array_equal(x.rgb, y.rgb)
        np.testing.assert_array_equal(x.instances, y.instances)


def test_rendered_obstacle_cutouts_are_deterministic_instances():
    from pebal_training.data.synthetic import ANOMALY_KINDS

    a = rp.rendered_obstacle_cutouts(2, seed=1, size=(256, 512), max_scenes=2)
    b = rp.rendered_obstacle_cutouts(2, seed=1, size=(256, 512), max_scenes=2)
    assert 1 <= len(a) <= 2
    assert [c.name for c in a] == [c.name for c in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.rgb, y.rgb)
        np.testing.assert_array_equal(x.mask, y.mask)
    for c in a:
        assert c.kind in ANOMALY_KINDS
        assert c.rgb.shape[:2] == c.mask.shape and c.rgb.dtype == np.uint8 and c.mask.dtype == bool
        assert c.mask.sum() >= 200
        assert c.mask[0].any() and c.mask[-1].any() and c.mask[:, 0].any() and c.mask[:, -1].any()


def test_real_frames_and_cutouts(shared_assets, tmp_path):
    frames = rp.load_real_frames(shared_assets)
    assert [f.name for f in frames] == sorted(f.name for f in frames)
    cams = [f.camera for f in frames]
    assert cams.count("udacity") == 8 and cams.count("cityscapes") == 2
    assert {f.rgb.shape for f in frames if f.camera == "udacity"} == {(720, 1280, 3)}
    assert {f.rgb.shape for f in frames if f.camera == "cityscapes"} == {(1024, 2048, 3)}
    with pytest.raises(FileNotFoundError, match="real_driving_frames"):
        rp.load_real_frames(tmp_path)

    cuts = rp.coco_cutouts(shared_assets / "coco_outlier_samples")
    assert len(cuts) >= 10
    assert all(c.mask.sum() >= 400 and c.kind not in ("person", "car") for c in cuts)
    assert {c.name.split("_")[0] for c in rp.coco_cutouts(shared_assets / "coco_outlier_samples",
                                                          names=["000000000042"])} == {"000000000042"}

    ids = rp.cityscapes_gt_road(shared_assets)
    if ids is not None:
        assert ids.shape == (128, 256) and (ids == 0).mean() > 0.2

    frame = next(f for f in frames if f.name == "test1")
    h, w = frame.rgb.shape[:2]
    road = np.zeros((h, w), np.uint8)  # crude: the lower-middle trapezoid of a highway frame
    cv2.fillPoly(road, [np.array([[int(.45 * w), int(.62 * h)], [int(.55 * w), int(.62 * h)],
                                  [int(.85 * w), h - 1], [int(.15 * w), h - 1]])], 1)
    road = road > 0
    rgb, inst, meta = rp.paste_on_road(frame.rgb, road, cuts, np.random.default_rng(0), count=(3, 3))
    assert len(meta) >= 1
    for m in meta:
        assert road[m["bottom_row"], m["bottom_col"]]
        assert (inst == m["id"]).sum() == m["area_px"] >= 100
    geo = rp.road_geometry(road)
    assert 380 < geo.horizon_row < 420  # the trapezoid's apex (row 400)
