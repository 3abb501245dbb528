"""Argument helpers shared by the command-line tools of both packages (pebal-detect and the training
CLIs pebal-eval / pebal-calibrate / pebal-export / pebal-finetune / pebal-synth).

It lives in the core so that training need not import perception's CLI package; like all of the core
it imports neither ROS nor training code.
"""
from __future__ import annotations

import argparse
import math

from pebal_perception.core.limits import frame_size_problem


def image_size(text: str, allow_native: bool = False) -> tuple[int, int] | str:
    """'WIDTHxHEIGHT' -> (height, width); also 'native' when ``allow_native``. For argparse ``type=``."""
    if allow_native and text == "native":
        return "native"
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        hint = " or 'native'" if allow_native else ""
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 1024x512){hint}, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def image_size_or_native(text: str) -> tuple[int, int] | str:
    return image_size(text, allow_native=True)


def frame_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width) of camera frames (``--size`` of pebal-bag from-video and
    pebal-camera), within the limits frames are held to where footage comes in
    (:func:`~pebal_perception.core.limits.frame_size_problem`). For argparse ``type=``."""
    height, width = image_size(text)
    problem = frame_size_problem(width, height, what="size")
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return height, width


def positive_number(text: str) -> float:
    """A finite number > 0 (rates, durations). For argparse ``type=``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, every N-th frame). For argparse ``type=``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


class UsageError(Exception):
    """A command-line usage error; the tools print it as one ``prog: error: ...`` line, exit 2."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)
