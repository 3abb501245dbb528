"""Where the embedded default (synthetic-world demo) model lives inside the package.

``PEBAL_DEFAULT_MODEL`` (a file path) replaces it, e.g. to deploy a site's own model as the default.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "data" / "default_model.pt"


def default_checkpoint() -> Path:
    """Path of the default model; FileNotFoundError with a hint when it is not there."""
    path = Path(os.environ.get("PEBAL_DEFAULT_MODEL") or DEFAULT_MODEL_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"no default model at {path}; pass a checkpoint "
                                "(e.g. the ESPNetv2 Cityscapes weights with model espnetv2)")
    return path
