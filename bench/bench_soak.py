#!/usr/bin/env python3
"""Soak: the detector node fed a 10 Hz camera replay for minutes; memory and queues must not grow.

    python bench/bench_soak.py [--duration 600] [--quick] [--fps 10] [--size 1024x512] [--out soak.json]
    python bench/run.py --only soak [--quick]        (full: 600 s; --quick: 25 s)

What runs (all on this machine, DDS on loopback only: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``,
``ROS_LOCALHOST_ONLY=1``, a non-default ``ROS_DOMAIN_ID``):

* the **real node**: the installed launcher ``$VENV/lib/pebal_perception/detector_node`` with
  ``--params-file config/detector.yaml`` as the launch file starts it (embedded default model, i.e.
  ``checkpoint: ''``; ``restrict_to_drivable``, ``min_obstacle_area`` and every other parameter at the
  params file's defaults), ``device:=cpu``, the camera mounting height / pitch of the drive (so ground
  positions are computed), the launch file's remappings onto the bag's topics, and
  a reliable image subscription (``qos_overrides.<topic>.subscription.reliability``;
  ``--best-effort`` keeps the params file's best_effort: a 1.5 MB frame is ~25 UDP fragments and one
  lost fragment loses the frame inside DDS, before the node sees it, which would hide lost frames from
  the node's accounting and lighten the load this soak puts on it);
* the **real replay tool**: a synthetic drive (``pebal_training.recipes.drive_bag``, 1024x512 ``bgr8``,
  a few seconds of frames with anomalies on the road, ``/camera/image_raw`` + ``/camera/camera_info``)
  is written once into a temporary bag and replayed with ``pebal-bag play --loop`` at its recorded
  10 Hz for the whole duration. Replaying the bag with the shipped tool (rather than publishing from
  this process) is what a deployment test does and keeps this process off the CPU: it only samples.
  (At each loop boundary the first frame follows the last one without a period in between, so the
  mean input rate is ``frames / (frames - 1)`` x 10 Hz, e.g. 10.3 Hz for 30 frames.)

A 1024x512 frame usually takes longer than 100 ms on a CPU: the node then processes the newest frame
and drops the stale ones by design (one-slot mailbox); processed fps and drops are reported, not judged.

Sampled every second: the resident memory (``VmRSS`` of ``/proc/<pid>/status``, summed over the
node and any child process), its thread and open-file counts; received as they come: the node's
``/diagnostics`` (frames_received/processed, dropped_frames, rejected_total, processing_time_ms) and
every ``~/result`` (arrival time, the frame's ``processing_time_ms`` = receipt -> result published).

Figures (one line each):

* ``soak_rss_growth_<d>s_<WxH>``: resident-memory growth after the warm-up (the first 20 % of the
  duration, clamped to 5..30 s): median of the last 10 % of the samples vs median of the first 10 %
  after the warm-up, in %; target < 5 %. A linear fit over the post-warm-up samples is stored
  (``slope_mb_per_min``) with the raw samples;
* ``soak_latency_p95_growth_...``: p95 of ``processing_time_ms`` in the last third of the post-warm-up
  results / the first third (a queue growing anywhere between receipt and publishing shows as a
  growing latency); target <= 1.5x;
* ``soak_accounting_...``: frames received; target: after the replay stops and the node drains,
  received == processed + dropped + rejected (+ at most 1 still in the mailbox), and while running
  the frames in flight (converting / in the mailbox / being processed) stay within 3; the frames the
  player published are stored next to it (``frames_published``);
* ``soak_processed_fps_...``: results per second after the warm-up (information, no target).

The soak itself (node + player, ``/proc`` sampling, ``analyse``, ``summary_line``) is
``pebal_perception.testing.soak``, shared with ``test/test_soak.py`` (the 30-s CI version); this script
adds the figures, the report and the CLI. ``soak()`` raises ``SoakUnavailable`` when ROS, the messages,
the launcher or ``pebal-bag`` are missing (the figures are then reported as skipped).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, skipped
from pebal_perception.testing.soak import (  # noqa: F401 - the soak itself (shared with test/test_soak.py)
    MAX_IN_FLIGHT, SoakError, SoakUnavailable, _busy_text, analyse, linear_slope, machine_busy_s, memory_sample,
    percentile, prerequisites, soak, summary_line, warmup_for)

FULL_DURATION_S = 600.0
QUICK_DURATION_S = 25.0
RSS_TARGET_PCT = 5.0
LATENCY_TARGET = 1.5


# ------------------------------------------------------------------------------------------ figures


def drive_bag(path, frames: int, size: tuple[int, int], fps: float) -> dict:
    """The soak's bag: a synthetic drive with two anomalies on the road, raw bgr8 frames."""
    from pebal_training.recipes.drive_bag import write_drive_bag

    return write_drive_bag(path, frames=frames, fps=fps, size=size, seed=7, anomalies=(2, 3), encoding="bgr8")

