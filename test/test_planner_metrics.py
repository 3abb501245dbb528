"""Planner metrics (pebal_training.planner_metrics) on hand-made label maps, and their place in pebal-eval.

The ``evaluate_anomaly`` tests use a fake engine whose score map is the image's red channel / 255, so
every frame's reported regions are drawn by hand too.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pebal_perception.core.engine import FrameResult
from pebal_training.evaluate import evaluate_anomaly
from pebal_training.planner_metrics import PlannerMetricAccumulator, frame_planner_stats, plot_planner_sweep

H, W = 10, 12


def _maps():
    return np.zeros((H, W), np.int32), np.zeros((H, W), np.int32)


def test_found_at_exactly_min_coverage_and_not_just_below():
    reported, instances = _maps()
    instances[2:6, 2:6] = 1                       # 16 px
    reported[2, 2:6] = 1                          # 4 px = 25 %
    s = frame_planner_stats(reported, instances)
    assert s["num_objects"] == 1 and s["num_found"] == 1 and s["coverage"] == [0.25]
    reported[2, 5] = 0                            # 3 px = 18.75 %
    s = frame_planner_stats(reported, instances)
    assert s["num_found"] == 0 and s["coverage"] == [3 / 16]
    assert s["num_true_regions"] == 1 and s["num_stray"] == 0 and s["false_frame"] is None
    assert frame_planner_stats(reported, instances, min_coverage=0.1)["num_found"] == 1


def test_several_regions_cover_an_obstacle_together():
    reported, instances = _maps()
    instances[2:6, 2:6] = 1
    reported[2, 2:4] = 1                          # 2 px each: 12.5 % alone
    reported[5, 4:6] = 7                          # ids need not be contiguous
    s = frame_planner_stats(reported, instances)
    assert s["num_found"] == 1 and s["coverage"] == [0.25]
    assert s["num_regions"] == 2 and s["num_true_regions"] == 2
    only_one = np.where(reported == 7, 0, reported)
    assert frame_planner_stats(only_one, instances)["num_found"] == 0


def test_one_region_covering_two_obstacles_finds_both():
    reported, instances = _maps()
    instances[0:4, 0:4] = 1
    instances[0:4, 6:10] = 2
    reported[0:4, 0:10] = 1                       # one region over both (and the gap between)
    s = frame_planner_stats(reported, instances)
    assert s["num_objects"] == 2 and s["num_found"] == 2 and s["coverage"] == [1.0, 1.0]
    assert s["num_regions"] == 1 and s["num_true_regions"] == 1 and s["num_stray"] == 0


def test_stray_regions_and_min_region_overlap():
    reported, instances = _maps()
    instances[0:4, 0:4] = 1
    reported[0:4, 0:4] = 1                        # true
    reported[6:8, 0:2] = 2                        # stray
    reported[6:8, 8:12] = 3                       # stray
    reported[3:5, 3:8] = 4                        # 10 px, 1 on the obstacle: true at min_region_overlap 0
    s = frame_planner_stats(reported, instances)
    assert (s["num_regions"], s["num_true_regions"], s["num_stray"]) == (4, 2, 2)
    s = frame_planner_stats(reported, instances, min_region_overlap=0.2)   # 10 % <= 20 %: stray
    assert (s["num_true_regions"], s["num_stray"]) == (1, 3)


def test_regions_mostly_on_void_are_not_stray():
    reported, instances = _maps()
    ignore = np.zeros((H, W), bool)
    ignore[0:2, :] = True
    reported[0:3, 0:2] = 1                        # 6 px, 4 on void (67 %): void region
    reported[1:3, 6:8] = 2                        # 4 px, 2 on void (exactly 50 %): stray
    s = frame_planner_stats(reported, instances, ignore)
    assert (s["num_regions"], s["num_void_regions"], s["num_stray"]) == (2, 1, 1)
    assert s["false_frame"] is True               # normal frame: the stray region makes it false
    only_void = np.where(reported == 2, 0, reported)
    s = frame_planner_stats(only_void, instances, ignore)
    assert s["num_stray"] == 0 and s["false_frame"] is False
    assert frame_planner_stats(only_void, instances)["num_stray"] == 1   # without ignore it is stray


def test_false_frame_rate_counts_normal_frames_only():
    acc = PlannerMetricAccumulator()
    reported, instances = _maps()
    reported[0:2, 0:2] = 1
    assert acc.update(reported, instances)["false_frame"] is True          # normal, reported: false
    assert acc.update(*_maps())["false_frame"] is False                    # normal, nothing reported
    acc.update(*_maps())                                                   # normal, nothing reported
    with_obstacle = instances.copy()
    with_obstacle[5:9, 5:9] = 1
    stray_too = reported.copy()
    stray_too[5:9, 5:9] = 2
    assert acc.update(stray_too, with_obstacle)["false_frame"] is None     # stray, but not a normal frame
    res = acc.compute()
    assert res["frames"] == 4 and res["normal_frames"] == 3 and res["false_frames"] == 1
    assert res["false_frame_rate"] == pytest.approx(1 / 3)
    assert res["stray_regions_per_frame"] == pytest.approx(2 / 4)
    assert res["stray_regions_per_normal_frame"] == pytest.approx(1 / 3)
    assert res["objects"] == 1 and res["object_recall"] == 1.0
    assert res["region_precision"] == pytest.approx(1 / 3)                 # 1 true of 3 counted regions
    assert res["min_coverage"] == 0.25


def test_empty_denominators_are_none():
    acc = PlannerMetricAccumulator()
    reported, instances = _maps()
    instances[2:4, 2:4] = 1
    acc.update(reported, instances)                                        # nothing reported, object missed
    res = acc.compute()
    assert res["region_precision"] is None and res["false_frame_rate"] is None
    assert res["stray_regions_per_normal_frame"] is None
    assert res["object_recall"] == 0.0 and res["stray_regions_per_frame"] == 0.0
    empty = PlannerMetricAccumulator().compute()
    assert empty["frames"] == 0 and empty["object_recall"] is None and empty["stray_regions_per_frame"] is None
    assert empty["by_group"] == {}


def test_recall_by_group():
    acc = PlannerMetricAccumulator()
    for group, covered in (("tyre", True), ("tyre", False), ("box", True), ("box", True)):
        reported, instances = _maps()
        instances[2:6, 2:6] = 1
        if covered:
            reported[2:6, 2:6] = 1
        acc.update(reported, instances, group=group)
    acc.update(*_maps())                                                   # no group: in the totals only
    res = acc.compute()
    assert res["frames"] == 5 and res["object_recall"] == pytest.approx(3 / 4)
    assert set(res["by_group"]) == {"tyre", "box"}
    assert res["by_group"]["tyre"]["object_recall"] == 0.5 and res["by_group"]["tyre"]["frames"] == 2
    assert res["by_group"]["box"]["object_recall"] == 1.0


def test_bad_inputs_raise():
    reported, instances = _maps()
    with pytest.raises(ValueError, match="integer"):
        frame_planner_stats(reported > 0, instances)
    with pytest.raises(ValueError, match="shape"):
        frame_planner_stats(reported[:5], instances)
    with pytest.raises(ValueError, match="min_coverage"):
        PlannerMetricAccumulator(min_coverage=0.0)


def test_sweep_plot_is_written(tmp_path):
    path = plot_planner_sweep([0.1, 0.5, 0.9], [0.8, None, 0.1], [1.0, 0.9, 0.5], [3.0, 1.0, 0.2],
                              tmp_path / "planner.png", "synthetic", operating_points={"calibrated": 0.5})
    assert path == tmp_path / "planner.png" and path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["planner.png"]        # no temp file left


# --------------------------------------------------------------------------------------------------
# evaluate_anomaly with a fake engine


class FakeEngine:
    """Score = red channel / 255; enough of InferenceEngine for evaluate_anomaly."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.meta = SimpleNamespace(model_id="fake", architecture="fake", source="test", threshold=threshold)
        self.device, self.native_size, self.input_size, self.smoothing = "cpu", True, None, False

    def infer_one(self, image: np.ndarray) -> FrameResult:
        score = image[..., 0].astype(np.float32) / 255.0
        return FrameResult(semantic=np.zeros(score.shape, np.uint8), score=score, obstacle=score > self.threshold,
                           threshold=self.threshold)


