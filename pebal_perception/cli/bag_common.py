"""What every ``pebal-bag`` subcommand shares: the program name, the one-line error, the Ctrl-C handling.

A module of its own so that the subcommands never import :mod:`pebal_perception.cli.bag`, which imports
them: run as ``python -m pebal_perception.cli.bag`` that module would be loaded a second time, with a
second ``CliError`` its ``main`` would not catch."""
from __future__ import annotations

import signal
import threading
from typing import Any

PROG = "pebal-bag"


class CliError(Exception):
    """One-line error, exit status 1."""


class _Interrupt:
    """SIGINT/SIGTERM -> an event (restores the previous handlers on exit)."""

    def __init__(self):
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