def figures(record: dict[str, Any]) -> list[dict[str, Any]]:
    a = record["analysis"]
    final = record.get("final") or {}
    tag = f"{record['duration_s']:.0f}s_{record['size'][0]}x{record['size'][1]}"
    common = {"duration_s": record["duration_s"], "warmup_s": record["warmup_s"], "input_fps": record["fps"],
              "ros_domain_id": record["ros_domain_id"], "node_alive_throughout": record.get("node_alive_throughout"),
              "node_exit_status": record.get("node_exit_status")}
    figs = []
    if "rss_growth_pct" in a:
        growth = a["rss_growth_pct"]
        figs.append(figure(
            f"soak_rss_growth_{tag}", growth, "%", None, target_text=f"< {RSS_TARGET_PCT:g} % after warm-up",
            meets_target=bool(growth < RSS_TARGET_PCT),
            **{k: a[k] for k in ("rss_start_mb", "rss_end_mb", "rss_growth_mb", "rss_max_mb", "slope_mb_per_min",
                                  "rss_window_samples", "threads_start", "threads_end", "threads_max", "fds_start",
                                  "fds_end", "fds_max")},
            player_rss_start_mb=a.get("player_rss_start_mb"), player_rss_end_mb=a.get("player_rss_end_mb"),
            **common,
            samples={"t_s": [s["t"] for s in record["samples"]],
                     "rss_kb": [s["rss_kb"] for s in record["samples"]],
                     "cpu_s": [s.get("cpu_s") for s in record["samples"]],
                     "machine_busy_s": [s.get("machine_busy_s") for s in record["samples"]],
                     "threads": [s["threads"] for s in record["samples"]],
                     "fds": [s["fds"] for s in record["samples"]],
                     "player_rss_kb": [s["rss_kb"] for s in record["player_samples"]]},
            note=f"{a['rss_start_mb']:.1f} -> {a['rss_end_mb']:.1f} MB (medians of {a['rss_window_samples']} "
                 f"1-s samples after a {record['warmup_s']:g} s warm-up vs the last ones); linear fit "
                 f"{a['slope_mb_per_min']:+.3f} MB/min; threads {a['threads_start']} -> {a['threads_end']}"))
    else:
        figs.append(skipped(f"soak_rss_growth_{tag}", "too few memory samples after the warm-up"))
    if "latency_p95_growth" in a and math.isfinite(a["latency_p95_growth"]):
        lf, ll = a["latency_first_third"], a["latency_last_third"]
        ratio = a["latency_p95_growth"]
        figs.append(figure(
            f"soak_latency_p95_growth_{tag}", ratio, "x", None, target_text=f"<= {LATENCY_TARGET:g}x (no queuing)",
            meets_target=bool(ratio <= LATENCY_TARGET), first_third=lf, last_third=ll, **common,
            samples={"results_t_s": [r[0] for r in record["results"]],
                     "processing_time_ms": [r[1] for r in record["results"]]},
            note=f"node processing_time_ms (receipt -> result published) p50/p95: first third "
                 f"{lf['p50_ms']:.0f}/{lf['p95_ms']:.0f} ms, last third {ll['p50_ms']:.0f}/{ll['p95_ms']:.0f} ms"
                 + _busy_text(lf, ll)))
    else:
        figs.append(skipped(f"soak_latency_p95_growth_{tag}", "no results after the warm-up"))
    if final:
        received = final["frames_received"]
        figs.append(figure(
            f"soak_accounting_{tag}", float(received), "frames", None,
            target_text="received == processed + dropped + rejected (+ <= 1 pending); in flight <= 3",
            meets_target=a["accounting_ok"], frames_received=received, frames_processed=final["frames_processed"],
            dropped_frames=final["dropped_frames"], rejected_total=final["rejected_total"],
            frames_failed=final.get("frames_failed"),
            in_flight_end=a["in_flight_end"], in_flight_min=a["in_flight_min"], in_flight_max=a["in_flight_max"],
            player_messages_published=record.get("player_messages_published"),
            frames_published=a.get("frames_published"), reliable_input=record.get("reliable_input"), **common,
            diagnostics={key: [None if isinstance(d.get(key), float) and math.isnan(d[key]) else d.get(key)
                               for d in record["diagnostics"]] for key in
                         ("t", "frames_received", "frames_processed", "dropped_frames", "rejected_total",
                          "processing_time_ms", "inference_time_ms")},
            note=f"~{a.get('frames_published')} published"
                 + (" (the rest never reached the node's callback), "
                    if (a.get("frames_published") or 0) > received + 1 else ", ")
                 + f"{final['frames_processed']} processed, {final['dropped_frames']} dropped (stale, by design), "
                 f"{final['rejected_total']} rejected, {a['in_flight_end']} pending at the end; "
                 f"{a['in_flight_min']}..{a['in_flight_max']} in flight while running"))
    else:
        figs.append(skipped(f"soak_accounting_{tag}", "no final diagnostics from the node"))
    if a["processed_fps"] > 0:
        figs.append(figure(
            f"soak_processed_fps_{tag}", a["processed_fps"], "frames/s", None, higher_is_better=True,
            max_result_gap_s=a["max_result_gap_s"], startup_s=record.get("startup_s"),
            node_ready=record.get("node_ready_line"), **common,
            note=f"input {record['fps']:g} Hz; longest gap between results {a['max_result_gap_s']:.1f} s; "
                 f"no target (stale frames are dropped by design)"))
    else:
        figs.append(skipped(f"soak_processed_fps_{tag}", "no result after the warm-up"))
    return figs