def _sample(name: str, label: np.ndarray, hot: list[tuple[slice, slice]], **extra) -> dict:
    image = np.zeros((H, W, 3), np.uint8)
    for rows, cols in hot:
        image[rows, cols, 0] = 255
    return {"image": image, "label": label, "name": name, **extra}


def _dataset() -> list[dict]:
    a = np.zeros((H, W), np.uint8)
    a[0, :] = 255                                       # void row
    a[2:6, 2:6] = 1                                     # 16 px obstacle
    b = np.zeros((H, W), np.uint8)
    d = np.zeros((H, W), np.uint8)
    d[1:5, 1:5] = 1
    return [
        # half the obstacle hot (found), one stray blob, one blob on void (ignored)
        _sample("a", a, [(slice(2, 4), slice(2, 6)), (slice(8, 10), slice(8, 12)), (slice(0, 1), slice(0, 5))]),
        _sample("b", b, [(slice(5, 7), slice(5, 7))]),  # normal frame with a stray blob: false frame
        _sample("c", b.copy(), []),                     # normal frame, nothing: fine
        _sample("d", d, [(slice(1, 2), slice(1, 4))]),  # 3 of 16 px: missed
    ]


def test_evaluate_anomaly_reports_planner_metrics_with_the_default_regions():
    report = evaluate_anomaly(FakeEngine(), _dataset(), output=None, progress=False)
    p = report["planner"]
    assert (p["frames"], p["normal_frames"], p["objects"]) == (4, 2, 2)
    assert p["false_frame_rate"] == 0.5 and p["object_recall"] == 0.5
    assert (p["true_regions"], p["stray_regions"], p["void_regions"]) == (2, 2, 1)
    assert p["region_precision"] == 0.5
    assert p["stray_regions_per_frame"] == 0.5 and p["stray_regions_per_normal_frame"] == 0.5
    per = {r["name"]: r["planner"] for r in report["per_image"]}
    assert per["a"]["num_found"] == 1 and per["a"]["coverage"] == [0.5] and per["a"]["num_void_regions"] == 1
    assert per["b"]["false_frame"] is True and per["c"]["false_frame"] is False
    assert per["d"]["coverage"] == [3 / 16] and per["d"]["num_found"] == 0


