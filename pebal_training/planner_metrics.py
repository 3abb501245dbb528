"""Metrics a motion planner cares about: false-frame rate, obstacle recall, region precision, stray regions.

The pixel metrics (:mod:`pebal_training.metrics`) and the SMIYC component metrics
(:mod:`pebal_training.component_metrics`) score the anomaly map. A planner does not see that map: it
receives the regions the detector's post-processing *reported* (after thresholding, filtering,
merging...). These metrics score those reported regions against the labelled obstacles.

Inputs per frame:

* ``reported``: H x W integer label map of the reported regions (0 = none, 1..R = region ids; ids
  need not be contiguous). It is produced by the post-processing under test, not here.
* ``instances``: H x W integer map of the labelled obstacle instances (0 = none, 1..G).
* ``ignore`` (optional): H x W bool, the void pixels.

Definitions:

* A labelled obstacle is **found** when the union of all reported regions covers at least
  ``min_coverage`` (default 25 %) of its pixels; several regions may cover it together, and one region
  may find several obstacles.
* A reported region is a **true** region when the share of its non-void pixels lying on labelled
  obstacles is greater than ``min_region_overlap`` (default 0: any overlapping pixel). A region that is
  not true and lies mostly (more than 50 %) on void is a **void** region and is left out of everything
  below (void is outside the evaluated area). Any other region is **stray** (a false obstacle).
* **Region precision** = true regions / (true + stray regions); None when no such region was reported.
* A **normal frame** has no labelled obstacle. A normal frame with a reported (non-void, i.e. stray)
  region is a **false frame**; the false-frame rate is the share of normal frames that are false.
* **Object recall** = found obstacles / labelled obstacles (None without obstacles).
* **Stray regions per frame** is averaged over all frames, and separately over the normal frames.

Counts are summed over the frames before the ratios are formed. Updates may carry a ``group`` (e.g. the
obstacle kind or the scene); ``compute()["by_group"]`` repeats the metrics per group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

MIN_COVERAGE = 0.25
MIN_REGION_OVERLAP = 0.0
VOID_REGION_SHARE = 0.5
_EPS = 1e-9  # coverage exactly at min_coverage counts as found despite float rounding


def _label_map(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label map, got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map (0 = none, 1.. = ids), got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{name} has negative ids")
    return a.astype(np.int64, copy=False)


def frame_planner_stats(reported: Any, instances: Any, ignore: Any = None, min_coverage: float = MIN_COVERAGE,
                        min_region_overlap: float = MIN_REGION_OVERLAP) -> dict:
    """Planner statistics of one frame (definitions in the module docstring).

    Returns ``num_objects``, ``num_found``, ``num_regions`` (all reported regions), ``num_true_regions``,
    ``num_stray``, ``num_void_regions``, ``false_frame`` (bool on a normal frame, None otherwise), and per
    labelled obstacle in increasing instance id its ``object_ids``, ``object_pixels``, ``coverage``
    (covered share) and ``found``.
    """
    rep = _label_map(reported, "reported")
    inst = _label_map(instances, "instances")
    if rep.shape != inst.shape:
        raise ValueError(f"reported {rep.shape} and instances {inst.shape} differ in shape")
    void = np.zeros(rep.shape, bool) if ignore is None else np.asarray(ignore, dtype=bool)
    if void.shape != rep.shape:
        raise ValueError(f"ignore {void.shape} and reported {rep.shape} differ in shape")

    # obstacles: pixel counts and pixels covered by any reported region
    n_inst = int(inst.max(initial=0)) + 1
    obj_size = np.bincount(inst.ravel(), minlength=n_inst)
    obj_covered = np.bincount(inst[rep > 0], minlength=n_inst)
    ids = np.flatnonzero(obj_size[1:]) + 1
    coverage = obj_covered[ids] / obj_size[ids]
    found = obj_covered[ids] >= (min_coverage - _EPS) * obj_size[ids]

    # regions: pixel counts, pixels on obstacles, pixels on void
    n_rep = int(rep.max(initial=0)) + 1
    reg_size = np.bincount(rep.ravel(), minlength=n_rep)
    reg_void = np.bincount(rep[void], minlength=n_rep)
    reg_obj = np.bincount(rep[inst > 0], minlength=n_rep)
    rids = np.flatnonzero(reg_size[1:]) + 1
    size, on_void, on_obj = reg_size[rids], reg_void[rids], reg_obj[rids]
    valid = size - on_void  # obstacle pixels are never void, but the share is taken over non-void pixels
    true_region = (on_obj > 0) & (on_obj > min_region_overlap * valid)
    void_region = ~true_region & (on_void > VOID_REGION_SHARE * size)
    stray = ~true_region & ~void_region

    normal = ids.size == 0
    return {"num_objects": int(ids.size), "num_found": int(found.sum()), "num_regions": int(rids.size),
            "num_true_regions": int(true_region.sum()), "num_stray": int(stray.sum()),
            "num_void_regions": int(void_region.sum()),
            "false_frame": bool(stray.any()) if normal else None,
            "coverage": [float(c) for c in coverage], "object_ids": [int(i) for i in ids],
            "object_pixels": [int(n) for n in obj_size[ids]], "found": [bool(f) for f in found]}


@dataclass
class _Counts:
    frames: int = 0
    normal_frames: int = 0
    false_frames: int = 0
    objects: int = 0
    found: int = 0
    true_regions: int = 0
    stray: int = 0
    stray_normal: int = 0
    void_regions: int = 0

    def add(self, s: dict) -> None:
        self.frames += 1
        self.objects += s["num_objects"]
        self.found += s["num_found"]
        self.true_regions += s["num_true_regions"]
        self.stray += s["num_stray"]
        self.void_regions += s["num_void_regions"]
        if s["false_frame"] is not None:
            self.normal_frames += 1
            self.false_frames += int(s["false_frame"])
            self.stray_normal += s["num_stray"]

    def summary(self) -> dict:
        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        counted = self.true_regions + self.stray
        return {"frames": self.frames, "normal_frames": self.normal_frames, "false_frames": self.false_frames,
                "false_frame_rate": ratio(self.false_frames, self.normal_frames),
                "objects": self.objects, "found": self.found, "object_recall": ratio(self.found, self.objects),
                "regions": counted, "true_regions": self.true_regions, "stray_regions": self.stray,
                "void_regions": self.void_regions, "region_precision": ratio(self.true_regions, counted),
                "stray_regions_per_frame": ratio(self.stray, self.frames),
                "stray_regions_per_normal_frame": ratio(self.stray_normal, self.normal_frames)}


@dataclass
class PlannerMetricAccumulator:
    """Sums :func:`frame_planner_stats` over frames; ``compute()`` forms the dataset metrics."""

    min_coverage: float = MIN_COVERAGE
    min_region_overlap: float = MIN_REGION_OVERLAP
    _total: _Counts = field(default_factory=_Counts, init=False, repr=False)
    _groups: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        if not 0.0 <= self.min_region_overlap < 1.0:
            raise ValueError(f"min_region_overlap must be in [0, 1), got {self.min_region_overlap}")

    def update(self, reported: Any, instances: Any, ignore: Any = None, group: Hashable | None = None) -> dict:
        """Adds one frame (to ``group`` too, when given); returns the frame's own statistics."""
        stats = frame_planner_stats(reported, instances, ignore, self.min_coverage, self.min_region_overlap)
        self._total.add(stats)
        if group is not None:
            self._groups.setdefault(group, _Counts()).add(stats)
        return stats

    def compute(self) -> dict:
        """Totals and ratios (None where the denominator is 0), plus ``by_group`` (keys as ``str``)."""
        return {**self._total.summary(), "min_coverage": self.min_coverage,
                "min_region_overlap": self.min_region_overlap,
                "by_group": {str(g): c.summary() for g, c in self._groups.items()}}


