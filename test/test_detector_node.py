"""End-to-end tests of the detector node over real DDS (loopback only).

The node under test is the exact process ``launch/detector.launch.py`` starts: the installed launcher
``$VENV/lib/pebal_perception/detector_node --ros-args --params-file config/detector.yaml -p ... -r ...``
(remappings as in the launch file), with a small random-init ESPNetv2 checkpoint. This process is the
peer: it publishes images (every supported encoding, padded rows, compressed, malformed ones), calls the
node's parameter service and subscribes to every output.

A random-init model says nothing about anomalies, so the tests assert *consistency between outputs*:
the published obstacle mask and ``~/result`` obstacles are recomputed from the published energy and
semantic maps with the ROS-free post-processing (pebal_perception.core.postprocess).

Every ROS process runs with loopback-only discovery and this session's ROS_DOMAIN_ID (conftest.py).
"""
from __future__ import annotations

import math
import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_perception.core.geometry import pixel_to_ground_point, scale_intrinsics
from pebal_perception.core.postprocess import bottom_centre_pixel, process_frame
from pebal_perception.core.postprocess_config import PostProcessConfig
from pebal_perception.testing import ros_harness
from pebal_perception.testing.ros_harness import Collector

ros_harness.use_loopback()
os.environ["ROS_PYTHON_CHECK_FIELDS"] = "1"  # this process and the node processes

pytestmark = pytest.mark.ros

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"ROS 2 not available ({type(exc).__name__}: {exc}); run scripts/setup.sh",
                allow_module_level=True)

NS = "/test_ns"
NODE = f"{NS}/pebal_detector"
IMAGE_TOPIC = "/cam/image"
INFO_TOPIC = "/cam/camera_info"
START_TIMEOUT = 60.0
READY_TIMEOUT = 600.0  # model loading plus backend auto's measurement, on a loaded machine
TIMEOUT = 20.0
MIN_AREA = 20
# The planner-facing post-processing switched off (see ros_harness.PER_PIXEL_PARAMS): these tests check
# transport and consistency between outputs, recomputed per frame with PostProcessConfig's defaults.
PER_PIXEL_ARGS = tuple(arg for param in ros_harness.PER_PIXEL_PARAMS for arg in ("-p", param))

if ros_harness.ros_unavailable() is not None:  # pragma: no cover
    pytest.skip(f"{ros_harness.ros_unavailable()}; run scripts/setup.sh", allow_module_level=True)


# ----------------------------------------------------------------------------------------------- helpers

def make_checkpoint(path: Path) -> Path:
    import torch

    from pebal_perception.core.checkpoint import ModelMeta, save_checkpoint
    from pebal_perception.core.models import get_model_spec

    torch.manual_seed(0)
    model = get_model_spec("espnetv2").builder()
    save_checkpoint(path, model, ModelMeta.for_architecture("espnetv2", input_size=[128, 256]))
    return path


class NodeProcess(ros_harness.NodeProcess):
    """The harness's detector node with this module's camera topics and namespace; stderr kept apart."""

    def __init__(self, workdir: Path, *ros_args: str, namespace: str = NS, checkpoint: Path | str | None = None,
                 extra_env: dict[str, str] | None = None, launcher: Path = ros_harness.LAUNCHER):
        super().__init__(ros_harness.detector_args(namespace=namespace, checkpoint=checkpoint, extra=ros_args,
                                                   image_topic=IMAGE_TOPIC, info_topic=INFO_TOPIC),
                         workdir, separate_stderr=True, extra_env=extra_env, launcher=launcher)


class Peer(ros_harness.Peer):
    """The harness's peer with publishers on this module's camera topics and a /diagnostics collector."""

    def __init__(self):
        super().__init__("pebal_test_peer")
        reliable = ros_harness.reliable_qos(50)
        self.pub_image = self.publisher(Image, IMAGE_TOPIC, reliable)
        self.pub_compressed = self.publisher(CompressedImage, f"{IMAGE_TOPIC}/compressed", reliable)
        self.pub_info = self.publisher(CameraInfo, INFO_TOPIC, reliable)
        self.diagnostics = self.collect(DiagnosticArray, "/diagnostics", 100)

    def outputs(self, node_name: str) -> dict[str, Collector]:
        return self.detector_outputs(node_name)


def encode(rgb: np.ndarray, encoding: str, pad: int = 0) -> tuple[bytes, int]:
    """An RGB image in ``encoding`` with ``pad`` bytes of padding per row -> (data, step)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    arrays = {
        "rgb8": rgb, "bgr8": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]),
        "mono8": grey, "mono16": grey.astype("<u2") * 257,
    }
    arr = np.ascontiguousarray(arrays[encoding])
    h, w = rgb.shape[:2]
    row = arr.reshape(h, -1).view(np.uint8)
    padded = np.zeros((h, row.shape[1] + pad), np.uint8)
    padded[:, :row.shape[1]] = row
    return padded.tobytes(), row.shape[1] + pad


def stamp_now(msg) -> None:
    now = time.time()
    msg.header.stamp.sec = int(now)
    msg.header.stamp.nanosec = int((now - int(now)) * 1e9)


def image_msg(rgb: np.ndarray, encoding: str = "rgb8", pad: int = 0, frame_id: str | None = None) -> Image:
    data, step = encode(rgb, encoding, pad)
    msg = Image(height=int(rgb.shape[0]), width=int(rgb.shape[1]), encoding=encoding, is_bigendian=0,
                step=int(step), data=data)
    msg.header.frame_id = frame_id or f"cam_{uuid.uuid4().hex[:10]}"
    stamp_now(msg)
    return msg


def compressed_msg(rgb: np.ndarray, fmt: str, frame_id: str | None = None) -> CompressedImage:
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", rgb[..., ::-1])
    assert ok
    msg = CompressedImage(format=f"bgr8; {fmt} compressed bgr8", data=buf.tobytes())
    msg.header.frame_id = frame_id or f"cam_{uuid.uuid4().hex[:10]}"
    stamp_now(msg)
    return msg


def scene_image(seed: int = 5, size: tuple[int, int] = (160, 320)) -> np.ndarray:
    from pebal_training.data.synthetic import SceneConfig, generate_scene

    rgb = generate_scene(seed, SceneConfig(height=size[0], width=size[1])).image.copy()
    h, w = size
    rgb[int(h * 0.62):int(h * 0.8), int(w * 0.42):int(w * 0.55)] = (250, 250, 40)  # a pasted bright object
    return rgb


def to_array(msg: Image) -> np.ndarray:
    dtype = {"mono8": np.uint8, "rgb8": np.uint8, "32FC1": np.dtype("<f4")}[msg.encoding]
    channels = 3 if msg.encoding == "rgb8" else 1
    arr = np.frombuffer(bytes(msg.data), dtype=dtype)
    arr = arr.reshape(msg.height, msg.width, channels) if channels > 1 else arr.reshape(msg.height, msg.width)
    return arr


def same_frame(frame_id: str):
    return lambda m: m.header.frame_id == frame_id


def send_and_wait(peer: Peer, outputs: dict[str, Collector], make_msg, timeout: float = TIMEOUT,
                  retry: float = 2.0, predicate=None):
    """Publishes fresh messages (every ``retry`` s) until one's result arrives; returns (msg, result)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = make_msg()
        (peer.pub_compressed if isinstance(msg, CompressedImage) else peer.pub_image).publish(msg)
        fid = msg.header.frame_id
        result = outputs["result"].wait(
            lambda m: m.header.frame_id == fid and (predicate is None or predicate(m)),
            min(retry, max(0.1, deadline - time.monotonic())))
        if result is not None:
            return msg, result
    raise AssertionError(f"no result within {timeout} s")