def test_evaluate_anomaly_uses_report_regions_instances_and_groups():
    label = np.zeros((H, W), np.uint8)
    label[2:6, 2:10] = 1                                # one component, but two labelled instances
    instances = np.zeros((H, W), np.int32)
    instances[2:6, 2:6] = 1
    instances[2:6, 6:10] = 2
    normal = np.zeros((H, W), np.uint8)
    dataset = [_sample("two", label, [(slice(0, 10), slice(0, 12))], instances=instances, group="x"),
               _sample("normal", normal, [(slice(0, 10), slice(0, 12))], group="y")]
    seen = []

    def left_half_only(frame: FrameResult) -> np.ndarray:
        seen.append(frame)
        regions = np.zeros(frame.score.shape, np.int32)
        regions[2:6, 2:6] = 1                           # exactly instance 1, whatever the score says
        return regions

    report = evaluate_anomaly(FakeEngine(threshold=0.9), dataset, output=None, progress=False, threshold=0.5,
                              report_regions=left_half_only)
    assert len(seen) == 2 and all(f.threshold == 0.5 and f.obstacle.all() for f in seen)
    p = report["planner"]
    assert p["objects"] == 2 and p["object_recall"] == 0.5             # the given instances, not components
    assert p["false_frame_rate"] == 1.0 and p["region_precision"] == 0.5
    assert p["by_group"]["x"]["object_recall"] == 0.5 and p["by_group"]["y"]["false_frame_rate"] == 1.0
    default = evaluate_anomaly(FakeEngine(threshold=0.9), dataset, output=None, progress=False, threshold=0.5)
    assert default["planner"]["object_recall"] == 1.0                  # the whole image is one hot region


# --------------------------------------------------------------------------------------------------
# DriveScorer: obstacles over a drive


def _drive_frame(objects, reported_boxes=(), shape=(40, 60)):
    """``objects``: {id: (y0, y1, x0, x1)}; ``reported_boxes``: [(y0, y1, x0, x1)] -> (reported, instances)."""
    inst = np.zeros(shape, np.uint8)
    for oid, (y0, y1, x0, x1) in objects.items():
        inst[y0:y1, x0:x1] = oid
    rep = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(reported_boxes, start=1):
        rep[y0:y1, x0:x1] = k
    return rep, inst


