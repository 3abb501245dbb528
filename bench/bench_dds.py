#!/usr/bin/env python3
"""Figure 7: camera-sized frames over Fast DDS into the node: delivery and the DDS share of latency.

    python bench/bench_dds.py [--quick] [--duration S] [--rate HZ] [--size 1920x1080]

This process publishes ``bgr8`` 1920x1080 ``Image`` frames at 30 Hz for 10 s (3 s with ``--quick``)
with best-effort sensor-data QoS, as camera drivers do, into the installed detector node
(``ros_harness.NodeProcess`` + ``detector_args``: params file, embedded default model, CPU, its
default best-effort input). Both participants load the large-image Fast DDS profile
(``config/fastdds_large_images.xml`` via ``ros_harness.use_loopback`` -> ``dds.apply_default_profile``).

* **delivered fraction** = the node's ``frames_received`` (its /diagnostics, counted in the image
  callback) over the frames published; ``frames_lost_in_transport`` (what the middleware reports as
  lost) is reported next to it. Target 100 %, 0 lost.
* **DDS share of the end-to-end latency**, per frame that produced a ``~/result``: the header stamp
  is the publish time (ROS clock = system clock, same machine); the result carries the same header,
  so end-to-end = result arrival (``time.time()`` in this process) - stamp. The node's
  ``processing_time_ms`` covers its receipt (start of the image callback) -> result published, so
  *outside the node* = end-to-end - processing_time_ms is the DDS transfer of the frame in (including
  the publisher's serialisation and the node executor's wake-up) plus the small result out. The
  figure is median(outside) / median(end-to-end); target <= 5 %. This over-states the input
  transport by the result's transfer (a few hundred bytes), never under-states it.

The node runs at its own pace (on a CPU far below 30 fps): it takes the newest frame and counts the
replaced ones as dropped (stale), which is no transport loss. DDS stays on this machine
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, ``ROS_LOCALHOST_ONLY=1``, the profile's UDP allowlist
127.0.0.1, a domain id of our own). Missing ROS pieces -> the figures are reported as skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, skipped
from pebal_perception.testing import ros_harness

WIDTH, HEIGHT, RATE_HZ = 1920, 1080, 30.0
DURATION_S, QUICK_DURATION_S = 10.0, 3.0
DELIVERY_TARGET = 1.0
DDS_SHARE_TARGET = 0.05
STARTUP_TIMEOUT_S = 90.0
NODE = "/pebal_detector"


def names(width: int, height: int, rate: float) -> tuple[str, str]:
    tag = f"{width}x{height}_{rate:g}hz_best_effort"
    return f"dds_delivery_{tag}", f"dds_latency_share_{tag}"


def prerequisites() -> str | None:
    return ros_harness.ros_unavailable(
        modules=("rclpy", "sensor_msgs.msg", "diagnostic_msgs.msg", "pebal_perception.msg"))


def diag_values(msg: Any, node_name: str = NODE) -> dict[str, str] | None:
    """key -> value of the node's status in a DiagnosticArray, or None when it is not in there."""
    for status in msg.status:
        if status.name.startswith(node_name + ":"):
            return {kv.key: kv.value for kv in status.values}
    return None


def analyse(published: int, diagnostics: dict[str, str], results: Sequence[tuple[float, float]],
            received_before: int = 0, lost_before: int = 0) -> dict[str, Any]:
    """The figures from what was measured (ROS-free, so it can be tested without a node).

    ``published``: frames published; ``diagnostics``: the node's /diagnostics values after the run
    (``frames_received``, ``frames_lost_in_transport``, ...); ``*_before``: the same counters before
    the first frame; ``results``: (end-to-end s, node processing s) per ``~/result`` received."""
    received = int(diagnostics["frames_received"]) - int(received_before)
    lost = int(diagnostics["frames_lost_in_transport"]) - int(lost_before)
    e2e = [float(e) for e, _ in results]
    outside = [float(e) - float(p) for e, p in results]
    e2e_med, outside_med = median(e2e), median(outside)
    share = outside_med / e2e_med if results and e2e_med > 0 else float("nan")
    return {
        "published": int(published), "received": received, "lost_in_transport": lost,
        "delivered_fraction": received / published if published > 0 else float("nan"),
        "results": len(results), "e2e_s": e2e_med, "outside_node_s": outside_med,
        "node_processing_s": median([float(p) for _, p in results]),
        "outside_node_max_s": max(outside) if outside else float("nan"), "dds_share": share,
        "processed": int(diagnostics.get("frames_processed", -1)),
        "dropped_stale": int(diagnostics.get("dropped_frames", -1)),
    }


def figures(stats: dict[str, Any], width: int, height: int, rate: float, duration: float) -> list[dict[str, Any]]:
    delivery_name, share_name = names(width, height, rate)
    common = {"baseline": None, "ratio": None, "duration_s": duration, "rate_hz": rate, **stats}
    delivered = stats["delivered_fraction"]
    share = stats["dds_share"]
    return [
        {"name": delivery_name, "value": delivered * 100.0, "unit": "%", "target": DELIVERY_TARGET * 100.0,
         "target_text": "100 % delivered, 0 lost in transport",
         "meets_target": bool(delivered >= DELIVERY_TARGET and stats["lost_in_transport"] == 0), **common,
         "note": f"{stats['received']} of {stats['published']} frames reached the node's callback, "
                 f"{stats['lost_in_transport']} lost in transport; {stats['processed']} processed, "
                 f"{stats['dropped_stale']} replaced while the node was busy (stale, not a transport loss)"},
        {"name": share_name, "value": share * 100.0, "unit": "%", "target": DDS_SHARE_TARGET * 100.0,
         "target_text": f"<= {DDS_SHARE_TARGET:.0%} of end-to-end", "meets_target": bool(share <= DDS_SHARE_TARGET),
         **common,
         "note": f"median outside the node {stats['outside_node_s'] * 1e3:.1f} ms (max "
                 f"{stats['outside_node_max_s'] * 1e3:.1f}) of {stats['e2e_s'] * 1e3:.0f} ms end-to-end over "
                 f"{stats['results']} results; node receipt -> result {stats['node_processing_s'] * 1e3:.0f} ms"},
    ]


