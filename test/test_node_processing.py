"""ROS-free parts of the detector node: flat-ground geometry and frame post-processing.

* ``pebal_perception.core.geometry``: back-projection checked against the synthetic scene generator's
  independent camera model (``pebal_training.data.synthetic.Camera``) and by projecting back.
* ``pebal_perception.core``: drivable-area restriction, ROI, small-blob removal, obstacles and their
  ground positions (postprocess, camera), parameter validation (settings), and the device out-of-memory
  guard (inference: retry, fp16 / CPU fallbacks, dropped frames), with scripted failures since no test
  may need a GPU; the node's mailbox and status window (node.processing).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pebal_perception.core.geometry import (camera_to_pixel, pixel_to_ground, pixel_to_ground_point, scale_intrinsics,
                                       valid_intrinsics)
from pebal_perception.core.camera import check_camera_info, make_ground_model, rescale_warning
from pebal_perception.core.inference import (FrameOutOfMemory, OomGuardedInference, is_out_of_memory,
                                             parse_oom_fallback)
from pebal_perception.core.postprocess import GroundModel, bottom_centre_pixel, obstacle_mask, process_frame, roi_mask
from pebal_perception.core.postprocess_config import PostProcessConfig, check_mounting, validate_roi
from pebal_perception.core.road import drivable_mask
from pebal_perception.core.settings import PARAMETERS_BY_NAME, RuntimeSettings, parse_threshold, plan_parameter_batch
from pebal_perception.node.processing import LatestFrameMailbox, RecentEvents
from pebal_training.data.synthetic import Camera, SceneConfig, generate_scene

NAN = float("nan")


def make_camera(pitch: float = 0.08, height: float = 1.4) -> Camera:
    return Camera(fx=500.0, fy=510.0, cx=321.5, cy=239.0, height=height, pitch=pitch, image_width=640,
                  image_height=480)


# ------------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("pitch", [0.0, 0.08, 0.3, -0.05])
def test_back_projection_matches_synthetic_camera(pitch):
    cam = make_camera(pitch=pitch)
    u, v = np.meshgrid(np.linspace(0, 639, 17), np.linspace(0, 479, 13))
    p = pixel_to_ground(u, v, cam.K, cam.height, pitch)
    gx, gz = cam.pixel_to_ground(u, v)
    below = np.isfinite(gz)
    assert below.any()
    # Same set of pixels on the ground (NaN at/above the horizon).
    assert np.array_equal(np.isfinite(p[..., 2]), below)
    # The optical-frame point, rotated into the level "ground" frame, is (x, -height, z_forward).
    c, s = math.cos(pitch), math.sin(pitch)
    x, y, z = p[below, 0], p[below, 1], p[below, 2]
    np.testing.assert_allclose(x, gx[below], rtol=1e-9, atol=1e-9)
    forward = z * c - y * s
    up = -(y * c + z * s)
    np.testing.assert_allclose(forward, gz[below], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(up, -cam.height, rtol=1e-9, atol=1e-9)


def test_round_trip_ground_to_pixel_and_back():
    cam = make_camera(pitch=0.12)
    xs, zs = np.meshgrid(np.linspace(-6, 6, 7), np.linspace(2, 60, 9))
    u, v = cam.ground_to_pixel(xs, zs)
    p = pixel_to_ground(u, v, cam.K, cam.height, cam.pitch)
    np.testing.assert_allclose(camera_to_pixel(p, cam.K), np.stack([u, v], -1), atol=1e-7)
    np.testing.assert_allclose(cam.world_to_camera(np.stack([xs, np.zeros_like(xs), zs], -1)), p, atol=1e-9)


def test_rays_above_horizon_and_bad_models_give_nan():
    cam = make_camera(pitch=0.0)
    assert all(math.isnan(c) for c in pixel_to_ground_point(320, cam.cy - 1, cam.K, 1.5, 0.0))
    assert all(math.isnan(c) for c in pixel_to_ground_point(320, cam.cy, cam.K, 1.5, 0.0))  # horizon
    assert math.isfinite(pixel_to_ground_point(320, cam.cy + 50, cam.K, 1.5, 0.0)[2])
    for K, h, pitch in [(np.zeros((3, 3)), 1.5, 0.0), (cam.K, NAN, 0.0), (cam.K, -1.0, 0.0), (cam.K, 1.5, NAN),
                        (cam.K, 1.5, math.pi / 2)]:
        assert all(math.isnan(c) for c in pixel_to_ground_point(320, 400, K, h, pitch))
    assert not valid_intrinsics(np.zeros(9)) and valid_intrinsics(cam.K.ravel())
    assert not valid_intrinsics(_k(k22=2.0)) and not valid_intrinsics(_k(fx=NAN)) and not valid_intrinsics(np.ones(8))


def test_scaled_intrinsics_follow_a_resized_image():
    cam = make_camera()
    k2 = scale_intrinsics(cam.K, (640, 480), (320, 240))
    a = pixel_to_ground_point(400.5, 399.5, cam.K, 1.4, 0.08)
    b = pixel_to_ground_point((400.5 + 0.5) / 2 - 0.5, (399.5 + 0.5) / 2 - 0.5, k2, 1.4, 0.08)
    np.testing.assert_allclose(a, b, rtol=1e-9)


def _k(**entries) -> np.ndarray:
    k = make_camera().K.copy()  # calibrated at 640 x 480
    for name, value in entries.items():
        k[{"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2), "k22": (2, 2), "k20": (2, 0)}[name]] = value
    return k


ABSURD_CAMERA_INFO = [
    (_k(), 2 ** 32 - 1, 480, "size"), (_k(), 640, 2 ** 32 - 1, "size"), (_k(), 0, 480, "size"), (_k(), 0, 0, "size"),
    (_k(), 100_001, 480, "size"), (_k(cx=5000.0), 640, 480, "principal point"),
    (_k(cy=-10.0), 640, 480, "principal point"), (_k(), 64, 48, "principal point"),  # K is not for 64x48
    (_k(fx=0.0), 640, 480, "focal"), (_k(fy=-510.0), 640, 480, "focal"), (_k(fx=NAN), 640, 480, "finite"),
    (_k(fy=float("inf")), 640, 480, "finite"), (np.zeros((3, 3)), 640, 480, "uncalibrated"),
    (_k(k22=2.0), 640, 480, "pinhole"), (_k(k20=1e-3), 640, 480, "pinhole"), (np.ones(8), 640, 480, "9 numbers"),
    (_k(fx=1e-12, fy=1e-12), 640, 480, "invertible")]


@pytest.mark.parametrize("k,width,height,reason", ABSURD_CAMERA_INFO,
                         ids=[f"{i}-{case[3]}" for i, case in enumerate(ABSURD_CAMERA_INFO)])
def test_absurd_or_inconsistent_camera_info_is_refused_and_gives_no_positions(k, width, height, reason):
    with pytest.raises(ValueError, match=reason):
        check_camera_info(k.ravel(), width, height)
    # Unknown camera: no ground model, obstacles get NaN positions (width 2^32-1 used to give finite garbage).
    assert make_ground_model(k, (width, height), (640, 480), 1.4, 0.08) is None


def test_sane_camera_info_is_used_and_non_uniform_rescales_are_reported():
    k = make_camera().K
    np.testing.assert_array_equal(check_camera_info(k.ravel(), 640, 480), k)
    assert make_ground_model(k, (640, 480), (640, 480), 1.4, 0.08) is not None
    # Same aspect ratio (binning, resize; within a pixel of rounding): rescaled silently.
    assert rescale_warning((640, 480), (640, 480)) is None
    assert rescale_warning((640, 480), (320, 240)) is None and rescale_warning((1281, 721), (640, 360)) is None
    halved = make_ground_model(k, (640, 480), (320, 240), 1.4, 0.08)
    np.testing.assert_allclose(halved.K, scale_intrinsics(k, (640, 480), (320, 240)))
    # Different x and y factors: still rescaled per axis, but worth a warning (often the wrong camera_info).
    text = rescale_warning((640, 480), (640, 240))
    assert text and "640x480" in text and "640x240" in text and "x 1" in text and "y 0.5" in text
    squeezed = make_ground_model(k, (640, 480), (640, 240), 1.4, 0.08)
    assert squeezed.K[0, 0] == k[0, 0] and squeezed.K[1, 1] == pytest.approx(k[1, 1] / 2)


# ----------------------------------------------------------------------------------------- processing

def test_validate_roi():
    assert validate_roi([0, 0.1, 1, 0.9]) == (0.0, 0.1, 1.0, 0.9)
    for bad in ([0, 0, 1], [0.5, 0, 0.5, 1], [0, 0, 1.2, 1], [0, NAN, 1, 1], ["a", 0, 1, 1], None):
        with pytest.raises(ValueError):
            validate_roi(bad)
    with pytest.raises(ValueError):
        PostProcessConfig(threshold=NAN)
    with pytest.raises(ValueError):
        PostProcessConfig(threshold=0.0, min_obstacle_area=-1)


def test_threshold_parameter_representation():
    assert parse_threshold(NAN) is None and parse_threshold("") is None and parse_threshold("auto") is None
    assert parse_threshold(-9) == -9.0 and parse_threshold("-8.5") == -8.5 and parse_threshold(0.25) == 0.25
    for bad in ("abc", float("inf"), True, [1.0]):
        with pytest.raises(ValueError):
            parse_threshold(bad)


def test_threshold_and_mounting_values_outside_what_makes_sense_are_refused():
    # 1e308 is finite, but the float32 outputs cannot carry it: every frame would fail to publish.
    for bad in (1e308, -1e308, "1e308", 1.5e6, 10 ** 400, float("-inf")):
        with pytest.raises(ValueError, match="threshold"):
            parse_threshold(bad)
    assert parse_threshold(1e6) == 1e6 and parse_threshold("-1e6") == -1e6
    with pytest.raises(ValueError, match="threshold"):
        PostProcessConfig(threshold=1e308)
    assert check_mounting(1.5, 0.1) == (1.5, 0.1)
    assert all(math.isnan(v) for v in check_mounting(NAN, NAN))  # unknown: no ground positions
    for height, pitch in ((1e308, 0.1), (0.0, 0.1), (-1.0, 0.1), (float("inf"), 0.1), (1.5, math.pi / 2),
                          (1.5, -2.0), (1.5, 1e308), (1.5, float("inf"))):
        with pytest.raises(ValueError, match="camera.height_m" if pitch == 0.1 else "camera.pitch_rad"):
            check_mounting(height, pitch)
    with pytest.raises(ValueError, match="min_obstacle_area"):
        PostProcessConfig(threshold=0.0, min_obstacle_area=2 ** 63 - 1)
    # make_ground_model (also used by `pebal-bag process`) gives no model for such a mounting.
    k = make_camera().K
    assert make_ground_model(k, (640, 480), (640, 480), 1.4, 0.08) is not None
    assert make_ground_model(k, (640, 480), (640, 480), 1e308, 0.08) is None


def settings(**changes) -> RuntimeSettings:
    base = dict(config=PostProcessConfig(threshold=-9.0), threshold_param=None, height_m=NAN, pitch_rad=NAN,
                smoothing=True)
    return RuntimeSettings(**{**base, **changes})


def test_a_parameter_batch_is_validated_whole_before_any_of_it_applies():
    current = settings()
    # A valid threshold and an invalid roi in one request: refused whole, naming the roi.
    with pytest.raises(ValueError, match="roi"):
        plan_parameter_batch(current, [("threshold", -5.0), ("roi", [0.6, 0.0, 0.2, 1.0])], -9.0)
    with pytest.raises(ValueError, match="threshold"):  # the order does not matter
        plan_parameter_batch(current, [("roi", [0.5, 0.0, 1.0, 1.0]), ("threshold", 1e308)], -9.0)
    assert current == settings()  # nothing changed
    new = plan_parameter_batch(current, [("threshold", -5.0), ("roi", [0.5, 0.0, 1.0, 1.0]), ("smoothing", False),
                                         ("camera.height_m", 1.5), ("camera.pitch_rad", 0.1)], -9.0)
    assert new.config.threshold == -5.0 and new.threshold_param == -5.0 and new.config.roi == (0.5, 0.0, 1.0, 1.0)
    assert (new.smoothing, new.height_m, new.pitch_rad) == (False, 1.5, 0.1)
    back = plan_parameter_batch(new, [("threshold", "auto")], -9.0)
    assert back.threshold_param is None and back.config.threshold == -9.0 and back.config.roi == new.config.roi


@pytest.mark.parametrize("name,value,reason", [
    ("min_obstacle_area", -5, "min_obstacle"), ("camera.height_m", -1.0, "camera.height_m"),
    ("camera.pitch_rad", 2.0, "camera.pitch_rad"), ("roi", [0.0, 0.0, 1.0], "roi"), ("device", "cuda", "run time")])
def test_refused_parameter_changes_name_the_reason(name, value, reason):
    with pytest.raises(ValueError, match=reason):
        plan_parameter_batch(settings(), [("threshold", -5.0), (name, value)], -9.0)


@pytest.mark.parametrize("name,value,reason", [
    ("smoothing", 1, "smoothing"), ("min_obstacle_area", -5, "min_obstacle"),
    ("min_obstacle_area", 2.5, "min_obstacle"), ("camera.height_m", "high", "camera.height_m"), ("roi", None, "roi"),
    ("restrict_to_drivable", "yes", "restrict_to_drivable")])
def test_values_of_the_wrong_type_or_range_are_refused_by_the_table(name, value, reason):
    """Wrong types and values out of range: refused by the table's check (what pebal-bag process applies;
    the node's rclpy descriptors, built from the same table, refuse them before plan_parameter_batch)."""
    with pytest.raises(ValueError, match=reason):
        PARAMETERS_BY_NAME[name].check(value)


