"""Camera-sized raw images over Fast DDS with the large-image profile (config/fastdds_large_images.xml).

* A best-effort publisher (sensor-data QoS, like camera drivers) that loads the profile, into the node
  (which loads it too, as every process the harness starts): every published frame arrives, none is
  lost in transport, each is processed or counted as dropped (stale).
* The same publisher without the profile: when the middleware reports frames lost, the node says so in
  its log (with the remedy) and its /diagnostics level is WARN.
* Every Fast DDS XML profile of the repository that declares a UDP transport restricts it to 127.0.0.1.
"""
from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pebal_perception import dds
from pebal_perception.testing import ros_harness

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMES = 20
pytestmark = pytest.mark.ros
RATE_HZ = 10.0

# The publisher, in a process of its own (its participant is created with or without the profile).
PUBLISHER = textwrap.dedent("""
    import os, sys, time
    if sys.argv[1] == "without":
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    width, height, count = (int(a) for a in sys.argv[2:5])
    rate, topic = float(sys.argv[5]), sys.argv[6]
    rclpy.init()
    node = rclpy.create_node("pebal_large_image_publisher")
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    deadline = time.monotonic() + 30.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # discovery of the subscription completes on both sides
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8).tobytes()
    for i in range(count):
        msg = Image(height=height, width=width, encoding="bgr8", step=width * 3, data=pixels)
        msg.header.frame_id = f"frame_{i}"
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        time.sleep(1.0 / rate)
    print(f"published {count}", flush=True)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()
""")

