#!/usr/bin/env python3
"""Quality on real obstacles and real normal driving (BENCHMARKS.md, figure 10).

    python bench/bench_quality.py                              # the base weights and the embedded default
    python bench/bench_quality.py --model mine=runs/x/model.pt # a row for any checkpoint (ours or third-party)
    python bench/bench_quality.py --quick                      # 8 frames per set: a smoke run, not a result

Sets (read from ``../shared/benchmarks`` and ``../shared/assets``; evaluation only, nothing is trained or
tuned on them here, and nothing is copied): Fishyscapes Lost & Found val (100 frames, the development
set), Fishyscapes Static val (30), Road Anomaly (60) and normal driving: the eight Udacity highway frames
(``real_driving_frames``, the *calibration* frames of the normal-driving rule) and the 38-frame highway
clip (``driving_video``, where the false-frame share is *reported*).

Per row (a model and one of its anomaly scores: ``energy`` = smoothed free energy, PEBAL's and the
product's; ``msp`` = minus the max softmax probability; ``maxlogit`` = minus the max logit; all bilinearly
upsampled to the image and smoothed by the same 7x7 Gaussian):

* **pixel** AUROC / AP / FPR95 on each obstacle set at the checkpoint's own network size (what the node
  runs: 1024x512 for the ESPNetv2 Cityscapes weights and the default model, 320x160 for the old
  synthetic-world model; the columns say "1024") and at the image's native size (exact, pooled over all
  labelled pixels, as ``pebal-eval``);
* **SMIYC components** (sIoU, PPV, mean F1) at the pixel threshold of 95 % TPR *chosen on another set*
  (FS Static chooses for FS L&F and Road Anomaly, FS L&F for FS Static);
* **planner** metrics at the checkpoint's network size through the product's post-processing
  (``planner_config``, single images, no tracking; maps and labels at the post-processing's analysis
  width, 1024) along a threshold
  sweep: obstacles found (>= 25 % covered), stray regions per
  frame, share of normal frames with any obstacle. Operating points: ``normal rule`` = the
  ``pebal-calibrate --normal`` rule, at most one of the eight highway frames reporting anything
  (:data:`pebal_training.recipes.real_default.NORMAL_RATE`), chosen on those frames; ``shipped`` = the
  threshold stored in the checkpoint (the default model's: chosen by its recipe on the highway frames and
  held-out synthetic scenes); ``L&F 0.3 stray`` = the lowest swept threshold with at most 0.3 stray regions per frame
  on FS L&F. Each is reported on every set with the set that chose it named.

Outputs: ``bench/results/quality.json`` (rows merged by name; ``--output``), one found-vs-stray plot per
obstacle set and a found-vs-false-frames plot (``quality_*.png``), and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.quality_report import found_at_stray, plot, table  # noqa: E402,F401  (found_at_stray: for callers)

SHARED = REPO.parent / "shared"
BASE_CHECKPOINT = Path("espnetv2_cityscapes") / "espnetv2_s_2.0_city_1024x512.pth"
RESULTS = REPO / "bench" / "results"

#: key -> (pebal-eval dataset name, folder under ../shared/benchmarks, title)
OBSTACLE_SETS = {
    "fs_laf": ("fishyscapes_laf", "fishyscapes_lostandfound_val", "FS Lost & Found val"),
    "fs_static": ("fishyscapes_static", "fishyscapes_static_val", "FS Static val"),
    "road_anomaly": ("road_anomaly", "road_anomaly", "Road Anomaly"),
}
#: key -> (path under ../shared/assets, title); the first chooses the normal-driving threshold
NORMAL_SETS = {
    "highway_frames": ("real_driving_frames", "highway frames (8)"),
    "highway_clip": ("driving_video/udacity_vehicle_detection_test_video.mp4", "highway clip (38)"),
}
#: which set chooses the pixel threshold (95 % TPR) used for the component metrics of each set
COMPONENT_CHOOSER = {"fs_laf": "fs_static", "fs_static": "fs_laf", "road_anomaly": "fs_static"}
SCORES = ("energy", "msp", "maxlogit", "road")
POST_OVERRIDES: dict[str, Any] = {}  # --post NAME=VALUE: post-processing changes for an ablation row
ROAD_OVERRIDES: dict[str, Any] = {}  # --road NAME=VALUE: road-relative score settings for an ablation row
BAND: list = []  # --band TOP,BOTTOM,SCALE: core/road_band.BandRefiner for the energy and road scores
ADAPTATION: dict[str, float] = {}  # --adapt MOMENTUM: test-time BN adaptation per set (momentum, pause threshold)
STRAY_BUDGET = 0.3
NORMAL_POINT = "normal rule"
#: Published PEBAL (WRN38 DeepLabv3+, native resolution) pixel numbers, ../shared/benchmarks/README.md
PEBAL_PUBLISHED = {"fs_laf": (0.9896, 0.5881, 0.0476), "fs_static": (0.9960, 0.9208, 0.0152),
                   "road_anomaly": (0.8763, 0.4510, 0.4458)}
SWEEP_QUANTILES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995,
                   0.9998, 0.9999, 0.99995, 0.99999)


@dataclass
class Row:
    name: str
    checkpoint: str | None  # None = the embedded default
    model: str | None
    scores: tuple[str, ...]


@dataclass
class Frame:
    set: str
    name: str
    rgb: np.ndarray
    label: np.ndarray | None  # unified 0 / 1 / 255; None on normal frames


def parse_row(spec: str) -> Row:
    """``base``, ``default`` or ``NAME=CHECKPOINT[@ARCH][:score,score]``."""
    if spec == "base":
        return Row("espnetv2-base", str(SHARED / "assets" / BASE_CHECKPOINT), "espnetv2", ("energy", "msp", "maxlogit"))
    if spec == "default":  # PEBAL's free energy and the road-relative score the default ships with
        return Row("default", None, None, ("energy", "road"))
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected base, default or NAME=CHECKPOINT[@ARCH][:scores]")
    rest, _, scores = rest.partition(":")
    path, _, arch = rest.partition("@")
    kinds = tuple(s for s in scores.split(",") if s) or ("energy",)
    if any(k not in SCORES for k in kinds):
        raise argparse.ArgumentTypeError(f"{spec!r}: scores must be among {SCORES}")
    return Row(name, path, arch or None, kinds)


# --------------------------------------------------------------------------------------------- frames
def obstacle_frames(key: str, limit: int | None) -> Iterator[Frame]:
    from pebal_training.data.datasets import open_anomaly_dataset

    dataset_name, folder, _ = OBSTACLE_SETS[key]
    ds = open_anomaly_dataset(dataset_name, SHARED / "benchmarks" / folder)
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        s = ds[i]
        yield Frame(key, s["name"], s["image"], s["label"])


def normal_frames(key: str, limit: int | None) -> Iterator[Frame]:
    import cv2

    from pebal_perception.core.frame_sources import open_source

    source = open_source(SHARED / "assets" / NORMAL_SETS[key][0])
    for n, (index, bgr) in enumerate(source.frames()):
        if limit is not None and n >= limit:
            return
        yield Frame(key, f"{index:04d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None)


def all_frames(limit: int | None) -> Iterator[Frame]:
    for key in OBSTACLE_SETS:
        yield from obstacle_frames(key, limit)
    for key in NORMAL_SETS:
        yield from normal_frames(key, limit)


# --------------------------------------------------------------------------------------------- scores
def load_engine(row: Row, size: tuple[int, int] | str):
    from pebal_perception.core.default_model import default_checkpoint
    from pebal_perception.core.engine import InferenceEngine

    path = row.checkpoint or str(default_checkpoint())
    return InferenceEngine.from_checkpoint(path, row.model, device="cpu", input_size=size)


def network_size_text(engine) -> str:
    return "native" if engine.native_size else f"{engine.input_size[1]}x{engine.input_size[0]}"


def score_maps(engine, rgb: np.ndarray, kinds: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(semantic H x W uint8, {score kind: H x W float32}) of one frame, each score upsampled bilinearly
    and smoothed as the product's energy."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from pebal_perception.core import scoring
    from pebal_perception.core.constants import NUM_INLIER_CLASSES
    from pebal_perception.core.preprocess import to_uint8_batch
    from pebal_perception.core.road_score import FeatureTap

    h, w = rgb.shape[:2]
    with torch.inference_mode():
        road = "road" in kinds
        with (FeatureTap(engine.running_model, engine.spec.road_features[0]) if road
              else contextlib.nullcontext()) as tap:
            logits = engine.forward_logits(to_uint8_batch(rgb[None], engine.device))[:, :NUM_INLIER_CLASSES].float()
        maps = {}
        for kind in kinds:
            if kind == "energy":
                m = -torch.logsumexp(logits, dim=1)
            elif kind == "road":
                m = road_score(engine)(logits, -torch.logsumexp(logits, dim=1, keepdim=True), tap.take())[:, 0]
            elif kind == "msp":
                m = -torch.softmax(logits, dim=1).amax(dim=1)
            else:
                m = -logits.amax(dim=1)
            m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            if engine.smoothing:
                m = scoring.gaussian_smooth(m, engine.smoothing_kernel, engine.smoothing_sigma)
            maps[kind] = m[0].numpy()
        if BAND:
            for kind in set(kinds) & {"energy", "road"}:
                config = {} if kind == "energy" else road_config(engine.meta).to_dict()
                maps[kind] = BAND[0].refine(engine, rgb, maps[kind], bool(engine.smoothing), config)
        semantic = logits.argmax(dim=1, keepdim=True).to(torch.uint8)
        semantic = F.interpolate(semantic, size=(h, w), mode="nearest-exact")[0, 0].numpy()
    return semantic, maps


def road_config(meta: Any):
    """The road-relative score of a row: the checkpoint's own when it has one, else the defaults, with
    ``--road`` changes."""
    from dataclasses import replace

    from pebal_perception.core.road_score import RoadScoreConfig, parse_score

    base = parse_score(getattr(meta, "score", None)) or RoadScoreConfig()
    return replace(base, **ROAD_OVERRIDES)


_ROAD_MODULES: dict[int, Any] = {}


def road_score(engine):
    """The road-relative score module of ``engine``'s architecture with :func:`road_config` (one per engine)."""
    from pebal_perception.core.road_score import RoadRelativeScore

    if id(engine) not in _ROAD_MODULES:
        if engine.spec.road_features is None:
            raise SystemExit(f"bench_quality: {engine.spec.name} has no road features for the road score")
        _ROAD_MODULES[id(engine)] = RoadRelativeScore(engine.spec.road_features[1], road_config(engine.meta))
    return _ROAD_MODULES[id(engine)]


