"""``pebal-bag``: replay a ROS 2 bag into the detector node, or run the detector over a bag offline.

    pebal-bag play BAG [--rate F] [--loop] [--topics T ...] [--remap OLD:=NEW ...] [--wait-for-subscribers]
                      [--clock [HZ]]
    pebal-bag process BAG --output OUT [--topic /camera/image_raw] [--checkpoint C --model M --device D]
                      [--params-file config/detector.yaml] [--param NAME:=VALUE ...] [--overlay]
                      [--storage sqlite3|mcap] [--prefix /pebal_detector]
    pebal-bag from-video INPUT --output OUT [--topic /camera/image_raw] [--fps F] [--every N] [--size WxH]
                      [--compressed] [--camera-info YAML] [--frame-id camera] [--start-time S]

``play`` publishes every message (sqlite3 or mcap bags) at its recorded time offset (the bag's own
timestamps, scaled by ``--rate``) as the raw serialized bytes (nothing is deserialised) with rclpy
publishers of the recorded types and QoS. Ctrl-C stops it cleanly (exit 0). With ``--clock [HZ]``
it also publishes the bag's time (``rosgraph_msgs/Clock`` on ``/clock``, HZ times per second of wall
time, default 100, like ``ros2 bag play --clock``) for nodes started with ``use_sim_time:=true``:
the first played message's time while it waits for subscribers / ``--delay``, then the bag time
advancing at ``--rate`` (never past the next message's time), and the last message's time at the end.
With ``--loop`` the clock jumps back to the first message's time at each pass.

``process`` runs the node's own step (:class:`pebal_perception.core.detector.Detector`, built from the
same parameters read from the same params file, tracking per camera stream included) over every image
of ``--topic`` and writes a version-8 bag (readable by rosbag2 on Humble and later) with
``<prefix>/semantic`` (mono8), ``<prefix>/energy`` (32FC1), ``<prefix>/obstacle_mask`` (mono8),
``<prefix>/result`` (pebal_perception/AnomalyResult) and, with ``--overlay``, ``<prefix>/overlay``
(rgb8); every output carries the input image's header and bag timestamp. The bag is written under a
temporary name and renamed when complete: after any failure (corrupt message, Ctrl-C) the output path
does not exist. ``summary.json`` is written inside the output bag directory. Images the node would
reject (unsupported encoding, inconsistent size) are skipped and counted, as the node does.

``--output`` must not exist. ``--overwrite`` replaces only a bag ``pebal-bag process`` wrote (a folder
holding exactly ``metadata.yaml``, the storage files it names and our ``summary.json``) or an empty
folder, and only once the new bag is complete; anything else there (a folder with other files, a
recorded bag, a file, a device, a fifo) is refused before any work, with one line
``pebal-bag: error: OUT: what is there``, and left untouched.

``from-video`` turns a user's own footage (a video OpenCV reads, a PNG/JPEG image, or a folder of them in
name order; :mod:`pebal_perception.frame_sources`) into a version-8 bag: one ``sensor_msgs/Image`` (bgr8) per
kept frame on ``--topic`` (``--compressed``: a JPEG ``sensor_msgs/CompressedImage`` on ``<topic>/compressed``
instead), stamped ``start + source frame index / fps`` (``--fps``: the source's rate, by default the
video's own, 10 for a folder), plus with ``--camera-info`` a ``sensor_msgs/CameraInfo`` of the same stamp on
``camera_info`` next to ``--topic`` (scaled to ``--size``). It is written atomically like ``process``'s
output, with ``footage.json`` inside; ``--overwrite`` replaces only a bag ``from-video`` wrote. Frames are
held to the limits of ``pebal-detect`` and the node before they are decoded: at most 64 M pixels, an aspect
ratio within 1:8..8:1, at least 16 pixels on a side (``--size`` too, as a usage error); INPUT and
``--camera-info`` must be regular files (or a folder), ``--topic`` a valid ROS 2 topic name (a relative one is
written fully qualified). Bad footage (unreadable video, empty folder, a file there that is not an image,
frames outside the limits, a FIFO or device, bad calibration YAML) is one line ``pebal-bag: error: PATH:
what``, exit 1, and nothing is left at the output path. A video that ends well before the frame count its
container claims is written with one line ``pebal-bag: warning: ...`` and exit 0; ``footage.json`` records
both counts (``source_frames_claimed``, ``source_frames_read``) and the warning (``warnings``).

Problems with the input (missing, truncated, corrupt, empty bag; missing topic) are reported as one
line ``pebal-bag: error: BAG: ...`` with exit status 1 (2 for usage errors).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from pebal_perception.core.cli_args import frame_size, positive_int, positive_number

from pebal_perception.core.backends import BACKENDS

PROG = "pebal-bag"
DEFAULT_CLOCK_HZ = 100.0  # ros2 bag play --clock's default
REPO_ROOT = Path(__file__).resolve().parents[2]


class CliError(Exception):
    """One-line error, exit status 1."""


# --------------------------------------------------------------------------------------------- parser

def _remap(text: str) -> tuple[str, str]:
    if ":=" not in text:
        raise argparse.ArgumentTypeError(f"expected OLD:=NEW, got {text!r}")
    old, new = text.split(":=", 1)
    if not old or not new:
        raise argparse.ArgumentTypeError(f"expected OLD:=NEW, got {text!r}")
    return old, new


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Replay or process ROS 2 bags (sqlite3 / mcap).")
    sub = parser.add_subparsers(dest="command", required=True)

    play = sub.add_parser("play", help="publish a bag at its recorded rate (raw serialized messages)")
    play.add_argument("bag", type=Path)
    play.add_argument("--rate", type=positive_number, default=1.0, help="playback speed factor (default 1)")
    play.add_argument("--loop", action="store_true", help="start again at the end (until Ctrl-C)")
    play.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these topics (default: all)")
    play.add_argument("--remap", type=_remap, action="append", default=[], metavar="OLD:=NEW",
                      help="publish topic OLD as NEW (repeatable)")
    play.add_argument("--wait-for-subscribers", action="store_true",
                      help="before playing, wait until every topic has a subscriber (at most --wait-timeout)")
    play.add_argument("--wait-timeout", type=positive_number, default=15.0, help="seconds (default 15)")
    play.add_argument("--delay", type=float, default=0.0, help="seconds to wait after creating the publishers")
    play.add_argument("--clock", type=positive_number, nargs="?", const=DEFAULT_CLOCK_HZ, default=None,
                      metavar="HZ",
                      help=f"also publish the bag's time on /clock, HZ times a second (default "
                           f"{DEFAULT_CLOCK_HZ:g}), for nodes run with use_sim_time:=true; with --loop the "
                           "time jumps back at each pass (write it after BAG, or as --clock=HZ)")
    play.add_argument("--reliable", action="store_true",
                      help="publish every topic reliable, whatever QoS the bag recorded (a camera bag records "
                           "best effort; reliable subscribers then receive every frame)")
    play.add_argument("--quiet", "-q", action="store_true")

    proc = sub.add_parser("process", help="run the detector offline over a bag, write an output bag")
    proc.add_argument("bag", type=Path)
    proc.add_argument("--output", "-o", type=Path, required=True,
                      help="output bag directory (must not exist, see --overwrite)")
    proc.add_argument("--topic", default="/camera/image_raw",
                      help="sensor_msgs/Image or CompressedImage topic (default /camera/image_raw)")
    proc.add_argument("--camera-info-topic", default=None,
                      help="camera_info topic for ground positions (default: camera_info next to --topic)")
    proc.add_argument("--checkpoint", default=None, help="model checkpoint (default: params file / embedded)")
    proc.add_argument("--model", default=None, help="architecture of a bare state dict (espnetv2, wrn38, ...)")
    proc.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: params file)")
    proc.add_argument("--backend", default=None, choices=BACKENDS,
                      help="inference runtime (default: params file's backend, auto)")
    proc.add_argument("--params-file", type=Path, default=None,
                      help="the node's parameters (default: config/detector.yaml of this package)")
    proc.add_argument("--param", "-p", action="append", default=[], metavar="NAME:=VALUE",
                      help="override one node parameter, like the node's -p (repeatable)")
    proc.add_argument("--prefix", default="/pebal_detector",
                      help="output topic prefix, i.e. the node's namespace + name (default /pebal_detector)")
    proc.add_argument("--overlay", action="store_true", help="also write <prefix>/overlay (rgb8)")
    proc.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    proc.add_argument("--overwrite", action="store_true",
                      help="replace an existing output bag that pebal-bag process wrote (once the new one is "
                           "complete); anything else at --output is refused")
    proc.add_argument("--quiet", "-q", action="store_true")

    from pebal_perception.frame_sources import bag_topic_argument

    video = sub.add_parser("from-video", help="write a bag of camera images from a video or a folder of images")
    video.add_argument("input", type=Path, help="a video file OpenCV reads, a PNG/JPEG image, or a folder of them "
                                                "(in name order); frames of at most 64 M pixels, aspect ratio "
                                                "within 8:1, sides of at least 16 pixels")
    video.add_argument("--output", "-o", type=Path, required=True,
                       help="output bag directory (must not exist, see --overwrite)")
    video.add_argument("--topic", type=bag_topic_argument, default="/camera/image_raw",
                       help="image topic, a ROS 2 topic name (default /camera/image_raw)")
    video.add_argument("--fps", type=positive_number, default=None,
                       help="frame rate of the source (default: the video's own; 10 for a folder)")
    video.add_argument("--every", type=positive_int, default=1, metavar="N", help="keep every N-th frame (default 1)")
    video.add_argument("--size", type=frame_size, default=None, metavar="WxH",
                       help="resize the frames (within the same limits)")
    video.add_argument("--compressed", action="store_true",
                       help="write sensor_msgs/CompressedImage (JPEG) on <topic>/compressed instead")
    video.add_argument("--camera-info", type=Path, default=None, metavar="YAML",
                       help="camera calibration (camera_calibration_parsers YAML), written on camera_info next "
                            "to --topic (scaled to --size)")
    video.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    video.add_argument("--start-time", type=float, default=None, metavar="SECONDS",
                       help="stamp of the first frame, seconds since the epoch (default: now)")
    video.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    video.add_argument("--overwrite", action="store_true",
                       help="replace an existing output bag that pebal-bag from-video wrote (once the new one is "
                            "complete); anything else at --output is refused")
    video.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "play":
            return play(args)
        if args.command == "from-video":
            return from_video(args)
        return process(args)
    except CliError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:  # before the handlers are installed (e.g. while loading the model)
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - BagError and anything unexpected: one line
        from pebal_perception.bag import BagError

        if isinstance(exc, BagError):
            sys.stderr.write(f"{PROG}: error: {exc}\n")
        elif _at_output(exc, getattr(args, "output", None)):
            sys.stderr.write(f"{PROG}: error: {args.output}: cannot write the output bag ({exc.strerror})\n")
        else:
            where = getattr(args, "bag", None) or getattr(args, "input", "")
            sys.stderr.write(f"{PROG}: error: {where}: {type(exc).__name__}: {exc}\n".splitlines()[0] + "\n")
        return 1


def _at_output(exc: BaseException, output: Path | None) -> bool:
    """Whether ``exc`` is an OS error at ``output`` or beside it (the partial bag is written in its folder),
    so that the message names the output and not the input."""
    if output is None or not isinstance(exc, OSError) or exc.filename is None:
        return False
    failed, output = Path(os.fsdecode(exc.filename)), Path(output)
    return failed == output or output in failed.parents or failed.parent == output.parent


class _Interrupt:
    """SIGINT/SIGTERM -> an event (restores the previous handlers on exit)."""

    def __init__(self):
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------- play

# The only message packages `play` publishes. A bag's type strings are data: they select one of
# these modules' classes and are never turned into an import of their own.
KNOWN_MESSAGE_PACKAGES = ("builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "pebal_perception",
                          "rcl_interfaces", "rosgraph_msgs", "sensor_msgs", "std_msgs")


def resolve_message_type(msgtype: str) -> Any | None:
    """The rclpy class of ``msgtype`` (``pkg/msg/Name``) from :data:`KNOWN_MESSAGE_PACKAGES`, or None
    when the string names anything else (unknown package, not a message, malformed)."""
    import importlib

    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg" or parts[0] not in KNOWN_MESSAGE_PACKAGES:
        return None
    package, _, name = parts
    if not name.isidentifier() or name.startswith("_"):
        return None
    try:
        module = importlib.import_module(f"{package}.msg")  # one of the fixed names above
    except ImportError:
        return None
    cls = getattr(module, name, None)
    # Generated message classes carry their type support; anything else in the module is not a message.
    if not isinstance(cls, type) or not hasattr(cls, "_TYPE_SUPPORT"):
        return None
    return cls


def _rclpy_qos(profiles: list[Any], force_reliable: bool = False) -> Any:
    """rclpy QoSProfile matching the recorded (offered) profiles; reliable keep-last 10 if none; reliable
    whatever was recorded with ``force_reliable`` (``play --reliable``)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = force_reliable or all(getattr(p.reliability, "name", "") != "BEST_EFFORT" for p in profiles)
    latched = bool(profiles) and all(getattr(p.durability, "name", "") == "TRANSIENT_LOCAL" for p in profiles)
    depth = max([10] + [int(p.depth) for p in profiles if int(p.depth) > 0])
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class _BagClock:
    """``/clock`` for ``play --clock``: publishes the bag's time every ``1/hz`` s of wall time from
    within the player's waits (:meth:`wait_until`), so also between messages and before the first one."""

    def __init__(self, node: Any, hz: float, rate: float):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        # rosbag2's player uses rclcpp::ClockQoS (best effort, keep last 1, volatile), what rclpy's and
        # rclcpp's time sources subscribe with: only the newest time matters, and a lost sample is
        # replaced by the next one 1/hz later instead of being resent late.
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
        self._pub = node.create_publisher(Clock, "/clock", qos)
        self._msg = Clock()
        self._period = 1.0 / hz
        self._rate = rate
        self._next_tick = time.monotonic()
        self.hold(0)

    def hold(self, bag_ns: int) -> None:
        """From now on the clock stands at ``bag_ns``."""
        self._origin, self._wall, self._cap = bag_ns, None, bag_ns

    def follow(self, bag_ns: int, wall: float, cap_ns: int) -> None:
        """The clock runs from ``bag_ns`` at monotonic time ``wall`` at ``rate``, up to ``cap_ns`` (the
        next message's time: the clock never runs ahead of what has been published)."""
        self._origin, self._wall, self._cap = bag_ns, wall, cap_ns

    def now_ns(self) -> int:
        if self._wall is None:
            return self._origin
        return min(self._cap, self._origin + int((time.monotonic() - self._wall) * self._rate * 1e9))

    def wait_until(self, deadline: float, stop: threading.Event) -> bool:
        """``frame_sources.wait_until`` that publishes the clock at every tick on the way."""
        from pebal_perception.frame_sources import wait_until

        while True:
            now = time.monotonic()
            if now >= self._next_tick:
                ns = self.now_ns()
                self._msg.clock.sec, self._msg.clock.nanosec = divmod(ns, 1_000_000_000)
                self._pub.publish(self._msg)
                self._next_tick = max(self._next_tick + self._period, now)  # no burst after a stall
            if not wait_until(min(deadline, self._next_tick), stop):
                return False
            if time.monotonic() >= deadline:
                return True


