"""Data sources for training and testing.

``pebal_training.data.synthetic`` is the procedural street-scene generator; its public names are
re-exported here lazily (importing a sibling module such as ``pebal_training.data.labels`` does not load
the generator or OpenCV).
"""
from __future__ import annotations

import importlib
from typing import Any

_SYNTHETIC = (
    "ANOMALY_KINDS",
    "CITYSCAPES_PALETTE",
    "TRAIN_ID_NAMES",
    "VOID",
    "Camera",
    "Obstacle",
    "Scene",
    "SceneConfig",
    "colorize_labels",
    "generate_drive",
    "generate_scene",
)

__all__ = list(_SYNTHETIC)


def __getattr__(name: str) -> Any:
    if name in _SYNTHETIC:
        return getattr(importlib.import_module(f"{__name__}.synthetic"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SYNTHETIC))