def test_read_only_parameters_are_marked_in_the_table():
    # rclpy refuses changes of read-only parameters (descriptor read_only, test_detector_node.py).
    assert PARAMETERS_BY_NAME["device"].read_only and PARAMETERS_BY_NAME["checkpoint"].read_only
    assert not any(PARAMETERS_BY_NAME[n].read_only for n in ("threshold", "smoothing", "roi", "camera.height_m"))


def test_roi_restricts_mask():
    score = np.zeros((40, 80), np.float32)
    score[5:15, 5:15] = 1.0  # top-left blob
    score[25:35, 50:70] = 1.0  # bottom-right blob
    full = obstacle_mask(score, None, PostProcessConfig(threshold=0.5))
    assert full.sum() == 100 + 200
    roi = PostProcessConfig(threshold=0.5, roi=(0.5, 0.5, 1.0, 1.0))
    mask = obstacle_mask(score, None, roi)
    assert mask.sum() == 200 and not mask[:20].any()
    assert roi_mask((40, 80), (0.5, 0.5, 1.0, 1.0)).sum() == 20 * 40


def test_drivable_restriction_keeps_objects_on_the_road():
    semantic = np.full((60, 100), 1, np.uint8)  # sidewalk
    semantic[30:, 20:80] = 0  # road in the lower middle
    semantic[40:50, 40:50] = 13  # a "car" lying on the road: a hole enclosed by road
    drivable = drivable_mask(semantic)
    assert drivable[45, 45] and drivable[55, 25] and not drivable[10, 10] and not drivable[45, 10]
    score = np.zeros((60, 100), np.float32)
    score[40:50, 40:50] = 1.0  # anomaly on the road
    score[5:15, 5:15] = 1.0  # anomaly on the sidewalk
    config = PostProcessConfig(threshold=0.5, restrict_to_drivable=True)
    frame = process_frame(semantic, score, config)
    assert [o.bbox for o in frame.obstacles] == [(40, 40, 10, 10)]
    assert frame.obstacles[0].drivable_fraction == 1.0
    assert frame.anomalous_fraction == pytest.approx(200 / 6000)  # before restrictions
    unrestricted = process_frame(semantic, score, config.with_changes(restrict_to_drivable=False))
    assert len(unrestricted.obstacles) == 2