UDP_TYPES = {"UDPv4", "UDPv6"}
LOOPBACK = {"127.0.0.1", "lo", "::1"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _udp_allowlists(path: Path) -> list[tuple[str, set[str]]]:
    """(transport_id, allowed interfaces) of every UDP transport descriptor of a Fast DDS XML file."""
    found = []
    for element in ET.parse(path).iter():
        if _local(element.tag) != "transport_descriptor":
            continue
        fields = {_local(child.tag): child for child in element}
        if fields.get("type") is None or fields["type"].text.strip() not in UDP_TYPES:
            continue
        allowed = set()
        for child in element.iter():
            name = _local(child.tag)
            if name == "interface" and child.get("name"):  # <interfaces><allowlist><interface name=...>
                allowed.add(child.get("name").strip())
            elif name in ("address", "interface") and child.text and child.text.strip():  # interfaceWhiteList
                allowed.add(child.text.strip())
        found.append((fields["transport_id"].text.strip() if "transport_id" in fields else "?", allowed))
    return found


def _fastdds_xml_files() -> list[Path]:
    files = []
    for path in REPO_ROOT.rglob("*.xml"):
        if any(part.startswith(".") or part in ("build", "install", "node_modules") for part in
               path.relative_to(REPO_ROOT).parts):
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            continue
        if any(_local(e.tag) == "transport_descriptor" for e in root.iter()):
            files.append(path)
    return files


def test_every_udp_transport_of_every_profile_is_loopback_only():
    files = _fastdds_xml_files()
    assert REPO_ROOT / "config" / dds.PROFILE_NAME in files
    for path in files:
        for transport_id, allowed in _udp_allowlists(path):
            assert allowed and allowed <= {"127.0.0.1"}, (path, transport_id, allowed)


def test_the_profile_replaces_the_builtin_transports_with_a_large_segment():
    root = ET.parse(REPO_ROOT / "config" / dds.PROFILE_NAME).getroot()
    descriptors = {}
    for element in root.iter():
        if _local(element.tag) == "transport_descriptor":
            fields = {_local(c.tag): (c.text or "").strip() for c in element}
            descriptors[fields["transport_id"]] = fields
    participants = [e for e in root.iter() if _local(e.tag) == "participant"]
    assert len(participants) == 1 and participants[0].get("is_default_profile") == "true"
    texts = {_local(e.tag): (e.text or "").strip() for e in participants[0].iter()}
    assert texts["useBuiltinTransports"] == "false"
    used = [(e.text or "").strip() for e in participants[0].iter() if _local(e.tag) == "transport_id"]
    types = {descriptors[t]["type"] for t in used}
    assert types == {"SHM", "UDPv4"}
    shm = next(descriptors[t] for t in used if descriptors[t]["type"] == "SHM")
    assert int(shm["segment_size"]) >= 2 * 3840 * 2160 * 3  # two 4K rgb8 frames


# --------------------------------------------------------------------------------------------- over DDS


def _peer_or_skip():
    reason = ros_harness.ros_unavailable()
    if reason:
        pytest.skip(reason)
    return ros_harness.Peer("pebal_large_images_peer")


def _diag_values(msg, node_name: str) -> dict[str, str] | None:
    for status in msg.status:
        if status.name.startswith(node_name + ":"):
            return {kv.key: kv.value for kv in status.values} | {"__level": int.from_bytes(status.level, "little")
                                                                 if isinstance(status.level, bytes)
                                                                 else int(status.level)}
    return None


def _run_publisher(tmp_path: Path, profile: str, width: int, height: int, topic: str) -> ros_harness.ChildProcess:
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    import sys
    return ros_harness.ChildProcess([sys.executable, script, profile, width, height, FRAMES, RATE_HZ, topic],
                                    tmp_path / f"publisher-{profile}-{width}x{height}.log")


@pytest.fixture(scope="module")
def node_and_peer(tmp_path_factory):
    peer = _peer_or_skip()
    from diagnostic_msgs.msg import DiagnosticArray

    workdir = tmp_path_factory.mktemp("large_images")
    namespace = "/large_images"
    node = ros_harness.NodeProcess(
        ros_harness.detector_args(namespace=namespace, checkpoint="", image_topic=f"{namespace}/image",
                                  params=["diagnostics.window_s:=30.0"]),
        workdir, separate_stderr=False)
    diagnostics = peer.collect(DiagnosticArray, "/diagnostics")
    name = f"{namespace}/pebal_detector"
    try:
        assert diagnostics.wait(lambda m: _diag_values(m, name) is not None, timeout=60.0), node.tail(20)
        yield node, peer, diagnostics, name, workdir, f"{namespace}/image"
    finally:
        node.stop()
        peer.close()


def _latest(diagnostics, name, predicate=lambda v: True, timeout=20.0) -> dict:
    msg = diagnostics.wait(lambda m: (v := _diag_values(m, name)) is not None and predicate(v), timeout)
    assert msg is not None, "no matching /diagnostics"
    return _diag_values(msg, name)


@pytest.mark.parametrize("width,height", [(960, 540), (1920, 1080), (2048, 1024)])
def test_best_effort_frames_with_the_profile_all_arrive(node_and_peer, width, height):
    node, peer, diagnostics, name, workdir, topic = node_and_peer
    before = _latest(diagnostics, name)
    publisher = _run_publisher(workdir, "with", width, height, topic)
    assert publisher.wait(timeout=60.0) == 0, publisher.output()
    assert f"published {FRAMES}" in publisher.output()
    received0, lost0 = int(before["frames_received"]), int(before["frames_lost_in_transport"])

    def settled(values):
        handled = int(values["frames_processed"]) + int(values["dropped_frames"]) + int(values["frames_failed"])
        return int(values["frames_received"]) >= received0 + FRAMES and handled >= int(values["frames_received"])

    after = _latest(diagnostics, name, settled, timeout=30.0)
    print(f"{width}x{height}: published {FRAMES}, received {int(after['frames_received']) - received0}, "
          f"lost {int(after['frames_lost_in_transport']) - lost0}")
    assert int(after["frames_received"]) - received0 == FRAMES
    assert int(after["frames_lost_in_transport"]) == lost0 == 0
    assert int(after["frames_failed"]) == 0 and int(after["rejected_total"]) == 0


def test_without_the_profile_on_the_publisher_the_node_warns(node_and_peer):
    node, peer, diagnostics, name, workdir, topic = node_and_peer
    before = _latest(diagnostics, name)
    publisher = _run_publisher(workdir, "without", 1920, 1080, topic)
    assert publisher.wait(timeout=60.0) == 0, publisher.output()
    lost0 = int(before["frames_lost_in_transport"])
    after = _latest(diagnostics, name, lambda v: int(v["frames_lost_in_transport"]) > lost0, timeout=10.0)
    lost = int(after["frames_lost_in_transport"]) - lost0
    print(f"1920x1080 without the profile on the publisher: {lost} of {FRAMES} lost")
    if lost == 0:  # the default transports lose most such frames here, but not by contract
        pytest.skip("no frame was lost in transport without the profile this time")
    assert after["__level"] == 1  # WARN
    assert ros_harness.wait_for(lambda: "lost in transport" in node.output(), timeout=10.0)
    log = node.output()
    assert dds.PROFILE_VARIABLE in log and dds.PROFILE_NAME in log
