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
name order; :mod:`pebal_perception.core.frame_sources`) into a version-8 bag: one ``sensor_msgs/Image`` (bgr8) per
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
import os
import sys
from pathlib import Path
from typing import Sequence

from pebal_perception.cli.bag_common import PROG, CliError, _Interrupt
from pebal_perception.cli.bag_footage import from_video
from pebal_perception.cli.bag_play import _rclpy_qos, play, resolve_message_type
from pebal_perception.cli.bag_process import process
from pebal_perception.core.backends import BACKENDS
from pebal_perception.cli_args import frame_size, positive_int, positive_number

# Importable from here as before: pebal-camera's Ctrl-C handling and the tests of play's helpers.
__all__ = ["CliError", "_Interrupt", "_rclpy_qos", "build_parser", "main", "resolve_message_type"]

DEFAULT_CLOCK_HZ = 100.0  # ros2 bag play --clock's default


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

    from pebal_perception.core.frame_sources import bag_topic_argument

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
        from pebal_perception.core.bag import BagError

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


if __name__ == "__main__":
    sys.exit(main())
