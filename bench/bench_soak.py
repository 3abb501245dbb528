#!/usr/bin/env python3
"""Soak (issue 6): the detector node fed a 10 Hz camera replay for minutes; memory and queues must not grow.

    python bench/bench_soak.py [--duration 600] [--quick] [--fps 10] [--size 1024x512] [--out soak.json]
    python bench/run.py --only soak [--quick]        (full: 600 s; --quick: 25 s)

What runs (all on this machine, DDS on loopback only: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``,
``ROS_LOCALHOST_ONLY=1``, a non-default ``ROS_DOMAIN_ID``):

* the **real node**: the installed launcher ``$VENV/lib/pebal_perception/detector_node`` with
  ``--params-file config/detector.yaml`` as the launch file starts it (embedded default model, i.e.
  ``checkpoint: ''``; ``restrict_to_drivable``, ``min_obstacle_area`` and every other parameter at the
  params file's defaults), ``device:=cpu``, the camera mounting height / pitch of the drive (so ground
  positions are computed), the launch file's remappings onto the bag's topics, and
  ``qos.reliability:=reliable`` (``--best-effort`` keeps the params file's best_effort: a 1.5 MB frame
  is ~25 UDP fragments and one lost fragment loses the frame inside DDS, before the node sees it;
  on a loaded 2-core machine about half of the frames, which would hide them from the node's
  accounting and halve the load this soak puts on it);
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

``soak()`` is the core (also used by ``test/test_soak.py``, the 30-s CI version); it raises
``SoakUnavailable`` when ROS, the messages, the launcher or ``pebal-bag`` are missing (the figures
are then reported as skipped).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, figure, skipped  # noqa: E402

LAUNCHER = Path(sys.prefix) / "lib" / "pebal_perception" / "detector_node"
PLAYER = Path(sys.prefix) / "bin" / "pebal-bag"
PARAMS_FILE = REPO_ROOT / "config" / "detector.yaml"
NAMESPACE = "/pebal_soak"
NODE_NAME = f"{NAMESPACE}/pebal_detector"
IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
FULL_DURATION_S = 600.0
QUICK_DURATION_S = 25.0
STARTUP_TIMEOUT_S = 120.0
RSS_TARGET_PCT = 5.0
LATENCY_TARGET = 1.5
MAX_IN_FLIGHT = 3  # converting (executor) + in the mailbox + being processed (worker)


class SoakUnavailable(Exception):
    """A prerequisite (ROS, the messages, the launcher, pebal-bag) is missing."""


class SoakError(Exception):
    """The soak could not run (the node did not start, the replay failed)."""


# ------------------------------------------------------------------------------------------ helpers

def prerequisites() -> str | None:
    """None when everything the soak needs is there; else the reason it cannot run."""
    for module in ("rclpy", "diagnostic_msgs.msg", "sensor_msgs.msg", "pebal_perception.msg",
                   "pebal_perception.node.detector_node", "pebal_training.recipes.drive_bag"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
            return f"node not available: {module} does not import ({type(exc).__name__}: {exc})"
    for path, what in ((LAUNCHER, "launcher"), (PLAYER, "pebal-bag")):
        if not path.exists():
            return f"node not available: no {what} at {path} (run make setup)"
    return None


def _loopback_env() -> dict[str, str]:
    """DDS on loopback, for this process (rclpy reads it at init) and every subprocess; keeps the caller's
    ROS_DOMAIN_ID (the test session's, or the bench's from ``bench_node.local_ros_env``)."""
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}
    if not os.environ.get("ROS_DOMAIN_ID") or os.environ.get("ROS_DOMAIN_ID") == "0":
        from bench.bench_node import local_ros_env

        env.update(local_ros_env())
    os.environ.update(env)
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    return env


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def memory_sample(root: int) -> dict[str, Any] | None:
    """Summed VmRSS (kB), threads, open files and CPU time (user + system, s) of ``root`` and its
    descendants; None once it is gone."""
    rss_kb = threads = fds = ticks = 0
    pids = _process_tree(root)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss_kb += int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            fields = stat[stat.rfind(")") + 2:].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, ValueError, IndexError):
            if pid == root:
                return None
    return {"rss_kb": rss_kb, "threads": threads, "fds": fds, "processes": len(pids),
            "cpu_s": round(ticks * _TICK_S, 2)}


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return round((sum(values) - values[3] - values[4]) * _TICK_S, 2)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in 0..100; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def linear_slope(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope dy/dt (0 for fewer than 2 points)."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var > 0 else 0.0


def warmup_for(duration_s: float) -> float:
    """The first 20 % of the duration, at least 5 s and at most 30 s."""
    return min(30.0, max(5.0, 0.2 * duration_s))


def _cpu_use(record: dict[str, Any], lo: float, hi: float) -> dict[str, float]:
    """Cores used in [lo, hi) by the node, the player and the rest of the machine (when sampled)."""
    node = [s for s in record["samples"] if lo <= s["t"] < hi and s.get("cpu_s") is not None
            and s.get("machine_busy_s") is not None]
    if len(node) < 2:
        return {}
    dt = node[-1]["t"] - node[0]["t"]
    if dt <= 0:
        return {}
    used = {"node_cores": (node[-1]["cpu_s"] - node[0]["cpu_s"]) / dt,
            "machine_cores": (node[-1]["machine_busy_s"] - node[0]["machine_busy_s"]) / dt}
    player = [s for s in record.get("player_samples", []) if lo <= s["t"] < hi and s.get("cpu_s") is not None]
    used["player_cores"] = ((player[-1]["cpu_s"] - player[0]["cpu_s"]) / max(1e-9, player[-1]["t"] - player[0]["t"])
                            if len(player) >= 2 else 0.0)
    used["other_cores"] = max(0.0, used["machine_cores"] - used["node_cores"] - used["player_cores"])
    return {k: round(v, 3) for k, v in used.items()}


def analyse(record: dict[str, Any]) -> dict[str, Any]:
    """The soak's verdicts from its raw record (pure: also checked by the smoke tests on made-up data).

    ``record``: ``duration_s``, ``warmup_s``, ``samples`` (dicts with ``t`` and ``rss_kb``, ``threads``,
    ``fds``), ``results`` ([t, processing_time_ms]), ``diagnostics`` (dicts with ``t`` and the node's
    counters as ints), ``final`` (the counters after the replay stopped and the node drained).
    """
    warm = float(record["warmup_s"])
    post = [s for s in record["samples"] if s["t"] >= warm]
    out: dict[str, Any] = {"post_warmup_samples": len(post)}
    if len(post) >= 2:
        # Windows of at least 5 samples: the RSS swings by +-30 MB within a frame (1024x512 output maps).
        k = max(5, len(post) // 10)
        k = max(1, min(k, len(post) // 3))
        start = statistics.median(s["rss_kb"] for s in post[:k]) / 1024.0
        end = statistics.median(s["rss_kb"] for s in post[-k:]) / 1024.0
        slope = linear_slope([s["t"] / 60.0 for s in post], [s["rss_kb"] / 1024.0 for s in post])
        out.update(rss_start_mb=start, rss_end_mb=end, rss_growth_pct=(end - start) / start * 100.0,
                   rss_growth_mb=end - start, slope_mb_per_min=slope,
                   rss_max_mb=max(s["rss_kb"] for s in post) / 1024.0,
                   rss_window_samples=k,
                   threads_start=post[0]["threads"], threads_end=post[-1]["threads"],
                   threads_max=max(s["threads"] for s in post),
                   fds_start=post[0]["fds"], fds_end=post[-1]["fds"], fds_max=max(s["fds"] for s in post))
    duration = float(record["duration_s"])
    res = [(t, ms) for t, ms in record["results"] if warm <= t < duration]  # not the drain after the replay
    span = max(1e-9, duration - warm)
    out["processed_fps"] = len(res) / span
    if res:
        thirds = [[ms for t, ms in res if warm + i * span / 3 <= t < warm + (i + 1) * span / 3] for i in range(3)]
        for name, values in (("first", thirds[0]), ("last", thirds[2])):
            out[f"latency_{name}_third"] = {"n": len(values), "p50_ms": percentile(values, 50),
                                            "p95_ms": percentile(values, 95)}
        # What else ran: the node's own inference time and the CPU the node, the player and everything
        # else on the machine used in the same thirds (latency growth from a busier machine is no queue).
        for name, i in (("first", 0), ("last", 2)):
            lo, hi = warm + i * span / 3, warm + (i + 1) * span / 3
            infer = [d["inference_time_ms"] for d in record["diagnostics"]
                     if lo <= d["t"] < hi and isinstance(d.get("inference_time_ms"), (int, float))
                     and math.isfinite(d["inference_time_ms"])]
            third = out[f"latency_{name}_third"]
            third["inference_ms_median"] = statistics.median(infer) if infer else None
            third.update(_cpu_use(record, lo, hi))
        p95_first, p95_last = out["latency_first_third"]["p95_ms"], out["latency_last_third"]["p95_ms"]
        out["latency_p95_growth"] = (p95_last / p95_first if p95_first > 0 and math.isfinite(p95_last)
                                     else float("nan"))
    # Longest time without a result after the warm-up (the node serving frames continuously).
    times = [warm] + [t for t, _ in res] + [duration]
    out["max_result_gap_s"] = max(b - a for a, b in zip(times, times[1:]))

    def in_flight(d: dict[str, Any]) -> int:
        return (d["frames_received"] - d["frames_processed"] - d["dropped_frames"] - d["rejected_total"]
                - d.get("frames_failed", 0))

    running = [in_flight(d) for d in record["diagnostics"]]
    out["in_flight_min"] = min(running) if running else None
    out["in_flight_max"] = max(running) if running else None
    player = [s["rss_kb"] for s in record.get("player_samples", []) if s["t"] >= warm]
    if len(player) >= 2:  # the replay tool's own memory, for information
        k = max(1, min(max(5, len(player) // 10), len(player) // 3))
        out["player_rss_start_mb"] = statistics.median(player[:k]) / 1024.0
        out["player_rss_end_mb"] = statistics.median(player[-k:]) / 1024.0
    published = record.get("player_messages_published")
    # Every frame of the bag is one image + one camera_info message.
    out["frames_published"] = published // 2 if isinstance(published, int) else None
    final = record.get("final")
    if final:
        out["in_flight_end"] = in_flight(final)
        # Counters are read without one common lock (dropped_frames after the others): -1 mid-run is a
        # frame dropped after `received` was read, not a lost frame.
        out["accounting_ok"] = bool(0 <= out["in_flight_end"] <= 1
                                    and (not running or (min(running) >= -1 and max(running) <= MAX_IN_FLIGHT)))
    else:
        out["in_flight_end"] = None
        out["accounting_ok"] = False
    return out


# --------------------------------------------------------------------------------------------- soak

def _interrupt(proc: subprocess.Popen, timeout_s: float = 15.0) -> bool:
    """SIGINT, then SIGKILL if ``proc`` has not exited within ``timeout_s``; True when it exited by itself."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