def test_small_blobs_removed_and_obstacles_listed():
    score = np.full((50, 60), -10.0, np.float32)
    score[10:20, 10:20] = -1.0  # 100 px
    score[30:32, 40:42] = -2.0  # 4 px
    score[40, 5] = np.nan
    config = PostProcessConfig(threshold=-5.0, min_obstacle_area=10)
    frame = process_frame(None, score, config)
    assert frame.mask.dtype == bool and frame.mask.sum() == 100
    assert len(frame.obstacles) == 1
    o = frame.obstacles[0]
    assert (o.id, o.bbox, o.area, o.mean_score, o.max_score) == (0, (10, 10, 10, 10), 100, -1.0, -1.0)
    assert math.isnan(o.drivable_fraction) and all(math.isnan(c) for c in o.ground_position)
    assert frame.max_score == -1.0
    keep_all = process_frame(None, score, config.with_changes(min_obstacle_area=0))
    assert [ob.area for ob in keep_all.obstacles] == [100, 4]


def test_obstacle_ground_positions_on_a_synthetic_scene():
    scene = generate_scene(3, SceneConfig(height=256, width=512, pitch_deg=4.0, anomaly_count_range=(2, 3)))
    cam = scene.camera
    mask = scene.anomaly == 1
    assert mask.any()
    score = np.where(mask, 1.0, -1.0).astype(np.float32)
    ground = GroundModel(K=cam.K, height_m=cam.height, pitch_rad=cam.pitch)
    frame = process_frame(scene.semantic, score, PostProcessConfig(threshold=0.0, min_obstacle_area=20), ground)
    assert frame.obstacles
    for o in frame.obstacles:
        u, v = bottom_centre_pixel(o.bbox)
        p = np.array(o.ground_position)
        assert np.all(np.isfinite(p)) and p[2] > 0
        np.testing.assert_allclose(camera_to_pixel(p, cam.K), (u, v), atol=1e-6)
        gx, gz = cam.pixel_to_ground(u, v)  # independent model: same lateral offset / distance
        assert p[0] == pytest.approx(float(gx), rel=1e-6, abs=1e-6)
        assert (p[2] * math.cos(cam.pitch) - p[1] * math.sin(cam.pitch)) == pytest.approx(float(gz), rel=1e-6)
    # The generator's anomalies rest on the road: the drivable restriction keeps them.
    restricted = process_frame(scene.semantic, score, PostProcessConfig(threshold=0.0, min_obstacle_area=20,
                                                                        restrict_to_drivable=True), ground)
    assert restricted.mask.sum() >= 0.8 * frame.mask.sum()