def test_drive_scorer_found_within_the_window_from_when_the_object_is_big_enough():
    from pebal_training.planner_metrics import DriveScorer

    scorer = DriveScorer(within_frames=3, min_area=20)
    small, big = (10, 12, 10, 14), (10, 16, 10, 20)  # 8 px (not yet judged), 60 px
    scorer.update(*_drive_frame({1: small}, [small]))  # reported while too small: does not count
    scorer.update(*_drive_frame({1: big}))  # appears here (frame 1)
    scorer.update(*_drive_frame({1: big}))
    scorer.update(*_drive_frame({1: big}, [(10, 16, 10, 13)]))  # frame 3: covers 30 % -> found, 3rd frame
    out = scorer.compute()
    assert out["objects"] == 1 and out["found_in_time"] == 1 and out["found_in_time_rate"] == 1.0
    obj = out["per_object"][0]
    assert (obj["appears"], obj["found_frame"], obj["frames_to_find"], obj["status"]) == (1, 3, 3, "found")
    assert out["false_alarms"] == 0


def test_drive_scorer_late_or_thin_coverage_is_a_miss():
    from pebal_training.planner_metrics import DriveScorer

    scorer = DriveScorer(within_frames=2, min_area=20)
    box = (10, 16, 10, 20)
    scorer.update(*_drive_frame({1: box, 2: (20, 30, 30, 40)}, [(10, 16, 10, 11)]))  # 10 % of object 1
    scorer.update(*_drive_frame({1: box, 2: (20, 30, 30, 40)}))
    scorer.update(*_drive_frame({1: box, 2: (20, 30, 30, 40)}, [box]))  # too late for both
    out = scorer.compute()
    assert out["objects"] == 2 and out["found_in_time"] == 0 and out["found_in_time_rate"] == 0.0
    assert [o["status"] for o in out["per_object"]] == ["missed", "missed"]


def test_drive_scorer_counts_false_alarms_and_leaves_out_void_and_unjudged():
    from pebal_training.planner_metrics import DriveScorer

    scorer = DriveScorer(within_frames=3, min_area=20)
    void = np.zeros((40, 60), bool)
    void[30:] = True  # the bonnet
    scorer.update(*_drive_frame({}, [(0, 5, 0, 5), (32, 38, 0, 10)]), ignore=void)  # 1 stray + 1 void region
    scorer.update(*_drive_frame({}, [(0, 5, 50, 55)]), ignore=void)
    scorer.update(*_drive_frame({3: (10, 16, 10, 20)}), ignore=void)  # appears in the last frame, unseen
    scorer.update(*_drive_frame({3: (10, 16, 10, 20), 4: (1, 2, 1, 2)}), ignore=void)  # 4: 1 px, too small
    out = scorer.compute()
    assert out["frames"] == 4 and out["false_alarms"] == 2 and out["false_alarms_per_frame"] == 0.5
    assert out["frames_with_false_alarm"] == 2
    assert out["objects"] == 0 and out["found_in_time_rate"] is None
    assert out["objects_not_judged"] == 1 and out["objects_too_small"] == 1


def test_drive_scorer_rejects_bad_settings():
    from pebal_training.planner_metrics import DriveScorer

    for kwargs in ({"within_frames": 0}, {"min_coverage": 0.0}, {"min_area": 0}):
        with pytest.raises(ValueError):
            DriveScorer(**kwargs)


# --------------------------------------------------------------------------------------------------
# pebal-eval --planner-sweep on a model with absurd (finite) scores


def test_planner_sweep_ends_on_scores_near_1e16(tmp_path, monkeypatch):
    """A checkpoint whose classifier is scaled by 1e16 loads; before, the sweep's threshold search stepped
    down by 0.25 from about 1e16, which does not change the number: it never ended. The process_frame calls
    are counted (and capped) so that a search that does not end fails instead of hanging."""
    from pebal_perception.core import postprocess
    from pebal_training import normal_calibration
    from pebal_training.cli.evaluate import planner_sweep

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 20_000:
            raise AssertionError("the threshold search does not end")
        return postprocess.process_frame(*args, **kwargs)

    monkeypatch.setattr(normal_calibration, "process_frame", counted)

    class HugeScores(FakeEngine):
        def infer_one(self, image: np.ndarray) -> FrameResult:
            score = (1e16 * (1.0 + image[..., 0].astype(np.float32) / 255.0)).astype(np.float32)
            semantic = np.zeros(score.shape, np.uint8)  # all road
            return FrameResult(semantic=semantic, score=score, obstacle=score > self.threshold,
                               threshold=self.threshold)

    report = planner_sweep(HugeScores(), _dataset(), tmp_path, threshold=0.5, limit=None, name="huge",
                           progress=False)
    assert report["normal_frames"] == 2 and report["objects"] == 2
    assert all(np.isfinite(report["thresholds"])) and (tmp_path / "planner.png").is_file()
