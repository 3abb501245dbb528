"""Random draws made while building a world: values from config ranges and jittered colours."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _u(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _ri(rng: np.random.Generator, lo_hi: Sequence[int]) -> int:
    return int(rng.integers(int(lo_hi[0]), int(lo_hi[1]) + 1))


def _jit(rng: np.random.Generator, rgb: Sequence[float], amount: float = 10.0) -> np.ndarray:
    """A colour jittered by roughly ``amount`` (uniform noise of the same standard deviation)."""
    j = (rng.random(3) - 0.5) * (amount * 3.4641)
    j += rgb
    return j
