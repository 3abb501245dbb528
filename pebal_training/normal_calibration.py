"""Calibration from normal driving: the threshold at which at most a given share of normal frames reports
any obstacle after the full post-processing (``pebal_perception.core.postprocess``), and an ego-vehicle
mask estimated from the same drive.

Per frame, the *clean threshold* is the highest threshold at which the frame still reports an obstacle
(found by a scan down from its top score, refined by bisection); a frame is a false frame at threshold
``t`` when its clean threshold is at least ``t``. With ``N`` normal frames and a target rate ``r``, at most
``m = floor(r N)`` may be false, so the calibrated threshold lies just above the ``(m + 1)``-th largest
clean threshold. (Reporting is not monotone in the threshold: at very low thresholds the whole road is
one candidate region, which fails the surface test; hence the scan from the top, not a bisection over
the whole range.) The scan steps by GRID_STEP over the scores' range, or, where that would take more than
MAX_SCAN_POINTS steps (absurd scores such as 1e16), over quantiles of the scores that occur; it stays
within the thresholds that can be configured (``pebal_perception.core.limits``). Every search therefore
ends after at most MAX_SCAN_POINTS + MAX_BISECTION_STEPS tests.

For labelled obstacles the *found threshold* of an object is the highest threshold at which reported
regions still cover ``min_coverage`` of it (the same search), so recall against threshold is the share
of objects whose found threshold is at least that threshold.

A normal frame is *usable* when the road is seen in it (:func:`road_seen`): without road nothing can be
reported, so such a frame says nothing about the threshold. :class:`DriveSurvey` gathers, frame by frame,
what a calibration needs besides the clean thresholds (usable frames, ego-mask statistics, horizon rows,
the highest score on the road) in memory that does not grow with the frames. Plain functions, no ROS,
no training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import cv2
import numpy as np

from pebal_perception.core.constants import NUM_INLIER_CLASSES
from pebal_perception.core.limits import MAX_ABS_THRESHOLD
from pebal_perception.core.postprocess import GroundModel, mask_to_polygon, process_frame
from pebal_perception.core.postprocess_config import PostProcessConfig
from pebal_perception.core.road import drivable_mask, fit_road_scale, road_region

TOLERANCE = 1e-3  # bisection resolution in score units (nats)
MIN_EGO_FRAMES = 3

GRID_STEP = 0.25  # coarse scan step in score units before the bisection
# Most thresholds a scan tests: at GRID_STEP that is 512 score units, more than real free energies span
# (they lie within a few hundred of 0); wider ranges are scanned over the scores' quantiles instead.
MAX_SCAN_POINTS = 2048
MAX_BISECTION_STEPS = 64  # halvings that bring any float interval down to adjacent numbers

# A frame is usable when the road it drives on (core.road.road_region: predicted road connected to the
# lower part of the image) covers at least MIN_ROAD_SHARE of it. Calibrating needs at least
# MIN_USABLE_SHARE of every input's frames usable, and MIN_USABLE_FRAMES in all.
MIN_ROAD_SHARE = 0.02
MIN_USABLE_SHARE = 0.5
MIN_USABLE_FRAMES = 3

# Width of the per-pixel ego statistics: the mask is stored as a normalised polygon, so a coarse grid
# loses nothing that matters, and the statistics' memory stays fixed whatever the camera's resolution.
EGO_STATS_WIDTH = 256
# An ego region that the top of its allowed bottom band cuts along more than this share of the width
# goes on above the band: a uniform or static view, not the vehicle.
MAX_CUT_SHARE = 0.5
_VOID_BIN = NUM_INLIER_CLASSES  # the class bin of void and anything outside the inlier classes


def _finite_range(score: np.ndarray) -> tuple[float, float]:
    finite = score[np.isfinite(score)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _at(config: PostProcessConfig, threshold: float) -> PostProcessConfig:
    return replace(config, threshold=float(np.clip(threshold, -MAX_ABS_THRESHOLD, MAX_ABS_THRESHOLD)))


def _scan_points(low: float, high: float, scores: np.ndarray, step: float) -> np.ndarray:
    """The thresholds a scan tests, from ``high`` down to ``low``: every ``step`` when that makes at most
    MAX_SCAN_POINTS of them; otherwise (a range far wider than real scores) quantiles of the ``scores``
    that lie in the range, plus both ends. ``step`` alone cannot serve huge scores: near 1e16 subtracting
    0.25 does not change the number."""
    if not high >= low:
        return np.empty(0)
    count = math.floor((high - low) / step) + 1
    if count <= MAX_SCAN_POINTS:
        return high - step * np.arange(count)
    values = scores[np.isfinite(scores)]
    values = values[(values >= low) & (values <= high)]
    levels = np.quantile(values, np.linspace(1.0, 0.0, MAX_SCAN_POINTS - 2)) if values.size else np.empty(0)
    return np.unique(np.concatenate([[low, high], levels]))[::-1]


def _bisect(test: Callable[[float], bool], holds: float, fails: float, tolerance: float) -> float:
    """The edge between a threshold where ``test`` holds and a higher one where it does not, to ``tolerance``
    or to adjacent floats, in at most MAX_BISECTION_STEPS tests."""
    for _ in range(MAX_BISECTION_STEPS):
        mid = 0.5 * (holds + fails)
        if fails - holds <= tolerance or not holds < mid < fails:
            break
        if test(mid):
            holds = mid
        else:
            fails = mid
    return holds


def highest_threshold(test: Callable[[float], bool], low: float, high: float, scores: np.ndarray,
                      step: float = GRID_STEP, tolerance: float = TOLERANCE) -> float:
    """The highest threshold in [low, high] at which ``test`` holds: a scan down from ``high``
    (:func:`_scan_points` over ``scores``), its first hit refined by bisection; -inf when it holds nowhere
    on the scan. Only thresholds that can be configured (within +-MAX_ABS_THRESHOLD) are tested, and at
    most MAX_SCAN_POINTS + MAX_BISECTION_STEPS of them; [low, high] is moved inside that range (below
    ``low`` every pixel is a candidate, as at ``low``, so a range beyond it is tested at its nearest end).

    Neither "reports something" nor "the object is found" is monotone in the threshold: at very low
    thresholds the whole road becomes one candidate region that fails the surface test, so a plain
    bisection over the whole range would stop in that regime. Scanning from the top finds the highest
    threshold at which the frame still reports (the object is still found)."""
    low, high = (float(np.clip(v, -MAX_ABS_THRESHOLD, MAX_ABS_THRESHOLD)) for v in (low, high))
    points = _scan_points(low, high, scores, step)
    for i, t in enumerate(points):
        if test(float(t)):
            above = float(points[i - 1]) if i else min(float(t) + step, MAX_ABS_THRESHOLD)
            return _bisect(test, float(t), above, tolerance)
    return -math.inf


def clean_threshold(semantic: np.ndarray | None, score: np.ndarray, config: PostProcessConfig,
                    ground: GroundModel | None = None, step: float = GRID_STEP, tolerance: float = TOLERANCE) -> float:
    """The threshold from which up the frame reports no obstacle (the highest threshold at which
    ``process_frame`` still reports one, to ``tolerance``); -inf when it never reports anything."""
    low, high = _finite_range(score)

    def reports(t: float) -> bool:
        return bool(process_frame(semantic, score, _at(config, t), ground).obstacles)

    return highest_threshold(reports, low - config.hysteresis, high, score, step, tolerance)


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

        out.append(highest_threshold(found, low - config.hysteresis, min(high, top), score, step, tolerance))
    return out


def threshold_for_rate(clean: Sequence[float], rate: float, tolerance: float = TOLERANCE,
                       fallback: float | None = None) -> float:
    """The threshold at which at most ``floor(rate * N)`` of the frames (their clean thresholds) report
    anything: ``tolerance`` above the ``(m + 1)``-th largest clean threshold (frames that never report
    have -inf and need nothing).

    When at most ``m`` frames ever report, they may all report: the lowest clean threshold among them keeps the
    rate (the most sensitive threshold these frames vouch for). Not below ``fallback`` either (the caller's
    lower bound, e.g. the highest score on the road of these frames): below the road's own scores the whole road
    is one candidate region, which the post-processing rejects, so "nothing reported" there says nothing about
    later frames. With no frame reporting and no ``fallback`` there is no bound: ValueError, rather than a made-
    up number (-1e6 would put every pixel of every later frame above the threshold)."""
    values = np.sort(np.asarray(clean, np.float64))[::-1]
    if values.size == 0:
        raise ValueError("no normal frames to calibrate on")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the false-frame rate must lie in [0, 1], got {rate}")
    m = int(math.floor(rate * values.size + 1e-9))
    if m < values.size and math.isfinite(values[m]):
        return float(values[m] + tolerance)
    finite = values[np.isfinite(values)]
    bounds = [float(finite.min())] if finite.size else []
    if fallback is not None:
        bounds.append(float(fallback))
    if not bounds:
        raise ValueError(f"no frame of {values.size} reports an obstacle at any threshold: they give the "
                         "threshold no lower bound")
    return max(bounds)


def false_frame_rate(clean: Sequence[float], threshold: float) -> float:
    values = np.asarray(clean, np.float64)
    return float((values >= threshold).mean()) if values.size else math.nan


def recall_at(found: Sequence[float], threshold: float) -> float:
    values = np.asarray(found, np.float64)
    return float((values >= threshold).mean()) if values.size else math.nan


def road_seen(semantic: np.ndarray, min_share: float = MIN_ROAD_SHARE) -> bool:
    """Whether the road the vehicle drives on (:func:`road_region`: predicted road connected to the lower
    part of the image) covers at least ``min_share`` of the frame."""
    return bool(semantic.size) and float(road_region(semantic).mean()) >= min_share


# ---------------------------------------------------------------------------------------------- ego mask
class EgoStatistics:
    """Running per-pixel statistics of a drive for the ego mask, fed one frame at a time: how often each
    class is predicted at each pixel, and the mean and variance of the score there (Welford). Frames
    wider than ``width`` are scaled down to it first, so the memory is fixed (about 100 bytes a pixel of
    that grid) whatever the resolution and the number of frames. A frame of another size than the first
    (another camera) leaves the statistics unusable."""

    def __init__(self, width: int = EGO_STATS_WIDTH):
        self.width = int(width)
        self.frame_shape: tuple[int, int] | None = None
        self.frames = 0
        self.mixed_sizes = False
        self._counts = self._mean = self._m2 = None

    def _small(self, semantic: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = semantic.shape
        if w <= self.width:
            return semantic, score
        size = (self.width, max(1, int(round(h * self.width / w))))
        return (cv2.resize(semantic, size, interpolation=cv2.INTER_NEAREST),
                cv2.resize(score, size, interpolation=cv2.INTER_AREA))

    def add(self, semantic: np.ndarray, score: np.ndarray) -> None:
        if self.frame_shape is None:
            self.frame_shape = semantic.shape
        elif semantic.shape != self.frame_shape:
            self.mixed_sizes = True
        if self.mixed_sizes:
            return
        score = np.nan_to_num(np.asarray(score, np.float32), nan=0.0)
        semantic, score = self._small(np.asarray(semantic, np.uint8), score)
        if self._counts is None:
            self._counts = np.zeros((_VOID_BIN + 1, *semantic.shape), np.uint32)
            self._mean = np.zeros(semantic.shape, np.float64)
            self._m2 = np.zeros(semantic.shape, np.float64)
        pixels = semantic.size
        bins = np.minimum(semantic, _VOID_BIN).astype(np.intp).ravel()
        self._counts.reshape(-1)[bins * pixels + np.arange(pixels)] += 1  # one class per pixel: no repeats
        self.frames += 1
        delta = score - self._mean
        self._mean += delta / self.frames
        self._m2 += delta * (score - self._mean)

    def mask(self, agreement: float = 0.9, max_bottom_share: float = 0.35) -> np.ndarray | None:
        """The ego vehicle (hood) on the statistics' grid: pixels whose predicted class is the same in at
        least ``agreement`` of the frames and is not road, whose score varies less than over the scene
        (at most the median per-pixel spread), and which are connected to the bottom row within the
        lowest ``max_bottom_share`` of the image. None with fewer than MIN_EGO_FRAMES frames, frames of
        different sizes, nothing found, or a region that the band's top cuts along more than
        MAX_CUT_SHARE of the width."""
        if self.frames < MIN_EGO_FRAMES or self.mixed_sizes:
            return None
        mode = self._counts.argmax(axis=0)
        share = self._counts.max(axis=0) / self.frames
        spread = np.sqrt(np.maximum(self._m2 / self.frames, 0.0))
        stable = (share >= agreement) & (mode != 0) & (mode != _VOID_BIN) & (spread <= np.median(spread))
        h, w = stable.shape
        top = int(h * (1.0 - max_bottom_share))
        stable[:top] = False
        if not stable[-1].any():
            return None
        _, labels = cv2.connectedComponents(stable.astype(np.uint8), connectivity=8)
        touching = np.unique(labels[-1][labels[-1] > 0])
        mask = np.isin(labels, touching)
        # A hood ends inside the band, with the road seen above it. A stable region still as wide at the
        # band's top goes on above it: the whole view is static (a black or white video, a wall), and
        # the band would cut an arbitrary piece of it.
        if top < h and mask[top].mean() > MAX_CUT_SHARE:
            return None
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8)).astype(bool)
        return mask if mask.sum() >= 0.002 * h * w else None

    def polygon(self) -> tuple[float, ...]:
        """:meth:`mask` as a normalised polygon (dilated by 1 % of the height), () when none."""
        mask = self.mask()
        if mask is None:
            return ()
        r = max(1, int(0.01 * mask.shape[0]))
        mask = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        # The hood reaches the image bottom: close the polygon along it.
        mask[-1] |= mask[-2]
        return mask_to_polygon(mask.astype(bool))


def _statistics(semantics: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> EgoStatistics:
    stats = EgoStatistics()
    for semantic, score in zip(semantics, scores):
        stats.add(semantic, score)
    return stats


def estimate_ego_mask(semantics: Sequence[np.ndarray], scores: Sequence[np.ndarray], agreement: float = 0.9,
                      max_bottom_share: float = 0.35) -> np.ndarray | None:
    """:meth:`EgoStatistics.mask` of these frames, at their size (H x W bool), or None."""
    stats = _statistics(semantics, scores)
    mask = stats.mask(agreement, max_bottom_share)
    if mask is None or mask.shape == stats.frame_shape:
        return mask
    h, w = stats.frame_shape
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def ego_polygon(semantics: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> tuple[float, ...]:
    """:meth:`EgoStatistics.polygon` of these frames, () when none."""
    return _statistics(semantics, scores).polygon()


# ---------------------------------------------------------------------------------------------- a drive
@dataclass
class DriveSurvey:
    """What a calibration learns from a pass over normal frames besides their clean thresholds, fed one
    frame at a time (no frame is kept): which frames are usable (:func:`road_seen`), per input how many
    were seen and usable, the ego statistics and road-fit horizon rows of the usable frames, and the
    highest score on their drivable surface."""

    ego: EgoStatistics = field(default_factory=EgoStatistics)
    usable: list[bool] = field(default_factory=list)  # per frame, in order
    frames_per_input: dict[str, int] = field(default_factory=dict)
    usable_per_input: dict[str, int] = field(default_factory=dict)
    horizon_rows: list[float] = field(default_factory=list)  # fraction of the image height
    road_ceiling: float = -math.inf

    def add(self, source: str, semantic: np.ndarray, score: np.ndarray) -> bool:
        """Adds one frame of input ``source``; returns whether it is usable."""
        usable = road_seen(semantic)
        self.usable.append(usable)
        self.frames_per_input[source] = self.frames_per_input.get(source, 0) + 1
        self.usable_per_input[source] = self.usable_per_input.get(source, 0) + int(usable)
        if not usable:
            return False
        self.ego.add(semantic, score)
        surface = drivable_mask(semantic)
        fit = fit_road_scale(surface)
        if fit is not None:
            self.horizon_rows.append(fit.horizon_row / semantic.shape[0])
        on_road = score[surface]
        on_road = on_road[np.isfinite(on_road)]
        if on_road.size:
            self.road_ceiling = max(self.road_ceiling, float(on_road.max()))
        return True

    @property
    def num_frames(self) -> int:
        return len(self.usable)

    @property
    def num_usable(self) -> int:
        return sum(self.usable)

    def refusal(self) -> str | None:
        """Why these frames cannot calibrate anything (one line naming the input), or None."""
        rule = f"a frame counts when road connected to its bottom covers at least {MIN_ROAD_SHARE:.0%} of it"
        for source, seen in self.frames_per_input.items():
            usable = self.usable_per_input[source]
            if usable < MIN_USABLE_SHARE * seen:
                return (f"{source}: road seen in {usable} of {seen} frames, at least {MIN_USABLE_SHARE:.0%} "
                        f"needed ({rule}): not normal driving, or a model that does not see this road")
        if self.num_usable < MIN_USABLE_FRAMES:
            return (f"{', '.join(self.frames_per_input)}: road seen in {self.num_usable} of {self.num_frames} "
                    f"frames, at least {MIN_USABLE_FRAMES} needed ({rule})")
        return None

    def learned(self) -> dict:
        """The ego mask polygon and horizon row (fraction of the height) of the usable frames, where they
        could be estimated (all frames of one size, enough of them); a horizon above the image cannot be
        configured and is left to the node's own road fit."""
        learned: dict = {}
        if self.ego.mixed_sizes:
            return learned
        polygon = self.ego.polygon()
        if polygon:
            learned["ego_mask_polygon"] = list(polygon)
        if len(self.horizon_rows) >= 3:
            row = float(np.median(self.horizon_rows))
            if 0.0 <= row <= 1.0:
                learned["horizon_row"] = row
        return learned
