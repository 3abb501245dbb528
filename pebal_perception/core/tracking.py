"""Persistence over frames for obstacle detections, so that a planner does not see flicker.

Rules, per call of ``ObstacleTracker.update`` (one frame):

* Association: every live track (tentative, confirmed, held) is compared with every detection by the
  last bbox of the track (no motion model). Pairs with IoU >= ``min_iou`` are matched greedily by
  descending IoU; then pairs below ``min_iou`` whose centroid distance is <= ``max_centroid_distance``
  * sqrt(area of the larger box) are matched greedily by ascending distance. A detection goes to at most
  one track and vice versa; ties go to the older track (lower id), then to the earlier detection.
  Unmatched detections start tentative tracks (new ids, in detection order).
* Confirmation (k-of-n): a track is confirmed once it was detected in at least ``confirm_hits`` (k) of
  the last ``confirm_window`` (n) frames; it stays confirmed for the rest of its life.
* Reporting: a track is reported while it is confirmed and has been missed for at most ``hold_frames``
  (m) consecutive frames; a held track keeps the bbox, score and payload of its last detection.
  A confirmed track detected again after a longer gap (while still alive) is reported again, same id.
* Deletion: a track missed for more than max(m, n) consecutive frames is deleted; so is a tentative
  track whose remaining hits in the window are worthless, i.e. even if detected in each of the next
  k-1 frames it would not reach k hits (it could not be confirmed sooner than a fresh track).
* Ids start at 1 and are never reused within a tracker's life (``reset`` does not restart them); after
  2**32 - 1 they wrap to 1, skipping ids still in use.
* Time: equal stamps are allowed (each call is a frame), and so is a stamp up to ``JUMP_BACK_NS`` older
  than the previous frame's (frames delivered out of order, two cameras on one topic, a clock stepping
  backwards): such a frame is tracked as usual. A stamp more than ``JUMP_BACK_NS`` older starts a new
  timeline (a bag replayed from its start, a clock reset): the tracker resets before the frame is
  processed and counts it (``jump_back_resets``, and the reported obstacles it forgot in
  ``forgotten_on_reset``) so that the caller can say so.
* ``TrackingConfig(enabled=False)``, or k = n = 1 with m = 0, reports every detection in the frame it is
  seen and never holds one. When disabled, every detection is reported as a fresh track (age 1,
  missed 0, confirmed), with a new id per detection: ids are then NOT stable across frames.

Cost: O(tracks x detections) per frame.
"""
from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pebal_perception.core.fields import check_ranges, setting

#: Track ids are uint32 on the wire; 0 is never used.
MAX_TRACK_ID = 2**32 - 1

#: A frame stamped more than this before the previous one starts a new timeline (module docstring);
#: a smaller step back is jitter or reordering within one drive, which must not drop what is tracked.
JUMP_BACK_NS = 1_000_000_000


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = setting(
        True, "Persistence over frames: obstacles are associated across frames (box IoU / centroid) and get a "
        "stable track_id; off = every detection is reported at once.", param="tracking.enabled")
    confirm_hits: int = setting(  # k: seen in at least k ...
        2, "An obstacle is reported once detected in this many of the last tracking.confirm_window frames.",
        param="tracking.confirm_hits", value_range=(1, 100))
    confirm_window: int = setting(  # n: ... of the last n frames (1 <= k <= n)
        3, "Window (frames) for tracking.confirm_hits.", param="tracking.confirm_window", value_range=(1, 100))
    hold_frames: int = setting(  # m: keep reporting a confirmed track this many frames after its last detection
        2, "A reported obstacle stays reported this many frames after it was last detected.",
        param="tracking.hold_frames", value_range=(0, 100))
    min_iou: float = 0.1  # association: bbox IoU at least this (0 < min_iou <= 1) ...
    max_centroid_distance: float = 0.5  # ... or centroid distance <= this * sqrt(larger box area), >= 0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, (bool, np.bool_)):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        _check_int("confirm_hits", self.confirm_hits, 1)
        _check_int("confirm_window", self.confirm_window, 1)
        _check_int("hold_frames", self.hold_frames, 0)
        if self.confirm_hits > self.confirm_window:
            raise ValueError(f"confirm_hits ({self.confirm_hits}) must be <= confirm_window "
                             f"({self.confirm_window})")
        min_iou = _check_float("min_iou", self.min_iou)
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        distance = _check_float("max_centroid_distance", self.max_centroid_distance)
        if distance < 0.0:
            raise ValueError(f"max_centroid_distance must be >= 0, got {distance}")
        check_ranges(self)


@dataclass
class Detection:
    """One region found in one frame."""

    bbox: tuple[int, int, int, int]  # x, y, w, h pixels (w, h >= 0)
    score: float  # region score
    payload: Any = None  # caller's object (e.g. the Obstacle summary); carried through untouched

    def __post_init__(self) -> None:
        try:
            box = tuple(operator.index(v) for v in self.bbox)
        except TypeError:
            raise ValueError(f"bbox must be 4 integers (x, y, w, h), got {self.bbox!r}") from None
        if len(box) != 4:
            raise ValueError(f"bbox must be 4 integers (x, y, w, h), got {self.bbox!r}")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"bbox width and height must be >= 0, got {box}")
        self.bbox = box
        self.score = float(self.score)