def make_bag(path: Path, frames: int, size: tuple[int, int], fps: float) -> dict[str, Any]:
    from pebal_training.recipes.drive_bag import write_drive_bag

    return write_drive_bag(path, frames=frames, fps=fps, size=size, seed=7, anomalies=(2, 3), encoding="bgr8")


def soak(duration_s: float, *, fps: float = 10.0, size: tuple[int, int] = (1024, 512), frames: int = 30,
         warmup_s: float | None = None, sample_period_s: float = 1.0, workdir: Path | None = None,
         verbose: bool = True, progress_every_s: float = 60.0, reliable_input: bool = True,
         node_params: Sequence[str] = ()) -> dict[str, Any]:
    """Runs the node + looping replay for ``duration_s`` (after start-up) and returns the raw record
    plus ``analysis`` (see ``analyse``). ``reliable_input``: ``qos.reliability:=reliable`` (else the params
    file's best_effort); ``node_params``: extra ``NAME:=VALUE`` node parameters. Raises SoakUnavailable /
    SoakError."""
    reason = prerequisites()
    if reason is not None:
        raise SoakUnavailable(reason)
    env = _loopback_env()
    warm = warmup_for(duration_s) if warmup_s is None else float(warmup_s)
    log = (lambda text: print(f"soak: {text}", flush=True)) if verbose else (lambda text: None)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from pebal_perception.msg import AnomalyResult

    tmp = tempfile.TemporaryDirectory(prefix="pebal_soak_") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"duration_s": float(duration_s), "warmup_s": warm, "fps": fps,
                              "reliable_input": reliable_input, "node_params": list(node_params),
                              "size": list(size), "bag_frames": frames, "encoding": "bgr8",
                              "ros_domain_id": env["ROS_DOMAIN_ID"], "samples": [], "player_samples": [],
                              "results": [], "diagnostics": [], "final": None}
    procs: list[subprocess.Popen] = []
    logs = []
    ctx = None
    spin_stop = threading.Event()
    spinner = None
    try:
        t0 = time.perf_counter()
        bag = work / "drive_bag"
        drive = make_bag(bag, frames, size, fps)
        cam = drive["camera"]
        log(f"bag: {frames} frames {size[0]}x{size[1]} bgr8 at {fps:g} Hz in {time.perf_counter() - t0:.1f} s")

        # This process's client: the node's results and diagnostics (small messages only).
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        client = rclpy.create_node(f"pebal_soak_client_{os.getpid()}", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(client)
        lock = threading.Lock()
        clock = {"t0": None}
        latest: dict[str, Any] = {}

        def now() -> float | None:
            return None if clock["t0"] is None else time.monotonic() - clock["t0"]

        def on_result(msg: AnomalyResult) -> None:
            t = now()
            with lock:
                latest["results"] = latest.get("results", 0) + 1
                if t is not None:
                    record["results"].append([round(t, 4), float(msg.processing_time_ms)])

        def on_diag(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if not status.name.startswith(NODE_NAME + ":"):
                    continue
                values = {kv.key: kv.value for kv in status.values}
                try:
                    d = {key: int(values[key]) for key in
                         ("frames_received", "frames_processed", "dropped_frames", "rejected_total")}
                    d["frames_failed"] = int(values.get("frames_failed", "0"))
                    d["frames_lost_in_transport"] = int(values.get("frames_lost_in_transport", "0"))
                except (KeyError, ValueError):
                    continue
                for key in ("processing_time_ms", "processing_time_max_ms", "inference_time_ms",
                            "input_rate_hz", "output_rate_hz"):
                    try:
                        d[key] = float(values.get(key, "nan"))
                    except ValueError:
                        d[key] = float("nan")
                d["level"] = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) \
                    else int(status.level)
                d["message"] = status.message
                t = now()
                with lock:
                    latest["diag"] = d
                    latest["diag_count"] = latest.get("diag_count", 0) + 1
                    if t is not None:
                        record["diagnostics"].append({"t": round(t, 3), **d})

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        client.create_subscription(AnomalyResult, f"{NODE_NAME}/result", on_result, reliable)
        client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 20)

        def spin() -> None:
            while not spin_stop.is_set() and ctx.ok():
                try:
                    executor.spin_once(timeout_sec=0.1)
                except Exception:  # noqa: BLE001 - shutting down
                    if spin_stop.is_set():
                        return

        spinner = threading.Thread(target=spin, name="soak-client", daemon=True)
        spinner.start()

        # The node, as launch/detector.launch.py starts it (params file, remappings), on the CPU.
        node_cmd = [str(LAUNCHER), "--ros-args", "--params-file", str(PARAMS_FILE), "-p", "device:=cpu",
                    "-p", f"camera.height_m:={float(cam['height'])}", "-p", f"camera.pitch_rad:={float(cam['pitch'])}",
                    "-r", f"image:={IMAGE_TOPIC}", "-r", f"image/compressed:={IMAGE_TOPIC}/compressed",
                    "-r", f"camera_info:={INFO_TOPIC}", "-r", f"__ns:={NAMESPACE}"]
        for param in (["qos.reliability:=reliable"] if reliable_input else []) + list(node_params):
            node_cmd += ["-p", param]
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        node_log_path = work / "node.log"
        node_log = open(node_log_path, "wb")
        logs.append(node_log)
        t_start = time.monotonic()
        node = subprocess.Popen(node_cmd, stdout=node_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env, cwd=str(REPO_ROOT))
        procs.append(node)
        record["node_cmd"] = node_cmd

        def node_tail(n: int = 3) -> str:
            lines = node_log_path.read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])

        # Ready = its first /diagnostics (published by the node's timer once the model is loaded).
        while "diag" not in latest:
            if node.poll() is not None:
                raise SoakError(f"the node exited during start-up (status {node.returncode}): {node_tail()}")
            if time.monotonic() - t_start > STARTUP_TIMEOUT_S:
                raise SoakError(f"the node did not come up within {STARTUP_TIMEOUT_S:.0f} s: {node_tail()}")
            time.sleep(0.1)
        record["startup_s"] = time.monotonic() - t_start
        ready = [ln for ln in node_log_path.read_text(errors="replace").splitlines() if "ready:" in ln]
        record["node_ready_line"] = ready[0].split("ready:", 1)[1].strip() if ready else None
        log(f"node ready in {record['startup_s']:.1f} s (pid {node.pid}): {record['node_ready_line']}")

        player_log_path = work / "player.log"
        player_log = open(player_log_path, "wb")
        logs.append(player_log)
        player_cmd = [str(PLAYER), "play", str(bag), "--loop", "--topics", IMAGE_TOPIC, INFO_TOPIC,
                      "--wait-for-subscribers", "--wait-timeout", "20"]
        record["player_cmd"] = player_cmd
        player = subprocess.Popen(player_cmd, stdout=player_log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=child_env, cwd=str(REPO_ROOT))
        procs.append(player)
        # t = 0: the replay starts (waits for the node's subscriptions, normally immediate).
        clock["t0"] = time.monotonic()
        next_sample = 0.0
        next_progress = progress_every_s
        alive = True
        while True:
            t = now()
            if t >= duration_s:
                break
            if t >= next_sample:
                sample = memory_sample(node.pid) if node.poll() is None else None
                if sample is None:
                    alive = False
                    record["node_died_at_s"] = round(t, 2)
                    break
                record["samples"].append({"t": round(t, 3), **sample, "machine_busy_s": machine_busy_s()})
                player_sample = memory_sample(player.pid) if player.poll() is None else None
                if player_sample is not None:
                    record["player_samples"].append({"t": round(t, 3), "rss_kb": player_sample["rss_kb"],
                                                     "cpu_s": player_sample["cpu_s"]})
                next_sample += sample_period_s
            if player.poll() is not None:
                raise SoakError(f"pebal-bag play exited (status {player.returncode}): "
                                f"{player_log_path.read_text(errors='replace').strip()[-400:]}")
            if verbose and t >= next_progress:
                with lock:
                    d = dict(latest.get("diag", {}))
                s = record["samples"][-1]
                log(f"{t:5.0f} s: RSS {s['rss_kb'] / 1024:.1f} MB, threads {s['threads']}, received "
                    f"{d.get('frames_received')}, processed {d.get('frames_processed')}, dropped "
                    f"{d.get('dropped_frames')}, rejected {d.get('rejected_total')}, processing "
                    f"{d.get('processing_time_ms', float('nan')):.0f} ms")
                next_progress += progress_every_s
            time.sleep(max(0.0, min(0.2, next_sample - now())))
        record["node_alive_throughout"] = alive
        record["elapsed_s"] = now()

        # Stop the replay, let the node drain its mailbox, then read its final counters.
        _interrupt(player)
        record["player_status"] = player.returncode
        player_out = player_log_path.read_text(errors="replace")
        m = re.search(r"published (\d+) messages", player_out)
        record["player_messages_published"] = int(m.group(1)) if m else None
        if alive:
            # Two diagnostics after the last frame was received, with the same counters: drained.
            deadline = time.monotonic() + 15.0
            previous = None
            while time.monotonic() < deadline and node.poll() is None:
                with lock:
                    count, d = latest.get("diag_count", 0), dict(latest.get("diag", {}))
                key = (d.get("frames_received"), d.get("frames_processed"), d.get("dropped_frames"),
                       d.get("rejected_total"))
                if previous is not None and count > previous[0] and key == previous[1]:
                    record["final"] = d
                    break
                if previous is None or count > previous[0]:
                    previous = (count, key)
                time.sleep(0.1)
            sample = memory_sample(node.pid)
            if sample is not None:
                record["after_replay_sample"] = sample
        # SIGINT: the node must exit cleanly (status 0) and promptly.
        t_stop = time.monotonic()
        if node.poll() is None and not _interrupt(node):
            record["node_killed"] = True
        record["node_exit_status"] = node.returncode
        record["node_exit_s"] = time.monotonic() - t_stop
        record["node_log_tail"] = node_tail(5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        spin_stop.set()
        if spinner is not None:
            spinner.join(5)
        if ctx is not None:
            ctx.try_shutdown()
        for f in logs:
            f.close()
        if tmp is not None:
            tmp.cleanup()
    record["analysis"] = analyse(record)
    return record


# ------------------------------------------------------------------------------------------ figures

def summary_line(record: dict[str, Any]) -> str:
    a, f = record["analysis"], record.get("final") or {}
    lf, ll = a.get("latency_first_third", {}), a.get("latency_last_third", {})
    return (f"{record['duration_s']:.0f} s at {record['fps']:g} Hz, {record['size'][0]}x{record['size'][1]}: RSS "
            f"{a.get('rss_start_mb', float('nan')):.1f} -> {a.get('rss_end_mb', float('nan')):.1f} MB "
            f"({a.get('rss_growth_pct', float('nan')):+.2f} %, slope {a.get('slope_mb_per_min', float('nan')):+.3f} "
            f"MB/min), threads {a.get('threads_start')} -> {a.get('threads_end')}, fds {a.get('fds_start')} -> "
            f"{a.get('fds_end')}; frames published ~{a.get('frames_published')}, received "
            f"{f.get('frames_received')}, processed {f.get('frames_processed')}, "
            f"dropped {f.get('dropped_frames')}, rejected {f.get('rejected_total')}, in flight at end "
            f"{a.get('in_flight_end')} (running: {a.get('in_flight_min')}..{a.get('in_flight_max')}); processed "
            f"{a['processed_fps']:.2f} fps after warm-up, longest gap {a['max_result_gap_s']:.1f} s; "
            f"processing_time_ms p50/p95 first third {lf.get('p50_ms', float('nan')):.0f}/"
            f"{lf.get('p95_ms', float('nan')):.0f}, last third {ll.get('p50_ms', float('nan')):.0f}/"
            f"{ll.get('p95_ms', float('nan')):.0f}{_busy_text(lf, ll)}; node exit status "
            f"{record.get('node_exit_status')} in {record.get('node_exit_s', float('nan')):.2f} s")


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


def _busy_text(first: dict[str, Any], last: dict[str, Any]) -> str:
    parts = []
    if first.get("inference_ms_median") is not None and last.get("inference_ms_median") is not None:
        parts.append(f"inference {first['inference_ms_median']:.0f} -> {last['inference_ms_median']:.0f} ms")
    if "other_cores" in first and "other_cores" in last:
        parts.append(f"other processes {first['other_cores']:.2f} -> {last['other_cores']:.2f} cores busy")
    return "; " + ", ".join(parts) if parts else ""


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
        record = soak(duration, verbose=verbose)
    except (SoakUnavailable, SoakError) as exc:
        return [skipped(n, str(exc)) for n in names]
    if verbose:
        print("soak: " + summary_line(record), flush=True)
    return figures(record)


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None,
                        help=f"seconds of replay after start-up (default {FULL_DURATION_S:.0f}; "
                             f"{QUICK_DURATION_S:.0f} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:.0f} s instead of "
                                                             f"{FULL_DURATION_S:.0f} s")
    parser.add_argument("--fps", type=float, default=10.0, help="replay rate of the bag's stamps (default 10)")
    parser.add_argument("--size", type=_size, default=(1024, 512), help="frame WIDTHxHEIGHT (default 1024x512)")
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
        record = soak(duration, fps=args.fps, size=args.size, frames=args.frames, warmup_s=args.warmup,
                      reliable_input=not args.best_effort, node_params=args.param)
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