def run(quick: bool = False, duration: float | None = None, rate: float = RATE_HZ, width: int = WIDTH,
        height: int = HEIGHT, verbose: bool = True) -> list[dict[str, Any]]:
    duration = float(duration if duration is not None else (QUICK_DURATION_S if quick else DURATION_S))
    reason = prerequisites()
    if reason is not None:
        return [skipped(n, reason) for n in names(width, height, rate)]
    ros_harness.use_loopback(os.environ.get("PEBAL_BENCH_ROS_DOMAIN_ID") or str(20 + os.getpid() % 40))

    import numpy as np
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from bench.bench_frame import make_message
    from pebal_perception.msg import AnomalyResult

    tmp = tempfile.TemporaryDirectory(prefix="pebal_bench_dds_")
    node = ros_harness.NodeProcess(ros_harness.detector_args(checkpoint=""), Path(tmp.name) / "node.log")
    peer = ros_harness.Peer("pebal_bench_dds")
    results: list[tuple[float, float]] = []
    stamps: set[tuple[int, int]] = set()

    def on_result(msg: AnomalyResult) -> None:
        arrival = time.time()
        key = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
        if key in stamps:  # only frames of this run
            stamp = key[0] + key[1] * 1e-9
            results.append((arrival - stamp, float(msg.processing_time_ms) / 1e3))

    try:
        diagnostics = peer.collect(DiagnosticArray, "/diagnostics")
        peer.subscribe(AnomalyResult, f"{NODE}/result", on_result, ros_harness.reliable_qos(50))
        pub = peer.publisher(Image, "/image", qos_profile_sensor_data)
        first = diagnostics.wait(lambda m: diag_values(m) is not None, timeout=STARTUP_TIMEOUT_S)
        if first is None:
            why = "exited" if node.poll() is not None else f"no /diagnostics within {STARTUP_TIMEOUT_S:.0f} s"
            return [skipped(n, f"node did not start ({why}): {node.tail(3)}") for n in names(width, height, rate)]
        if not ros_harness.wait_for(lambda: pub.get_subscription_count() > 0, timeout=30.0):
            return [skipped(n, "the node never subscribed to /image") for n in names(width, height, rate)]
        time.sleep(1.0)  # discovery completes on both sides
        before = diag_values(first)
        fields = make_message(width, height)
        msg = Image(height=height, width=width, encoding="bgr8", is_bigendian=0, step=fields["step"],
                    data=fields["data"])
        count = int(round(duration * rate))
        period = 1.0 / rate
        t_start = time.perf_counter()
        late = 0
        for i in range(count):
            target = t_start + i * period
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = now // 1_000_000_000, now % 1_000_000_000
            msg.header.frame_id = f"frame_{i}"
            stamps.add((int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)))
            pub.publish(msg)
        publish_s = time.perf_counter() - t_start
        time.sleep(2.0)  # the node's last frame and results
        n0 = len(diagnostics)
        after_msg = (diagnostics.find(lambda m: diag_values(m) is not None)
                     if diagnostics.wait_count(n0 + 1, timeout=10.0) else None)
        if after_msg is None:
            return [skipped(n, "no /diagnostics after the run") for n in names(width, height, rate)]
        after = diag_values(after_msg)
    finally:
        peer.close()
        node.stop()
        tmp.cleanup()
    stats = analyse(count, after, list(results), int(before["frames_received"]),
                    int(before["frames_lost_in_transport"]))
    stats.update(publish_s=publish_s, publish_rate_hz=count / publish_s if publish_s > 0 else float("nan"),
                 late_publishes=late, ros_domain_id=os.environ.get("ROS_DOMAIN_ID"),
                 e2e_samples_s=[e for e, _ in results], payload_bytes=int(np.prod((height, width, 3))))
    if verbose:
        print(f"dds: {count} bgr8 {width}x{height} frames at {rate:g} Hz (achieved {stats['publish_rate_hz']:.1f} Hz) "
              f"best effort -> node: received {stats['received']} ({stats['delivered_fraction']:.1%}), lost in "
              f"transport {stats['lost_in_transport']}, processed {stats['processed']}, "
              f"stale {stats['dropped_stale']}; "
              f"{stats['results']} results: end-to-end {stats['e2e_s'] * 1e3:.0f} ms, outside the node "
              f"{stats['outside_node_s'] * 1e3:.1f} ms ({stats['dds_share']:.1%})", flush=True)
    return figures(stats, width, height, rate, duration)


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure, size_wh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--duration", type=float, default=None, help="seconds of publishing (default 10, quick 3)")
    parser.add_argument("--rate", type=float, default=RATE_HZ)
    parser.add_argument("--size", type=size_wh, default=(WIDTH, HEIGHT), help="WxH")
    args = parser.parse_args(argv)
    for fig in run(args.quick, args.duration, args.rate, *args.size):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
