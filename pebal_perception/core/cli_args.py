"""Argument helpers shared by the command-line tools of both packages (pebal-detect and the training
CLIs pebal-eval / pebal-calibrate / pebal-export / pebal-finetune / pebal-synth).

It lives in the core so that training need not import perception's CLI package; like all of the core
it imports neither ROS nor training code.
"""
from __future__ import annotations

import argparse


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


class UsageError(Exception):
    """A command-line usage error; the tools print it as one ``prog: error: ...`` line, exit 2."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)
