"""``pebal-camera``: publish a video or a folder of images live, like a camera driver.

    pebal-camera INPUT [--topic /camera/image_raw] [--rate F] [--loop] [--every N] [--size WxH]
                       [--frame-id camera] [--camera-info YAML]

Frames come from :mod:`pebal_perception.core.frame_sources` (the same as ``pebal-bag from-video``): a video
OpenCV reads, or a folder of PNG/JPEG images in name order. Each kept frame is published as a
``sensor_msgs/Image`` (bgr8, stamped with the current time, ``--frame-id``) with the sensor-data QoS of
camera drivers (best effort, keep last 5), at the source's rate (``--rate``: frames per second of the
source instead of the video's own, 10 for a folder; with ``--every N`` a frame is published every N
source frames). With ``--camera-info`` a ``sensor_msgs/CameraInfo`` of the same stamp goes out on
``camera_info`` next to ``--topic`` (scaled to ``--size``). The large-image Fast DDS profile is applied
(:func:`pebal_perception.dds.apply_default_profile`) before rclpy starts.

Frames are held to the limits of ``pebal-detect`` and the node where they come in, before they are
decoded (:mod:`pebal_perception.core.frame_sources`): at most 64 M pixels, an aspect ratio within 1:8..8:1, at
least 16 pixels on a side; ``--size`` too. INPUT and ``--camera-info`` must be regular files (or a folder);
``--topic`` must be a valid ROS 2 topic name.

One line at start and one at the end (frames published); Ctrl-C / SIGTERM stop it with exit status 0.
Bad input is one line ``pebal-camera: error: PATH: what``, exit 1 (2 for usage errors); so is a pass over
the source that gives no frame (``--loop`` would only spin). A video that ends well before the frame count
its container claims gives one line ``pebal-camera: warning: ...`` (once).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

PROG = "pebal-camera"


def build_parser() -> argparse.ArgumentParser:
    from pebal_perception.cli_args import frame_size, positive_int, positive_number
    from pebal_perception.core.frame_sources import topic_argument

    parser = argparse.ArgumentParser(prog=PROG, description="Publish a video or an image folder as a live camera.")
    parser.add_argument("input", type=Path, help="a video file OpenCV reads, a PNG/JPEG image, or a folder of them "
                                                 "(frames of at most 64 M pixels, aspect ratio within 8:1, "
                                                 "sides of at least 16 pixels)")
    parser.add_argument("--topic", type=topic_argument, default="/camera/image_raw",
                        help="image topic, a ROS 2 topic name (default /camera/image_raw)")
    parser.add_argument("--rate", type=positive_number, default=None,
                        help="frames per second of the source (default: the video's own; 10 for a folder)")
    parser.add_argument("--loop", action="store_true", help="start again at the end (until Ctrl-C)")
    parser.add_argument("--every", type=positive_int, default=1, metavar="N", help="publish every N-th frame")
    parser.add_argument("--size", type=frame_size, default=None, metavar="WxH",
                        help="resize the frames (within the same limits)")
    parser.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    parser.add_argument("--camera-info", type=Path, default=None, metavar="YAML",
                        help="camera calibration (camera_calibration_parsers YAML), published on camera_info "
                             "next to --topic")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pebal_perception.cli.bag import _Interrupt
    from pebal_perception.core.frame_sources import (FootageError, camera_info_topic, load_calibration, open_source,
                                                paced_frames)

    args = build_parser().parse_args(argv)
    try:
        calibration = load_calibration(args.camera_info) if args.camera_info is not None else None
        source = open_source(args.input, every=args.every, size=args.size)
        info_fields = calibration.fields(source.size) if calibration is not None else None
    except FootageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    try:
        from pebal_perception.dds import apply_default_profile

        apply_default_profile()
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import CameraInfo, Image
    except ImportError as exc:
        sys.stderr.write(f"{PROG}: error: needs rclpy and sensor_msgs (ROS 2): {exc}; run scripts/setup.sh\n")
        return 1

    fps = source.fps(args.rate)
    period = args.every / fps  # seconds between published frames
    info_topic = camera_info_topic(args.topic)
    published = 0
    failure = None
    with _Interrupt() as stop:
        context = rclpy.Context()
        rclpy.init(args=[PROG], context=context, signal_handler_options=SignalHandlerOptions.NO)
        node = None
        try:
            node = rclpy.create_node(f"pebal_camera_{os.getpid()}", context=context, start_parameter_services=False)
            image_pub = node.create_publisher(Image, args.topic, qos_profile_sensor_data)
            info_pub = node.create_publisher(CameraInfo, info_topic, qos_profile_sensor_data) if info_fields else None
            height, width = source.size
            topics = node.resolve_topic_name(args.topic) + (f" and {node.resolve_topic_name(info_topic)}"
                                                             if info_pub else "")
            print(f"{PROG}: publishing {args.input} ({source.kind}, {width}x{height}) on {topics} at "
                  f"{fps / args.every:g} frames/s{' in a loop' if args.loop else ''}", flush=True)
            for bgr in paced_frames(source, period, stop, loop=args.loop, warn=_warn):
                stamp = node.get_clock().now().to_msg()
                h, w = bgr.shape[:2]
                msg = Image(height=h, width=w, encoding="bgr8", is_bigendian=0, step=w * 3, data=bgr.tobytes())
                msg.header.stamp, msg.header.frame_id = stamp, args.frame_id
                image_pub.publish(msg)
                if info_pub is not None:
                    info = CameraInfo(**info_fields)
                    info.header.stamp, info.header.frame_id = stamp, args.frame_id
                    info_pub.publish(info)
                published += 1
        except FootageError as exc:  # an image in the folder that does not decode, a pass without frames
            failure = str(exc)
        finally:
            if node is not None:
                node.destroy_node()
            context.try_shutdown()
    print(f"{PROG}: published {published} frames{' (stopped)' if stop.is_set() else ''}", flush=True)
    if failure is not None:
        sys.stderr.write(f"{PROG}: error: {failure}\n")
        return 1
    return 0


def _warn(text: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {text}\n")


if __name__ == "__main__":
    sys.exit(main())
