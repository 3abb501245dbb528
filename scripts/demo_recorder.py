"""Demo recorder (scripts/demo.sh): records the detector node's live outputs during a bag replay and
scores them against the bag's ground truth.

Subscribes to the replayed camera images and ground-truth masks, and to the node's ``result``,
``obstacle_mask``, ``overlay`` and ``/diagnostics``. Writes ``<out>/ready`` once it is matched with the
node's publishers, and ends by itself when ``--expect`` images went by and no output arrived for
``--idle`` seconds (or after ``--timeout``, or on SIGINT/SIGTERM). Then it writes

* ``<out>/overlay.mp4`` (mp4v; ``overlay.avi`` MJPG when mp4 cannot be written): the node's overlays;
* ``<out>/summary.json``: frames in/out, drops, latency percentiles (image received -> result
  received, both timed in this recorder, so DDS transport is included; and the node's own
  ``processing_time_ms``), and obstacle detections vs ground truth per frame.

Scoring: ground-truth obstacles are the 8-connected regions of anomaly pixels (value 1) of
``/ground_truth/anomaly`` with at least ``--min-area`` pixels (smaller ones are listed as
``gt_too_small``, neither hit nor miss). A ground-truth obstacle is a *hit* when the node's
``obstacle_mask`` overlaps it by at least one pixel, else a *miss*; every connected region of the
node's mask that touches no ground-truth anomaly pixel is a *false alarm*.
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prefix", default="/pebal_detector", help="the node's namespace + name")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--gt-topic", default="/ground_truth/anomaly")
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


def score_frame(gt: np.ndarray, mask: np.ndarray, min_area: int) -> dict:
    anomaly = (gt == 1).astype(np.uint8)
    n_gt, gt_labels, gt_stats, _ = cv2.connectedComponentsWithStats(anomaly, connectivity=8)
    pred = (mask > 0)
    hits = misses = small = 0
    for i in range(1, n_gt):
        if gt_stats[i, cv2.CC_STAT_AREA] < min_area:
            small += 1
            continue
        if (pred & (gt_labels == i)).any():
            hits += 1
        else:
            misses += 1
    n_pred, pred_labels = cv2.connectedComponents(pred.astype(np.uint8), connectivity=8)
    false_alarms = 0
    for j in range(1, n_pred):
        if not (anomaly.astype(bool) & (pred_labels == j)).any():
            false_alarms += 1
    return {"gt_obstacles": hits + misses, "hits": hits, "misses": misses, "false_alarms": false_alarms,
            "predicted_regions": n_pred - 1, "gt_too_small": small}


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
    results: dict[int, tuple[float, float, int]] = {}  # stamp -> (recv time, node processing ms, obstacles)
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

    def on_result(msg):
        now = time.monotonic()
        with lock:
            results[stamp_ns(msg.header)] = (now, float(msg.processing_time_ms), len(msg.obstacles))
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
        per_frame = []
        totals = {"gt_obstacles": 0, "hits": 0, "misses": 0, "false_alarms": 0, "gt_too_small": 0}
        for s in stamps:
            row = {"stamp_ns": s, "reported_obstacles": results[s][2]}
            if s in gt and s in masks and gt[s].shape == masks[s].shape:
                row.update(score_frame(gt[s], masks[s], args.min_area))
                for key in totals:
                    totals[key] += row[key]
            per_frame.append(row)
        video = None
        frames = [overlays[s] for s in sorted(overlays)]
        if frames:
            h, w = frames[0].shape[:2]
            fps = max(1.0, args.fps * len(frames) / max(len(image_recv), 1))
            for name, fourcc in (("overlay.mp4", "mp4v"), ("overlay.avi", "MJPG")):
                writer = cv2.VideoWriter(str(args.out / name), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
                if writer.isOpened():
                    for f in frames:
                        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
                    writer.release()
                    video = name
                    break
            cv2.imwrite(str(args.out / "overlay_last.png"), cv2.cvtColor(frames[-1], cv2.COLOR_RGB2BGR))
        frames_in = len(image_recv)
        gt_total = totals["hits"] + totals["misses"]
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
            "detection": {**totals, "hit_rate": round(totals["hits"] / gt_total, 3) if gt_total else None,
                          "false_alarms_per_frame": round(totals["false_alarms"] / len(stamps), 3) if stamps
                          else None,
                          "rule": f"GT obstacle = 8-connected anomaly region >= {args.min_area} px; hit = any "
                                  "overlap with the node's obstacle_mask; false alarm = mask region touching "
                                  "no GT anomaly pixel"},
            "video": video,
            "timed_out": timed_out,
            "per_frame": per_frame,
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"recorder: {frames_in} images in, {len(stamps)} results out, latency p50 "
          f"{summary['latency_ms']['p50']} ms p95 {summary['latency_ms']['p95']} ms; hits {totals['hits']}, "
          f"misses {totals['misses']}, false alarms {totals['false_alarms']}; video {video}", flush=True)
    return 0 if stamps else 1


if __name__ == "__main__":
    sys.exit(main())