# --------------------------------------------------------------------------------------------- passes
@dataclass
class PixelPass:
    """Pixel metrics of one row at one network size, and (optionally) the maps kept for pass 2."""

    kinds: tuple[str, ...]
    keep: Path | None
    acc: dict = field(default_factory=dict)  # (set, kind) -> AnomalyMetricAccumulator
    road_samples: dict = field(default_factory=dict)  # kind -> list of road-area score samples
    cached: list = field(default_factory=list)  # (set, name, path)
    seconds: float = 0.0
    frames: int = 0

    def update(self, frame: Frame, semantic: np.ndarray, maps: dict[str, np.ndarray], rng) -> None:
        from pebal_perception.core.constants import VOID
        from pebal_training.metrics import AnomalyMetricAccumulator

        if frame.label is not None:
            for kind in self.kinds:
                acc = self.acc.setdefault((frame.set, kind), AnomalyMetricAccumulator(
                    ignore_label=VOID, positive_label=1, negative_label=0))
                acc.update(maps[kind], frame.label)
        road = semantic == 0
        for kind in self.kinds:
            values = maps[kind][road]
            if values.size:
                self.road_samples.setdefault(kind, []).append(rng.choice(values, min(values.size, 2000)))
        if self.keep is not None:
            path = self.keep / f"{frame.set}_{frame.name}.npz"
            arrays = {f"score_{k}": maps[k].astype(np.float16) for k in self.kinds}
            if frame.label is not None:
                arrays["label"] = frame.label
            np.savez(path, semantic=semantic, **arrays)
            self.cached.append((frame.set, frame.name, path))


