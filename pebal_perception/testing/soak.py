"""The soak runner: the detector node fed a looping camera replay; memory and queues sampled.

Shared by ``test/test_soak.py`` (30 s, asserted) and ``bench/bench_soak.py`` (10 minutes, the figures
and their report). What runs (all on this machine, DDS on loopback only in the caller's
``ROS_DOMAIN_ID``, see ``ros_harness.use_loopback``):

* the **real node**: the installed launcher (``ros_harness.NodeProcess``) with
  ``--params-file config/detector.yaml`` as the launch file starts it (embedded default model, every
  other parameter at the params file's defaults), ``device:=cpu``, the camera mounting height / pitch
  of the drive, the launch file's remappings onto the bag's topics and, by default,
  ``qos_overrides.<image topic>.subscription.reliability:=reliable`` (a 1.5 MB frame is ~25 UDP
  fragments; with best effort one lost fragment loses the frame inside DDS, before the node can count
  it);
* the **real replay tool**: a bag the caller writes (``write_bag``; the bench and the test write a
  synthetic drive, ``pebal_training.recipes.drive_bag``, ``bgr8``) once into a temporary folder,
  replayed with ``pebal-bag play --loop`` at its recorded rate.

Sampled every second from ``/proc``: the resident memory, threads and open files of the node and its
children (and the player's memory); received as they come (``ros_harness.Peer``): the node's
``/diagnostics`` counters and every ``~/result``. ``soak()`` returns the raw record plus ``analysis``
(``analyse``, pure); it raises ``SoakUnavailable`` when a prerequisite is missing and ``SoakError``
when the node or the replay fails.
"""
from __future__ import annotations

import math
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pebal_perception.testing import ros_harness
from pebal_perception.testing.ros_harness import LAUNCHER, PLAYER, ChildProcess, NodeProcess, Peer

NAMESPACE = "/pebal_soak"
NODE_NAME = f"{NAMESPACE}/pebal_detector"
IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
STARTUP_TIMEOUT_S = 120.0
MAX_IN_FLIGHT = 3  # converting (executor) + in the mailbox + being processed (worker)


class SoakUnavailable(Exception):
    """A prerequisite (ROS, the messages, the launcher, pebal-bag) is missing."""


class SoakError(Exception):
    """The soak could not run (the node did not start, the replay failed)."""


# ------------------------------------------------------------------------------------------ helpers

def prerequisites() -> str | None:
    """None when everything the soak needs is there; else the reason it cannot run."""
    return ros_harness.ros_unavailable(
        modules=(*ros_harness.ROS_MODULES, "pebal_perception.node.detector_node"),
        executables=(LAUNCHER, PLAYER))


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

def _parse_status(status) -> dict[str, Any] | None:
    """The counters of one DiagnosticStatus of the node (None when it lacks them)."""
    values = {kv.key: kv.value for kv in status.values}
    try:
        d: dict[str, Any] = {key: int(values[key]) for key in
                             ("frames_received", "frames_processed", "dropped_frames", "rejected_total")}
        d["frames_failed"] = int(values.get("frames_failed", "0"))
        d["frames_lost_in_transport"] = int(values.get("frames_lost_in_transport", "0"))
    except (KeyError, ValueError):
        return None
    for key in ("processing_time_ms", "processing_time_max_ms", "inference_time_ms", "input_rate_hz",
                "output_rate_hz"):
        try:
            d[key] = float(values.get(key, "nan"))
        except ValueError:
            d[key] = float("nan")
    d["level"] = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else int(status.level)
    d["message"] = status.message
    return d


#: Writes the looped bag: ``write_bag(path, frames, (width, height), fps)`` -> a description holding at least
#: ``camera`` (the bag's camera); the caller's (a synthetic drive: ``pebal_training.recipes.drive_bag``).
BagWriter = Callable[[Path, int, tuple[int, int], float], dict]