def frame_outputs(outputs: dict[str, Collector], frame_id: str, names=("semantic", "energy", "obstacle_mask")):
    found = {}
    for name in names:
        found[name] = outputs[name].wait(same_frame(frame_id), 10.0)
        assert found[name] is not None, f"no {name} for frame {frame_id}"
    return found


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def latest_status(peer: Peer, node_name: str, predicate, timeout: float = 10.0, first: bool = False):
    """The newest (``first``: the oldest) DiagnosticStatus of ``node_name`` received so far, or within
    ``timeout``, that matches ``predicate``."""
    def status_of(msg):
        return next((st for st in msg.status if st.name.startswith(node_name + ":") and predicate(st)), None)

    msg = peer.diagnostics.wait(lambda m: status_of(m) is not None, timeout)
    assert msg is not None, f"no matching /diagnostics status from {node_name} within {timeout} s"
    if first:
        msg = peer.diagnostics.find(lambda m: status_of(m) is not None, newest=False)
    return status_of(msg)


def latest_diag(peer: Peer, node_name: str, predicate=None, timeout: float = 10.0) -> dict[str, str]:
    def values_of(msg):
        for status in msg.status:
            if status.name.startswith(node_name + ":"):
                return {kv.key: kv.value for kv in status.values}
        return None

    msg = peer.diagnostics.wait(lambda m: values_of(m) is not None and (predicate is None or predicate(values_of(m))),
                                timeout)
    assert msg is not None, f"no matching /diagnostics from {node_name} within {timeout} s"
    return values_of(msg)


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="pebal_node_test_") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def checkpoint(workdir):
    return make_checkpoint(workdir / "espnetv2_random.pt")


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


@pytest.fixture(scope="module")
def node(workdir, checkpoint, peer):
    proc = NodeProcess(workdir, "-p", "restrict_to_drivable:=false", "-p", f"min_obstacle_area:={MIN_AREA}",
                       "-p", "subscribe_compressed:=true", "-p", f"qos_overrides.{IMAGE_TOPIC}.subscription.depth:=10",
                       "-p", "cpu_threads:=1",
                       *PER_PIXEL_ARGS,
                       checkpoint=checkpoint)
    outputs = peer.outputs(NODE)
    rgb = scene_image()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert proc.alive(), f"node exited ({proc.proc.returncode}):\n{proc.output()}"
            try:
                send_and_wait(peer, outputs, lambda: image_msg(rgb), timeout=2.0, retry=1.0)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"node did not answer within {START_TIMEOUT} s:\n{proc.output()}")
        yield proc
    finally:
        proc.stop(signal.SIGTERM)


# ------------------------------------------------------------------------------------------------- tests

ENCODINGS = [("rgb8", 0, (160, 320)), ("rgb8", 7, (161, 317)), ("bgr8", 0, (160, 320)), ("bgr8", 3, (120, 201)),
             ("rgba8", 0, (160, 320)), ("bgra8", 5, (161, 317)), ("mono8", 0, (160, 320)), ("mono8", 3, (161, 317)),
             ("mono16", 0, (160, 320)), ("mono16", 2, (161, 317))]


@pytest.mark.parametrize("encoding,pad,size", ENCODINGS, ids=[f"{e}-pad{p}-{s[1]}x{s[0]}" for e, p, s in ENCODINGS])
def test_every_encoding_gives_every_output(node, peer, encoding, pad, size):
    outputs = peer.outputs(NODE)
    rgb = scene_image(size=size)
    msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb, encoding, pad))
    check_outputs(outputs, msg, result, size)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_input(node, peer, fmt):
    outputs = peer.outputs(NODE)
    rgb = scene_image(size=(144, 256))
    msg, result = send_and_wait(peer, outputs, lambda: compressed_msg(rgb, fmt))
    check_outputs(outputs, msg, result, (144, 256))


def check_outputs(outputs, msg, result, size):
    fid = msg.header.frame_id
    assert result.header.stamp == msg.header.stamp
    assert result.model_id.startswith("espnetv2")
    found = frame_outputs(outputs, fid, ("semantic", "energy", "obstacle_mask", "overlay"))
    expected = {"semantic": "mono8", "energy": "32FC1", "obstacle_mask": "mono8", "overlay": "rgb8"}
    for name, out in found.items():
        assert out.encoding == expected[name], name
        assert (out.height, out.width) == size, name
        assert out.header.stamp == msg.header.stamp and out.header.frame_id == fid, name
        assert out.is_bigendian == 0 and out.step * out.height == len(out.data), name
    semantic = to_array(found["semantic"])
    assert semantic.max() < 19
    energy = to_array(found["energy"])
    assert np.isfinite(energy).all()
    mask = to_array(found["obstacle_mask"])
    assert set(np.unique(mask)) <= {0, 255}
    assert result.max_score == pytest.approx(float(energy.max()), rel=1e-6, abs=1e-6)
    assert outputs["processing_time_ms"].wait(lambda m: m.data == pytest.approx(result.processing_time_ms), 5.0)


def expected_frame(found, threshold, restrict=False, roi=(0.0, 0.0, 1.0, 1.0), min_area=MIN_AREA, ground=None):
    semantic, energy = to_array(found["semantic"]), to_array(found["energy"])
    config = PostProcessConfig(threshold=threshold, restrict_to_drivable=restrict, roi=roi, min_obstacle_area=min_area)
    return process_frame(semantic, energy, config, ground)


def assert_consistent(found, result, expected):
    mask = to_array(found["obstacle_mask"])
    np.testing.assert_array_equal(mask, expected.mask.astype(np.uint8) * 255)
    assert len(result.obstacles) == len(expected.obstacles)
    for got, want in zip(result.obstacles, expected.obstacles):
        assert (got.id, got.x_offset, got.y_offset, got.width, got.height, got.area) == (want.id, *want.bbox, want.area)
        assert got.mean_score == pytest.approx(want.mean_score, rel=1e-5, abs=1e-5)
        assert got.max_score == pytest.approx(want.max_score, rel=1e-6, abs=1e-6)
    assert result.anomalous_fraction == pytest.approx(expected.anomalous_fraction, abs=1e-6)