@dataclass
class Track:
    """A snapshot of one track after an update (the tracker hands out copies)."""

    track_id: int  # stable, 1 .. 2**32 - 1, never reused within a tracker's life
    bbox: tuple[int, int, int, int]  # from the latest associated detection
    score: float
    payload: Any
    first_seen_ns: int  # stamp of the first frame the track was detected in
    last_seen_ns: int  # stamp of the latest frame it was detected in
    age_frames: int  # frames since the first detection (first frame = 1), missed frames included
    hits: int  # detections within the last confirm_window frames
    missed: int  # consecutive frames without a detection (0 = detected in this frame)
    confirmed: bool  # ever reached k-of-n
    hold_frames: int = 0  # the tracker's hold_frames (m) when this snapshot was taken

    @property
    def reported(self) -> bool:
        return self.confirmed and self.missed <= self.hold_frames


def _iou_and_distance(track_boxes: np.ndarray, det_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                  np.ndarray]:
    """(T, D) IoU, centroid distance and sqrt(area of the larger box) for (T, 4) and (D, 4) xywh boxes."""
    t = track_boxes[:, None, :]
    d = det_boxes[None, :, :]
    ix = np.clip(np.minimum(t[..., 0] + t[..., 2], d[..., 0] + d[..., 2]) - np.maximum(t[..., 0], d[..., 0]), 0, None)
    iy = np.clip(np.minimum(t[..., 1] + t[..., 3], d[..., 1] + d[..., 3]) - np.maximum(t[..., 1], d[..., 1]), 0, None)
    inter = ix * iy
    area_t = t[..., 2] * t[..., 3]
    area_d = d[..., 2] * d[..., 3]
    union = area_t + area_d - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    dx = (t[..., 0] + t[..., 2] / 2) - (d[..., 0] + d[..., 2] / 2)
    dy = (t[..., 1] + t[..., 3] / 2) - (d[..., 1] + d[..., 3] / 2)
    return iou, np.hypot(dx, dy), np.sqrt(np.maximum(area_t, area_d))


class TrackIds:
    """The id counter of one or more trackers: trackers that share one (the streams of one topic) never
    hand out the same id while both use it."""

    def __init__(self) -> None:
        self._next = 1

    def allocate(self, in_use: set[int]) -> int:
        while True:
            track_id = self._next
            self._next = 1 if self._next >= MAX_TRACK_ID else self._next + 1
            if track_id not in in_use:
                return track_id