def pixel_pass(engine, kinds: tuple[str, ...], keep: Path | None, limit: int | None, desc: str) -> PixelPass:
    from tqdm import tqdm

    result = PixelPass(kinds, keep)
    rng = np.random.default_rng(0)
    frames = list(all_frames(limit)) if limit else None
    source = frames if frames is not None else all_frames(None)
    total = len(frames) if frames is not None else 190 + 8 + 38
    adapter, current_set = None, None
    if ADAPTATION:
        from pebal_perception.core.adaptation import BatchNormAdapter

        adapter = BatchNormAdapter(engine.source_model, ADAPTATION["momentum"], device=engine.device)
        engine.adapter = adapter
    try:
        for frame in tqdm(source, total=total, desc=desc, unit="frame"):
            if adapter is not None and frame.set != current_set:  # each set is another camera: start afresh
                adapter.reset()
                current_set = frame.set
            t0 = time.perf_counter()
            semantic, maps = score_maps(engine, frame.rgb, kinds)
            result.seconds += time.perf_counter() - t0
            result.frames += 1
            if adapter is not None:
                adapt_after(adapter, semantic, maps[kinds[0]], engine.meta)
            result.update(frame, semantic, maps, rng)
    finally:
        engine.adapter = None
    return result


def adapt_after(adapter, semantic: np.ndarray, score: np.ndarray, meta: Any) -> None:
    """The detector's rule (``core.adaptation.settle``, single frames): commit this frame's BN statistics unless the
    post-processing at the pause threshold (``--adapt-threshold``, else the checkpoint's) detects anything."""
    from pebal_perception.core.adaptation import settle
    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.postprocess_config import planner_config

    threshold = ADAPTATION.get("threshold", meta.effective_threshold)
    settle(adapter, process_frame(semantic, score, planner_config(threshold, meta)))