def run(quick: bool = False, duration_s: float | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    duration = float(duration_s if duration_s is not None else (QUICK_DURATION_S if quick else FULL_DURATION_S))
    tag = f"{duration:.0f}s_1024x512"
    names = [f"soak_{n}_{tag}" for n in ("rss_growth", "latency_p95_growth", "accounting", "processed_fps")]
    reason = prerequisites()
    if reason is not None:
        return [skipped(n, reason) for n in names]
    from bench.bench_node import local_ros_env

    local_ros_env()  # the bench's own domain (PEBAL_BENCH_ROS_DOMAIN_ID or pid-derived), loopback only
    try:
        record = soak(duration, write_bag=drive_bag, verbose=verbose)
    except (SoakUnavailable, SoakError) as exc:
        return [skipped(n, str(exc)) for n in names]
    if verbose:
        print("soak: " + summary_line(record), flush=True)
    return figures(record)


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure, size_wh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None,
                        help=f"seconds of replay after start-up (default {FULL_DURATION_S:.0f}; "
                             f"{QUICK_DURATION_S:.0f} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:.0f} s instead of "
                                                             f"{FULL_DURATION_S:.0f} s")
    parser.add_argument("--fps", type=float, default=10.0, help="replay rate of the bag's stamps (default 10)")
    parser.add_argument("--size", type=size_wh, default=(1024, 512), help="frame WIDTHxHEIGHT (default 1024x512)")
    parser.add_argument("--frames", type=int, default=30, help="frames in the looped bag (default 30)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 20 %% of the "
                                                                   "duration, 5..30 s)")
    parser.add_argument("--best-effort", action="store_true",
                        help="keep the params file's best_effort input QoS (default: reliable, see above)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable), e.g. min_obstacle_area:=1")
    parser.add_argument("--out", type=Path, default=None, help="also write the whole raw record (JSON) here")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (QUICK_DURATION_S if args.quick else FULL_DURATION_S)
    reason = prerequisites()
    if reason is not None:
        print(format_figure(skipped("soak", reason)))
        return 0
    from bench.bench_node import local_ros_env

    local_ros_env()
    try:
        record = soak(duration, write_bag=drive_bag, fps=args.fps, size=args.size, frames=args.frames,
                      warmup_s=args.warmup, reliable_input=not args.best_effort, node_params=args.param)
    except (SoakUnavailable, SoakError) as exc:
        print(format_figure(skipped("soak", str(exc))))
        return 1
    print("soak: " + summary_line(record), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for fig in figures(record):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
