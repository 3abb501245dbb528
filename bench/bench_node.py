#!/usr/bin/env python3
"""Figure 3: what the ROS 2 node adds over DDS to the in-process frame pipeline (ESPNetv2, CPU).

    python bench/bench_node.py [--quick]

The detector node (``$VENV/lib/pebal_perception/detector_node``) runs as a subprocess on a random-weight
ESPNetv2 checkpoint at 1024x512 on the CPU. This process publishes one ``bgr8`` 1024x512 ``Image`` at a
time on ``/image`` and waits for the node's ``~/result`` (``AnomalyResult``) carrying the same stamp:

* **node end-to-end latency**: publish -> result received (DDS in, conversion, inference,
  post-processing, publishing the three output images and the result, DDS out);
* **baseline**: the same frame through the in-process pipeline of figure 2 (``bench_frame``:
  bgr8 bytes -> outputs encoded), timed in this process between the node frames (interleaved; the
  node is idle then, so the two never compete for the CPU).

Reported: ``node_dds_overhead_...`` = median(end-to-end - the node's own ``processing_time_ms``
(receipt -> result published, inside the node)), i.e. the DDS transfer of the frame in and of the
result out; and ``node_e2e_...`` = the median latency with the ratio in-process / node (1.0 = no
overhead). On a shared machine the second compares two processes' luck; the first is robust. DDS traffic stays
on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, ``ROS_LOCALHOST_ONLY=1`` and a non-default
``ROS_DOMAIN_ID`` are set for this process and the node. When the node, rclpy or the messages are
missing the figure is reported as skipped with the reason.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, median, skipped
from pebal_perception.testing import ros_harness

NAME = "node_e2e_espnetv2_1024x512"
STARTUP_TIMEOUT_S = 90.0
NODE_TARGET = 1.10  # target: node end-to-end p50 <= 1.10x the bare core on the same frames
FRAME_TIMEOUT_S = 60.0


def prerequisites() -> str | None:
    """None when everything the node figure needs is there; else the reason it cannot run."""
    return ros_harness.ros_unavailable(
        modules=("rclpy", "sensor_msgs.msg", "pebal_perception.msg", "pebal_perception.node.detector_node"))


def _p95(values: list[float]) -> float:
    import numpy as np

    return float(np.percentile(values, 95)) if values else float("nan")


def local_ros_env() -> dict[str, str]:
    """DDS restricted to this machine, on a domain of our own (never the default 0)."""
    # this process (rclpy reads it at init) and every subprocess
    return ros_harness.use_loopback(os.environ.get("PEBAL_BENCH_ROS_DOMAIN_ID") or str(60 + os.getpid() % 40))


def run(quick: bool = False, repeats: int | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    reason = prerequisites()
    if reason is not None:
        return [skipped(NAME, reason)]
    repeats = repeats if repeats is not None else (7 if quick else 15)
    width, height = 1024, 512
    env = local_ros_env()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from bench import bench_frame
    from pebal_perception.core.checkpoint import save_checkpoint
    from pebal_perception.msg import AnomalyResult

    pipe, msg_fields = bench_frame.build(width, height)  # also sets the 99th-percentile threshold
    tmp = tempfile.TemporaryDirectory(prefix="pebal_bench_node_")
    ckpt = Path(tmp.name) / "espnetv2_random.pt"
    meta = pipe.engine.meta
    meta.threshold = float(pipe.threshold)
    meta.input_size = [height, width]
    # The engine holds a BN-folded copy; the checkpoint gets the plain model built the same way.
    from bench.bench_forward import randomise_batchnorm
    from pebal_perception.core.models import create_model
    import torch

    torch.manual_seed(0)
    save_checkpoint(ckpt, randomise_batchnorm(create_model("espnetv2"), 0).eval(), meta)
    # The in-process pipeline alone (no node running yet), for reference.
    pipe.run(msg_fields)
    alone = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.run(msg_fields)
        alone.append(time.perf_counter() - t0)
    proc = ros_harness.NodeProcess(ros_harness.detector_args(checkpoint=ckpt, params=[
        f"input_width:={width}", f"input_height:={height}",
        # the in-process pipeline's post-processing: plain threshold, every blob kept
        "restrict_to_drivable:=false", "min_obstacle_area:=1",
        # the in-process pipeline's runtime (figure 2 times the torch path; the node's default auto would
        # compare another runtime, not the transport: figure 8 compares runtimes)
        "backend:=torch",
        # 1.5 MB frames: with best-effort input one lost UDP fragment drops the whole frame
        ros_harness.reliable_input_param("/image")]), Path(tmp.name) / "node.log")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("pebal_bench_client", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    received: dict[int, tuple[float, float]] = {}

    def on_result(msg: AnomalyResult) -> None:
        received[int(msg.header.stamp.sec)] = (time.perf_counter(), float(msg.processing_time_ms))

    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(AnomalyResult, "/pebal_detector/result", on_result, qos)
    pub = node.create_publisher(Image, "/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    image = Image(height=height, width=width, encoding="bgr8", is_bigendian=0, step=msg_fields["step"],
                  data=msg_fields["data"])

    def send_and_wait(stamp: int, timeout: float, resend: float | None = None) -> tuple[float, float] | None:
        image.header.stamp.sec = stamp
        t0 = time.perf_counter()
        deadline = t0 + timeout
        pub.publish(image)
        while stamp not in received:
            now = time.perf_counter()
            if proc.poll() is not None or now > deadline:
                return None
            if resend and now - t0 > resend:  # start-up: frames sent before discovery are lost
                t0 = now
                pub.publish(image)
            executor.spin_once(timeout_sec=0.005)
        t_recv, proc_ms = received[stamp]
        return t_recv - t0, proc_ms

    try:
        t_start = time.perf_counter()
        first = send_and_wait(1, STARTUP_TIMEOUT_S, resend=5.0)
        if first is None:
            why = "exited" if proc.poll() is not None else f"no result within {STARTUP_TIMEOUT_S:.0f} s"
            return [skipped(NAME, f"node did not answer ({why}): {proc.tail(3)}")]
        startup_s = time.perf_counter() - t_start
        send_and_wait(2, FRAME_TIMEOUT_S)  # warm-up frame
        lat, proc_ms, local = [], [], []
        for i in range(repeats):
            time.sleep(0.5)  # let the node's OpenMP threads stop spinning before the in-process run
            t0 = time.perf_counter()
            pipe.run(msg_fields)
            local.append(time.perf_counter() - t0)
            res = send_and_wait(100 + i, FRAME_TIMEOUT_S)
            if res is None:
                return [skipped(NAME, f"node stopped answering after {i} frames")]
            lat.append(res[0])
            proc_ms.append(res[1] / 1e3)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        proc.stop()
        tmp.cleanup()
    t_lat, t_local, t_proc, t_alone = median(lat), median(local), median(proc_ms), median(alone)
    overhead = [a - b for a, b in zip(lat, local)]
    dds = [a - b for a, b in zip(lat, proc_ms)]
    t_dds = median(dds)
    if verbose:
        print(f"node: start-up to first result {startup_s:.1f} s; medians over {repeats}: end-to-end "
              f"{t_lat * 1e3:.0f} ms, node processing_time_ms {t_proc * 1e3:.0f} ms -> outside the node's own "
              f"timer (DDS in + out) {t_dds * 1e3:.1f} ms ({t_dds / t_lat:.1%} of end-to-end); in-process pipeline "
              f"{t_local * 1e3:.0f} ms between node frames, {t_alone * 1e3:.0f} ms before the node started", flush=True)
    common = {"repeats": repeats, "startup_s": startup_s, "ros_domain_id": env["ROS_DOMAIN_ID"],
              "samples": {"e2e": lat, "node_processing": proc_ms, "in_process": local, "in_process_alone": alone}}
    return [
        figure("node_dds_overhead_espnetv2_1024x512", t_dds, "s", None, share_of_e2e=t_dds / t_lat,
               e2e_s=t_lat, node_processing_s=t_proc, **common,
               note=f"publish -> result received, minus the node's own receipt -> publish time; "
                    f"{t_dds / t_lat:.1%} of the {t_lat * 1e3:.0f} ms end-to-end; no target set"),
        figure(NAME, t_lat, "s", t_local, baseline_label="in-process pipeline", overhead_s=median(overhead),
               in_process_alone_s=t_alone, node_processing_s=t_proc, e2e_p95_s=_p95(lat), in_process_p95_s=_p95(local),
               node_over_core=t_lat / t_local, target_text=f"node p50 <= {NODE_TARGET:.2f}x the in-process core",
               meets_target=bool(t_lat <= NODE_TARGET * t_local), **common,
               note=f"p50 node {t_lat * 1e3:.0f} ms = {t_lat / t_local:.2f}x the core's {t_local * 1e3:.0f} ms; "
                    f"p95 {_p95(lat) * 1e3:.0f} vs {_p95(local) * 1e3:.0f} ms; in-process {t_alone * 1e3:.0f} ms "
                    "before the node started"),
    ]


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for fig in run(args.quick):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