def test_mailbox_keeps_only_the_newest_frame():
    box = LatestFrameMailbox()
    assert box.take(timeout=0.01) is None
    assert box.put(1) is False
    assert box.put(2) is True and box.put(3) is True
    assert box.dropped == 2
    assert box.take(timeout=0.01) == 3 and box.take(timeout=0.01) is None
    box.close()
    assert box.take(timeout=5) is None  # returns at once when closed


def test_closing_the_mailbox_drops_a_waiting_frame_and_counts_it():
    """A deactivated node must not process, after its next activation, a frame from before."""
    box = LatestFrameMailbox()
    box.put("stale")
    assert box.close() is True and box.dropped == 1
    box.open()
    assert box.take(timeout=0.01) is None
    assert box.close() is False and box.dropped == 1


@pytest.mark.parametrize("track_id", [1, 2**30 - 1, 2**30, 2**30 + 1, 2**31, 2**32 - 1])
def test_marker_ids_fit_int32_for_every_track_id(track_id):
    from pebal_perception.node.outputs import marker_id

    ids = [marker_id(track_id, text) for text in (False, True)]
    assert all(0 <= i < 2**31 for i in ids) and ids[1] == ids[0] + 1
    assert marker_id(track_id + 1, False) != ids[0]  # neighbouring tracks never share a marker


