"""``pebal-bag from-video``: a bag of camera images (and camera_info) from a video, an image or a folder
of images."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pebal_perception.cli.bag_common import PROG, CliError, _Interrupt

FOOTAGE_SUMMARY = "footage.json"
JPEG_QUALITY = 90


def from_video(args: argparse.Namespace) -> int:
    """A bag of the frames of a video or an image folder (see :mod:`pebal_perception.core.frame_sources`)."""
    import cv2
    import numpy as np
    from tqdm import tqdm

    from pebal_perception.core.bag import AtomicBagWriter, check_bag_output, header, msg_class, qos_profile
    from pebal_perception.core.frame_sources import FootageError, camera_info_topic, load_calibration, open_source

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
