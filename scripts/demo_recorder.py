"""Demo recorder (scripts/demo.sh): records the detector node's live outputs during a bag replay and
scores them against the bag's ground truth.

Subscribes to the replayed camera images and ground-truth masks, and to the node's ``result``,
``obstacle_mask``, ``overlay`` and ``/diagnostics``. Writes ``<out>/ready`` once it is matched with the
node's publishers, and ends by itself when ``--expect`` images went by and no output arrived for
``--idle`` seconds (or after ``--timeout``, or on SIGINT/SIGTERM). Then it writes

* ``<out>/overlay.mp4`` (H.264, plays in browsers; ``overlay.avi`` Motion-JPEG when imageio-ffmpeg is
  missing): the node's overlays with every reported obstacle boxed (track id, mean score), the
  ground-truth obstacles outlined and a legend (:func:`pebal_perception.core.visualize.annotate_obstacles`);
* ``<out>/summary.json``: frames in/out, drops, latency percentiles (image received -> result
  received, both timed in this recorder, so DDS transport is included; and the node's own
  ``processing_time_ms``), and the scoring below, per object and per frame.

Scoring (:class:`pebal_training.planner_metrics.DriveScorer`, on every replayed frame in order; a frame
the node produced nothing for counts as one with nothing reported): the bag's obstacle ids
(``/ground_truth/instances``, stable over the drive) and void (``/ground_truth/anomaly`` = 255, the
bonnet) against the regions of the node's ``obstacle_mask``. An obstacle is *found* when, within
``--within`` frames from the first frame in which at least ``--min-area`` of its pixels are visible, the
reported regions cover at least 25 % of it; a *false alarm* is a reported region touching no obstacle.
Targets (issue 14): at least 80 % of the obstacles found, at most 0.1 false alarms per frame.
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

import cv2
import numpy as np

from pebal_perception.cli.video import write_video
from pebal_perception.core.visualize import annotate_obstacles


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prefix", default="/pebal_detector", help="the node's namespace + name")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--gt-topic", default="/ground_truth/anomaly")
    p.add_argument("--instances-topic", default="/ground_truth/instances")
    p.add_argument("--within", type=int, default=3,
                   help="frames from its appearance within which an obstacle must be found")
    p.add_argument("--expect", type=int, default=0, help="images the replay publishes")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the replayed drive")
    p.add_argument("--idle", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--min-area", type=int, default=50)
    p.add_argument("--done-file", type=Path, default=None,
                   help="the replay has ended once this file exists: stop after --idle seconds without output")
    p.add_argument("--model-note", default="")
    return p.parse_args(argv)


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def image_array(msg) -> np.ndarray:
    channels = 3 if msg.encoding in ("rgb8", "bgr8") else 1
    arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width * channels]
    return arr.reshape(msg.height, msg.width, channels) if channels == 3 else arr.reshape(msg.height, msg.width)


def pct(values, q):
    return round(float(np.percentile(values, q)), 2) if values else None


FOUND_TARGET = 0.8
FALSE_ALARM_TARGET = 0.1


def score_drive(stamps, instances, anomaly, masks, within: int, min_area: int) -> dict:
    """:class:`DriveScorer` over the replayed frames ``stamps`` (in order); the reported regions are the
    8-connected regions of the node's mask (none for a frame without output)."""
    from pebal_training.planner_metrics import DriveScorer

    scorer = DriveScorer(within_frames=within, min_area=min_area)
    per_frame = []
    for s in stamps:
        ids = instances[s]
        mask = masks.get(s)
        if mask is not None and mask.shape == ids.shape:
            _, reported = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
        else:
            reported = np.zeros(ids.shape, np.int32)
        void = anomaly[s] == 255 if s in anomaly and anomaly[s].shape == ids.shape else None
        stats = scorer.update(reported, ids, void)
        per_frame.append({"stamp_ns": s, "output": mask is not None, "objects": stats["num_objects"],
                          "reported_regions": stats["num_regions"], "false_alarms": stats["num_stray"]})
    result = scorer.compute()
    met = (result["found_in_time_rate"] is not None and result["found_in_time_rate"] >= FOUND_TARGET
           and result["false_alarms_per_frame"] is not None
           and result["false_alarms_per_frame"] <= FALSE_ALARM_TARGET)
    return {**result, "targets": {"found_in_time_rate": f">= {FOUND_TARGET}",
                                  "false_alarms_per_frame": f"<= {FALSE_ALARM_TARGET}"},
            "targets_met": bool(met), "per_frame": per_frame}