# --------------------------------------------------------------------------------------------------
# a drive: objects over time

DRIVE_WITHIN_FRAMES = 3
DRIVE_MIN_AREA = 50


@dataclass
class DriveScorer:
    """Scores a drive, frame by frame in order, where obstacle ids are stable over the frames (a replayed
    procedural drive): what a planner needs is each obstacle reported soon after it becomes visible, and
    nothing reported where there is none.

    * An obstacle **appears** at the first frame where at least ``min_area`` of its pixels are visible
      (smaller, it is not yet judged; one that never gets there is listed as too small).
    * It is **found in time** when, in one of the ``within_frames`` frames from that one on, the reported
      regions cover at least ``min_coverage`` of its visible pixels (as :func:`frame_planner_stats`).
      One that appears too late in the drive to have all those frames and is not found in the ones
      it had is *not judged* (left out of the rate).
    * A **false alarm** is a reported region touching no obstacle pixel, unless it lies mostly on void
      (the stray regions of :func:`frame_planner_stats`), counted per frame.

    Feed every frame of the drive: one the detector produced nothing for is an empty ``reported``
    map (a dropped frame is a chance missed, not a frame left out)."""

    within_frames: int = DRIVE_WITHIN_FRAMES
    min_coverage: float = MIN_COVERAGE
    min_area: int = DRIVE_MIN_AREA
    _frames: list = field(default_factory=list, init=False, repr=False)
    _objects: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if int(self.within_frames) < 1:
            raise ValueError(f"within_frames must be >= 1, got {self.within_frames}")
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        if int(self.min_area) < 1:
            raise ValueError(f"min_area must be >= 1, got {self.min_area}")

    def update(self, reported: Any, instances: Any, ignore: Any = None) -> dict:
        """Adds the next frame; returns its :func:`frame_planner_stats` plus ``frame`` (its index here)."""
        index = len(self._frames)
        stats = frame_planner_stats(reported, instances, ignore, self.min_coverage)
        for oid, pixels, found in zip(stats["object_ids"], stats["object_pixels"], stats["found"]):
            obj = self._objects.setdefault(oid, {"id": oid, "first_visible": index, "appears": None,
                                                 "found_frame": None, "max_area": 0})
            obj["max_area"] = max(obj["max_area"], pixels)
            if obj["appears"] is None and pixels >= self.min_area:
                obj["appears"] = index
            start = obj["appears"]
            if start is not None and obj["found_frame"] is None and index < start + self.within_frames and found:
                obj["found_frame"] = index
        self._frames.append({"frame": index, "stray": stats["num_stray"], "regions": stats["num_regions"]})
        return {**stats, "frame": index}

    def compute(self) -> dict:
        frames = len(self._frames)
        judged, found, late, small, rows = 0, 0, 0, 0, []
        for oid in sorted(self._objects):
            obj = dict(self._objects[oid])
            if obj["appears"] is None:
                obj["status"] = "too_small"
                small += 1
            elif obj["found_frame"] is not None:
                obj["status"] = "found"
                obj["frames_to_find"] = obj["found_frame"] - obj["appears"] + 1
                judged += 1
                found += 1
            elif obj["appears"] + self.within_frames > frames:
                obj["status"] = "not_judged"
                late += 1
            else:
                obj["status"] = "missed"
                judged += 1
            rows.append(obj)
        false_alarms = sum(f["stray"] for f in self._frames)
        return {"frames": frames, "objects": judged, "found_in_time": found,
                "found_in_time_rate": found / judged if judged else None,
                "false_alarms": false_alarms, "false_alarms_per_frame": false_alarms / frames if frames else None,
                "frames_with_false_alarm": sum(f["stray"] > 0 for f in self._frames),
                "objects_too_small": small, "objects_not_judged": late, "per_object": rows,
                "rule": {"within_frames": int(self.within_frames), "min_coverage": self.min_coverage,
                         "min_area": int(self.min_area)}}


