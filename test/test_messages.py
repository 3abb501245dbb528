"""The generated ROS 2 interfaces: fields as documented in msg/, and real DDS round trips.

* ``Obstacle`` / ``AnomalyResult`` import and carry exactly the fields of ``msg/*.msg`` (so a stale
  build is caught), and every field in ``msg/*.msg`` is documented by a comment.
* Two processes exchange an ``AnomalyResult`` with two ``Obstacle`` s (one with a NaN ground
  position) over Fast DDS on loopback, in both directions: a subprocess publishes and this process
  subscribes; then this process publishes, the subprocess echoes back what it received.

The subprocess is this file run as a script (``python test_messages.py publish|echo ...``); it stops
when its stdin closes, so it never outlives the test. Every ROS process runs with loopback-only
discovery and the test session's own ROS_DOMAIN_ID (see conftest.py).

Skipped when rclpy or the generated messages are not importable (e.g. a plain ``pip install .``
without ROS); in the project's virtualenv (scripts/setup.sh) they always run.
"""
from __future__ import annotations

import array
import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(REPO_ROOT) not in sys.path:  # the peer subprocess
    sys.path.insert(0, str(REPO_ROOT))

from pebal_perception.testing import ros_harness  # noqa: E402

# DDS traffic must never leave this machine (Kilted reads the first, Humble the second variable).
ros_harness.use_loopback()

try:
    import rclpy  # noqa: F401 - ROS itself, or the skip below
    from geometry_msgs.msg import Point

    from pebal_perception.msg import AnomalyResult, Obstacle
except ImportError as exc:  # pragma: no cover - depends on the environment
    if __name__ == "__main__":
        raise
    import pytest

    pytest.skip(f"ROS 2 messages not available ({type(exc).__name__}: {exc}); "
                "run scripts/setup.sh to build them", allow_module_level=True)

TIMEOUT_S = 20.0
PEER_LIFETIME_S = 60.0  # hard cap for the subprocess even if the test process vanished

OBSTACLE_FIELDS = {
    "id": "uint32",
    "track_id": "uint32",
    "age_frames": "uint32",
    "first_seen": "builtin_interfaces/Time",
    "held": "boolean",
    "x_offset": "uint32",
    "y_offset": "uint32",
    "width": "uint32",
    "height": "uint32",
    "area": "uint32",
    "mean_score": "float",
    "max_score": "float",
    "drivable_fraction": "float",
    "width_m": "float",
    "ground_position": "geometry_msgs/Point",
}
ANOMALY_RESULT_FIELDS = {
    "header": "std_msgs/Header",
    "model_id": "string",
    "threshold": "float",
    "anomalous_fraction": "float",
    "max_score": "float",
    "processing_time_ms": "float",
    "obstacles": "sequence<pebal_perception/Obstacle>",
}


def make_result() -> AnomalyResult:
    """The message both processes expect; float values are exact in float32."""
    nan = float("nan")
    msg = AnomalyResult()
    msg.header.stamp.sec = 1_700_000_123
    msg.header.stamp.nanosec = 456_789_000
    msg.header.frame_id = "front_camera_optical_frame"
    msg.model_id = "wrn38:pebal_cityscapes.pth"
    msg.threshold = 0.75
    msg.anomalous_fraction = 0.015625
    msg.max_score = 4.5
    msg.processing_time_ms = 37.25
    from builtin_interfaces.msg import Time

    msg.obstacles = [
        Obstacle(id=0, track_id=17, age_frames=5, first_seen=Time(sec=1_700_000_122, nanosec=956_789_000),
                 held=False, width_m=0.625, x_offset=812, y_offset=540, width=64, height=48, area=2345,
                 mean_score=1.625, max_score=4.5, drivable_fraction=0.875,
                 ground_position=Point(x=-0.5, y=1.5, z=14.25)),
        Obstacle(id=1, track_id=4_294_967_295, age_frames=1, held=True, width_m=nan,
                 x_offset=0, y_offset=1023, width=2048, height=1, area=4_294_967_295,
                 mean_score=0.8125, max_score=1.0, drivable_fraction=nan,
                 ground_position=Point(x=nan, y=nan, z=nan)),
    ]
    return msg


