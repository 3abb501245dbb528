"""Value ranges that every entry point enforces on what it is given (parameters, checkpoint metadata).

Outputs carry thresholds and scores as float32 (``AnomalyResult``, ``Obstacle``), so a threshold must be
a finite float32; anything larger would make every frame fail to serialise.
"""
from __future__ import annotations

import math

# Largest magnitude a threshold may have: free energies of real networks lie within a few hundred of 0,
# and float32 outputs cannot carry more than ~3.4e38. 1e6 keeps a typo (1e308) from being accepted.
MAX_ABS_THRESHOLD = 1.0e6


def check_threshold(value: float, what: str = "threshold") -> float:
    """Returns ``value`` as a float when it is a usable obstacle threshold; raises ValueError otherwise."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}")
    if abs(number) > MAX_ABS_THRESHOLD:
        raise ValueError(f"{what} {number:g} is outside [-{MAX_ABS_THRESHOLD:g}, {MAX_ABS_THRESHOLD:g}] "
                         "(free-energy scores of real models lie far inside it)")
    return number