def test_threshold_change_and_consistent_outputs(node, peer):
    outputs = peer.outputs(NODE)
    rgb = scene_image()
    msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb))
    assert result.threshold == pytest.approx(-9.0)  # no calibrated threshold stored: the default
    energy = to_array(frame_outputs(outputs, msg.header.frame_id)["energy"])
    threshold = float(np.percentile(energy, 96))

    results = peer.set_parameters(NODE, Parameter("threshold", value=threshold))
    assert results[0].successful, results[0].reason
    msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb),
                                predicate=lambda m: m.threshold == pytest.approx(threshold, rel=1e-6))
    found = frame_outputs(outputs, msg.header.frame_id)
    expected = expected_frame(found, threshold)
    assert expected.obstacles, "4 % of the pixels above the threshold must form at least one region"
    assert_consistent(found, result, expected)
    assert all(math.isnan(o.ground_position.x) for o in result.obstacles)  # no camera model yet

    # ROI and drivable restriction at run time (one atomic request).
    roi = [0.5, 0.4, 1.0, 1.0]
    results = peer.set_parameters(NODE, Parameter("roi", value=roi), Parameter("restrict_to_drivable", value=True))
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb),
                                    predicate=lambda m: m.header.frame_id != "")
        deadline = time.monotonic() + TIMEOUT
        while True:  # the first result may predate the change: retry until consistent or timeout
            found = frame_outputs(outputs, msg.header.frame_id)
            expected = expected_frame(found, threshold, restrict=True, roi=tuple(roi))
            if np.array_equal(to_array(found["obstacle_mask"]) > 0, expected.mask) or time.monotonic() > deadline:
                break
            msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb))
        assert_consistent(found, result, expected)
        mask = to_array(found["obstacle_mask"])
        assert not mask[:, :rgb.shape[1] // 2].any() and not mask[:int(0.4 * rgb.shape[0])].any()
    finally:
        results = peer.set_parameters(NODE, Parameter("roi", value=[0.0, 0.0, 1.0, 1.0]),
                                      Parameter("restrict_to_drivable", value=False))
        assert all(r.successful for r in results)

    # Invalid values are refused with a reason and change nothing. 1e308 is finite but no float32
    # output can carry it: accepted, it would make every later frame fail to publish.
    for bad in (Parameter("threshold", Parameter.Type.STRING, "abc"),
                Parameter("threshold", value=float("inf")),
                Parameter("threshold", value=1e308),
                Parameter("threshold", Parameter.Type.STRING, "-1e308"),
                Parameter("camera.height_m", value=1e308),
                Parameter("camera.pitch_rad", value=1e308),
                Parameter("roi", value=[0.6, 0.0, 0.2, 1.0]),
                Parameter("roi", value=[0.0, 0.0, 1.0]),
                Parameter("min_obstacle_area", value=-5),
                Parameter("camera.height_m", value=-1.0),
                # wrong types (refused by rclpy from the descriptors built from core/settings.py)
                Parameter("smoothing", value=1),
                Parameter("min_obstacle_area", value=2.5),
                Parameter("camera.height_m", Parameter.Type.STRING, "high"),
                Parameter("restrict_to_drivable", Parameter.Type.STRING, "yes"),
                Parameter("device", value="cuda"),
                Parameter("input_width", value=512),
                Parameter("checkpoint", value="/tmp/other.pt")):
        (reply,) = peer.set_parameters(NODE, bad)
        assert not reply.successful, bad.name
        assert reply.reason.strip(), bad.name
        if bad.name == "threshold" and "308" in str(bad.value):
            assert "outside" in reply.reason, reply.reason
    # One request with a valid threshold and an invalid roi is refused whole: the threshold stays.
    replies = peer.set_parameters(NODE, Parameter("threshold", value=threshold + 1.0),
                                  Parameter("roi", value=[0.6, 0.0, 0.2, 1.0]))
    assert len(replies) == 2 and not any(r.successful for r in replies), [r.reason for r in replies]
    assert all("roi" in r.reason for r in replies), [r.reason for r in replies]
    (reply,) = peer.set_parameters(NODE, Parameter("", value=1.0))  # an empty name is no parameter
    assert not reply.successful and reply.reason.strip()
    assert peer.get_parameter(NODE, "threshold") == pytest.approx(threshold)
    assert peer.get_parameter(NODE, "device") == "cpu"
    msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb))  # frames are still published
    assert result.threshold == pytest.approx(threshold, rel=1e-6)

    # A numeric string works (launch files pass strings); NaN = back to the calibrated threshold.
    assert peer.set_parameters(NODE, Parameter("threshold", Parameter.Type.STRING, "-8.5"))[0].successful
    send_and_wait(peer, outputs, lambda: image_msg(rgb), predicate=lambda m: m.threshold == pytest.approx(-8.5))
    assert peer.set_parameters(NODE, Parameter("threshold", value=float("nan")))[0].successful
    send_and_wait(peer, outputs, lambda: image_msg(rgb), predicate=lambda m: m.threshold == pytest.approx(-9.0))


def test_adaptation_at_run_time_is_reported_in_diagnostics(node, peer):
    """adaptation switched on with ros2 param set: /diagnostics reports it (on with backend torch, else
    unavailable: the compiled graph is fixed) and counts the frames; a momentum outside (0, 1] is refused."""
    outputs = peer.outputs(NODE)
    rgb = scene_image()
    for bad in (0.0, 1.5):
        (reply,) = peer.set_parameters(NODE, Parameter("adaptation_momentum", value=bad))
        assert not reply.successful and "adaptation_momentum" in reply.reason, reply.reason
    replies = peer.set_parameters(NODE, Parameter("adaptation", value=True),
                                  Parameter("adaptation_momentum", value=0.5))
    assert all(r.successful for r in replies), [r.reason for r in replies]
    try:
        for _ in range(3):
            send_and_wait(peer, outputs, lambda: image_msg(rgb))
        values = latest_diag(peer, NODE, lambda v: v.get("adaptation") != "off" and (
            v["backend"] != "torch" or int(v["adaptation_frames_adapted"]) + int(v["adaptation_frames_paused"]) >= 2),
            timeout=TIMEOUT)
        assert values["adaptation_momentum"] == "0.5"
        if values["backend"] == "torch":
            assert values["adaptation"] == "on" and float(values["adaptation_drift"]) >= 0.0
        else:
            assert values["adaptation"] == f"unavailable: backend {values['backend']} runs a fixed graph"
            assert values["adaptation_frames_adapted"] == values["adaptation_frames_paused"] == "0"
    finally:
        assert peer.set_parameters(NODE, Parameter("adaptation", value=False))[0].successful
    latest_diag(peer, NODE, lambda v: v.get("adaptation") == "off", timeout=TIMEOUT)


def test_run_time_type_errors_name_both_types(node, peer):
    """A set-parameters request of the wrong type is refused with the parameter and both types named
    (rclpy alone says "Wrong parameter type, expected 'Type.DOUBLE' got 'Type.INTEGER'"), also through
    set_parameters_atomically; the value stays."""
    from rcl_interfaces.srv import SetParametersAtomically

    before = peer.get_parameter(NODE, "hysteresis")
    (result,) = peer.set_parameters(NODE, Parameter("hysteresis", value=1))
    assert not result.successful
    expected = "parameter hysteresis expects a double, got an integer 1 (write 1.0)"
    assert result.reason.startswith(expected), result.reason
    client = peer.node.create_client(SetParametersAtomically, f"{NODE}/set_parameters_atomically")
    try:
        request = SetParametersAtomically.Request(parameters=[Parameter("smoothing", value="yes").to_parameter_msg()])
        reply = peer.call(client, request)
    finally:
        peer.node.destroy_client(client)
    assert not reply.result.successful
    assert reply.result.reason.startswith("parameter smoothing expects a bool, got a string 'yes'"), reply.result.reason
    assert peer.get_parameter(NODE, "hysteresis") == before


