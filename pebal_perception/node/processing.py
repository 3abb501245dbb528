"""What the detector node keeps between messages, ROS-free: the one-slot latest-frame mailbox (newest
frame wins, nothing queues) and the diagnostics window (:class:`RecentEvents`). The per-frame work is
:class:`pebal_perception.core.detector.Detector`.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable


class RecentEvents:
    """The latest event of each kind (when, and what it said), so that a status can reflect what happened
    within the last ``window_s`` seconds instead of everything since start-up (the cumulative counters
    are kept by their owners). Thread-safe; ``clock`` is monotonic seconds (replaceable for tests)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        window_s = float(window_s)
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"the status window must be a positive number of seconds, got {window_s:g}")
        self.window_s = window_s
        self._clock = clock
        self._last: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def note(self, kind: str, text: str = "") -> None:
        with self._lock:
            self._last[kind] = (self._clock(), text)

    def recent(self, kind: str) -> tuple[float, str] | None:
        """``(seconds ago, text)`` of the latest ``kind`` event when it lies within the window, else None."""
        with self._lock:
            last = self._last.get(kind)
        if last is None:
            return None
        age = self._clock() - last[0]
        return (age, last[1]) if age <= self.window_s else None


class LatestFrameMailbox:
    """One slot holding the newest unprocessed frame; ``put`` over an unprocessed frame drops it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Stores ``item``; returns True when it replaced (dropped) an unprocessed frame."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """Waits for a frame (or close); returns it, or None on timeout / close."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> bool:
        """Stops accepting frames; a frame still waiting is discarded (counted in ``dropped``, as it was
        never processed) so that nothing stale is processed after a re-activation. Returns True when one
        was."""
        with self._cond:
            self._closed = True
            discarded = self._item is not None
            if discarded:
                self.dropped += 1
            self._item = None
            self._cond.notify_all()
            return discarded

    def open(self) -> None:
        """Accepts frames again after :meth:`close` (a managed node activated again)."""
        with self._cond:
            self._closed = False