class ObstacleTracker:
    """k-of-n confirmation, m-frame hold and stable ids for per-frame detections (rules: module doc).
    ``ids``: a counter shared with other trackers (default: its own)."""

    def __init__(self, config: TrackingConfig = TrackingConfig(), ids: TrackIds | None = None) -> None:
        if not isinstance(config, TrackingConfig):
            raise ValueError(f"config must be a TrackingConfig, got {type(config).__name__}")
        self._config = config
        self._pending: TrackingConfig | None = None
        self._ids = ids if ids is not None else TrackIds()
        self._tracks: list[Track] = []  # live tracks, ascending id (ids only grow until a wrap)
        self._history: dict[int, deque[bool]] = {}  # track id -> detected?, oldest first, last n frames
        self._last_stamp: int | None = None
        self.jump_back_resets = 0  # resets because a stamp jumped back by more than JUMP_BACK_NS
        self.forgotten_on_reset = 0  # reported (confirmed) tracks those resets dropped

    @property
    def config(self) -> TrackingConfig:
        """The configuration in force (a pending ``set_config`` takes over at the next update)."""
        return self._config

    @property
    def tracks(self) -> list[Track]:
        """Copies of all live tracks, tentative and held ones included, sorted by id (for debugging)."""
        return [replace(t) for t in sorted(self._tracks, key=lambda t: t.track_id)]

    def reset(self) -> None:
        """Forgets every track and the last stamp. The id counter is kept, so ids stay unique."""
        self._tracks = []
        self._history = {}
        self._last_stamp = None

    def set_config(self, config: TrackingConfig) -> None:
        """Takes effect at the next ``update``.

        Switching ``enabled`` resets the tracker. Otherwise tracks are kept: their per-frame history is
        trimmed to the newest ``confirm_window`` frames when the window shrinks (frames before a grown
        window count as misses), confirmed tracks stay confirmed, and the new deletion rules apply from
        that update on.
        """
        if not isinstance(config, TrackingConfig):
            raise ValueError(f"config must be a TrackingConfig, got {type(config).__name__}")
        self._pending = config

    def update(self, detections: Sequence[Detection], stamp_ns: int) -> list[Track]:
        """Associates, updates, returns the tracks to REPORT this frame (confirmed, not beyond hold), sorted by
        track_id. A stamp more than ``JUMP_BACK_NS`` older than the previous one resets the tracker first
        (counted in ``jump_back_resets``)."""
        if isinstance(stamp_ns, bool):
            raise ValueError(f"stamp_ns must be an integer, got {stamp_ns!r}")
        try:
            stamp = operator.index(stamp_ns)
        except TypeError:
            raise ValueError(f"stamp_ns must be an integer, got {stamp_ns!r}") from None
        for det in detections:
            if not isinstance(det, Detection):
                raise ValueError(f"detections must be Detection objects, got {type(det).__name__}")
        if self._last_stamp is not None and stamp < self._last_stamp - JUMP_BACK_NS:
            self.jump_back_resets += 1
            self.forgotten_on_reset += sum(t.reported for t in self._tracks)
            self.reset()
        self._apply_pending_config()
        self._last_stamp = stamp
        cfg = self._config
        if not cfg.enabled:
            return [Track(track_id=self._allocate_id(), bbox=det.bbox, score=det.score, payload=det.payload,
                          first_seen_ns=stamp, last_seen_ns=stamp, age_frames=1, hits=1, missed=0,
                          confirmed=True, hold_frames=cfg.hold_frames) for det in detections]

        matches = self._associate(detections)
        for track in self._tracks:
            history = self._history[track.track_id]
            det_index = matches.get(track.track_id)
            if det_index is None:
                history.append(False)
                track.missed += 1
            else:
                det = detections[det_index]
                history.append(True)
                track.bbox, track.score, track.payload = det.bbox, det.score, det.payload
                track.last_seen_ns = stamp
                track.missed = 0
            track.age_frames += 1
            track.hits = sum(history)
            track.confirmed = track.confirmed or track.hits >= cfg.confirm_hits
            track.hold_frames = cfg.hold_frames
        matched = set(matches.values())
        for index, det in enumerate(detections):
            if index in matched:
                continue
            track = Track(track_id=self._allocate_id(), bbox=det.bbox, score=det.score, payload=det.payload,
                          first_seen_ns=stamp, last_seen_ns=stamp, age_frames=1, hits=1, missed=0,
                          confirmed=cfg.confirm_hits <= 1, hold_frames=cfg.hold_frames)
            self._history[track.track_id] = deque([True], maxlen=cfg.confirm_window)
            self._tracks.append(track)
        self._tracks = [t for t in self._tracks if self._alive(t)]
        live = {t.track_id for t in self._tracks}
        self._history = {tid: h for tid, h in self._history.items() if tid in live}
        return [replace(t) for t in sorted(self._tracks, key=lambda t: t.track_id) if t.reported]

    # -- internals -------------------------------------------------------------------------------------

    def _apply_pending_config(self) -> None:
        new, self._pending = self._pending, None
        if new is None:
            return
        old, self._config = self._config, new
        if new.enabled != old.enabled:
            self.reset()
        elif new.confirm_window != old.confirm_window:
            self._history = {tid: deque(h, maxlen=new.confirm_window) for tid, h in self._history.items()}
            for track in self._tracks:
                track.hits = sum(self._history[track.track_id])

    def _allocate_id(self) -> int:
        return self._ids.allocate({t.track_id for t in self._tracks})

    def _associate(self, detections: Sequence[Detection]) -> dict[int, int]:
        """Track id -> detection index, greedy as described in the module docstring."""
        if not self._tracks or not detections:
            return {}
        cfg = self._config
        ids = [t.track_id for t in self._tracks]
        track_boxes = np.array([t.bbox for t in self._tracks], dtype=np.float64).reshape(-1, 4)
        det_boxes = np.array([d.bbox for d in detections], dtype=np.float64).reshape(-1, 4)
        iou, dist, scale = _iou_and_distance(track_boxes, det_boxes)
        by_iou = [(-iou[i, j], ids[i], j) for i, j in zip(*np.nonzero(iou >= cfg.min_iou))]
        gate = (iou < cfg.min_iou) & (dist <= cfg.max_centroid_distance * scale)
        by_distance = [(dist[i, j], ids[i], j) for i, j in zip(*np.nonzero(gate))]
        matches: dict[int, int] = {}
        used: set[int] = set()
        for _, track_id, det_index in sorted(by_iou) + sorted(by_distance):
            if track_id in matches or det_index in used:
                continue
            matches[track_id] = int(det_index)
            used.add(int(det_index))
        return matches

    def _alive(self, track: Track) -> bool:
        cfg = self._config
        if track.missed > max(cfg.hold_frames, cfg.confirm_window):
            return False
        if track.confirmed:
            return True
        history = list(self._history[track.track_id])
        k, n = cfg.confirm_hits, cfg.confirm_window
        # Detected in each of the next j frames (j < k), the window then holds the newest n - j entries
        # of today's history plus j hits; if none of those reaches k, a fresh track would do as well.
        return any(sum(history[-(n - j):]) + j >= k for j in range(1, k))
