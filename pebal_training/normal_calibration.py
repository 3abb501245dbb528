"""Calibration from normal driving: the threshold at which at most a given share of normal frames reports
any obstacle after the full post-processing (``pebal_perception.core.postprocess``), and an ego-vehicle
mask estimated from the same drive.

Per frame, the *clean threshold* is the highest threshold at which the frame still reports an obstacle
(found by a scan down from its top score, refined by bisection); a frame is a false frame at threshold
``t`` when its clean threshold is at least ``t``. With ``N`` normal frames and a target rate ``r``, at most
``m = floor(r N)`` may be false, so the calibrated threshold lies just above the ``(m + 1)``-th largest
clean threshold. (Reporting is not monotone in the threshold: at very low thresholds the whole road is
one candidate region, which fails the surface test; hence the scan from the top, not a bisection over
the whole range.)

For labelled obstacles the *found threshold* of an object is the highest threshold at which reported
regions still cover ``min_coverage`` of it (the same bisection), so recall against threshold is the share
of objects whose found threshold is at least that threshold. Plain functions, no ROS, no training.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import cv2
import numpy as np

from pebal_perception.core.constants import VOID
from pebal_perception.core.postprocess import GroundModel, PostProcessConfig, mask_to_polygon, process_frame

TOLERANCE = 1e-3  # bisection resolution in score units (nats)
MIN_EGO_FRAMES = 3


GRID_STEP = 0.25  # coarse scan step in score units before the bisection


def _finite_range(score: np.ndarray) -> tuple[float, float]:
    finite = score[np.isfinite(score)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _at(config: PostProcessConfig, threshold: float) -> PostProcessConfig:
    return replace(config, threshold=float(np.clip(threshold, -1e6, 1e6)))


def _highest_true(test, low: float, high: float, step: float, tolerance: float) -> float:
    """The highest threshold in [low, high] at which ``test`` holds, scanning down from ``high`` in
    ``step``s and refining the first hit by bisection; -inf when it holds nowhere on the scan.

    Neither "reports something" nor "the object is found" is monotone in the threshold: at very low
    thresholds the whole road becomes one candidate region that fails the surface test, so a plain
    bisection over the whole range would stop in that regime. Scanning from the top finds the highest
    threshold at which the frame still reports (the object is still found)."""
    t = high
    while t >= low:
        if test(t):
            upper = t + step
            while upper - t > tolerance:
                mid = 0.5 * (t + upper)
                if test(mid):
                    t = mid
                else:
                    upper = mid
            return t
        t -= step
    return -math.inf


def clean_threshold(semantic: np.ndarray | None, score: np.ndarray, config: PostProcessConfig,
                    ground: GroundModel | None = None, step: float = GRID_STEP, tolerance: float = TOLERANCE) -> float:
    """The threshold from which up the frame reports no obstacle (the highest threshold at which
    ``process_frame`` still reports one, to ``tolerance``); -inf when it never reports anything."""
    low, high = _finite_range(score)

    def reports(t: float) -> bool:
        return bool(process_frame(semantic, score, _at(config, t), ground).obstacles)

    return _highest_true(reports, low - config.hysteresis, high, step, tolerance)


def _coverage(labels: np.ndarray | None, instance: np.ndarray) -> float:
    if labels is None:
        return 0.0
    return float((labels[instance] > 0).mean()) if instance.any() else 0.0


def found_thresholds(semantic: np.ndarray | None, score: np.ndarray, instances: np.ndarray,
                     config: PostProcessConfig, ground: GroundModel | None = None, min_coverage: float = 0.25,
                     step: float = GRID_STEP, tolerance: float = TOLERANCE) -> list[float]:
    """Per labelled object (instance ids 1..G, in order): the highest threshold at which the reported
    regions cover at least ``min_coverage`` of it; -inf when it is never found."""
    low, high = _finite_range(score)
    out = []
    for k in range(1, int(instances.max(initial=0)) + 1):
        instance = instances == k
        if not instance.any():
            continue
        values = score[instance]
        top = float(np.nanmax(values)) if np.isfinite(values).any() else low

        def found(t: float, instance=instance) -> bool:
            labels = process_frame(semantic, score, _at(config, t), ground).labels
            return _coverage(labels, instance) >= min_coverage

        out.append(_highest_true(found, low - config.hysteresis, min(high, top), step, tolerance))
    return out


def threshold_for_rate(clean: Sequence[float], rate: float, tolerance: float = TOLERANCE) -> float:
    """The threshold at which at most ``floor(rate * N)`` of the frames (their clean thresholds) report
    anything: ``tolerance`` above the ``(m + 1)``-th largest clean threshold (frames that never report
    have -inf and need nothing)."""
    values = np.sort(np.asarray(clean, np.float64))[::-1]
    if values.size == 0:
        raise ValueError("no normal frames to calibrate on")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the false-frame rate must lie in [0, 1], got {rate}")
    m = int(math.floor(rate * values.size + 1e-9))
    if m >= values.size or not math.isfinite(values[m]):  # at most m frames ever report: any threshold
        finite = values[np.isfinite(values)]
        return float(finite.min()) if finite.size else -1e6
    return float(values[m] + tolerance)


def false_frame_rate(clean: Sequence[float], threshold: float) -> float:
    values = np.asarray(clean, np.float64)
    return float((values >= threshold).mean()) if values.size else math.nan


def recall_at(found: Sequence[float], threshold: float) -> float:
    values = np.asarray(found, np.float64)
    return float((values >= threshold).mean()) if values.size else math.nan


def estimate_ego_mask(semantics: Sequence[np.ndarray], scores: Sequence[np.ndarray], agreement: float = 0.9,
                      max_bottom_share: float = 0.35) -> np.ndarray | None:
    """The ego vehicle (hood) of one camera from frames of a normal drive: pixels whose predicted class is
    the same in at least ``agreement`` of the frames and is not road, whose score varies less than over
    the scene (below the median per-pixel spread), and which are connected to the bottom row within the
    lowest ``max_bottom_share`` of the image. None with fewer than MIN_EGO_FRAMES frames, frames of
    different sizes, or nothing found."""
    if len(semantics) < MIN_EGO_FRAMES or len({s.shape for s in semantics}) != 1:
        return None
    stack = np.stack(semantics)
    h, w = stack.shape[1:]
    # The most frequent class per pixel, and how often it occurs.
    counts = np.stack([(stack == c).sum(axis=0) for c in range(int(stack.max()) + 1)])
    mode = counts.argmax(axis=0)
    share = counts.max(axis=0) / stack.shape[0]
    spread = np.std(np.stack([np.nan_to_num(s, nan=0.0) for s in scores]), axis=0)
    stable = (share >= agreement) & (mode != 0) & (mode != VOID) & (spread <= np.median(spread))
    stable[: int(h * (1.0 - max_bottom_share))] = False
    if not stable[-1].any():
        return None
    n, labels = cv2.connectedComponents(stable.astype(np.uint8), connectivity=8)
    touching = np.unique(labels[-1][labels[-1] > 0])
    mask = np.isin(labels, touching)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8)).astype(bool)
    return mask if mask.sum() >= 0.002 * h * w else None


def ego_polygon(semantics: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> tuple[float, ...]:
    """:func:`estimate_ego_mask` as a normalised polygon (dilated by 1 % of the height), () when none."""
    mask = estimate_ego_mask(semantics, scores)
    if mask is None:
        return ()
    r = max(1, int(0.01 * mask.shape[0]))
    mask = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    # The hood reaches the image bottom: close the polygon along it.
    mask[-1] |= mask[-2]
    return mask_to_polygon(mask.astype(bool))