def test_ground_positions_with_camera_info(node, peer):
    outputs = peer.outputs(NODE)
    rgb = scene_image()
    h, w = rgb.shape[:2]
    fx = 0.5 * w / math.tan(math.radians(45))
    K = [fx, 0.0, (w - 1) / 2, 0.0, fx, (h - 1) / 2, 0.0, 0.0, 1.0]
    info = CameraInfo(width=w * 2, height=h * 2)  # calibrated at twice the resolution: the node rescales
    info.k = [float(v) for v in scale_intrinsics(np.array(K).reshape(3, 3), (w, h), (2 * w, 2 * h)).ravel()]
    height_m, pitch = 1.5, 0.12
    msg, result = send_and_wait(peer, outputs, lambda: image_msg(rgb))
    energy = to_array(frame_outputs(outputs, msg.header.frame_id)["energy"])
    threshold = float(np.percentile(energy, 96))
    results = peer.set_parameters(NODE, Parameter("threshold", value=threshold),
                                  Parameter("camera.height_m", value=height_m),
                                  Parameter("camera.pitch_rad", value=pitch))
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        def positioned():
            for _ in range(3):
                peer.pub_info.publish(info)
            return image_msg(rgb)

        markers = peer.detector_outputs(NODE, ["obstacles/markers"])["obstacles/markers"]
        msg, result = send_and_wait(peer, outputs, positioned, predicate=lambda m: (
            m.threshold == pytest.approx(threshold, rel=1e-6)
            and any(math.isfinite(o.ground_position.z) for o in m.obstacles)))
        check_positions(result, K, height_m, pitch)
        # RViz markers of that frame: a DELETEALL, then a box and a text per positioned obstacle
        array = markers.wait(lambda a: a.markers and a.markers[0].header.frame_id == msg.header.frame_id, TIMEOUT)
        if array is None:  # the marker subscription may have matched after that frame: one more
            msg, result = send_and_wait(peer, outputs, positioned, predicate=lambda m: (
                any(math.isfinite(o.ground_position.z) for o in m.obstacles)))
            array = markers.wait(lambda a: a.markers and a.markers[0].header.frame_id == msg.header.frame_id,
                                 TIMEOUT)
        assert array is not None
        from visualization_msgs.msg import Marker

        positioned_obstacles = [o for o in result.obstacles if math.isfinite(o.ground_position.z)]
        assert array.markers[0].action == Marker.DELETEALL
        boxes = [m for m in array.markers if m.type == Marker.CUBE]
        texts = [m for m in array.markers if m.type == Marker.TEXT_VIEW_FACING]
        assert len(boxes) == len(texts) == len(positioned_obstacles) >= 1
        assert len(array.markers) == 1 + 2 * len(positioned_obstacles)
        for o, box, text in zip(positioned_obstacles, boxes, texts):
            assert box.pose.position.x == pytest.approx(o.ground_position.x, rel=1e-6, abs=1e-6)
            assert box.pose.position.z == pytest.approx(o.ground_position.z, rel=1e-6, abs=1e-6)
            assert box.pose.position.y < o.ground_position.y  # stands on the ground (optical y points down)
            assert text.text.startswith(f"#{o.track_id or o.id + 1} ") and box.header.stamp == msg.header.stamp

        # A camera_info no camera can have (2^32-1 pixels wide: finite garbage positions once): the
        # camera is unknown, positions are NaN, the message is counted and /diagnostics warns.
        before = int(latest_diag(peer, NODE)["camera_info_rejected"])
        absurd = CameraInfo(width=2 ** 32 - 1, height=2 * h, k=info.k)

        def unknown_camera():
            for _ in range(3):
                peer.pub_info.publish(absurd)
            return image_msg(rgb)

        msg, _ = send_and_wait(peer, outputs, unknown_camera, retry=0.5, predicate=lambda m: (
            m.obstacles and all(math.isnan(o.ground_position.z) for o in m.obstacles)))
        cleared = markers.wait(lambda a: a.markers and a.markers[0].header.frame_id == msg.header.frame_id,
                               TIMEOUT)
        assert cleared is not None and [m.action for m in cleared.markers] == [Marker.DELETEALL]
        status = latest_status(peer, NODE, lambda st: int(_values(st)["camera_info_rejected"]) > before
                               and "camera_info" in st.message, timeout=TIMEOUT)
        assert status.level == DiagnosticStatus.WARN, status.message

        # Calibrated for twice the height only (a different x and y factor): used, rescaled per axis,
        # and warned about once.
        squeezed = CameraInfo(width=w, height=2 * h)
        squeezed.k = [float(v) for v in scale_intrinsics(np.array(K).reshape(3, 3), (w, h), (w, 2 * h)).ravel()]

        def squeezed_camera():
            for _ in range(3):
                peer.pub_info.publish(squeezed)
            return image_msg(rgb)

        for _ in range(2):
            outputs["result"].clear()
            _, result = send_and_wait(peer, outputs, squeezed_camera, retry=0.5, predicate=lambda m: (
                any(math.isfinite(o.ground_position.z) for o in m.obstacles)))
            check_positions(result, K, height_m, pitch)
        # the warning is logged before the result is published, but the node's log pipe may deliver it later
        ros_harness.wait_for(lambda: "intrinsics rescaled by x 1, y 0.5" in node.output(), TIMEOUT)
        assert node.output().count("intrinsics rescaled by x 1, y 0.5") == 1, node.output()[-3000:]
    finally:
        peer.set_parameters(NODE, Parameter("camera.height_m", value=float("nan")),
                            Parameter("threshold", value=float("nan")))