def score_line(det: dict) -> str:
    rate, fa = det.get("found_in_time_rate"), det.get("false_alarms_per_frame")
    found = f"{det['found_in_time']}/{det['objects']}" + (f" ({100 * rate:.0f} %)" if rate is not None else "")
    fa_text = f"{fa:.3f}" if fa is not None else "n/a"
    return (f"obstacles found within {det['rule']['within_frames']} frames of appearing: {found}; false alarms "
            f"per frame: {fa_text} ({det['false_alarms']} in {det['frames']} frames); targets >= "
            f"{100 * FOUND_TARGET:.0f} % and <= {FALSE_ALARM_TARGET}: {'met' if det['targets_met'] else 'NOT met'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from pebal_perception.msg import AnomalyResult

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(args=[sys.argv[0]], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"pebal_demo_recorder_{os.getpid()}")
    lock = threading.Lock()
    image_recv: dict[int, float] = {}
    gt: dict[int, np.ndarray] = {}
    instances: dict[int, np.ndarray] = {}
    results: dict[int, tuple[float, float, int]] = {}  # stamp -> (recv time, node processing ms, obstacles)
    boxes: dict[int, list] = {}  # stamp -> [(x, y, w, h, track_id, mean_score)]
    masks: dict[int, np.ndarray] = {}
    overlays: dict[int, np.ndarray] = {}
    diag: dict[str, str] = {}
    last_output = [time.monotonic()]

    def on_image(msg):
        with lock:
            image_recv.setdefault(stamp_ns(msg.header), time.monotonic())

    def on_gt(msg):
        with lock:
            gt[stamp_ns(msg.header)] = image_array(msg).copy()

    def on_instances(msg):
        with lock:
            instances[stamp_ns(msg.header)] = image_array(msg).copy()

    def on_result(msg):
        now = time.monotonic()
        with lock:
            results[stamp_ns(msg.header)] = (now, float(msg.processing_time_ms), len(msg.obstacles))
            boxes[stamp_ns(msg.header)] = [(o.x_offset, o.y_offset, o.width, o.height, o.track_id, o.mean_score)
                                           for o in msg.obstacles]
            last_output[0] = now

    def on_mask(msg):
        with lock:
            masks[stamp_ns(msg.header)] = image_array(msg).copy()
            last_output[0] = time.monotonic()

    def on_overlay(msg):
        with lock:
            overlays[stamp_ns(msg.header)] = image_array(msg).copy()
            last_output[0] = time.monotonic()

    def on_diag(msg):
        for status in msg.status:
            if "anomaly detection" in status.name:
                with lock:
                    diag.update({kv.key: kv.value for kv in status.values})

    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, args.image_topic, on_image, reliable)
    node.create_subscription(Image, args.gt_topic, on_gt, reliable)
    node.create_subscription(Image, args.instances_topic, on_instances, reliable)
    result_topic = f"{args.prefix}/result"
    node.create_subscription(AnomalyResult, result_topic, on_result, reliable)
    node.create_subscription(Image, f"{args.prefix}/obstacle_mask", on_mask, reliable)
    node.create_subscription(Image, f"{args.prefix}/overlay", on_overlay, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ready = False
    timed_out = False
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.05)
        now = time.monotonic()
        if not ready and node.count_publishers(result_topic) > 0 \
                and node.count_publishers(f"{args.prefix}/overlay") > 0:
            ready = True
            (args.out / "ready").write_text("ready\n")
        with lock:
            seen, idle = len(image_recv), now - last_output[0]
        if args.expect and seen >= args.expect and idle > args.idle:
            break
        if args.done_file is not None and args.done_file.exists() and idle > args.idle:
            break
        if now - start > args.timeout:
            timed_out = True
            break
    # a last diagnostics message may be on its way
    end = time.monotonic() + 1.2
    while time.monotonic() < end and not stop.is_set():
        executor.spin_once(timeout_sec=0.05)
    node.destroy_node()
    rclpy.try_shutdown()

    with lock:
        stamps = sorted(results)
        latency = [(results[s][0] - image_recv[s]) * 1000.0 for s in stamps if s in image_recv]
        node_ms = [results[s][1] for s in stamps]
        replayed = sorted(instances)
        detection = score_drive(replayed, instances, gt, masks, args.within, args.min_area) if replayed else None
        per_frame = detection.pop("per_frame") if detection else []
        for row in per_frame:
            row["reported_obstacles"] = results[row["stamp_ns"]][2] if row["stamp_ns"] in results else None
        video = None
        frames = []
        for k, s in enumerate(sorted(overlays)):
            ids = instances.get(s)
            ids = ids if ids is not None and ids.shape == overlays[s].shape[:2] else None
            caption = f"frame {k + 1}: {len(boxes.get(s, []))} reported"
            frames.append(annotate_obstacles(overlays[s], boxes.get(s, []), ids, caption))
        if frames:
            fps = max(1.0, args.fps * len(frames) / max(len(image_recv), 1))
            try:
                path, codec = write_video(args.out / "overlay", frames, fps)
                video = f"{path.name} ({codec})"
            except (OSError, ValueError) as exc:
                print(f"recorder: video not written: {exc}", file=sys.stderr)
            cv2.imwrite(str(args.out / "overlay_last.png"), cv2.cvtColor(frames[-1], cv2.COLOR_RGB2BGR))
        frames_in = len(image_recv)
        footage = None
        if not replayed:  # the user's own footage: nothing to score against, only what was reported
            with_any = sum(1 for s in stamps if results[s][2] > 0)
            footage = {"frames_with_obstacles": with_any, "frames": len(stamps),
                       "share_with_obstacles": with_any / len(stamps) if stamps else None,
                       "reported_per_frame": (sum(results[s][2] for s in stamps) / len(stamps)) if stamps else None}
        summary = {
            "model": args.model_note,
            "frames_published": args.expect or None,
            "frames_in": frames_in,
            "frames_out": len(stamps),
            "drops": (args.expect or frames_in) - len(stamps),
            "node_frames_received": int(diag["frames_received"]) if "frames_received" in diag else None,
            "node_dropped_frames": int(diag["dropped_frames"]) if "dropped_frames" in diag else None,
            "node_frames_lost_in_transport": (int(diag["frames_lost_in_transport"])
                                              if "frames_lost_in_transport" in diag else None),
            "drops_what": "drops = published - results; node_dropped_frames = frames the node received but "
                          "replaced by a newer one before processing (newest-frame-wins mailbox); "
                          "node_frames_lost_in_transport = frames DDS reported lost; the rest never reached "
                          "the node's callback (keep-last 5 input history overwritten)",
            "latency_ms": {"p50": pct(latency, 50), "p95": pct(latency, 95), "max": pct(latency, 100),
                           "what": "image received -> result received, both in the recorder (DDS included)"},
            "node_processing_time_ms": {"p50": pct(node_ms, 50), "p95": pct(node_ms, 95)},
            "detection": detection,
            "footage": footage,
            "video": video,
            "timed_out": timed_out,
            "per_frame": per_frame,
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"recorder: {frames_in} images in, {len(stamps)} results out, latency p50 "
          f"{summary['latency_ms']['p50']} ms p95 {summary['latency_ms']['p95']} ms; video {video}", flush=True)
    if detection:
        print(f"recorder: {score_line(detection)}", flush=True)
    elif footage and stamps:
        print(f"recorder: no ground truth: {footage['frames_with_obstacles']} of {footage['frames']} frames report an "
              f"obstacle ({footage['reported_per_frame']:.2f} reported per frame); see overlay video", flush=True)
    return 0 if stamps else 1


if __name__ == "__main__":
    sys.exit(main())
