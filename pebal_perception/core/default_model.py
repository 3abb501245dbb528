"""Where the embedded default (synthetic-world demo) model lives inside the package."""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "data" / "default_model.pt"


def default_checkpoint() -> Path:
    """Path of the embedded default model; FileNotFoundError with a hint when it is not installed."""
    if not DEFAULT_MODEL_PATH.is_file():
        raise FileNotFoundError(f"no embedded default model at {DEFAULT_MODEL_PATH}; pass --checkpoint "
                                "(e.g. the ESPNetv2 Cityscapes weights with --model espnetv2)")
    return DEFAULT_MODEL_PATH