def play(args: argparse.Namespace) -> int:
    from pebal_perception.bag import open_bag, qos_of
    from pebal_perception.frame_sources import wait_until

    remap = dict(args.remap)
    with open_bag(args.bag) as reader:
        conns = reader.connections
        if args.topics:
            reader.require_topics(args.topics)
            conns = [c for c in conns if c.topic in args.topics]
        try:
            import rclpy
            from rclpy.signals import SignalHandlerOptions
        except ImportError as exc:
            raise CliError(f"play needs rclpy (ROS 2): {exc}; run scripts/setup.sh") from None

        from pebal_perception.dds import apply_default_profile

        apply_default_profile()  # raw frames intact over Fast DDS (a user's own profile is kept)
        with _Interrupt() as stop:
            context = rclpy.Context()
            rclpy.init(args=[PROG], context=context, signal_handler_options=SignalHandlerOptions.NO)
            node = None
            try:
                node = rclpy.create_node(f"pebal_bag_player_{os.getpid()}", context=context,
                                         start_parameter_services=False)
                publishers: dict[str, Any] = {}
                skipped: dict[str, str] = {}
                for conn in conns:
                    if conn.topic in publishers or conn.topic in skipped:
                        continue
                    msg_type = resolve_message_type(conn.msgtype)
                    if msg_type is None:
                        skipped[conn.topic] = conn.msgtype
                        sys.stderr.write(f"{PROG}: warning: {args.bag}: skipping {conn.topic}: message type "
                                         f"{conn.msgtype!r} is not one this tool publishes\n")
                        continue
                    publishers[conn.topic] = node.create_publisher(msg_type, remap.get(conn.topic, conn.topic),
                                                                   _rclpy_qos(qos_of(conn), args.reliable))
                if not publishers:
                    raise CliError(f"{args.bag}: no topic to play")
                clock = None
                if args.clock is not None:
                    clock = _BagClock(node, args.clock, args.rate)
                    # The first played message's time from the start, so that the timers of nodes
                    # using sim time run while the player waits for them.
                    messages = reader.messages(list(publishers))
                    clock.hold(next(messages, (None, 0))[1])
                    messages.close()
                wait = clock.wait_until if clock is not None else wait_until
                if args.wait_for_subscribers:
                    deadline = time.monotonic() + args.wait_timeout
                    while not stop.is_set() and time.monotonic() < deadline:
                        if all(p.get_subscription_count() > 0 for p in publishers.values()):
                            break
                        wait(time.monotonic() + 0.05, stop)
                    else:
                        if not stop.is_set():
                            lonely = [p.topic_name for p in publishers.values() if p.get_subscription_count() == 0]
                            sys.stderr.write(f"{PROG}: warning: no subscriber on {', '.join(lonely)} after "
                                             f"{args.wait_timeout:g} s; playing anyway\n")
                if args.delay > 0:
                    wait(time.monotonic() + args.delay, stop)
                if not args.quiet:
                    print(f"{PROG}: playing {args.bag} ({reader.message_count} messages, "
                          f"{len(publishers)} topics) at rate {args.rate:g}{' in a loop' if args.loop else ''}",
                          flush=True)
                published = 0
                while not stop.is_set():
                    start_wall = time.monotonic()
                    first = None
                    for conn, timestamp, data in reader.messages(list(publishers)):
                        if first is None:
                            first = timestamp
                        if clock is not None:
                            clock.follow(first, start_wall, timestamp)
                        if not wait(start_wall + (timestamp - first) / 1e9 / args.rate, stop):
                            break
                        publishers[conn.topic].publish(data)
                        published += 1
                        if clock is not None:
                            clock.hold(timestamp)  # until the next message, or the end: the last time
                    if not args.loop:
                        break
                if not stop.is_set():
                    wait(time.monotonic() + 0.5, stop)  # let reliable deliveries of the last messages finish
                if not args.quiet:
                    unknown = f", skipped {len(skipped)} topics of unknown types" if skipped else ""
                    print(f"{PROG}: published {published} messages{unknown}"
                          f"{' (interrupted)' if stop.is_set() else ''}", flush=True)
            finally:
                if node is not None:
                    node.destroy_node()
                context.try_shutdown()
    return 0