def assert_msg_equal(actual, expected, path: str = "msg") -> int:
    """Compares every field recursively (NaN equals NaN); returns the number of leaves compared."""
    if hasattr(type(expected), "get_fields_and_field_types"):
        assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
        return sum(assert_msg_equal(getattr(actual, name), getattr(expected, name), f"{path}.{name}")
                   for name in type(expected).get_fields_and_field_types())
    if isinstance(expected, (list, tuple, array.array)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        return sum(assert_msg_equal(a, e, f"{path}[{i}]") for i, (a, e) in enumerate(zip(actual, expected)))
    if isinstance(expected, float):
        assert isinstance(actual, float), f"{path}: {actual!r} is not a float"
        assert (math.isnan(actual) and math.isnan(expected)) or actual == expected, \
            f"{path}: {actual!r} != {expected!r}"
        return 1
    assert actual == expected, f"{path}: {actual!r} != {expected!r}"
    return 1


# ----------------------------------------------------------------------------------------------
# Interface definition
# ----------------------------------------------------------------------------------------------
def _msg_file_fields(name: str) -> list[tuple[str, str, bool]]:
    """(type, name, documented) per field line of msg/<name>.msg; documented = the field's line or
    the comment block directly above its group of field lines explains it."""
    fields, documented = [], False
    for raw in (REPO_ROOT / "msg" / f"{name}.msg").read_text().splitlines():
        line = raw.strip()
        if not line:
            documented = False
        elif line.startswith("#"):
            documented = True
        else:
            code, _, comment = line.partition("#")
            ftype, fname = code.split()[:2]
            fields.append((ftype, fname, documented or bool(comment.strip())))
    return fields


def test_generated_messages_have_the_documented_fields():
    assert Obstacle.get_fields_and_field_types() == OBSTACLE_FIELDS
    assert AnomalyResult.get_fields_and_field_types() == ANOMALY_RESULT_FIELDS
    for msg_type in (Obstacle, AnomalyResult):
        in_file = [fname for _, fname, _ in _msg_file_fields(msg_type.__name__)]
        assert in_file == list(msg_type.get_fields_and_field_types()), (
            f"msg/{msg_type.__name__}.msg and the generated {msg_type.__name__} differ: "
            "re-run scripts/setup.sh")
    default = Obstacle()
    assert (default.ground_position.x, default.width, default.area) == (0.0, 0, 0)


def test_every_msg_field_is_documented():
    for name in ("Obstacle", "AnomalyResult"):
        undocumented = [fname for _, fname, documented in _msg_file_fields(name) if not documented]
        assert not undocumented, f"msg/{name}.msg: fields without a comment: {undocumented}"


def test_ament_index_resolves_both_package_names():
    """What `ros2 run pebal_perception detector_node` / `ros2 run pebal_training finetune` look up."""
    import pytest

    ament_index_python = pytest.importorskip("ament_index_python")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if not prefixes:  # scripts/setup.sh installs into the virtualenv itself
        os.environ["AMENT_PREFIX_PATH"] = sys.prefix
    try:
        for package, executable in (("pebal_perception", "detector_node"),
                                    ("pebal_training", "finetune")):
            prefix = Path(ament_index_python.get_package_prefix(package))
            assert os.access(prefix / "lib" / package / executable, os.X_OK), (package, executable)
        share = Path(ament_index_python.get_package_share_directory("pebal_perception"))
        assert (share / "package.xml").is_file() and (share / "launch").is_dir()
    finally:
        if not prefixes:
            del os.environ["AMENT_PREFIX_PATH"]


# ----------------------------------------------------------------------------------------------
# Two-process DDS round trips
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ros_peer(*args: str):
    """Runs this file as a ROS peer process (ros_harness.ChildProcess); stops it on exit: stdin EOF,
    then SIGTERM (SIGKILL if that does not work either)."""
    with tempfile.TemporaryDirectory(prefix="pebal_msg_peer_") as tmp:
        proc = ros_harness.ChildProcess([sys.executable, Path(__file__).resolve(), *args], Path(tmp) / "peer.log",
                                        stdin_pipe=True)
        try:
            yield proc
        finally:
            proc.close_stdin()
            if proc.wait(10) is None:
                proc.stop(signal.SIGTERM, timeout=5)
        assert proc.returncode == 0, f"peer {args} exited with {proc.returncode}:\n{proc.output()[-4000:]}"


def _wait_until(done, proc: ros_harness.ChildProcess, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if not proc.alive():
            raise AssertionError(f"peer exited early ({proc.returncode}) while waiting for {what}:\n"
                                 f"{proc.output()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {TIMEOUT_S:.0f} s "
                                 f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')}):\n{proc.output()[-4000:]}")
        time.sleep(0.05)


def _topic(kind: str) -> str:
    return f"/pebal_test_{uuid.uuid4().hex[:10]}/{kind}"


@pytest.mark.ros
def test_subprocess_publishes_test_receives():
    topic = _topic("anomaly")
    with ros_harness.Peer("pebal_test_sub") as peer, ros_peer("publish", topic) as proc:
        received = peer.collect(AnomalyResult, topic, 10)
        _wait_until(lambda: len(received), proc, f"AnomalyResult on {topic}")
    assert assert_msg_equal(received.snapshot()[0], make_result()) == 44


@pytest.mark.ros
def test_test_publishes_subprocess_echoes_back():
    topic_in, topic_out = _topic("in"), _topic("out")
    sent = make_result()
    sent.model_id = "espnetv2:echo-" + uuid.uuid4().hex  # proves the echo is of this message
    with ros_harness.Peer("pebal_test_echo") as peer, ros_peer("echo", topic_in, topic_out) as proc:
        received = peer.collect(AnomalyResult, topic_out, 10)
        publisher = peer.publisher(AnomalyResult, topic_in, 10)
        peer.node.create_timer(0.1, lambda: publisher.publish(sent))
        _wait_until(lambda: len(received), proc, f"echo on {topic_out}")
    assert assert_msg_equal(received.snapshot()[0], sent) == 44


# ----------------------------------------------------------------------------------------------
# Peer process
# ----------------------------------------------------------------------------------------------
def _peer_main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if not (mode == "publish" and len(argv) == 2) and not (mode == "echo" and len(argv) == 3):
        sys.stderr.write("usage: test_messages.py publish TOPIC | echo TOPIC_IN TOPIC_OUT\n")
        return 2
    stop = threading.Event()

    def watch_stdin() -> None:  # the test closes our stdin (or dies) -> stop
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    with ros_harness.Peer(f"pebal_test_peer_{mode}") as peer:  # spun by its own thread
        if mode == "publish":
            publisher = peer.publisher(AnomalyResult, argv[1], 10)
            msg = make_result()
            peer.node.create_timer(0.1, lambda: publisher.publish(msg))
        else:
            publisher = peer.publisher(AnomalyResult, argv[2], 10)
            peer.subscribe(AnomalyResult, argv[1], publisher.publish, 10)
        stop.wait(PEER_LIFETIME_S)
    return 0


if __name__ == "__main__":
    sys.exit(_peer_main(sys.argv[1:]))
