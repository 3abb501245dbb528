"""A synthetic drive (``generate_drive``) as a ROS 2 bag, for replaying into the detector node.

    .venv/bin/python -m pebal_training.recipes.drive_bag --output out/drive_bag --frames 30 --fps 10 \\
        --size 640x320 --seed 7 [--storage mcap] [--encoding bgr8]

Writes a **version 8** bag (sqlite3 by default, or mcap; readable by rosbag2 on Humble and later)
with, per frame, stamped at the drive's fps from ``--start-time`` (all four share one stamp):

* ``/camera/image_raw``       sensor_msgs/Image, rgb8 (or bgr8), frame ``camera_optical_frame``
* ``/camera/camera_info``     sensor_msgs/CameraInfo from the scene camera (K, P, plumb_bob, no distortion)
* ``/ground_truth/anomaly``   sensor_msgs/Image mono8: 0 inlier, 1 anomaly, 255 void
* ``/ground_truth/instances`` sensor_msgs/Image mono8: obstacle ids, stable over the drive (the ``id`` of
  the obstacles in ``drive.json``), 0 = none (and under the bonnet)

plus ``drive.json`` inside the bag directory (camera incl. mounting height and pitch, and the
visible anomalies of every frame with their stamps). The bag is written under a temporary name and
renamed when complete. ``--output`` must not exist; ``--overwrite`` replaces only a bag this recipe
wrote (``metadata.yaml``, its storage files and ``drive.json``), never anything else
(:func:`pebal_perception.core.bag.check_bag_output`). Nothing here imports ROS (only ``rosbags``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

PROG = "drive_bag"
IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/ground_truth/anomaly"
INSTANCES_TOPIC = "/ground_truth/instances"
FRAME_ID = "camera_optical_frame"
DEFAULT_START = 1_700_000_000.0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size too small: {text}")
    return w, h


def _range(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {text!r}") from None
    lo, hi = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if len(parts) > 2 or lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI with 0 <= LO <= HI, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pebal_training.recipes.{PROG}",
                                description="Write a synthetic drive as a ROS 2 bag (version 8).")
    p.add_argument("--output", "-o", type=Path, required=True, help="bag directory to create")
    p.add_argument("--frames", type=int, default=30, help="number of frames (default 30)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the stamps (default 10)")
    p.add_argument("--speed", type=float, default=10.0, help="ego speed in m/s (default 10)")
    p.add_argument("--size", type=_size, default=(640, 320), help="WIDTHxHEIGHT (default 640x320)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--anomalies", type=_range, default=(1, 3), help="anomalies in the world: N or LO:HI (1:3)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8")
    p.add_argument("--start-time", type=float, default=DEFAULT_START,
                   help=f"stamp of the first frame, seconds since the epoch (default {DEFAULT_START:.0f})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output bag that this recipe wrote (anything else is refused)")
    p.add_argument("--quiet", "-q", action="store_true")
    return p


def camera_info_msg(camera, stamp_ns: int):
    """sensor_msgs/msg/CameraInfo (rosbags) of a synthetic scene camera."""
    from pebal_perception.core.bag import header, msg_class

    fx, fy, cx, cy = float(camera.fx), float(camera.fy), float(camera.cx), float(camera.cy)
    roi = msg_class("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0,
                                                         do_rectify=False)
    return msg_class("sensor_msgs/msg/CameraInfo")(
        header=header(stamp_ns, FRAME_ID), height=int(camera.image_height), width=int(camera.image_width),
        distortion_model="plumb_bob", d=np.zeros(5, np.float64),
        k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64),
        r=np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], np.float64),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64),
        binning_x=0, binning_y=0, roi=roi)


def write_drive_bag(output: Path, frames: int = 30, fps: float = 10.0, size: tuple[int, int] = (640, 320),
                    seed: int = 7, anomalies: tuple[int, int] = (1, 3), storage: str = "sqlite3",
                    encoding: str = "rgb8", start_time: float = DEFAULT_START, speed: float = 10.0,
                    overwrite: bool = False) -> dict:
    """Renders the drive and writes the bag; returns the drive description (also ``drive.json``)."""
    from pebal_perception.core.bag import AtomicBagWriter, image_msg, qos_profile
    from pebal_perception.core.image_conversion import rgb_to_image_fields
    from pebal_training.data.synthetic import SceneConfig, generate_drive

    width, height = size
    config = SceneConfig(width=width, height=height, anomaly_count_range=anomalies)
    start_ns = int(round(start_time * 1e9))
    period_ns = int(round(1e9 / fps))
    description: dict = {"frames": [], "fps": fps, "speed_mps": speed, "seed": seed,
                         "size": [width, height], "encoding": encoding,
                         "topics": {"image": IMAGE_TOPIC, "camera_info": INFO_TOPIC, "ground_truth": GT_TOPIC,
                                    "instances": INSTANCES_TOPIC},
                         "ground_truth_values": "0 inlier, 1 anomaly, 255 void"}
    sensor_qos = [qos_profile(reliable=True, depth=10)]
    with AtomicBagWriter(output, storage=storage, overwrite=overwrite, summary="drive.json") as writer:
        writer.add_topic(IMAGE_TOPIC, "sensor_msgs/msg/Image", sensor_qos)
        writer.add_topic(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", sensor_qos)
        writer.add_topic(GT_TOPIC, "sensor_msgs/msg/Image", sensor_qos)
        writer.add_topic(INSTANCES_TOPIC, "sensor_msgs/msg/Image", sensor_qos)
        for i, scene in enumerate(generate_drive(seed, frames, config, speed_mps=speed, fps=fps)):
            stamp = start_ns + i * period_ns
            if i == 0:
                cam = scene.camera
                description["camera"] = {**cam.to_dict(), "frame_id": FRAME_ID}
            fields = rgb_to_image_fields(scene.image, "rgb8")
            if encoding == "bgr8":
                fields["data"] = np.ascontiguousarray(scene.image[..., ::-1]).tobytes()
                fields["encoding"] = "bgr8"
            writer.write_msg(INFO_TOPIC, stamp, camera_info_msg(scene.camera, stamp))
            writer.write_msg(IMAGE_TOPIC, stamp, image_msg(fields, stamp, FRAME_ID))
            writer.write_msg(GT_TOPIC, stamp, image_msg(rgb_to_image_fields(scene.anomaly, "mono8"), stamp,
                                                       FRAME_ID))
            writer.write_msg(INSTANCES_TOPIC, stamp, image_msg(rgb_to_image_fields(scene.instances, "mono8"), stamp,
                                                             FRAME_ID))
            description["frames"].append({"index": i, "stamp_ns": stamp,
                                          "obstacles": [o.to_dict() for o in scene.obstacles]})
        writer.commit(extra_files={"drive.json": json.dumps(description, indent=1) + "\n"})
    return description


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pebal_perception.core.bag import BagError

    if args.frames < 1 or args.fps <= 0:
        sys.stderr.write(f"{PROG}: error: --frames must be >= 1 and --fps > 0\n")
        return 2
    try:
        desc = write_drive_bag(args.output, args.frames, args.fps, args.size, args.seed, args.anomalies,
                               args.storage, args.encoding, args.start_time, args.speed, args.overwrite)
    except (BagError, ValueError, OSError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    if not args.quiet:
        visible = sum(1 for f in desc["frames"] if f["obstacles"])
        print(f"{PROG}: wrote {args.output} ({args.storage}, {len(desc['frames'])} frames "
              f"{args.size[0]}x{args.size[1]} at {args.fps:g} Hz, anomalies visible in {visible})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