# -------------------------------------------------------------------------------------------- process

def _default_params_file() -> Path | None:
    from pebal_perception.bag import find_msg_dir

    candidates = [REPO_ROOT / "config" / "detector.yaml"]
    msg_dir = find_msg_dir()
    if msg_dir is not None:
        candidates.append(msg_dir.parent / "config" / "detector.yaml")
    return next((p for p in candidates if p.is_file()), None)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def load_parameters(params_file: Path | None, overrides: Sequence[str], node_name: str = "pebal_detector") -> dict:
    """The node's parameters as the node would see them: the defaults of the node's parameter table
    (core/settings.py), then the params file's ``/**`` and ``<node>`` sections, then ``NAME:=VALUE``
    overrides (values parsed as YAML, like rcl does); every value checked against the table (type,
    range, choices) as the node's descriptors check them. Names the table does not know are ignored,
    as the node ignores undeclared overrides."""
    import yaml

    from pebal_perception.core.settings import resolve_parameters

    params: dict[str, Any] = {}
    if params_file is not None:
        try:
            doc = yaml.safe_load(params_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"cannot read params file {params_file}: {str(exc).splitlines()[0]}") from None
        for key, section in doc.items():
            name = str(key).strip("/").split("/")[-1]
            if (key == "/**" or name == node_name) and isinstance(section, dict):
                _flatten("", section.get("ros__parameters", {}), params)
    for item in overrides:
        if ":=" not in item:
            raise CliError(f"--param expects NAME:=VALUE, got {item!r}")
        name, text = item.split(":=", 1)
        try:
            params[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            params[name] = text
    try:
        return resolve_parameters(params)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _detector(args: argparse.Namespace, params: dict, on_event=None) -> Any:
    """The node's detector from ``params`` (:func:`load_parameters`), --checkpoint / --model / --device /
    --backend overriding them."""
    from pebal_perception.core.detector import Detector, DetectorError

    values = dict(params)
    for name in ("checkpoint", "model", "device", "backend"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    try:
        return Detector.from_values(values, on_event=on_event)
    except DetectorError as exc:
        raise CliError(str(exc)) from None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)), 3)


