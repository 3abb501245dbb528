"""Post-processing with memory, for a stream of frames: :class:`ObstaclePipeline` runs
:func:`~pebal_perception.core.postprocess.process_frame` on each frame, smooths the horizon over recent
frames and tracks obstacles (:mod:`pebal_perception.core.tracking`) per camera stream."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pebal_perception.core.postprocess import GroundModel, ProcessedFrame, process_frame
from pebal_perception.core.postprocess_config import PostProcessConfig

#: Camera streams (frame_id and image size) an ObstaclePipeline tracks at once; the least recently seen
#: one is forgotten beyond this (counted), so a stream of ever-new frame_ids cannot grow memory.
MAX_STREAMS = 8


class _Stream:
    """What one camera stream remembers: its tracker and its recent road-fit horizons."""

    def __init__(self, tracking: Any, horizon_frames: int, ids: Any):
        from pebal_perception.core.tracking import ObstacleTracker

        self.tracker = ObstacleTracker(tracking, ids)
        self.horizons: deque[float] = deque(maxlen=max(1, int(horizon_frames)))


@dataclass
class StreamCounters:
    """What an :class:`ObstaclePipeline` had to forget, for diagnostics (cumulative)."""

    streams: int = 0  # camera streams tracked now
    jump_back_resets: int = 0  # tracking restarted because a stamp jumped back (a bag loop, a clock reset)
    streams_forgotten: int = 0  # streams dropped because more than MAX_STREAMS were seen
    obstacles_forgotten: int = 0  # reported obstacles dropped by those resets and evictions


class ObstaclePipeline:
    """:func:`process_frame` for a stream of frames: the horizon (without a camera model or a configured
    row) is the median of the road fits of the last ``horizon_frames`` frames, and obstacles persist over
    frames through an :class:`~pebal_perception.core.tracking.ObstacleTracker` (k of n, hold m, stable
    ids).

    Each camera stream, told apart by ``stream`` (the header's frame_id) and the image size, has its own
    tracker and horizon (track ids stay unique across them): two cameras remapped onto one topic, or a
    source alternating resolutions, keep their obstacles instead of resetting each other. A stamp that
    jumps back by more than :data:`~pebal_perception.core.tracking.JUMP_BACK_NS` restarts that stream's
    tracking. Every such loss is counted in :attr:`counters` and described through ``on_forget(text,
    reported_lost)``: one line, and how many reported obstacles were dropped (0 when only unconfirmed
    tracks were). Not thread-safe: one per input topic."""

    def __init__(self, tracking: Any = None, horizon_frames: int = 15, max_streams: int = MAX_STREAMS,
                 on_forget: Any = None):
        from pebal_perception.core.tracking import TrackIds, TrackingConfig

        self._tracking = tracking if tracking is not None else TrackingConfig()
        self._horizon_frames = horizon_frames
        self._max_streams = max(1, int(max_streams))
        self._ids = TrackIds()
        self._streams: dict[tuple[str, tuple[int, ...]], _Stream] = {}  # least recently used first
        self._on_forget = on_forget
        self._retired = StreamCounters()  # the counts of streams no longer tracked

    @property
    def tracking(self) -> Any:
        return self._tracking

    def set_tracking(self, tracking: Any) -> None:
        self._tracking = tracking
        for stream in self._streams.values():
            stream.tracker.set_config(tracking)

    def reset(self) -> None:
        """Forgets every stream (the counts stay)."""
        for stream in self._streams.values():
            self._retire(stream)
        self._streams.clear()

    @property
    def counters(self) -> StreamCounters:
        streams = list(self._streams.values())  # one copy: the caller may read while a frame is processed
        trackers = [s.tracker for s in streams]
        retired = self._retired
        return StreamCounters(
            streams=len(trackers), streams_forgotten=retired.streams_forgotten,
            jump_back_resets=retired.jump_back_resets + sum(t.jump_back_resets for t in trackers),
            obstacles_forgotten=retired.obstacles_forgotten + sum(t.forgotten_on_reset for t in trackers))

    def _retire(self, stream: _Stream) -> int:
        """Keeps a dropped stream's counts; returns how many obstacles it was reporting."""
        reporting = sum(t.reported for t in stream.tracker.tracks)
        self._retired.jump_back_resets += stream.tracker.jump_back_resets
        self._retired.obstacles_forgotten += stream.tracker.forgotten_on_reset
        return reporting

    def _stream(self, key: tuple[str, tuple[int, ...]]) -> _Stream:
        stream = self._streams.pop(key, None)
        if stream is None:
            if len(self._streams) >= self._max_streams:
                oldest = next(iter(self._streams))
                reporting = self._retire(self._streams.pop(oldest))
                self._retired.streams_forgotten += 1
                self._retired.obstacles_forgotten += reporting
                self._announce(f"more than {self._max_streams} camera streams (frame_id, size): stopped tracking "
                               f"the least recent one ({oldest[0]!r}, {oldest[1][1]}x{oldest[1][0]})"
                               + (f" and its {reporting} reported obstacle(s)" if reporting else ""), reporting)
            stream = _Stream(self._tracking, self._horizon_frames, self._ids)
        self._streams[key] = stream  # most recently used last
        return stream

    def _announce(self, text: str, reported_lost: int) -> None:
        if self._on_forget is not None:
            self._on_forget(text, reported_lost)

    def process(self, semantic: np.ndarray | None, score: np.ndarray, config: PostProcessConfig,
                stamp_ns: int, ground: GroundModel | None = None, stream: str = "") -> ProcessedFrame:
        """One frame of camera ``stream`` (its frame_id): its :class:`ProcessedFrame` with ``obstacles``
        replaced by the *reported* ones (tracked: ``track_id``, ``age_frames``, ``first_seen_ns``; ``held``
        ones were not detected in this frame and keep their last box) and ``mask``/``labels`` showing the
        reported obstacles detected in this frame."""
        from pebal_perception.core.tracking import JUMP_BACK_NS, Detection

        shape = tuple(np.shape(score))
        state = self._stream((str(stream), shape))
        hint = float(np.median(state.horizons)) if state.horizons else math.nan
        frame = process_frame(semantic, score, config, ground, horizon_hint=hint)
        tracker = state.tracker
        resets, forgotten = tracker.jump_back_resets, tracker.forgotten_on_reset
        tracks = tracker.update([Detection(bbox=o.bbox, score=o.mean_score, payload=o) for o in frame.obstacles],
                                int(stamp_ns))
        if tracker.jump_back_resets != resets:  # the horizon belongs to the old timeline too
            state.horizons.clear()
            lost = tracker.forgotten_on_reset - forgotten
            self._announce(f"tracking restarted for camera stream {str(stream)!r}: its stamp jumped back by more "
                           f"than {JUMP_BACK_NS / 1e9:g} s (a bag replayed in a loop, a clock reset)"
                           + (f"; {lost} reported obstacle(s) must be confirmed again" if lost else ""), lost)
        if math.isfinite(frame.road_fit_horizon):
            state.horizons.append(frame.road_fit_horizon)
        # frame.labels numbers this frame's obstacles; relabelled by one lookup (linear in the pixels,
        # whatever the number of tracks) to the reported order, 0 for those not reported
        relabel = np.zeros(len(frame.obstacles) + 1, np.int32)
        reported = []
        for index, track in enumerate(tracks):
            detected = track.missed == 0
            if detected:
                relabel[track.payload.id + 1] = index + 1
            reported.append(replace(track.payload, id=index, track_id=track.track_id, age_frames=track.age_frames,
                                    first_seen_ns=track.first_seen_ns, held=not detected))
        labels = relabel[frame.labels] if frame.labels is not None else np.zeros(shape, np.int32)
        frame.obstacles, frame.labels, frame.mask = reported, labels, labels > 0
        return frame