def test_recent_events_reflect_only_the_window():
    now = [100.0]
    events = RecentEvents(10.0, clock=lambda: now[0])
    assert events.recent("processing_failed") is None
    events.note("processing_failed", "ValueError: bad frame")
    now[0] += 4.0
    assert events.recent("processing_failed") == (4.0, "ValueError: bad frame")
    assert events.recent("rejected") is None  # kinds are separate
    now[0] += 6.5  # the failure left the window: the status is back to what is happening now
    assert events.recent("processing_failed") is None
    events.note("processing_failed", "again")
    assert events.recent("processing_failed") == (0.0, "again")
    for bad in (0.0, -1.0, NAN, float("inf")):
        with pytest.raises(ValueError):
            RecentEvents(bad)


def test_processing_core_is_ros_free():
    import json
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import json, sys; import pebal_perception.core.geometry, pebal_perception.node.processing, "
             "pebal_perception.core.detector, "
             "pebal_perception.core.settings, pebal_perception.node.outputs; "
             "print(json.dumps(sorted(m for m in sys.modules if "
             "m.split('.')[0] in ('rclpy', 'sensor_msgs', 'pebal_training') or m == 'pebal_perception.msg')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]), env=dict(__import__("os").environ))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------------------ device out-of-memory

class FakeEngine:
    """Device/precision state of an InferenceEngine, without a model."""

    def __init__(self, device: str = "cuda", precision: str = "fp32"):
        import torch

        self.device = torch.device(device)
        self.precision = precision

    def set_precision(self, precision: str) -> None:
        self.precision = precision

    def to_device(self, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.precision = "fp32"


class ScriptedInference:
    """Stands in for infer_maps: raises out-of-memory while ``fails(engine)`` says so; records calls."""

    def __init__(self, fails, error=None):
        import torch

        self.fails = fails
        self.error = error or (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        self.calls: list[tuple[str, str]] = []

    def __call__(self, engine, rgb):
        self.calls.append((str(engine.device), engine.precision))
        if self.fails(engine, len(self.calls)):
            raise self.error()
        return np.zeros(rgb.shape[:2], np.uint8), np.ones(rgb.shape[:2], np.float32), 1.0


FRAME = np.zeros((4, 6, 3), np.uint8)


def test_parse_oom_fallback():
    assert parse_oom_fallback("none") == () and parse_oom_fallback("") == ()
    assert parse_oom_fallback("fp16") == ("fp16",)
    assert parse_oom_fallback(" fp16, CPU ") == ("fp16", "cpu")
    for bad in ("gpu", "fp16,fp16", "none,cpu", "bf16"):
        with pytest.raises(ValueError, match="oom_fallback"):
            parse_oom_fallback(bad)


def test_oom_transient_is_retried_as_is():
    infer = ScriptedInference(lambda engine, n: n == 1)
    guard = OomGuardedInference(FakeEngine(), ("fp16",), infer=infer)
    semantic, score, _ = guard(FRAME)
    assert score.shape == (4, 6)
    assert infer.calls == [("cuda", "fp32"), ("cuda", "fp32")]
    assert guard.out_of_memory == 1 and guard.dropped == 0 and guard.degraded == []
    guard(FRAME)
    assert len(infer.calls) == 3 and guard.out_of_memory == 1


def test_oom_persistent_degrades_to_fp16_then_cpu_and_stays_there():
    engine = FakeEngine()
    infer = ScriptedInference(lambda e, n: e.device.type == "cuda" and e.precision == "fp32")
    guard = OomGuardedInference(engine, ("fp16", "cpu"), infer=infer)
    guard(FRAME)
    assert infer.calls == [("cuda", "fp32"), ("cuda", "fp32"), ("cuda", "fp16")]
    assert guard.degraded == ["fp16"] and engine.precision == "fp16" and guard.pending == ["cpu"]
    guard(FRAME)  # the next frame goes straight to fp16
    assert infer.calls[-1] == ("cuda", "fp16") and len(infer.calls) == 4

    infer.fails = lambda e, n: e.device.type == "cuda"  # now fp16 does not fit either
    guard(FRAME)
    assert infer.calls[-3:] == [("cuda", "fp16"), ("cuda", "fp16"), ("cpu", "fp32")]
    assert guard.degraded == ["fp16", "cpu"] and engine.device.type == "cpu"
    assert guard.out_of_memory == 2 and guard.dropped == 0


def test_oom_without_fallback_drops_the_frame_and_serves_the_next():
    infer = ScriptedInference(lambda e, n: n <= 2)
    guard = OomGuardedInference(FakeEngine(), (), infer=infer)
    with pytest.raises(FrameOutOfMemory, match=r"6x4 frame on cuda \(fp32\), no fallback left: OutOfMemoryError"):
        guard(FRAME)
    assert guard.dropped == 1 and guard.out_of_memory == 1
    assert guard(FRAME)[1].shape == (4, 6)  # the node keeps going
    assert guard.dropped == 1


def test_oom_fallbacks_that_do_not_apply_are_skipped():
    # CPU engine: neither fp16 (CUDA only) nor cpu changes anything, so the frame is dropped
    # after the one plain retry instead of being retried pointlessly.
    infer = ScriptedInference(lambda e, n: True)
    guard = OomGuardedInference(FakeEngine("cpu"), ("fp16", "cpu"), infer=infer)
    with pytest.raises(FrameOutOfMemory):
        guard(FRAME)
    assert len(infer.calls) == 2 and guard.degraded == [] and guard.pending == []


def test_only_memory_errors_are_handled():
    guard = OomGuardedInference(FakeEngine(), ("fp16",), infer=ScriptedInference(
        lambda e, n: True, error=lambda: ValueError("bad frame")))
    with pytest.raises(ValueError, match="bad frame"):
        guard(FRAME)
    assert guard.out_of_memory == 0 and guard.degraded == []
    # cuDNN / cuBLAS report failed workspace allocations as plain RuntimeErrors.
    cudnn = ScriptedInference(lambda e, n: n == 1, error=lambda: RuntimeError("CUDA error: out of memory"))
    guard = OomGuardedInference(FakeEngine(), (), infer=cudnn)
    guard(FRAME)
    assert guard.out_of_memory == 1
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_oom_guard_with_a_real_engine_gives_the_normal_outputs():
    import torch

    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.models import get_model_spec
    from pebal_perception.core.engine import infer_maps

    torch.manual_seed(0)
    engine = InferenceEngine(get_model_spec("espnetv2").builder(), ModelMeta.for_architecture(
        "espnetv2", input_size=[64, 128]), device="cpu")
    rgb = np.random.default_rng(0).integers(0, 256, (60, 130, 3), dtype=np.uint8)
    expected = infer_maps(engine, rgb)

    class FailsOnce(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.failed = inner, False

        def forward(self, x):
            if not self.failed:
                self.failed = True
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    engine.model = FailsOnce(engine.model)
    guard = OomGuardedInference(engine, ("fp16", "cpu"))
    semantic, score, _ = guard(rgb)
    np.testing.assert_array_equal(semantic, expected[0])
    np.testing.assert_array_equal(score, expected[1])
    assert guard.out_of_memory == 1 and guard.degraded == []
    # The engine's switches: CPU stays fp32, moving to the CPU is a no-op there.
    engine.set_precision("fp16")
    engine.to_device("cpu")
    assert engine.precision == "fp32" and engine.device.type == "cpu"
    with pytest.raises(ValueError):
        engine.set_precision("int8")


def test_finite_max_ignores_nan_and_inf():
    from pebal_perception.core.postprocess import finite_max

    score = np.array([[0.5, -2.0], [1.5, 0.0]], dtype=np.float32)
    assert finite_max(score) == 1.5
    assert finite_max(np.array([np.nan, 2.0, -1.0], dtype=np.float32)) == 2.0
    assert finite_max(np.array([np.inf, 3.0, -np.inf], dtype=np.float32)) == 3.0
    assert math.isnan(finite_max(np.array([np.nan, np.inf, -np.inf], dtype=np.float32)))
    assert math.isnan(finite_max(np.zeros((0, 4), dtype=np.float32)))