def process(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pebal_perception.bag import AtomicBagWriter, BagError, check_bag_output, deserialize, msg_class, open_bag, \
        qos_profile, stamp_ns
    from pebal_perception.core.detector import CameraInfo
    from pebal_perception.image_conversion import ImageConverter, ImageRejected
    from pebal_perception.node.outputs import OUTPUTS, MessageClasses, build_output_messages, uint8_array

    image_topic = args.topic
    info_topic = args.camera_info_topic or f"{image_topic.rsplit('/', 1)[0]}/camera_info"
    prefix = "/" + args.prefix.strip("/") if args.prefix.strip("/") else ""
    check_bag_output(args.output, args.overwrite)  # before any work; AtomicBagWriter checks again

    with open_bag(args.bag) as reader:
        reader.require_topics([image_topic])
        image_type = reader.topics()[image_topic]
        if image_type not in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
            raise BagError(f"{args.bag}: topic {image_topic} has type {image_type}, expected "
                           "sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage")
        has_info = reader.topics().get(info_topic) == "sensor_msgs/msg/CameraInfo"
        params_file = args.params_file or _default_params_file()
        params = load_parameters(params_file, args.param)
        tracking_notes: list[str] = []  # as the node: tracking over the bag's frames, per camera stream
        detector = _detector(args, params, on_event=lambda kind, text: tracking_notes.append(text)
                             if kind == "tracking_forgot" else None)
        engine, config = detector.engine, detector.settings.config
        converter = ImageConverter()
        to_rgb = converter.to_rgb if image_type.endswith("/Image") else converter.compressed_to_rgb

        classes = MessageClasses(  # the node's messages, as rosbags classes
            Image=msg_class("sensor_msgs/msg/Image"), AnomalyResult=msg_class("pebal_perception/msg/AnomalyResult"),
            Obstacle=msg_class("pebal_perception/msg/Obstacle"), Point=msg_class("geometry_msgs/msg/Point"),
            image_data=uint8_array, Time=msg_class("builtin_interfaces/msg/Time"))
        out_qos = [qos_profile(reliable=True, depth=5)]  # the node's output QoS
        written = [t for t in OUTPUTS  # the node's outputs a bag can carry (no markers, no processing time)
                   if (t.default or (t.name == "overlay" and args.overlay)) and getattr(classes, t.needs) is not None]
        outputs = [t.name for t in written]
        topics = {name: f"{prefix}/{name}" for name in outputs}
        stats: dict[str, Any] = {"frames_in": 0, "frames_out": 0, "rejected": {}, "obstacles": 0,
                                 "frames_with_obstacles": 0}
        times: list[float] = []
        infer_times: list[float] = []
        started = time.monotonic()

        with _Interrupt() as stop, AtomicBagWriter(args.output, storage=args.storage,
                                                   overwrite=args.overwrite) as writer:
            for topic in written:
                writer.add_topic(topics[topic.name], topic.msgtype, out_qos)
            wanted = [image_topic] + ([info_topic] if has_info else [])
            for index, (conn, timestamp, data) in enumerate(reader.messages(wanted)):
                if stop.is_set():
                    raise CliError(f"{args.bag}: interrupted; no output written")
                try:
                    msg = deserialize(data, conn.msgtype)
                except Exception as exc:  # noqa: BLE001 - corrupt CDR
                    raise BagError(f"{args.bag}: message {index} on {conn.topic} (t={timestamp} ns) cannot be "
                                   f"decoded as {conn.msgtype} ({type(exc).__name__}: {exc}); no output "
                                   "written".replace("\n", " ")) from None
                if conn.topic == info_topic:
                    detector.set_camera(CameraInfo(k=tuple(msg.k), width=int(msg.width), height=int(msg.height)))
                    continue
                stats["frames_in"] += 1
                received = time.perf_counter()
                try:
                    rgb = to_rgb(msg)
                except ImageRejected as exc:
                    stats["rejected"][exc.reason] = stats["rejected"].get(exc.reason, 0) + 1
                    continue
                step = detector.step(rgb, stamp_ns(msg.header), stream=msg.header.frame_id)
                messages = build_output_messages(rgb, step.semantic, step.score, step.frame, msg.header, classes,
                                                 model_id=detector.model_id, threshold=config.threshold,
                                                 overlay=args.overlay)
                result = messages.pop("result")
                for name, out in messages.items():
                    writer.write_msg(topics[name], timestamp, out)
                elapsed_ms = (time.perf_counter() - received) * 1000.0
                result.processing_time_ms = float(elapsed_ms)
                writer.write_msg(topics["result"], timestamp, result)
                obstacles = result.obstacles
                stats["frames_out"] += 1
                stats["obstacles"] += len(obstacles)
                stats["frames_with_obstacles"] += bool(obstacles)
                times.append(elapsed_ms)
                infer_times.append(step.inference_ms)
            if stats["frames_in"] == 0:
                raise BagError(f"{args.bag}: no messages on {image_topic}")
            summary = {
                "input_bag": str(args.bag), "output_bag": str(args.output), "storage": args.storage,
                "image_topic": image_topic, "camera_info_topic": info_topic if has_info else None,
                "params_file": str(params_file) if params_file else None, "param_overrides": list(args.param),
                "model_id": detector.model_id, "device": str(engine.device), "threshold": float(config.threshold),
                "network_input": None if engine.input_size is None else [engine.input_size[1], engine.input_size[0]],
                **stats, "rejected_total": sum(stats["rejected"].values()),
                "output_topics": {topics[n]: writer.counts[topics[n]] for n in outputs},
                "processing_time_ms": {"mean": round(sum(times) / len(times), 3) if times else None,
                                       "p50": _percentile(times, 50), "p95": _percentile(times, 95)},
                "inference_time_ms": {"p50": _percentile(infer_times, 50), "p95": _percentile(infer_times, 95)},
                "regions_over_cap": detector.status().regions_over_cap,
                "tracking": {**asdict(detector.status().tracking), "notes": tracking_notes[:20]},
                "wall_s": round(time.monotonic() - started, 3),
            }
            writer.commit(extra_files={"summary.json": json.dumps(summary, indent=1) + "\n"})
    if not args.quiet:
        print(f"{PROG}: wrote {args.output} ({stats['frames_out']} of {stats['frames_in']} frames, "
              f"{stats['obstacles']} obstacles, p50 {summary['processing_time_ms']['p50']} ms/frame); "
              f"summary: {args.output / 'summary.json'}")
    return 0


# ----------------------------------------------------------------------------------------- from-video

FOOTAGE_SUMMARY = "footage.json"
JPEG_QUALITY = 90


def from_video(args: argparse.Namespace) -> int:
    """A bag of the frames of a video or an image folder (see :mod:`pebal_perception.frame_sources`)."""
    import cv2
    import numpy as np
    from tqdm import tqdm

    from pebal_perception.bag import AtomicBagWriter, check_bag_output, header, msg_class, qos_profile
    from pebal_perception.frame_sources import FootageError, camera_info_topic, load_calibration, open_source

    check_bag_output(args.output, args.overwrite, FOOTAGE_SUMMARY)  # before any work
    try:
        calibration = load_calibration(args.camera_info) if args.camera_info is not None else None
        source = open_source(args.input, every=args.every, size=args.size)
        info_fields = calibration.fields(source.size) if calibration is not None else None
    except FootageError as exc:
        raise CliError(str(exc)) from None
    fps = source.fps(args.fps)
    start_ns = int(round((time.time() if args.start_time is None else args.start_time) * 1e9))
    image_topic = f"{args.topic.rstrip('/')}/compressed" if args.compressed else args.topic
    info_topic = camera_info_topic(args.topic)
    image_type = "sensor_msgs/msg/CompressedImage" if args.compressed else "sensor_msgs/msg/Image"
    Image, Compressed = msg_class("sensor_msgs/msg/Image"), msg_class("sensor_msgs/msg/CompressedImage")
    CameraInfo, Roi = msg_class("sensor_msgs/msg/CameraInfo"), msg_class("sensor_msgs/msg/RegionOfInterest")
    qos = [qos_profile(reliable=False, depth=5)]  # what a camera driver offers (sensor data)
    frames = 0
    try:
        with _Interrupt() as stop, AtomicBagWriter(args.output, storage=args.storage, overwrite=args.overwrite,
                                                   summary=FOOTAGE_SUMMARY) as writer:
            writer.add_topic(image_topic, image_type, qos)
            if info_fields is not None:
                writer.add_topic(info_topic, "sensor_msgs/msg/CameraInfo", qos)
            bar = tqdm(total=source.count, unit="frame", desc=PROG, disable=args.quiet, leave=False)
            try:
                for index, bgr in source.frames():
                    if stop.is_set():
                        raise CliError(f"{args.input}: interrupted; no output written")
                    stamp = start_ns + int(round(index * 1e9 / fps))
                    hdr = header(stamp, args.frame_id)
                    if args.compressed:
                        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                        if not ok:
                            raise CliError(f"{args.input}: frame {index} cannot be encoded as JPEG")
                        msg = Compressed(header=hdr, format="bgr8; jpeg compressed bgr8",
                                         data=np.frombuffer(jpeg.tobytes(), np.uint8))
                    else:
                        h, w = bgr.shape[:2]
                        msg = Image(header=hdr, height=h, width=w, encoding="bgr8", is_bigendian=0, step=w * 3,
                                    data=np.frombuffer(bgr.tobytes(), np.uint8))
                    writer.write_msg(image_topic, stamp, msg)
                    if info_fields is not None:
                        f = info_fields
                        writer.write_msg(info_topic, stamp, CameraInfo(
                            header=hdr, height=f["height"], width=f["width"], distortion_model=f["distortion_model"],
                            d=np.asarray(f["d"], np.float64), k=np.asarray(f["k"], np.float64),
                            r=np.asarray(f["r"], np.float64), p=np.asarray(f["p"], np.float64),
                            binning_x=0, binning_y=0,
                            roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
                    frames += 1
                    bar.update(1)
            finally:
                bar.close()
            if frames == 0:
                raise CliError(f"{args.input}: no frames")
            warnings = [w for w in (source.shortfall(),) if w is not None]
            for warning in warnings:
                sys.stderr.write(f"{PROG}: warning: {warning}\n")
            summary = {"input": str(args.input), "output_bag": str(args.output), "kind": source.kind,
                       "frames": frames, "source_frames_claimed": source.source_count,
                       "source_frames_read": source.frames_read, "warnings": warnings, "fps": fps, "every": args.every,
                       "size": [source.size[1], source.size[0]], "frame_id": args.frame_id,
                       "start_ns": start_ns, "camera_info": str(args.camera_info) if args.camera_info else None,
                       "output_topics": dict(writer.counts)}
            writer.commit(extra_files={FOOTAGE_SUMMARY: json.dumps(summary, indent=1) + "\n"})
    except FootageError as exc:  # a bad image in the middle of a folder: the partial bag is gone
        raise CliError(str(exc)) from None
    if not args.quiet:
        print(f"{PROG}: wrote {args.output} ({frames} frames {source.size[1]}x{source.size[0]} at "
              f"{fps / args.every:g} fps on {image_topic}{' and ' + info_topic if info_fields else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
