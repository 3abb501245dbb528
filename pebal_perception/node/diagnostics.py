"""What the detector node reports on ``/diagnostics``, ROS-free: its status level and message (what
happened within the last window, :class:`~pebal_perception.node.processing.RecentEvents`) and its values
(the node's and the detector's cumulative counters, rates and times since the previous report)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK, WARN, ERROR = "OK", "WARN", "ERROR"


@dataclass
class NodeCounters:
    """The node's own counts at one report (the detector keeps the rest: Detector.status())."""

    received: int
    processed: int
    failed: int  # taken from the mailbox but not published (processing error, out of memory)
    discarded: int  # processed but not published: deactivated during the frame
    images_built: int
    lost_in_transport: int
    dropped: int  # replaced in the mailbox before they were processed
    rejected: dict[str, int]
    input_subscribed: bool
    seconds: float  # since the previous report
    received_before: int  # at the previous report
    processed_before: int
    processing_ms: list[float] = field(default_factory=list)  # receipt -> published, since the previous report
    inference_ms: list[float] = field(default_factory=list)


def status(events: Any, counts: NodeCounters, detected: Any, engine: Any, positions_wanted: bool) -> tuple[str, str]:
    """The level (OK, WARN, ERROR) and message: the most serious thing that happened within the window."""
    failure = events.recent("processing_failed")
    if failure:
        return ERROR, f"processing failed {failure[0]:.0f} s ago: {failure[1]}"
    if detected.degraded:
        return WARN, f"out of device memory: now {engine.precision} on {engine.device}"
    oom_dropped = events.recent("out_of_memory_dropped")
    if oom_dropped:
        return WARN, f"out of device memory: frames dropped (last {oom_dropped[0]:.0f} s ago)"
    if counts.received == 0:
        return WARN, "no input images yet"
    rejection = events.recent("rejected")
    if rejection:
        return WARN, f"input images rejected (last {rejection[0]:.0f} s ago: {rejection[1]})"
    lost = events.recent("lost_in_transport")
    if lost:
        return WARN, (f"input frames lost in transport (last {lost[0]:.0f} s ago, {lost[1]}): see the node's "
                      "log for the remedy")
    capped = events.recent("regions_over_cap")
    if capped:
        return WARN, f"too many candidate regions {capped[0]:.0f} s ago: {capped[1]}"
    forgot = events.recent("tracking_forgot")
    if forgot:
        return WARN, f"tracking forgot obstacles {forgot[0]:.0f} s ago: {forgot[1]}"
    if detected.camera_info_problem and positions_wanted:
        return WARN, f"no ground positions: camera_info ignored ({detected.camera_info_problem})"
    adaptation = getattr(detected, "adaptation", None)
    if adaptation is not None and adaptation.status.startswith("unavailable"):
        return WARN, f"adaptation {adaptation.status}"
    return OK, "running"


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "nan"


def _adaptation(state: Any) -> list[tuple[str, str]]:
    """The batch-norm adaptation's keys (core/adaptation.py): adaptation is off, on or 'unavailable: ...'."""
    if state is None:
        return []
    return [("adaptation", str(state.status)),
            ("adaptation_momentum", f"{state.momentum:g}"),
            ("adaptation_frames_adapted", str(state.frames_adapted)),
            ("adaptation_frames_paused", str(state.frames_paused)),
            ("adaptation_drift", f"{state.drift:.4f}")]


def values(counts: NodeCounters, detected: Any, engine: Any, *, model_id: str, network_input: str,
           threshold: float, cpu_threads: int, window_s: float) -> list[tuple[str, str]]:
    """The key/value pairs of one report, in a fixed order."""
    dt = max(counts.seconds, 1e-6)
    tracked = detected.tracking
    proc = counts.processing_ms
    return [
        ("input_rate_hz", f"{(counts.received - counts.received_before) / dt:.2f}"),
        ("output_rate_hz", f"{(counts.processed - counts.processed_before) / dt:.2f}"),
        ("processing_time_ms", _mean(proc)),
        ("processing_time_max_ms", f"{max(proc):.2f}" if proc else "nan"),
        ("inference_time_ms", _mean(counts.inference_ms)),
        ("frames_received", str(counts.received)),
        ("frames_processed", str(counts.processed)),
        ("images_built", str(counts.images_built)),
        ("input_subscribed", "yes" if counts.input_subscribed else "no"),
        ("dropped_frames", str(counts.dropped)),
        ("frames_failed", str(counts.failed)),
        ("frames_discarded_at_deactivation", str(counts.discarded)),
        ("frames_lost_in_transport", str(counts.lost_in_transport)),
        ("rejected_total", str(sum(counts.rejected.values()))),
        ("camera_info_rejected", str(detected.camera_info_rejected)),
        ("regions_over_cap", str(detected.regions_over_cap)),
        ("tracking_streams", str(tracked.streams)),
        ("tracking_restarts", str(tracked.jump_back_resets)),
        ("tracking_streams_forgotten", str(tracked.streams_forgotten)),
        ("tracking_obstacles_forgotten", str(tracked.obstacles_forgotten)),
        *_adaptation(getattr(detected, "adaptation", None)),
        *((f"rejected.{reason}", str(count)) for reason, count in sorted(counts.rejected.items())),
        ("out_of_memory_frames", str(detected.out_of_memory_frames)),
        ("out_of_memory_dropped", str(detected.out_of_memory_dropped)),
        ("degraded", ",".join(detected.degraded) or "no"),
        ("device", str(engine.device)),
        ("precision", str(engine.precision)),
        ("backend", str(engine.backend)),
        ("cpu_threads", str(cpu_threads)),
        ("model_id", model_id),
        ("network_input", network_input),
        ("threshold", f"{threshold:g}"),
        ("status_window_s", f"{window_s:g}"),
    ]