def tpr_threshold(acc, tpr: float = 0.95) -> float:
    """The pixel threshold (score > t) at which ``tpr`` of the positive pixels are detected, by
    ``pebal-calibrate --target-tpr``'s rule."""
    from pebal_training.cli.calibrate import threshold_for_tpr
    from pebal_training.evaluate import sorted_scores

    pos, _ = sorted_scores(acc)
    return threshold_for_tpr(pos, tpr)


def _load(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with np.load(path) as z:
        return z["semantic"], z[f"score_{kind}"].astype(np.float32), (z["label"] if "label" in z else None)


def analysis_scale(semantic: np.ndarray, score: np.ndarray, label: np.ndarray | None):
    """The maps at the post-processing's analysis width (``PLANNER_DEFAULTS["analysis_width"]``): the product
    finds regions at that width anyway, and the sweep runs each frame at ~20 thresholds."""
    from pebal_perception.core.postprocess import at_analysis_width
    from pebal_perception.core.postprocess_config import PLANNER_DEFAULTS

    score, semantic, label = at_analysis_width(int(PLANNER_DEFAULTS["analysis_width"]), score, semantic, label)
    return semantic, score, label


def components(result: PixelPass, kind: str) -> dict:
    """SMIYC component metrics per obstacle set at the 95 %-TPR threshold of its chooser set."""
    from pebal_training.component_metrics import ComponentMetricAccumulator

    out = {}
    for key, chooser in COMPONENT_CHOOSER.items():
        if (chooser, kind) not in result.acc or (key, kind) not in result.acc:
            continue
        thr = tpr_threshold(result.acc[(chooser, kind)])
        comp = ComponentMetricAccumulator()
        for set_key, _, path in result.cached:
            if set_key == key:
                _, score, label = _load(path, kind)
                comp.update(score > thr, label)
        out[key] = {**comp.compute(), "threshold": thr, "threshold_chosen_on": chooser}
    return out


def sweep_thresholds(result: PixelPass, kind: str) -> list[float]:
    samples = np.concatenate(result.road_samples[kind])
    return sorted({float(np.quantile(samples, q)) for q in SWEEP_QUANTILES})


def hysteresis_for(result: PixelPass, kind: str) -> float:
    """The post-processing's hysteresis (in energy units) carried over to ``kind``'s units by the ratio of
    the two scores' interquartile ranges on the road (max softmax lives in [-1, 0]: a hysteresis of 1
    would make every pixel a candidate)."""
    from pebal_perception.core.postprocess_config import PLANNER_DEFAULTS

    base = float(PLANNER_DEFAULTS["hysteresis"])
    if kind in ("energy", "road") or "energy" not in result.road_samples:  # road: energy units
        return base

    def iqr(k: str) -> float:
        q = np.quantile(np.concatenate(result.road_samples[k]), [0.25, 0.75])
        return float(q[1] - q[0])

    return base * iqr(kind) / max(iqr("energy"), 1e-9)


def planner_sweep(result: PixelPass, kind: str, meta: Any) -> dict:
    """Per set and swept threshold: objects found, stray regions, frames with any obstacle; the
    normal-driving rule's threshold (chosen on the highway frames) and its numbers on every set."""
    from pebal_perception.core.constants import VOID
    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.postprocess_config import planner_config
    from pebal_training.evaluate import instance_components
    from pebal_training.normal_calibration import clean_threshold, threshold_for_rate
    from pebal_training.planner_metrics import frame_planner_stats
    from pebal_training.recipes.real_default import NORMAL_RATE

    thresholds = sweep_thresholds(result, kind)
    chooser = next(iter(NORMAL_SETS))
    hysteresis = hysteresis_for(result, kind)

    def config(t: float):
        return planner_config(t, meta, **{"hysteresis": hysteresis, **POST_OVERRIDES})  # --post wins

    clean = []
    for set_key, _, path in result.cached:  # the normal-driving rule, exactly as pebal-calibrate --normal
        if set_key == chooser:
            semantic, score, _ = analysis_scale(*_load(path, kind))
            clean.append(clean_threshold(semantic, score, config(0.0)))
    normal_thr = threshold_for_rate(clean, NORMAL_RATE) if clean else math.nan
    points = {NORMAL_POINT: normal_thr}
    if meta is not None and meta.threshold is not None:
        points["shipped"] = float(meta.threshold)
    grid = [*thresholds, *(t for t in points.values() if math.isfinite(t))]
    counts: dict[str, dict[float, dict[str, int]]] = {}
    for set_key, _, path in result.cached:
        semantic, score, label = analysis_scale(*_load(path, kind))
        instances = instance_components(label == 1) if label is not None else np.zeros(score.shape, np.int32)
        ignore = label == VOID if label is not None else None
        per_t = counts.setdefault(set_key, {})
        for t in grid:
            frame = process_frame(semantic, score, config(t))
            s = frame_planner_stats(frame.labels, instances, ignore)
            c = per_t.setdefault(t, {"frames": 0, "objects": 0, "found": 0, "stray": 0, "frames_with_any": 0})
            c["frames"] += 1
            c["objects"] += s["num_objects"]
            c["found"] += s["num_found"]
            c["stray"] += s["num_stray"]
            c["frames_with_any"] += int(s["num_stray"] + s["num_true_regions"] > 0)

    def summary(c: dict) -> dict:
        return {"found": c["found"] / c["objects"] if c["objects"] else None, "objects": c["objects"],
                "found_count": c["found"], "stray_per_frame": c["stray"] / c["frames"],
                "frames_with_any": c["frames_with_any"] / c["frames"], "frames": c["frames"]}

    sweep = {k: [{"threshold": t, **summary(v[t])} for t in thresholds] for k, v in counts.items()}
    laf = [p for p in sweep.get("fs_laf", []) if p["stray_per_frame"] <= STRAY_BUDGET and p["found"] is not None]
    # the most obstacles found within the stray budget (ties: the higher threshold)
    best = max(laf, key=lambda p: (p["found"], p["threshold"])) if laf else None
    points["L&F 0.3 stray"] = best["threshold"] if best else math.nan
    at = {}
    for name, thr in points.items():
        chosen_on = {NORMAL_POINT: chooser, "L&F 0.3 stray": "fs_laf"}.get(name, "the checkpoint's calibration")
        at[name] = {"threshold": thr, "chosen_on": chosen_on, "sets": {}}
        for k, v in counts.items():
            if thr in v:
                at[name]["sets"][k] = summary(v[thr])
            elif math.isfinite(thr):
                nearest = min(v, key=lambda x: abs(x - thr))
                if abs(nearest - thr) < 1e-9:
                    at[name]["sets"][k] = summary(v[nearest])
    return {"sweep": sweep, "operating_points": at, "clean_thresholds_chooser": clean, "hysteresis": hysteresis,
            "post_overrides": dict(POST_OVERRIDES)}


def run_row(row: Row, limit: int | None, sizes: list[str]) -> dict:
    out: dict[str, Any] = {"checkpoint": row.checkpoint or "embedded default", "scores": list(row.scores)}
    results = {kind: {} for kind in row.scores}
    for size in sizes:
        engine = load_engine(row, "native" if size == "native" else None)  # None: the checkpoint's own size
        for kind in row.scores:
            results[kind]["model_id"] = engine.meta.model_id
            results[kind][f"network_size_{size}"] = network_size_text(engine)
        keep_dir = tempfile.TemporaryDirectory(prefix="pebal_quality_")
        try:
            result = pixel_pass(engine, row.scores, Path(keep_dir.name), limit, f"{row.name} {size}")
            for kind in row.scores:
                pixel = {}
                for key in OBSTACLE_SETS:
                    if (key, kind) in result.acc:
                        m = result.acc[(key, kind)].compute()
                        pixel[key] = {"auroc": m["auroc"], "ap": m["ap"], "fpr95": m["fpr95"]}
                results[kind][f"pixel_{size}"] = pixel
                results[kind][f"seconds_per_frame_{size}"] = result.seconds / max(1, result.frames)
                if size == "1024":
                    results[kind]["components"] = components(result, kind)
                    results[kind]["planner"] = planner_sweep(result, kind, engine.meta)
                else:
                    results[kind]["components_native"] = components(result, kind)
        finally:
            keep_dir.cleanup()
    return {f"{row.name} {kind}": {**out, "score": kind, **r} for kind, r in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", dest="rows", action="append", type=parse_row, metavar="SPEC",
                   help="base | default | NAME=CHECKPOINT[@ARCH][:energy,msp,maxlogit] (repeat; default: base "
                        "and default)")
    p.add_argument("--sizes", default="1024,native",
                   help="network sizes: 1024 (the checkpoint's own, 1024x512 for ESPNetv2) and/or native")
    p.add_argument("--quick", action="store_true", help="8 frames per set (a smoke run, not a result)")
    p.add_argument("--limit", type=int, help="at most N frames per set (a smoke run, not a result)")
    p.add_argument("--post", action="append", default=[], metavar="FIELD=VALUE",
                   help="post-processing change (a PostProcessConfig field) for every row of this run; the "
                        "rows are named with it (an ablation)")
    p.add_argument("--road", action="append", default=[], metavar="FIELD=VALUE",
                   help="road-relative score change (a RoadScoreConfig field) for the road rows of this run")
    p.add_argument("--band", metavar="TOP,BOTTOM,SCALE",
                   help="the road band at a finer resolution (core/road_band.py) for the energy and road scores")
    p.add_argument("--adapt", type=float, metavar="MOMENTUM",
                   help="test-time BN adaptation (the detector's): statistics from each set's frames in order, "
                        "restarted per set, paused on frames with any detection")
    p.add_argument("--adapt-threshold", type=float, help="the pause rule's threshold (default: the checkpoint's)")
    p.add_argument("--report", action="store_true", help="run nothing: the table and plots of what --output holds")
    p.add_argument("--output", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--plots", type=Path, default=RESULTS, help="folder of the plots")
    args = p.parse_args(argv)
    if args.report:
        stored = json.loads(args.output.read_text())["rows"]
        args.plots.mkdir(parents=True, exist_ok=True)
        plot(stored, args.plots)
        print(table(stored))
        return 0
    for needed in (SHARED / "benchmarks", SHARED / "assets"):
        if not needed.is_dir():
            print(f"bench_quality: skipped: {needed} is absent", file=sys.stderr)
            return 0
    rows = args.rows or [parse_row("base"), parse_row("default")]
    for item in args.post:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--post takes FIELD=VALUE, got {item!r}")
        POST_OVERRIDES[name] = json.loads(value)
    for item in args.road:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--road takes FIELD=VALUE, got {item!r}")
        ROAD_OVERRIDES[name] = json.loads(value)
    if args.band:
        from pebal_perception.core.road_band import BandRefiner, RoadBand

        top, bottom, scale = (float(v) for v in args.band.split(","))
        BAND.append(BandRefiner(RoadBand(top, bottom, scale)))
    if args.adapt is not None:
        ADAPTATION["momentum"] = args.adapt
        if args.adapt_threshold is not None:
            ADAPTATION["threshold"] = args.adapt_threshold
    suffix = "".join(f" [{k}={v}]" for k, v in {**POST_OVERRIDES, **{f"road.{k}": v for k, v in
                                                                      ROAD_OVERRIDES.items()},
                                                 **({"adapt": args.adapt} if args.adapt is not None else {}),
                                                 **({"band": args.band} if args.band else {})}.items())
    for row in rows:
        row.name += suffix
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if any(s not in ("1024", "native") for s in sizes):
        p.error("--sizes takes 1024 and/or native")
    import torch

    from pebal_perception.core.io import atomic_write_json
    from pebal_training.evaluate import json_safe

    torch.set_num_threads(max(1, torch.get_num_threads()))
    stored = {}
    if args.output.is_file():
        stored = json.loads(args.output.read_text()).get("rows", {})
    for row in rows:
        limit = args.limit if args.limit else (8 if args.quick else None)
        new = run_row(row, limit, sizes)
        for name, r in new.items():
            r["quick"] = limit is not None
            r["date"] = time.strftime("%Y-%m-%d")
        print(f"bench_quality: {row.name} done", file=sys.stderr)
        for name, r in new.items():  # a run of some sizes keeps what another run measured at the others
            stored[name] = {**stored.get(name, {}), **r}
        atomic_write_json(args.output, json_safe({"rows": stored, "pebal_published": PEBAL_PUBLISHED}))
    args.plots.mkdir(parents=True, exist_ok=True)
    plot(stored, args.plots)
    print(table(stored))
    return 0


if __name__ == "__main__":
    sys.exit(main())
