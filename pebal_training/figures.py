"""Figures of the evaluation tools, written as files: one PNG per figure, atomically."""
from __future__ import annotations

import io
from pathlib import Path

from pebal_perception.core.io import atomic_write


def save_figure(path: Path, fig, software: str | None = None) -> None:
    """``fig`` (a matplotlib Figure) as a PNG at ``path``, atomically; ``software`` goes into the PNG's
    Software text (a tool that replaces only its own files checks it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": software} if software else None)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
