"""ROS 2 bags: the synthetic drive recipe, ``pebal-bag process`` (offline detector) and ``pebal-bag play``.

* The drive recipe writes version-8 bags (sqlite3 and mcap) that read back with ``rosbags``.
* ``pebal-bag process`` writes a complete version-8 bag whose outputs carry the input stamps, decode,
  and equal what the live node publishes for the same frames (the node is started exactly as the
  launch file starts it, and the bag is replayed into it with ``pebal-bag play``).
* ``pebal-bag play --clock`` publishes the bag's time on /clock; the node with ``use_sim_time`` runs its
  diagnostics timer on it.
* Bad inputs (missing, truncated, corrupt, empty bag; missing topic) give one error line and a
  non-zero exit; a failure in the middle (an undecodable message) leaves no output bag behind.

Small frames (256 x 128) and a random-init ESPNetv2 at 128 x 256 keep this fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from pebal_perception.testing import ros_harness

ros_harness.use_loopback()
pytest.importorskip("rosbags")

from pebal_perception.core.bag import (AtomicBagWriter, BagError, deserialize, image_msg, open_bag,  # noqa: E402
                                  read_all_messages, serialize)
from pebal_perception.cli import bag as bag_cli  # noqa: E402
from pebal_perception.core.image_conversion import image_to_rgb, rgb_to_image_fields  # noqa: E402
from pebal_training.recipes.drive_bag import (GT_TOPIC, IMAGE_TOPIC, INFO_TOPIC, INSTANCES_TOPIC,  # noqa: E402
                                             write_drive_bag)

FRAMES = 4
SIZE = (256, 128)
FPS = 10.0
START = 1_700_000_000.0
PREFIX = "/pebal_detector"
OUTPUTS = {"semantic": "sensor_msgs/msg/Image", "energy": "sensor_msgs/msg/Image",
           "obstacle_mask": "sensor_msgs/msg/Image", "result": "pebal_perception/msg/AnomalyResult"}
# The planner-facing post-processing switched off (see ros_harness.PER_PIXEL_PARAMS): these tests are
# about bags; they compare the outputs per frame with PostProcessConfig's defaults, and the live node
# (which may drop frames) with the offline run, so no state may carry over frames (tracking).
COMMON_PARAMS = ["min_obstacle_area:=20", "restrict_to_drivable:=false", *ros_harness.PER_PIXEL_PARAMS]


def make_checkpoint(path: Path) -> Path:
    import torch

    from pebal_perception.core.checkpoint import ModelMeta, save_checkpoint
    from pebal_perception.core.models import get_model_spec

    torch.manual_seed(0)
    model = get_model_spec("espnetv2").builder()
    save_checkpoint(path, model, ModelMeta.for_architecture("espnetv2", input_size=[128, 256]))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bags")


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    return make_checkpoint(work / "tiny_espnetv2.pt")


@pytest.fixture(scope="module")
def drive_bags(work) -> dict[str, Path]:
    bags = {}
    for storage, encoding in (("sqlite3", "rgb8"), ("mcap", "bgr8")):
        bags[storage] = work / f"drive_{storage}"
        write_drive_bag(bags[storage], frames=FRAMES, fps=FPS, size=SIZE, seed=3, anomalies=(1, 2),
                        storage=storage, encoding=encoding, start_time=START)
    return bags


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = bag_cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


read_all = read_all_messages


def stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def array(msg) -> np.ndarray:
    if msg.encoding == "32FC1":
        return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)


def metadata(bag: Path) -> dict:
    import yaml

    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


# ------------------------------------------------------------------------------------------- the recipe

@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_drive_bag_reads_back(drive_bags, storage):
    bag = drive_bags[storage]
    meta = metadata(bag)
    assert meta["version"] == 8 and meta["storage_identifier"] == storage
    for topic in meta["topics_with_message_count"]:
        assert isinstance(topic["topic_metadata"]["offered_qos_profiles"], str)  # version-8 QoS format
    msgs = read_all(bag)
    assert {t: len(v) for t, v in msgs.items()} == {IMAGE_TOPIC: FRAMES, INFO_TOPIC: FRAMES, GT_TOPIC: FRAMES,
                                                    INSTANCES_TOPIC: FRAMES}
    drive = json.loads((bag / "drive.json").read_text())
    expected = [int(START * 1e9) + i * 100_000_000 for i in range(FRAMES)]
    for topic in (IMAGE_TOPIC, INFO_TOPIC, GT_TOPIC, INSTANCES_TOPIC):
        assert [t for t, _ in msgs[topic]] == expected
        assert [stamp(m) for _, m in msgs[topic]] == expected
    assert [f["stamp_ns"] for f in drive["frames"]] == expected
    for _, img in msgs[IMAGE_TOPIC]:
        assert img.encoding == ("rgb8" if storage == "sqlite3" else "bgr8")
        rgb = image_to_rgb(img.encoding, img.height, img.width, img.step, img.is_bigendian, img.data)
        assert rgb.shape == (SIZE[1], SIZE[0], 3) and rgb.std() > 5
    gt_values = set(np.unique(np.concatenate([array(m).ravel() for _, m in msgs[GT_TOPIC]])).tolist())
    assert gt_values <= {0, 1, 255} and 1 in gt_values
    # instance ids: the obstacles of drive.json, exactly on the anomaly pixels
    for (_, gt), (_, inst), frame in zip(msgs[GT_TOPIC], msgs[INSTANCES_TOPIC], drive["frames"]):
        ids, anomaly = array(inst), array(gt)
        assert inst.encoding == "mono8"
        np.testing.assert_array_equal(ids > 0, anomaly == 1)
        assert {int(v) for v in np.unique(ids) if v} == {o["id"] for o in frame["obstacles"]}
        for o in frame["obstacles"]:
            assert int((ids == o["id"]).sum()) == o["area"]
    info = msgs[INFO_TOPIC][0][1]
    cam = drive["camera"]
    assert (info.width, info.height) == SIZE
    np.testing.assert_allclose(info.k, [cam["fx"], 0, cam["cx"], 0, cam["fy"], cam["cy"], 0, 0, 1])


def test_custom_message_hashes_match_rosidl():
    from pebal_perception.core.bag import typestore

    share = Path(sys.prefix) / "share" / "pebal_perception" / "msg"
    if not (share / "AnomalyResult.json").is_file():
        pytest.skip("messages not built (scripts/setup.sh)")
    for name in ("AnomalyResult", "Obstacle"):
        rosidl = json.loads((share / f"{name}.json").read_text())["type_hashes"][0]["hash_string"]
        assert typestore().hash_rihs01(f"pebal_perception/msg/{name}") == rosidl


# ------------------------------------------------------------------------------------------------ process

def _process(work: Path, checkpoint: Path, bag: Path, storage_out: str) -> tuple[Path, int, str]:
    out = work / f"processed_{bag.name}_{storage_out}"
    if out.exists():  # shared between tests (inference is the slow part)
        return out, 0, ""
    rc = bag_cli.main([str(a) for a in ("process", bag, "--output", out, "--checkpoint", checkpoint, "--device",
                                        "cpu", "--storage", storage_out, "--overlay", "-q",
                                        *[a for p in COMMON_PARAMS for a in ("-p", p)])])
    return out, rc, ""


@pytest.mark.parametrize("storage_in,storage_out", [("sqlite3", "mcap"), ("mcap", "sqlite3")])
def test_process_writes_complete_bag(capsys, work, checkpoint, drive_bags, storage_in, storage_out):
    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.postprocess_config import PostProcessConfig

    out, rc, _ = _process(work, checkpoint, drive_bags[storage_in], storage_out)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not list(work.glob(f".{out.name}.partial-*"))
    meta = metadata(out)
    assert meta["version"] == 8 and meta["storage_identifier"] == storage_out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == summary["frames_out"] == FRAMES
    # one camera, stamps only going forward: one tracked stream, nothing forgotten or capped
    assert summary["tracking"] == {"streams": 1, "jump_back_resets": 0, "streams_forgotten": 0,
                                   "obstacles_forgotten": 0, "notes": []}
    assert summary["regions_over_cap"] == 0
    assert summary["adaptation"]["status"] == "off" and summary["adaptation"]["frames_adapted"] == 0
    msgs = read_all(out)
    types = {**OUTPUTS, "overlay": "sensor_msgs/msg/Image"}
    with open_bag(out) as reader:
        assert reader.topics() == {f"{PREFIX}/{k}": v for k, v in types.items()}
    inputs = read_all(drive_bags[storage_in])[IMAGE_TOPIC]
    for name in types:
        got = msgs[f"{PREFIX}/{name}"]
        assert len(got) == FRAMES
        assert [t for t, _ in got] == [t for t, _ in inputs]
        assert [stamp(m) for _, m in got] == [stamp(m) for _, m in inputs]
        assert all(m.header.frame_id == "camera_optical_frame" for _, m in got)
    threshold = summary["threshold"]
    config = PostProcessConfig(threshold=threshold, restrict_to_drivable=False, min_obstacle_area=20)
    for (_, sem), (_, energy), (_, mask), (_, result), (_, ov) in zip(
            *(msgs[f"{PREFIX}/{n}"] for n in ("semantic", "energy", "obstacle_mask", "result", "overlay"))):
        assert (sem.encoding, energy.encoding, mask.encoding, ov.encoding) == ("mono8", "32FC1", "mono8", "rgb8")
        assert array(sem).shape == (SIZE[1], SIZE[0]) and array(sem).max() < 19
        frame = process_frame(array(sem), array(energy), config)
        np.testing.assert_array_equal(array(mask), frame.mask.astype(np.uint8) * 255)
        assert result.threshold == pytest.approx(threshold)
        assert len(result.obstacles) == len(frame.obstacles)
        assert result.model_id


def test_process_with_adaptation_reports_it_in_the_summary(capsys, work, checkpoint, drive_bags):
    """-p adaptation:=true adapts the batch-norm statistics over the bag's frames (none has an obstacle at
    this threshold) and summary.json says so."""
    out = work / "processed_adapted"
    rc, _, err = run_cli(capsys, "process", drive_bags["sqlite3"], "-o", out, "--checkpoint", checkpoint,
                         "--device", "cpu", "--backend", "torch", "-q", "-p", "adaptation:=true",
                         "-p", "adaptation_momentum:=0.5", "-p", "threshold:=1000000.0",
                         *[a for p in COMMON_PARAMS for a in ("-p", p)])
    assert rc == 0, err
    adaptation = json.loads((out / "summary.json").read_text())["adaptation"]
    assert adaptation["status"] == "on" and adaptation["momentum"] == 0.5
    assert (adaptation["frames_adapted"], adaptation["frames_paused"]) == (FRAMES, 0) and adaptation["drift"] > 0


def _ros_or_skip() -> None:
    """rclpy, our messages and the installed detector_node / pebal-bag, or a skip saying what to run."""
    reason = ros_harness.ros_unavailable(executables=(ros_harness.LAUNCHER, ros_harness.PLAYER))
    if reason is not None:
        pytest.skip(f"{reason}; run scripts/setup.sh")


@pytest.mark.ros
def test_process_matches_live_node(capsys, work, checkpoint, drive_bags):
    """Offline outputs == the live node's outputs (same frames, replayed with pebal-bag play)."""
    _ros_or_skip()
    bag = drive_bags["sqlite3"]

    # A threshold inside the random network's energy range, so that there are obstacles to compare.
    probe, rc, _ = _process(work, checkpoint, bag, "mcap")
    assert rc == 0, capsys.readouterr().err
    energy = array(read_all(probe)[f"{PREFIX}/energy"][0][1])
    threshold = float(np.percentile(energy, 90))
    params = [*COMMON_PARAMS, f"threshold:={threshold!r}"]

    offline = work / "offline"
    rc, _, err = run_cli(capsys, "process", bag, "-o", offline, "--checkpoint", checkpoint, "--device", "cpu",
                         "--prefix", "/t_bag/pebal_detector", *[a for p in params for a in ("-p", p)])
    assert rc == 0, err
    expected = {name: {stamp(m): m for _, m in read_all(offline)[f"/t_bag/pebal_detector/{name}"]}
                for name in OUTPUTS}
    assert sum(len(m.obstacles) for m in expected["result"].values()) > 0

    tag = uuid.uuid4().hex[:6]
    image_topic, info_topic = f"/cam_{tag}/image", f"/cam_{tag}/camera_info"
    # Reliable input: this test compares outputs, and best-effort DDS may lose the first or last frame on
    # a loaded machine (the node's own dropping of stale frames stays as it is).
    args = ros_harness.detector_args(namespace="/t_bag", checkpoint=checkpoint,
                                     params=[*params, ros_harness.reliable_input_param(image_topic)],
                                     image_topic=image_topic,
                                     info_topic=info_topic)
    with ros_harness.Peer("test_bag_peer") as peer:
        # Subscribed before the node starts, so no output can be missed.
        live = peer.detector_outputs("/t_bag/pebal_detector", OUTPUTS)
        with ros_harness.NodeProcess(args, work / f"node-{tag}.log") as node:
            peer.wait_matched(live.values(), node, timeout=60)
            play = subprocess.run(
                [str(ros_harness.PLAYER), "play", str(bag), "--topics", IMAGE_TOPIC, INFO_TOPIC, "--remap",
                 f"{IMAGE_TOPIC}:={image_topic}", "--remap", f"{INFO_TOPIC}:={info_topic}", "--rate", "0.5",
                 "--wait-for-subscribers", "--wait-timeout", "60"],
                env=ros_harness.child_env(), capture_output=True, text=True, timeout=120)
            assert play.returncode == 0, play.stderr
            assert f"published {2 * FRAMES} messages" in play.stdout, play.stdout + play.stderr
            assert "warning" not in play.stderr, play.stderr
            ros_harness.wait_for(lambda: all(len({stamp(m) for m in c.snapshot()}) == FRAMES
                                             for c in live.values()), timeout=15)
        got = {name: {stamp(m): m for m in live[name].snapshot()} for name in OUTPUTS}
    common = set(got["result"]) & set(got["semantic"]) & set(got["energy"]) & set(got["obstacle_mask"])
    # The node keeps only the newest frame (a busy CPU makes it drop some), but the first frame (idle
    # node) and the last one (newest) are always processed.
    assert len(common) >= 2, (sorted(common), node.output()[-2000:])
    assert common <= set(expected["result"])
    for s in sorted(common):
        np.testing.assert_array_equal(array(got["semantic"][s]), array(expected["semantic"][s]))
        np.testing.assert_allclose(array(got["energy"][s]), array(expected["energy"][s]), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(array(got["obstacle_mask"][s]), array(expected["obstacle_mask"][s]))
        live_result, off_result = got["result"][s], expected["result"][s]
        assert live_result.model_id == off_result.model_id
        assert live_result.threshold == pytest.approx(off_result.threshold)
        assert live_result.anomalous_fraction == pytest.approx(off_result.anomalous_fraction, abs=1e-4)
        boxes = lambda r: [(o.x_offset, o.y_offset, o.width, o.height, o.area) for o in r.obstacles]  # noqa: E731
        assert boxes(live_result) == boxes(off_result)


# ------------------------------------------------------------------------------------------- bad inputs

def _copy_bag(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


def _bad_bag(kind: str, work: Path, drive_bags: dict[str, Path]) -> Path:
    bag = work / f"bad_{kind}"
    if kind == "missing":
        return bag
    if kind == "not_a_bag":
        bag.mkdir()
        return bag
    if kind == "empty":
        with AtomicBagWriter(bag) as writer:
            writer.add_topic(IMAGE_TOPIC, "sensor_msgs/msg/Image")
        return bag
    storage = "mcap" if kind.endswith("mcap") else "sqlite3"
    _copy_bag(drive_bags[storage], bag)
    data_file = _storage_file(bag)
    blob = data_file.read_bytes()
    if kind.startswith("truncated"):
        data_file.write_bytes(blob[: len(blob) // 2])
    elif kind.startswith("corrupt"):
        data_file.write_bytes(b"\xde\xad\xbe\xef" * 64 + blob[256:])
    elif kind == "no_storage_file":
        data_file.unlink()
    return bag


BAD_KINDS = ["missing", "not_a_bag", "empty", "truncated_sqlite3", "truncated_mcap", "corrupt_sqlite3",
             "corrupt_mcap", "no_storage_file"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_bag_one_line_error(capsys, work, checkpoint, drive_bags, kind):
    bag = _bad_bag(kind, work, drive_bags)
    out = work / f"out_{kind}"
    rc, _, err = run_cli(capsys, "process", bag, "--output", out, "--checkpoint", checkpoint, "--device", "cpu")
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pebal-bag: error: "), err
    assert str(bag) in lines[0]
    assert not out.exists()
    assert not list(work.glob(f".{out.name}.partial-*"))


def test_missing_topic(capsys, work, checkpoint, drive_bags):
    out = work / "out_missing_topic"
    rc, _, err = run_cli(capsys, "process", drive_bags["sqlite3"], "-o", out, "--topic", "/nope/image",
                         "--checkpoint", checkpoint)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pebal-bag: error: "), err
    assert "/nope/image" in lines[0] and str(drive_bags["sqlite3"]) in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_console_script_bad_bag(work):
    """The installed console script (subprocess): one line, exit 1, for process and play."""
    script = Path(sys.prefix) / "bin" / "pebal-bag"
    if not script.exists():
        pytest.skip("pebal-bag not installed; run scripts/setup.sh")
    for command in (["process", str(work / "nothing_here"), "-o", str(work / "never")],
                    ["play", str(work / "nothing_here")]):
        proc = subprocess.run([str(script), *command], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pebal-bag: error: "), proc.stderr
        assert str(work / "nothing_here") in proc.stderr


def test_corrupt_message_midway_leaves_no_output(capsys, work, checkpoint, drive_bags):
    """Decision: a failure part-way through (here an undecodable message) writes nothing at --output:
    the partial bag is removed, the output path is either absent or (on success) a complete bag."""
    source = read_all(drive_bags["sqlite3"])[IMAGE_TOPIC]
    garbage = b"\x00\x01\x00\x00" + b"\x01\x00\x00\x00" * 2 + b"\xf0\xff\xff\x7f" + b"\xff" * 24
    with pytest.raises(Exception):
        deserialize(garbage, "sensor_msgs/msg/Image")
    bag = work / "corrupt_message"
    with AtomicBagWriter(bag) as writer:
        writer.add_topic(IMAGE_TOPIC, "sensor_msgs/msg/Image")
        for i, (timestamp, msg) in enumerate(source):
            writer.write(IMAGE_TOPIC, timestamp, garbage if i == 1 else serialize(msg, "sensor_msgs/msg/Image"))
    out = work / "out_corrupt_message"
    rc, _, err = run_cli(capsys, "process", bag, "-o", out, "--checkpoint", checkpoint, "--device", "cpu")
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "message 1" in lines[0] and "cannot be decoded" in lines[0], err
    assert not out.exists()
    assert not list(work.glob(f".{out.name}.partial-*"))


def test_atomic_writer_abort_and_refuse_existing(work):
    out = work / "atomic"
    with pytest.raises(RuntimeError):
        with AtomicBagWriter(out) as writer:
            writer.add_topic("/x", "sensor_msgs/msg/Image")
            writer.write_msg("/x", 1, image_msg(rgb_to_image_fields(np.zeros((2, 2), np.uint8), "mono8"), 1))
            raise RuntimeError("boom")
    assert not out.exists() and not list(work.glob(".atomic.partial-*"))
    out.mkdir()
    with pytest.raises(BagError, match="exists"):
        AtomicBagWriter(out)


@pytest.mark.ros
def test_replaying_a_10hz_bag_into_a_slower_node_drops_frames_and_queues_nothing(work, checkpoint):
    """A 10 Hz bag played at its recorded rate into a node that needs far more than 100 ms per frame:
    frames are dropped (only the newest is processed), in order, and nothing is left queued at the end."""
    _ros_or_skip()
    from pebal_perception.msg import AnomalyResult

    frames = 40
    bag = work / "drive_10hz"
    write_drive_bag(bag, frames=frames, fps=10.0, size=(512, 256), seed=5, anomalies=(1, 2), storage="sqlite3",
                    encoding="rgb8", start_time=START)
    tag = uuid.uuid4().hex[:6]
    image_topic = f"/slow_{tag}/image"
    # Network input 1024x512: several hundred ms per frame on this CPU, far slower than 10 Hz.
    args = ros_harness.detector_args(namespace="/t_slow", checkpoint=checkpoint, image_topic=image_topic,
                                     params=["input_width:=1024", "input_height:=512",
                                             ros_harness.reliable_input_param(image_topic)])

    def idle_for_2s(collector) -> bool:  # the node's last frame is out
        timed = collector.timed()
        return bool(timed) and timed[-1][0] <= time.monotonic() - 2

    with ros_harness.Peer("test_bag_peer") as peer:
        collector = peer.collect(AnomalyResult, "/t_slow/pebal_detector/result", ros_harness.reliable_qos(50))
        with ros_harness.NodeProcess(args, work / f"node-slow-{tag}.log") as node:
            peer.wait_matched([collector], node, timeout=60)
            play = subprocess.run([str(ros_harness.PLAYER), "play", str(bag), "--topics", IMAGE_TOPIC, "--remap",
                                   f"{IMAGE_TOPIC}:={image_topic}", "--wait-for-subscribers", "--wait-timeout", "60"],
                                  env=ros_harness.child_env(), capture_output=True, text=True, timeout=120)
            assert play.returncode == 0, play.stderr
            played_at = time.monotonic()
            ros_harness.wait_for(lambda: idle_for_2s(collector), timeout=10)
        results = collector.timed()
    stamps = [msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec for _, msg in results]
    after_play = sum(1 for received, _ in results if received > played_at)
    tail = node.output()[-2000:]
    # The node is slower than the bag: frames were dropped, and the ones processed come in order.
    assert 2 <= len(results) < frames, (len(results), tail)
    assert stamps == sorted(set(stamps)), stamps
    # Newest-frame-only, never a queue: once the player has finished, at most the frame in work, the
    # one in the mailbox and what the subscription's history (depth 5) still held come out, while
    # a queue would still owe every frame not yet processed. Counts, not seconds: CI is a noisy machine.
    assert after_play <= 2 + 5, (after_play, len(results), tail)


@pytest.mark.ros
def test_play_never_imports_modules_named_by_the_bag(work):
    """A bag's type strings are data: ``this/msg/Zen`` must not import ``this`` (which prints the Zen of
    Python); unknown types are skipped, warned about and counted, the known topics are still played."""
    _ros_or_skip()
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED if hasattr(Stores, "ROS2_KILTED") else Stores.LATEST)
    store.register(get_types_from_msg("string data", "this/msg/Zen"))
    store.register(get_types_from_msg("string data", "os/msg/system"))
    bag = work / "lying_types"
    with Writer(bag, version=8) as writer:
        for topic, msgtype in (("/zen", "this/msg/Zen"), ("/os", "os/msg/system")):
            conn = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conn, 1, bytes(store.serialize_cdr(store.types[msgtype](data="x"), msgtype)))
        conn = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        message = store.types["std_msgs/msg/String"](data="hello")
        writer.write(conn, 2, bytes(store.serialize_cdr(message, "std_msgs/msg/String")))
    proc = subprocess.run([str(ros_harness.PLAYER), "play", str(bag)], capture_output=True, text=True, timeout=60,
                          env=ros_harness.child_env())
    assert proc.returncode == 0, proc.stderr
    assert "Beautiful is better than ugly" not in proc.stdout + proc.stderr
    assert "skipping /zen" in proc.stderr and "skipping /os" in proc.stderr, proc.stderr
    assert "published 1 messages, skipped 2 topics of unknown types" in proc.stdout, proc.stdout


def test_message_types_resolve_only_from_known_packages():
    pytest.importorskip("rclpy")
    imported_before = set(sys.modules)
    for name in ("this/msg/Zen", "antigravity/msg/Fly", "os/msg/system", "sensor_msgs/msg/_image",
                 "sensor_msgs/srv/SetCameraInfo", "sensor_msgs/msg/Nope", "sensor_msgs/msg/Image/x",
                 "sensor_msgs/msg/__builtins__", "", "sensor_msgs"):
        assert bag_cli.resolve_message_type(name) is None, name
    assert not {"this", "antigravity"} & (set(sys.modules) - imported_before)
    from sensor_msgs.msg import Image

    assert bag_cli.resolve_message_type("sensor_msgs/msg/Image") is Image


# ------------------------------------------------------------------------------------------ play --clock

CLOCK_FRAMES = 6  # stamped 0.5 s apart: 2.5 s of bag time, so that a 1 Hz sim-time timer fires in it


@pytest.fixture(scope="module")
def clock_bag(work) -> Path:
    bag = work / "drive_2hz"
    write_drive_bag(bag, frames=CLOCK_FRAMES, fps=2.0, size=SIZE, seed=3, anomalies=(1, 2), storage="sqlite3",
                    encoding="rgb8", start_time=START)
    return bag


def _ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def _image_times(bag: Path) -> list[int]:
    return [t for t, _ in read_all(bag)[IMAGE_TOPIC]]


@pytest.mark.ros
def test_play_clock_publishes_the_bag_time(work, clock_bag):
    """``play --clock``: /clock stands at the first message's time while the player waits for subscribers,
    then runs with the bag (also between messages), never backwards, and ends at the last message's time."""
    _ros_or_skip()
    pytest.importorskip("rosgraph_msgs.msg")
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    times = _image_times(clock_bag)
    first, last = times[0], times[-1]
    image_topic = f"/clock_{uuid.uuid4().hex[:6]}/image"
    with ros_harness.Peer("test_clock_peer") as peer:
        # Deep enough to keep every sample between two spins (QoS as rclpy's own time source, but depth).
        clock = peer.collect(Clock, "/clock", QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
        cmd = [ros_harness.PLAYER, "play", clock_bag, "--topics", IMAGE_TOPIC, "--remap",
               f"{IMAGE_TOPIC}:={image_topic}", "--clock", "--wait-for-subscribers", "--wait-timeout", "60"]
        with ros_harness.ChildProcess(cmd, work / "play-clock.log") as player:
            # The player holds the bag's start time until its image topic has a subscriber: subscribe
            # only once that time has arrived here, so the first time cannot be missed.
            assert clock.wait_count(1, timeout=60), player.output()
            peer.collect(Image, image_topic, ros_harness.reliable_qos())
            assert player.wait(timeout=60) == 0, player.output()
        assert f"published {CLOCK_FRAMES} messages" in player.output(), player.output()
        assert clock.wait(lambda m: _ns(m.clock) == last, timeout=10) is not None, player.output()
        got = [_ns(m.clock) for m in clock.snapshot()]
    assert got == sorted(got), "the clock went backwards"
    assert got[0] == first and got[-1] == last
    # Published at its own rate, not only at the messages' times: samples inside every gap.
    for a, b in zip(times, times[1:]):
        assert any(a < t < b for t in got), (a, b)


@pytest.mark.ros
def test_node_with_use_sim_time_reports_diagnostics_in_bag_time(work, checkpoint, clock_bag):
    """The real detector node with ``use_sim_time:=true`` runs its 1 Hz diagnostics timer on the bag's
    time from ``play --clock``: reports come, stamped inside the bag's time range (not wall time)."""
    _ros_or_skip()
    pytest.importorskip("rosgraph_msgs.msg")
    from diagnostic_msgs.msg import DiagnosticArray

    times = _image_times(clock_bag)
    tag = uuid.uuid4().hex[:6]
    image_topic, info_topic = f"/simcam_{tag}/image", f"/simcam_{tag}/camera_info"
    args = ros_harness.detector_args(namespace="/t_sim", checkpoint=checkpoint, image_topic=image_topic,
                                     info_topic=info_topic, params=["use_sim_time:=true"])
    mine = lambda m: any(s.name.startswith("/t_sim/pebal_detector:") for s in m.status)  # noqa: E731
    with ros_harness.Peer("test_clock_peer") as peer:
        diagnostics = peer.collect(DiagnosticArray, "/diagnostics", ros_harness.reliable_qos(100))
        with ros_harness.NodeProcess(args, work / f"node-sim-{tag}.log") as node:
            peer.wait_matched([diagnostics], node, timeout=60)
            play = subprocess.run(
                [str(ros_harness.PLAYER), "play", str(clock_bag), "--topics", IMAGE_TOPIC, INFO_TOPIC,
                 "--remap", f"{IMAGE_TOPIC}:={image_topic}", "--remap", f"{INFO_TOPIC}:={info_topic}", "--clock",
                 "--wait-for-subscribers", "--wait-timeout", "60"],
                env=ros_harness.child_env(), capture_output=True, text=True, timeout=120)
            assert play.returncode == 0, play.stderr
            assert diagnostics.wait(mine, timeout=15) is not None, node.output()[-2000:]
        stamps = [_ns(m.header.stamp) for m in diagnostics.snapshot() if mine(m)]
    assert stamps and all(times[0] <= s <= times[-1] for s in stamps), (stamps, times[0], times[-1])


def test_play_qos_follows_the_recording_unless_reliable_is_asked():
    """A camera bag records best effort (from-video, real drivers); ``play --reliable`` publishes it reliable
    so that reliable subscribers (the demo on your own footage) match."""
    pytest.importorskip("rclpy")
    from rclpy.qos import ReliabilityPolicy

    from pebal_perception.core.bag import qos_profile

    best_effort = [qos_profile(reliable=False, depth=5)]
    assert bag_cli._rclpy_qos(best_effort).reliability == ReliabilityPolicy.BEST_EFFORT
    assert bag_cli._rclpy_qos(best_effort, force_reliable=True).reliability == ReliabilityPolicy.RELIABLE
    assert bag_cli._rclpy_qos([]).reliability == ReliabilityPolicy.RELIABLE
    assert bag_cli.build_parser().parse_args(["play", "some_bag", "--reliable"]).reliable
