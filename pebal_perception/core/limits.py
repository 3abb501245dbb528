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


#: Largest image (width x height) any entry point decodes, converts or runs (8000 x 8000).
MAX_IMAGE_PIXELS = 64_000_000

#: Longest side over shortest side that an image or a network input may have. Real cameras are within
#: about 4:1 (Cityscapes 2:1, HD 16:9, stitched stereo 4:1); a thinner image is a mistake or an attack,
#: and its thin side would be upscaled to the network size at a cost of gigabytes.
MAX_ASPECT_RATIO = 8


def aspect_ratio_problem(width: int, height: int, what: str = "image") -> str | None:
    """Why a ``width x height`` (both > 0) is too thin, or None when it is within 1:MAX..MAX:1."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side > MAX_ASPECT_RATIO * short_side:
        return (f"{what} {width}x{height} (WxH) has an aspect ratio of {long_side / short_side:.4g}:1, "
                f"outside 1:{MAX_ASPECT_RATIO}..{MAX_ASPECT_RATIO}:1")
    return None


#: Shortest side a camera frame may have where footage comes in (``pebal-bag from-video``, ``pebal-camera``):
#: a frame narrower than one cell of the coarsest network grid (16 px, ESPNetv2's size divisor) shows no scene.
MIN_FRAME_SIDE = 16


def frame_size_problem(width: int, height: int, what: str = "frame") -> str | None:
    """Why a ``width x height`` camera frame is outside the limits (a side under :data:`MIN_FRAME_SIDE`, more
    than :data:`MAX_IMAGE_PIXELS` pixels, an aspect ratio outside 1:MAX..MAX:1), or None when it is within."""
    if width < MIN_FRAME_SIDE or height < MIN_FRAME_SIDE:
        return f"{what} {width}x{height} (WxH) is smaller than {MIN_FRAME_SIDE} pixels on a side"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{what} {width}x{height} (WxH) has {width * height} pixels, over {MAX_IMAGE_PIXELS}"
    return aspect_ratio_problem(width, height, what)


#: Candidate regions post-processing examines per frame (the largest); the rest are counted
#: (``ProcessedFrame.regions_over_cap``). Real frames have a few dozen at most; noise over a whole frame
#: gives tens of thousands, whose tracking alone would take seconds and gigabytes.
MAX_REGIONS_PER_FRAME = 256