# --------------------------------------------------------------------------------------------------
# threshold sweep plot


def _as_float_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def plot_planner_sweep(thresholds: Sequence[float], false_frame_rate: Sequence[float | None],
                       object_recall: Sequence[float | None], stray_per_frame: Sequence[float | None],
                       path: str | Path, title: str,
                       operating_points: Mapping[str, float] | None = None) -> Path:
    """False-frame rate and object recall (left axis, 0..1) and stray regions per frame (right axis)
    against the threshold, with a dashed vertical line at every operating point ``{name: threshold}``.
    Written atomically as a PNG at ``path``; None values (e.g. no normal frames) are left as gaps."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot state

    from pebal_training.figures import save_figure

    t = _as_float_array(thresholds)
    series = [_as_float_array(v) for v in (false_frame_rate, object_recall, stray_per_frame)]
    if any(s.shape != t.shape for s in series):
        raise ValueError("thresholds, false_frame_rate, object_recall and stray_per_frame differ in length")
    order = np.argsort(t, kind="stable")
    t = t[order]
    ffr, recall, stray = (s[order] for s in series)

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, ffr, color="tab:red", lw=1.5, marker=".", label="false-frame rate")
    ax.plot(t, recall, color="tab:green", lw=1.5, marker=".", label="object recall")
    ax.set(xlabel="threshold", ylabel="rate", ylim=(0, 1.02), title=f"planner metrics - {title}")
    ax.grid(True, lw=0.4, alpha=0.5)
    ax2 = ax.twinx()
    ax2.plot(t, stray, color="tab:blue", lw=1.2, ls="--", marker=".", label="stray regions / frame")
    ax2.set_ylabel("stray regions per frame")
    top = np.nanmax(stray) if np.isfinite(stray).any() else 0.0
    ax2.set_ylim(0, max(1.0, 1.05 * top))
    for i, (name, thr) in enumerate((operating_points or {}).items()):
        colour = f"C{(i + 3) % 10}"
        ax.axvline(float(thr), color=colour, lw=1.0, ls=":", label=f"{name} {float(thr):.4g}")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    save_figure(path, fig)
    return path