def soak(duration_s: float, *, write_bag: BagWriter, fps: float = 10.0, size: tuple[int, int] = (1024, 512),
         frames: int = 30,
         warmup_s: float | None = None, sample_period_s: float = 1.0, workdir: Path | None = None,
         verbose: bool = True, progress_every_s: float = 60.0, reliable_input: bool = True,
         node_params: Sequence[str] = ()) -> dict[str, Any]:
    """Runs the node + looping replay for ``duration_s`` (after start-up) and returns the raw record
    plus ``analysis`` (see ``analyse``). ``reliable_input``: a reliable image subscription (else the params
    file's best_effort); ``node_params``: extra ``NAME:=VALUE`` node parameters; ``write_bag`` writes the
    bag that is replayed (:data:`BagWriter`). Raises SoakUnavailable / SoakError."""
    reason = prerequisites()
    if reason is not None:
        raise SoakUnavailable(reason)
    env = ros_harness.use_loopback()  # keeps the caller's ROS_DOMAIN_ID (the test session's or the bench's)
    warm = warmup_for(duration_s) if warmup_s is None else float(warmup_s)
    log = (lambda text: print(f"soak: {text}", flush=True)) if verbose else (lambda text: None)

    from diagnostic_msgs.msg import DiagnosticArray

    from pebal_perception.msg import AnomalyResult

    tmp = tempfile.TemporaryDirectory(prefix="pebal_soak_") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"duration_s": float(duration_s), "warmup_s": warm, "fps": fps,
                              "reliable_input": reliable_input, "node_params": list(node_params),
                              "size": list(size), "bag_frames": frames, "encoding": "bgr8",
                              "ros_domain_id": env["ROS_DOMAIN_ID"], "samples": [], "player_samples": [],
                              "results": [], "diagnostics": [], "final": None}
    procs: list[ChildProcess] = []
    peer = None
    try:
        t0 = time.perf_counter()
        bag = work / "drive_bag"
        drive = write_bag(bag, frames, size, fps)
        cam = drive["camera"]
        log(f"bag: {frames} frames {size[0]}x{size[1]} bgr8 at {fps:g} Hz in {time.perf_counter() - t0:.1f} s")

        # This process's client: the node's results and diagnostics (small messages only).
        peer = Peer("pebal_soak_client")
        lock = threading.Lock()
        clock: dict[str, float | None] = {"t0": None}
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
                d = _parse_status(status)
                if d is None:
                    continue
                t = now()
                with lock:
                    latest["diag"] = d
                    latest["diag_count"] = latest.get("diag_count", 0) + 1
                    if t is not None:
                        record["diagnostics"].append({"t": round(t, 3), **d})

        peer.subscribe(AnomalyResult, f"{NODE_NAME}/result", on_result, ros_harness.reliable_qos(50))
        peer.subscribe(DiagnosticArray, "/diagnostics", on_diag, 20)

        # The node, as launch/detector.launch.py starts it (params file, remappings), on the CPU.
        params = [f"camera.height_m:={float(cam['height'])}", f"camera.pitch_rad:={float(cam['pitch'])}",
                  *([ros_harness.reliable_input_param(IMAGE_TOPIC)] if reliable_input else []), *node_params]
        t_start = time.monotonic()
        node = NodeProcess(ros_harness.detector_args(namespace=NAMESPACE, params=params, image_topic=IMAGE_TOPIC,
                                                     info_topic=INFO_TOPIC), work / "node.log")
        procs.append(node)
        record["node_cmd"] = node.cmd

        # Ready = its first /diagnostics (published by the node's timer once the model is loaded).
        while "diag" not in latest:
            if not node.alive():
                raise SoakError(f"the node exited during start-up (status {node.returncode}): {node.tail()}")
            if time.monotonic() - t_start > STARTUP_TIMEOUT_S:
                raise SoakError(f"the node did not come up within {STARTUP_TIMEOUT_S:.0f} s: {node.tail()}")
            time.sleep(0.1)
        record["startup_s"] = time.monotonic() - t_start
        ready = [ln for ln in node.output().splitlines() if "ready:" in ln]
        record["node_ready_line"] = ready[0].split("ready:", 1)[1].strip() if ready else None
        log(f"node ready in {record['startup_s']:.1f} s (pid {node.pid}): {record['node_ready_line']}")

        player = ChildProcess([PLAYER, "play", bag, "--loop", "--topics", IMAGE_TOPIC, INFO_TOPIC,
                               "--wait-for-subscribers", "--wait-timeout", "20"], work / "player.log")
        procs.append(player)
        record["player_cmd"] = player.cmd
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
                sample = memory_sample(node.pid) if node.alive() else None
                if sample is None:
                    alive = False
                    record["node_died_at_s"] = round(t, 2)
                    break
                record["samples"].append({"t": round(t, 3), **sample, "machine_busy_s": machine_busy_s()})
                player_sample = memory_sample(player.pid) if player.alive() else None
                if player_sample is not None:
                    record["player_samples"].append({"t": round(t, 3), "rss_kb": player_sample["rss_kb"],
                                                     "cpu_s": player_sample["cpu_s"]})
                next_sample += sample_period_s
            if not player.alive():
                raise SoakError(f"pebal-bag play exited (status {player.returncode}): "
                                f"{player.output().strip()[-400:]}")
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
        player.stop()
        record["player_status"] = player.returncode
        m = re.search(r"published (\d+) messages", player.output())
        record["player_messages_published"] = int(m.group(1)) if m else None
        if alive:
            # Two diagnostics after the last frame was received, with the same counters: drained.
            deadline = time.monotonic() + 15.0
            previous = None
            while time.monotonic() < deadline and node.alive():
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
        if node.alive() and node.stop() is None:
            record["node_killed"] = True
        record["node_exit_status"] = node.returncode
        record["node_exit_s"] = node.stop_s if node.stop_s is not None else 0.0
        record["node_log_tail"] = node.tail(5)
    finally:
        for proc in procs:
            proc.kill()
        if peer is not None:
            peer.close()
        if tmp is not None:
            tmp.cleanup()
    record["analysis"] = analyse(record)
    return record


# ------------------------------------------------------------------------------------------ report

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


def _busy_text(first: dict[str, Any], last: dict[str, Any]) -> str:
    parts = []
    if first.get("inference_ms_median") is not None and last.get("inference_ms_median") is not None:
        parts.append(f"inference {first['inference_ms_median']:.0f} -> {last['inference_ms_median']:.0f} ms")
    if "other_cores" in first and "other_cores" in last:
        parts.append(f"other processes {first['other_cores']:.2f} -> {last['other_cores']:.2f} cores busy")
    return "; " + ", ".join(parts) if parts else ""