def check_positions(result, K, height_m, pitch):  # noqa: N803 - the intrinsic matrix
    for o in result.obstacles:
        u, v = bottom_centre_pixel((o.x_offset, o.y_offset, o.width, o.height))
        want = pixel_to_ground_point(u, v, np.array(K).reshape(3, 3), height_m, pitch)
        got = (o.ground_position.x, o.ground_position.y, o.ground_position.z)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_malformed_messages_are_counted_and_frames_keep_flowing(node, peer):
    outputs = peer.outputs(NODE)
    rgb = scene_image()
    before = latest_diag(peer, NODE)
    good = image_msg(rgb)
    unknown = image_msg(rgb)
    unknown.encoding = "yuv9000"
    short = image_msg(rgb)
    short.data = bytes(short.data)[:-11]
    empty = CompressedImage(format="jpeg", data=b"")
    garbage = CompressedImage(format="jpeg", data=bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
    bad_step = image_msg(rgb)
    bad_step.step = 10
    for msg in (unknown, short, empty, garbage, bad_step):
        for _ in range(3):
            (peer.pub_compressed if isinstance(msg, CompressedImage) else peer.pub_image).publish(msg)
            time.sleep(0.03)
        peer.pub_image.publish(good)
        time.sleep(0.03)
    _, result = send_and_wait(peer, outputs, lambda: image_msg(rgb))  # still serving
    assert result is not None and node.alive()
    wanted = {"unknown_encoding": 1, "size_mismatch": 1, "empty": 1, "decode_failed": 1, "bad_step": 1}

    def counted(values):
        return all(int(values[f"rejected.{k}"]) >= int(before[f"rejected.{k}"]) + n for k, n in wanted.items())

    after = latest_diag(peer, NODE, counted, timeout=10.0)
    assert int(after["rejected_total"]) >= int(before["rejected_total"]) + len(wanted)
    for key in ("input_rate_hz", "processing_time_ms", "dropped_frames", "device", "model_id", "inference_time_ms",
                "frames_failed", "frames_lost_in_transport", "out_of_memory_frames", "degraded"):
        assert key in after
    assert after["device"] == "cpu" and after["model_id"].startswith("espnetv2")
    assert after["cpu_threads"] == "1"  # the cpu_threads parameter
    # Errors are logged, rate-limited (not one line per message).
    assert node.output().count("rejected input image") <= 12


DDS_FUZZ_EXAMPLES = int(os.environ.get("PEBAL_DDS_FUZZ_EXAMPLES", "4"))


def _fuzz_case_message(fields: dict, index: int):
    """The fuzzed fields as a sensor_msgs/Image, or None when rclpy refuses to build it (values no
    publisher can send: wrong types, out-of-range integers, data that is not bytes)."""
    try:
        msg = Image(height=fields["height"], width=fields["width"], step=fields["step"],
                    is_bigendian=fields["is_bigendian"], encoding=fields["encoding"], data=fields["data"])
    except (AssertionError, TypeError, ValueError, OverflowError):
        return None
    msg.header.frame_id = f"fuzz_{index}"
    stamp_now(msg)
    return msg


def _settled(values: dict[str, str]) -> bool:
    """Every received frame is accounted for: processed, dropped, rejected or failed (none in flight)."""
    return int(values["frames_received"]) == (int(values["frames_processed"]) + int(values["dropped_frames"])
                                              + int(values["rejected_total"]) + int(values["frames_failed"]))


COUNTERS = ("frames_received", "frames_processed", "dropped_frames", "rejected_total", "frames_failed")


def stable_report(peer: Peer, node_name: str, predicate, since: int = 0,
                  timeout: float = 3 * TIMEOUT) -> dict[str, str]:
    """The values of a /diagnostics report of ``node_name`` that matches ``predicate``, is settled and
    counts the same frames as the report before it (nothing in flight), both among the messages of
    ``peer.diagnostics`` from index ``since`` on. ``timeout`` only keeps the test from hanging."""
    deadline = time.monotonic() + timeout
    while True:
        reports = [{kv.key: kv.value for kv in st.values} for m in peer.diagnostics.snapshot(since)
                   for st in m.status if st.name.startswith(node_name + ":")]
        for before, after in zip(reports, reports[1:]):
            if (predicate(after) and _settled(after)
                    and all(before[key] == after[key] for key in COUNTERS)):
                return after
        assert time.monotonic() < deadline, f"no settled /diagnostics report from {node_name}: {reports[-2:]}"
        time.sleep(0.2)


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from test_image_conversion import image_fields
except ImportError:  # pragma: no cover
    given = None


@pytest.mark.skipif(given is None, reason="hypothesis not installed")
def test_fuzzed_images_over_dds_are_processed_or_counted_and_the_node_keeps_serving(node, peer):
    """A sample of the image-conversion fuzz cases (test_image_conversion.py) sent to the running node
    over real DDS: each is processed or rejected with the reason the in-process converter gives, every
    frame is accounted for in /diagnostics, and a valid frame afterwards is still served.
    ``PEBAL_DDS_FUZZ_EXAMPLES`` (default 4 batches of 12; the first is hypothesis' minimal one) raises
    the count locally."""
    from pebal_perception.core.image_conversion import ImageConverter, ImageRejected

    outputs = peer.outputs(NODE)
    converter = ImageConverter()

    @settings(max_examples=DDS_FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(image_fields(), min_size=12, max_size=12))
    def run(cases):
        peer.diagnostics.clear()  # an older settled report would also count the frames sent since
        before = latest_diag(peer, NODE, _settled, timeout=TIMEOUT)
        sent, accepted, expected = 0, 0, {}
        for index, (fields, _raw) in enumerate(cases):
            msg = _fuzz_case_message(fields, index)
            if msg is None:
                continue
            try:
                converter.to_rgb(msg)
                accepted += 1
            except ImageRejected as exc:
                expected[exc.reason] = expected.get(exc.reason, 0) + 1
            peer.pub_image.publish(msg)
            sent += 1
            time.sleep(0.02)

        def all_in(values):
            return _settled(values) and int(values["frames_received"]) - int(before["frames_received"]) >= sent

        after = latest_diag(peer, NODE, all_in, timeout=TIMEOUT)
        delta = lambda key: int(after[key]) - int(before[key])  # noqa: E731
        assert node.alive(), node.output()
        assert delta("frames_received") == sent
        for reason, count in expected.items():
            assert delta(f"rejected.{reason}") == count, (reason, after)
        assert delta("rejected_total") == sum(expected.values())
        assert delta("frames_processed") + delta("dropped_frames") == accepted
        assert delta("frames_failed") == 0
        assert delta("rejected.internal_error") == 0

    run()
    _, result = send_and_wait(peer, outputs, lambda: image_msg(scene_image()))  # still serving
    assert result is not None and node.alive()
    assert "Traceback" not in node.output()


# Generous: only keeps a hung node from hanging the test run. How fast the node stops is measured in bench/.
EXIT_TIMEOUT = 60.0


def test_sigterm_clean_exit(node):
    """SIGTERM: the node exits by itself (stop() kills it and reports None after EXIT_TIMEOUT), status 0."""
    rc = node.stop(signal.SIGTERM, timeout=EXIT_TIMEOUT)
    assert rc == 0, (rc, node.output())
    assert "Traceback" not in node.output()


def test_drops_instead_of_queueing_and_sigint(workdir, checkpoint, peer):
    """~20 Hz into a node needing well over 50 ms per frame: frames are dropped rather than queued. The
    consumer is made slow on purpose (network input 1024x512 through the torch path on the CPU, some
    hundred ms per frame on any CPU: at 512x256 through OpenVINO a fast machine kept up with the input and
    dropped nothing, so the test asserted a machine speed). Asserted with counts and order, not seconds
    (latencies: bench/): every received frame is processed or dropped, and results come in order and keep
    skipping frames to the end of the run (each result is the newest frame when the worker got free; a
    queue would deliver consecutive frames once it filled, its latency growing without bound)."""
    name = "/drop_ns/pebal_detector"
    proc = NodeProcess(workdir, "-p", "input_width:=1024", "-p", "input_height:=512", "-p", "backend:=torch",
                       "-p", f"qos_overrides.{IMAGE_TOPIC}.subscription.depth:=10",
                       "-p", "threshold:=-8.25", namespace="/drop_ns", checkpoint=checkpoint)
    outputs = peer.outputs(name)
    rgb = scene_image(size=(256, 512))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.alive(), proc.output()
            try:
                _, first = send_and_wait(peer, outputs, lambda: image_msg(rgb), timeout=2.0, retry=1.0)
                break
            except AssertionError:
                assert time.monotonic() < deadline, proc.output()
        # The -p override (as the launch file's threshold argument passes it) wins over the params file.
        assert first.threshold == pytest.approx(-8.25)
        energy = to_array(frame_outputs(outputs, first.header.frame_id, ("energy",))["energy"])
        assert energy.shape == (256, 512)
        peer.diagnostics.clear()
        base = stable_report(peer, name, lambda v: True)
        outputs["result"].clear()
        sent: set[str] = set()

        def results_so_far():
            return [m for m in outputs["result"].snapshot() if m.header.frame_id in sent]

        period, duration = 0.05, 6.0
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:  # the input rate; nothing below depends on timing
            msg = image_msg(rgb, frame_id=f"drop_{n}")
            sent.add(msg.header.frame_id)
            peer.pub_image.publish(msg)
            n += 1
            time.sleep(max(0.0, start + n * period - time.monotonic()))
        delivered_while_sending = len(results_so_far())
        reports_while_sending = len(peer.diagnostics)
        # Best effort may lose a few frames in transport; wait until the rest is received and accounted for.
        diag = stable_report(peer, name, lambda v: int(v["frames_received"]) >= int(base["frames_received"]) + n * 0.8,
                             since=reports_while_sending)
        processed = int(diag["frames_processed"]) - int(base["frames_processed"])
        deadline = time.monotonic() + TIMEOUT
        while len(results_so_far()) < processed and time.monotonic() < deadline:
            time.sleep(0.1)  # results published before the report counted them, still in transport
        results = results_so_far()
        dropped = int(diag["dropped_frames"]) - int(base["dropped_frames"])
        received = int(diag["frames_received"]) - int(base["frames_received"])
        late = len(results) - delivered_while_sending
        print(f"\n[drops] sent {n} frames at {1 / period:.0f} Hz, received {received}, processed {len(results)}, "
              f"dropped {dropped}, delivered after the input stopped {late}")
        assert len(results) >= 3, f"only {len(results)} results for {n} frames"
        # The peer may miss a result or two (reliable keep-last-5 outputs overwrite what a slow peer has
        # not acknowledged); the node's own counters account for every frame.
        assert processed - 2 <= len(results) <= processed
        assert dropped > 0
        assert dropped + processed == received  # every received frame was processed or dropped
        # Only the newest frames are processed: results come in order, skipping frames, and still skip
        # frames in the last third of the run (a growing queue would have stopped dropping by then).
        indices = [int(m.header.frame_id.split("_")[1]) for m in results]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        tail = indices[-max(2, len(indices) // 3):]
        assert any(b - a > 1 for a, b in zip(tail, tail[1:])), indices

        # SIGINT while frames are still arriving: the node exits by itself, status 0, no traceback.
        stop_pub = threading.Event()

        def keep_publishing():
            while not stop_pub.is_set():
                peer.pub_image.publish(image_msg(rgb))
                time.sleep(0.05)

        publisher = threading.Thread(target=keep_publishing, daemon=True)
        publisher.start()
        time.sleep(0.5)
        rc = proc.stop(signal.SIGINT, timeout=EXIT_TIMEOUT)
        stop_pub.set()
        publisher.join(5)
        assert rc == 0, (rc, proc.output())
        assert "Traceback" not in proc.output()
    finally:
        proc.stop(signal.SIGKILL if proc.alive() else signal.SIGINT)


@pytest.mark.parametrize("case", ["corrupt", "missing_default", "wrong_type", "bad_qos_override"])
def test_startup_failure_is_one_clear_line(workdir, case):
    if case == "bad_qos_override":  # with lazy_input the subscription is made later: checked at start-up
        proc = ros_harness.NodeProcess(ros_harness.detector_args(
            namespace="/bad_ns", image_topic="/bad_cam/image",
            params=["lazy_input:=true", "qos_overrides./bad_cam/image.subscription.reliability:=sometimes"]),
            workdir, separate_stderr=True)
    elif case == "wrong_type":  # an override of the wrong type names the parameter and both types (without
        # the params file: rcl silently drops a -p override whose type differs from a params file's value)
        proc = ros_harness.NodeProcess(ros_harness.detector_args(namespace="/bad_ns", params_file=None,
                                                                 params=["min_obstacle_area:=abc"]),
                                       workdir, separate_stderr=True)
    elif case == "corrupt":
        bad = workdir / "corrupt.pt"
        bad.write_bytes(b"this is not a checkpoint" * 10)
        proc = NodeProcess(workdir, namespace="/bad_ns", checkpoint=bad)
    else:  # no checkpoint parameter and no default model where PEBAL_DEFAULT_MODEL points
        proc = NodeProcess(workdir, namespace="/bad_ns", checkpoint="",
                           extra_env={"PEBAL_DEFAULT_MODEL": str(workdir / "no_such_default.pt")})
    try:
        rc = proc.proc.wait(60)
    finally:
        proc.stop(signal.SIGKILL)
    lines = [line for line in proc.stderr().splitlines() if line.strip()]
    assert rc != 0
    assert len(lines) == 1, proc.stderr()
    assert lines[0].startswith("detector_node: error:") and "Traceback" not in proc.output()
    expected = {"corrupt": "corrupt.pt", "missing_default": "checkpoint",
                "wrong_type": "parameter min_obstacle_area expects an integer, got a string 'abc'",
                "bad_qos_override": "qos_overrides./bad_cam/image.subscription.reliability"}[case]
    assert expected in lines[0], lines[0]


def test_starts_with_the_embedded_default_model(workdir, peer):
    """No checkpoint parameter: the node runs the embedded default model with its calibrated threshold."""
    from pebal_perception.core.checkpoint import load_checkpoint
    from pebal_perception.core.default_model import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no embedded default model in this checkout")
    _, meta = load_checkpoint(DEFAULT_MODEL_PATH)
    name = "/default_ns/pebal_detector"
    proc = NodeProcess(workdir, namespace="/default_ns", checkpoint="")
    outputs = peer.outputs(name)
    rgb = scene_image(size=(160, 320))
    try:
        # backend auto measures the runtimes on the 1024x512 network first: on a busy machine that takes
        # minutes, so the wait for results starts once the node says it is ready
        assert ros_harness.wait_for(lambda: "ready:" in proc.output() or not proc.alive(), READY_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.alive(), proc.output()
            try:
                _, result = send_and_wait(peer, outputs, lambda: image_msg(rgb), timeout=2.0, retry=1.0)
                break
            except AssertionError:
                assert time.monotonic() < deadline, proc.output()
        assert result.model_id == meta.model_id
        assert result.threshold == pytest.approx(meta.threshold)
    finally:
        proc.stop(signal.SIGTERM)


def test_out_of_memory_on_a_frame_is_counted_and_the_node_continues(checkpoint, peer):
    """A frame that runs the device out of memory (simulated: no test may need a GPU) is retried once,
    then dropped with a rate-limited error and counted in /diagnostics; the next frame is served.
    Then a frame fails to process (any other error): /diagnostics turns ERROR, and once frames process
    again the level returns to OK after diagnostics.window_s while the counters stay cumulative.

    The node runs in this process so that its model can be wrapped; on the CPU neither the fp16 nor
    the cpu fallback applies, so the frame is dropped (tests of the fallbacks themselves:
    test_node_processing.py)."""
    import torch

    from pebal_perception.node.detector_node import DetectorNode

    class OutOfMemoryTwice(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls, self.fail_next = inner, 0, False

        def forward(self, x):
            self.calls += 1
            if self.calls <= 2:  # the first attempt and its retry
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("simulated processing failure")
            return self.inner(x)

    context = rclpy.Context()
    rclpy.init(context=context)
    stop = threading.Event()
    node = DetectorNode(stop, context=context, namespace="/oom_ns", cli_args=[
        "--ros-args", "-r", "image:=/oom_cam/image", "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu",
        "-p", "oom_fallback:=fp16,cpu", "-p", "diagnostics.window_s:=4.0",
        "-p", "backend:=torch"])  # the model is wrapped below: the torch path runs it
    model = node.detector.engine.model = OutOfMemoryTwice(node.detector.engine.model)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    publisher = peer.node.create_publisher(Image, "/oom_cam/image", QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE))
    name = "/oom_ns/pebal_detector"
    outputs = peer.outputs(name)
    rgb = scene_image()
    try:
        deadline = time.monotonic() + TIMEOUT
        while model.calls == 0:  # until the node hears the publisher
            assert time.monotonic() < deadline, "the in-process node never received a frame"
            publisher.publish(image_msg(rgb, frame_id="oom_first"))
            time.sleep(0.3)
        values = latest_diag(peer, name, lambda v: v["out_of_memory_frames"] == "1", timeout=TIMEOUT)
        assert "out of device memory" in latest_status(
            peer, name, lambda st: _values(st)["out_of_memory_frames"] == "1", first=True).message
        assert values["out_of_memory_dropped"] == "1" and values["degraded"] == "no"
        assert values["frames_failed"] == "1" and _settled(values)  # the frame is accounted for
        assert values["device"] == "cpu" and values["precision"] == "fp32"
        assert outputs["result"].find(same_frame("oom_first")) is None  # that frame produced nothing

        class PeerVia:  # send_and_wait publishes on peer.pub_image
            pub_image = publisher
        _, result = send_and_wait(PeerVia, outputs, lambda: image_msg(rgb))
        assert result is not None and model.calls >= 3
        values = latest_diag(peer, name, lambda v: int(v["frames_processed"]) >= 1, timeout=TIMEOUT)
        assert values["out_of_memory_frames"] == "1" and values["out_of_memory_dropped"] == "1"

        # A processing failure: ERROR while it lies within the window, OK again once it left it.
        model.fail_next = True
        send_and_wait(PeerVia, outputs, lambda: image_msg(rgb))  # the failed frame, then a served one
        failed = latest_status(peer, name, lambda st: _values(st)["frames_failed"] == "2", timeout=TIMEOUT,
                               first=True)  # the first report that counts the failure
        assert failed.level == DiagnosticStatus.ERROR and "simulated processing failure" in failed.message
        recovered = latest_status(peer, name, lambda st: st.level == DiagnosticStatus.OK
                                  and _values(st)["frames_failed"] == "2", timeout=3 * TIMEOUT)
        values = _values(recovered)
        assert recovered.message == "running" and values["status_window_s"] == "4"
        assert values["frames_failed"] == "2" and values["out_of_memory_dropped"] == "1"  # still counted
    finally:
        stop.set()
        spinner.join(5)
        node.stop()
        executor.remove_node(node)
        node.destroy_node()
        peer.node.destroy_publisher(publisher)
        context.try_shutdown()


def test_images_are_built_only_while_subscribed_and_semantic_color_is_the_palette(workdir, checkpoint, peer):
    """With only ~/result subscribed no output image is computed (images_built in /diagnostics stays 0
    over several frames); subscribing to ~/semantic/color makes exactly that one image per frame, rgb8
    in the Cityscapes colours of the class map."""
    from pebal_perception.core.visualize import colorize

    name = "/lazy_ns/pebal_detector"
    proc = NodeProcess(workdir, namespace="/lazy_ns", checkpoint=checkpoint)
    result_only = peer.detector_outputs(name, ["result"])
    rgb = scene_image(size=(96, 192))
    try:
        for _ in range(3):
            send_and_wait(peer, result_only, lambda: image_msg(rgb, frame_id=uuid.uuid4().hex), timeout=START_TIMEOUT)
        status = latest_status(peer, name, lambda st: int(_values(st)["frames_processed"]) >= 3, timeout=TIMEOUT)
        assert _values(status)["images_built"] == "0", proc.output()

        color = peer.detector_outputs(name, ["semantic/color"])["semantic/color"]
        semantic = peer.detector_outputs(name, ["semantic"])["semantic"]
        deadline = time.monotonic() + TIMEOUT
        fid = None
        while time.monotonic() < deadline:  # until both new subscriptions are matched and served
            fid = uuid.uuid4().hex
            send_and_wait(peer, result_only, lambda: image_msg(rgb, frame_id=fid))
            if color.wait(same_frame(fid), 1.0) is not None and semantic.wait(same_frame(fid), 1.0) is not None:
                break
        image, classes = color.find(same_frame(fid)), semantic.find(same_frame(fid))
        assert image is not None and classes is not None, proc.output()
        assert image.encoding == "rgb8" and (image.height, image.width) == rgb.shape[:2]
        np.testing.assert_array_equal(to_array(image), colorize(to_array(classes)))
        before = latest_status(peer, name, lambda st: True, timeout=TIMEOUT)
        processed0, built0 = int(_values(before)["frames_processed"]), int(_values(before)["images_built"])
        for _ in range(2):
            send_and_wait(peer, result_only, lambda: image_msg(rgb, frame_id=uuid.uuid4().hex))
        after = latest_status(peer, name, lambda st: int(_values(st)["frames_processed"]) >= processed0 + 2,
                              timeout=TIMEOUT)
        frames = int(_values(after)["frames_processed"]) - processed0
        assert int(_values(after)["images_built"]) - built0 == 2 * frames  # semantic + semantic/color only
    finally:
        proc.stop(signal.SIGTERM)


def test_obstacles_are_tracked_over_frames_and_the_debug_view_is_published(workdir, checkpoint, peer):
    """With tracking (confirm 2 of 3, hold 1) the same region is reported from the second frame on, with
    one stable track_id, growing age_frames and the first frame's stamp as first_seen; ~/debug is
    published while subscribed; the ego polygon (an empty double array by default) takes a polygon at
    run time and the excluded rows drop out of the obstacle mask. (A random model: the threshold is set
    below every score, so the whole image is one region; the geometric tests that need a real road are
    switched off.)"""
    name = "/track_ns/pebal_detector"
    proc = NodeProcess(workdir, "-p", "restrict_to_drivable:=false", "-p", "threshold:=-1000.0",
                       "-p", "hysteresis:=0.0", "-p", "border_margin:=0.0", "-p", "horizon.margin:=.nan",
                       "-p", "far_road_width:=0.0", "-p", "min_width_m:=0.0", "-p", "max_width_share:=1.0",
                       "-p", "max_known_share:=1.0", "-p", "tracking.confirm_hits:=2",
                       "-p", "tracking.confirm_window:=3", "-p", "tracking.hold_frames:=1",
                       namespace="/track_ns", checkpoint=checkpoint)
    outputs = peer.outputs(name)
    debug = peer.detector_outputs(name, ["debug"])["debug"]
    rgb = scene_image(size=(160, 320))
    try:
        results, stamps = [], []
        deadline = time.monotonic() + START_TIMEOUT
        while len(results) < 4:
            assert proc.alive(), proc.output()
            assert time.monotonic() < deadline, f"only {len(results)} results:\n{proc.output()}"
            # One camera (one frame_id: tracks are kept per camera stream); a result is told by its stamp.
            msg = image_msg(rgb, frame_id="track_cam")
            peer.pub_image.publish(msg)
            stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            result = outputs["result"].wait(lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp, 5.0)
            if result is None:
                continue
            stamps.append(stamp)
            results.append(result)
        first_reported = next(i for i, r in enumerate(results) if r.obstacles)
        reported = [r.obstacles for r in results[first_reported:]]
        assert all(len(o) == 1 for o in reported)
        assert len({o[0].track_id for o in reported}) == 1 and reported[0][0].track_id > 0
        ages = [o[0].age_frames for o in reported]
        assert ages == sorted(ages) and ages[-1] > ages[0]
        assert not any(o[0].held for o in reported)
        # The first frame of the track: the one at which age_frames counts 1.
        start = first_reported - (ages[0] - 1)
        assert start >= 0
        first = reported[0][0].first_seen
        assert (first.sec, first.nanosec) == stamps[start]
        assert debug.wait(timeout=TIMEOUT) is not None  # subscribed: published
        image = debug.find()
        assert image.encoding == "rgb8" and (image.height, image.width) == rgb.shape[:2]

        hood = [0.0, 0.75, 1.0, 0.75, 1.0, 1.0, 0.0, 1.0]  # the bottom quarter
        assert peer.set_parameters(name, Parameter("ego_mask.polygon", value=hood))[0].successful
        msg = image_msg(rgb, frame_id="track_cam")  # the same camera: its confirmed track goes on
        peer.pub_image.publish(msg)
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        mask = to_array(outputs["obstacle_mask"].wait(
            lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp, TIMEOUT))
        assert mask[:100].any() and not mask[125:].any()
    finally:
        proc.stop(signal.SIGTERM)


# ------------------------------------------------------------- ROS conventions: types, QoS, lazy input, lifecycle

def _node_subscription(peer: Peer, topic: str, namespace: str):
    infos = [i for i in peer.node.get_subscriptions_info_by_topic(topic) if i.node_namespace == namespace]
    return infos[0] if infos else None


def test_input_qos_from_the_standard_overrides_and_the_deprecated_names(workdir, checkpoint, peer):
    """qos_overrides./<topic>.subscription.reliability sets the input subscription's QoS (seen over
    discovery); the deprecated qos.reliability still works and is warned about (the default, best effort:
    test_lazy_input_subscribes_only_while_an_output_is_listened_to)."""
    from rclpy.qos import ReliabilityPolicy as Reliability

    overridden = NodeProcess(workdir, "-p", f"qos_overrides.{IMAGE_TOPIC}.subscription.reliability:=reliable",
                             "-p", f"qos_overrides.{IMAGE_TOPIC}.subscription.depth:=3",
                             namespace="/qos_new", checkpoint=checkpoint)
    deprecated = NodeProcess(workdir, "-p", "qos.reliability:=reliable", namespace="/qos_old", checkpoint=checkpoint)
    try:
        for proc, ns in ((overridden, "/qos_new"), (deprecated, "/qos_old")):
            info = ros_harness.wait_for(lambda ns=ns: _node_subscription(peer, IMAGE_TOPIC, ns), START_TIMEOUT)
            assert info is not None, proc.output()
            assert info.qos_profile.reliability == Reliability.RELIABLE, ns
        name = f"qos_overrides.{IMAGE_TOPIC}.subscription.depth"
        assert peer.get_parameter("/qos_new/pebal_detector", name) == 3
        assert ros_harness.wait_for(lambda: "ready:" in deprecated.output(), START_TIMEOUT)
        log = deprecated.output() + deprecated.stderr()
        assert "parameter qos.reliability is deprecated" in log and "qos_overrides." in log, log
        assert "deprecated" not in overridden.output() + overridden.stderr()
    finally:
        overridden.stop(signal.SIGTERM)
        deprecated.stop(signal.SIGTERM)


def test_lazy_input_subscribes_only_while_an_output_is_listened_to(workdir, checkpoint, peer):
    """lazy_input: with no subscriber to any output the node has no image subscription and receives none
    of the frames published (frames_received stays 0); a ~/result subscriber brings the subscription and
    the results; when it goes, the subscription goes too."""
    ns = "/lazy_input_ns"
    name = f"{ns}/pebal_detector"
    proc = NodeProcess(workdir, "-p", "lazy_input:=true", namespace=ns, checkpoint=checkpoint)
    rgb = scene_image(size=(96, 192))
    try:
        assert latest_status(peer, name, lambda st: True, timeout=START_TIMEOUT) is not None, proc.output()
        for _ in range(5):  # nobody listens: nothing is received
            peer.pub_image.publish(image_msg(rgb))
            time.sleep(0.2)
        assert _node_subscription(peer, IMAGE_TOPIC, ns) is None
        status = latest_status(peer, name, lambda st: True, timeout=TIMEOUT)
        assert _values(status)["frames_received"] == "0" and _values(status)["input_subscribed"] == "no"

        outputs = {"result": peer.collect(ros_harness.detector_output_types()["result"], f"{name}/result",
                                          ros_harness.reliable_qos())}
        send_and_wait(peer, outputs, lambda: image_msg(rgb), timeout=TIMEOUT)
        info = _node_subscription(peer, IMAGE_TOPIC, ns)
        assert info is not None and info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT  # sensor data
        status = latest_status(peer, name, lambda st: int(_values(st)["frames_processed"]) >= 1, timeout=TIMEOUT)
        assert _values(status)["input_subscribed"] == "yes"

        peer.node.destroy_subscription(outputs["result"].subscription)
        assert ros_harness.wait_for(lambda: _node_subscription(peer, IMAGE_TOPIC, ns) is None, TIMEOUT), proc.output()
    finally:
        proc.stop(signal.SIGTERM)


def _lifecycle(peer: Peer, node_name: str, transition: str | None = None):
    """The node's state label after ``transition`` (None: just get_state), and whether it succeeded."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    ok = True
    if transition is not None:
        client = peer.node.create_client(ChangeState, f"{node_name}/change_state")
        try:
            ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
                   "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
                   "shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN}
            request = ChangeState.Request(transition=Transition(id=ids[transition]))
            ok = peer.call(client, request, timeout=START_TIMEOUT).success
        finally:
            peer.node.destroy_client(client)
    client = peer.node.create_client(GetState, f"{node_name}/get_state")
    try:
        return peer.call(client, GetState.Request(), timeout=START_TIMEOUT).current_state.label, ok
    finally:
        peer.node.destroy_client(client)


LIFECYCLE_LAUNCHER = ros_harness.LAUNCHER.with_name("detector_lifecycle_node")


@pytest.mark.skipif(not LIFECYCLE_LAUNCHER.is_file(), reason="detector_lifecycle_node not installed (scripts/setup.sh)")
def test_lifecycle_node_transitions(workdir, checkpoint, peer):
    """The managed node: unconfigured (no outputs, no input subscription) -> configure (model loaded;
    still no publishers) -> activate (frames in, results out) -> deactivate (publishers and subscriptions
    gone) -> activate again (results again) -> deactivate, cleanup -> shutdown. A configure that cannot
    load its checkpoint fails and leaves the node unconfigured."""
    ns = "/managed_ns"
    name = f"{ns}/pebal_detector"
    result_topic = f"{name}/result"
    proc = NodeProcess(workdir, namespace=ns, checkpoint=checkpoint, launcher=LIFECYCLE_LAUNCHER)
    missing = workdir / "no_such_model.pt"
    broken = NodeProcess(workdir, namespace="/managed_bad", checkpoint=missing, launcher=LIFECYCLE_LAUNCHER)
    outputs = {"result": peer.collect(ros_harness.detector_output_types()["result"], result_topic,
                                      ros_harness.reliable_qos())}
    rgb = scene_image(size=(96, 192))
    try:
        assert _lifecycle(peer, name) == ("unconfigured", True), proc.output()
        assert peer.node.count_publishers(result_topic) == 0 and _node_subscription(peer, IMAGE_TOPIC, ns) is None
        assert _lifecycle(peer, name, "configure") == ("inactive", True), proc.output()
        assert peer.node.count_publishers(result_topic) == 0
        assert _lifecycle(peer, name, "activate") == ("active", True), proc.output()
        send_and_wait(peer, outputs, lambda: image_msg(rgb), timeout=START_TIMEOUT)
        assert _lifecycle(peer, name, "deactivate") == ("inactive", True)
        assert ros_harness.wait_for(lambda: peer.node.count_publishers(result_topic) == 0
                                    and _node_subscription(peer, IMAGE_TOPIC, ns) is None, TIMEOUT)
        assert _lifecycle(peer, name, "activate") == ("active", True)
        send_and_wait(peer, outputs, lambda: image_msg(rgb), timeout=TIMEOUT)
        assert _lifecycle(peer, name, "deactivate") == ("inactive", True)
        assert _lifecycle(peer, name, "cleanup") == ("unconfigured", True)
        assert _lifecycle(peer, name, "configure") == ("inactive", True)
        assert _lifecycle(peer, name, "shutdown") == ("finalized", True)
        assert proc.alive(), proc.output()  # finalized, not crashed: the process ends on a signal

        assert _lifecycle(peer, "/managed_bad/pebal_detector", "configure") == ("unconfigured", False)
        assert "no_such_model.pt" in broken.output() + broken.stderr()
    finally:
        proc.stop(signal.SIGTERM)
        broken.stop(signal.SIGTERM)


def test_deactivate_during_a_long_frame_discards_it_and_one_worker_runs_the_model(checkpoint, monkeypatch):
    """Deactivate while a frame takes longer than the deactivation waits: the call returns, the frame's
    result is discarded and counted, a frame still waiting is dropped and counted, and after activate
    the new worker waits for the old frame: never two frames in the model at once.

    In this process, driven through the lifecycle callbacks, with a model that blocks until released."""
    import torch
    from builtin_interfaces.msg import Time
    from rclpy.lifecycle import TransitionCallbackReturn
    from std_msgs.msg import Header

    from pebal_perception.node import detector_node
    from pebal_perception.node.detector_node import LifecycleDetectorNode

    class Gate(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls, self.inside, self.most_inside = inner, 0, 0, 0
            self.entered, self.release = threading.Event(), threading.Event()
            self.lock = threading.Lock()

        def forward(self, x):
            with self.lock:
                self.calls += 1
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
            try:
                self.entered.set()
                self.release.wait(30)
                return self.inner(x)
            finally:
                with self.lock:
                    self.inside -= 1

    monkeypatch.setattr(detector_node, "DEACTIVATE_WAIT_S", 0.3)
    context = rclpy.Context()
    rclpy.init(context=context)
    stop = threading.Event()
    node = LifecycleDetectorNode(stop, context=context, namespace="/long_frame", cli_args=[
        "--ros-args", "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu", "-p", "backend:=torch"])
    rgb = scene_image(size=(96, 192))

    def frame(sec: int):
        return rgb, Header(frame_id="cam", stamp=Time(sec=sec)), time.perf_counter()

    try:
        assert node.on_configure(None) == TransitionCallbackReturn.SUCCESS
        model = node.detector.engine.model = Gate(node.detector.engine.model)
        assert node.on_activate(None) == TransitionCallbackReturn.SUCCESS
        node.mailbox.put(frame(1))
        assert model.entered.wait(TIMEOUT), "the worker never started the frame"
        node.mailbox.put(frame(2))  # waits in the mailbox behind the long frame
        assert node.on_deactivate(None) == TransitionCallbackReturn.SUCCESS  # returns without the frame
        assert node.mailbox.dropped == 1  # the waiting frame: dropped, counted
        assert node.on_activate(None) == TransitionCallbackReturn.SUCCESS
        node.mailbox.put(frame(3))
        time.sleep(0.5)
        assert model.calls == 1  # the new worker waits for the abandoned frame
        model.release.set()
        assert ros_harness.wait_for(lambda: node._processed == 1, TIMEOUT), "frame 3 was not processed"
        assert model.most_inside == 1 and model.calls == 2
        assert node._discarded == 1  # frame 1's result was not published
        assert node.on_deactivate(None) == TransitionCallbackReturn.SUCCESS
    finally:
        model.release.set()
        stop.set()
        node.stop()
        node.destroy_node()
        context.try_shutdown()
