"""What a planner receives on real roads: false-obstacle frames, pasted on-road obstacles found, stray regions.

    .venv/bin/python bench/bench_planner.py [--checkpoint FILE --model espnetv2] [--seeds 0 1 2] [--splits 5]

Frames: the eight Udacity highway frames and the two Cityscapes frames in ``../shared/assets`` (Cityscapes
resized to 1024 x 512). Per scene: ``--variants`` normal frames (the frame itself plus photometric /
geometric variants) and ``--pastes`` frames with 1-3 obstacles pasted on the road
(``pebal_training.data.road_pastes``: COCO cutouts and pebal's rendered crates/tyres/debris, perspective
scaled on the road the base model predicts on the unmodified frame). Variants of one scene are not
independent samples: ten scenes are a smoke check, not a benchmark.

Protocol (the split is fixed in ``pebal_training.data.road_pastes``): the *train* scenes were used to
fine-tune the real-roads model and to choose the post-processing defaults and are never measured here;
on the *calibration* scenes the ego mask and horizon are estimated per camera and the threshold is chosen
with ``pebal-calibrate --normal``'s rule (at most ``--rate`` of the normal calibration frames report an
obstacle; single images, no tracking); the numbers are measured on the *report* scenes only. Objects
pasted here are never used in training (held-out COCO images, renders from evaluation seeds). For
stability, ``--splits`` more splits of the six non-train scenes into 2 calibration / 4 report scenes and
``--seeds`` paste seeds are measured as well. Writes ``--output`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ASSETS = REPO.parent / "shared" / "assets"
CITYSCAPES_SIZE = (1024, 512)  # width, height


def load_engine(checkpoint: str | None, model: str | None):
    from pebal_perception.core.default_model import default_checkpoint
    from pebal_perception.core.engine import InferenceEngine

    return InferenceEngine.from_checkpoint(checkpoint or default_checkpoint(), model, device="cpu")


def real_frames(assets: Path):
    import cv2

    from pebal_training.data.road_pastes import TRAIN_SCENES, RealFrame, load_real_frames

    frames = []
    for fr in load_real_frames(assets):
        if fr.name in TRAIN_SCENES:
            continue
        if fr.camera == "cityscapes":
            fr = RealFrame(fr.name, cv2.resize(fr.rgb, CITYSCAPES_SIZE, interpolation=cv2.INTER_AREA), fr.camera)
        frames.append(fr)
    return frames


def cutouts(assets: Path, seed: int):
    from pebal_training.data.road_pastes import (EVALUATION_RENDER_SEED, HELD_OUT_COCO, coco_cutouts,
                                                 rendered_obstacle_cutouts)

    return (coco_cutouts(assets / "coco_outlier_samples", names=HELD_OUT_COCO)
            + rendered_obstacle_cutouts(12, seed=EVALUATION_RENDER_SEED + seed))


def score_all(engine, samples) -> list[tuple[np.ndarray, np.ndarray]]:
    from tqdm import tqdm

    from pebal_perception.core.engine import infer_maps

    out = []
    for s in tqdm(samples, desc="scoring", unit="img"):
        semantic, score, _ = infer_maps(engine, s.rgb)
        out.append((semantic, score))
    return out


def build(engine, assets: Path, seed: int, variants: int, pastes: int):
    from pebal_perception.core.road import drivable_mask
    from pebal_perception.core.engine import infer_maps
    from pebal_training.data.road_pastes import build_road_benchmark

    frames = real_frames(assets)
    roads = {fr.name: drivable_mask(infer_maps(engine, fr.rgb)[0]) for fr in frames}
    samples = build_road_benchmark(frames, roads, cutouts(assets, seed), seed=seed, pastes_per_frame=pastes,
                                   variants_per_frame=variants)
    samples = [s for s in samples if s.normal or s.meta]  # a paste that placed nothing is not a sample
    cameras = {fr.name: fr.camera for fr in frames}
    return samples, cameras


CLEAN_CACHE: dict = {}


def evaluate_split(samples, maps, cameras, calib_scenes, config, rate: float) -> dict:
    """Calibrate on ``calib_scenes``, measure on the other scenes."""
    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.road import drivable_mask, fit_road_scale
    from pebal_training.normal_calibration import clean_threshold, ego_polygon, false_frame_rate
    from pebal_training.normal_calibration import threshold_for_rate
    from pebal_training.planner_metrics import PlannerMetricAccumulator

    calib = [i for i, s in enumerate(samples) if s.scene in calib_scenes]
    report = [i for i, s in enumerate(samples) if s.scene not in calib_scenes]
    learned = {}  # per camera, what pebal-calibrate --normal estimates from the calibration frames
    for camera in sorted(set(cameras.values())):
        normal = [i for i in calib if samples[i].normal and cameras[samples[i].scene] == camera]
        fields = {"ego_mask_polygon": ego_polygon([maps[i][0] for i in normal], [maps[i][1] for i in normal])}
        fits = [fit_road_scale(drivable_mask(maps[i][0])) for i in normal]
        rows = [f.horizon_row / maps[i][0].shape[0] for f, i in zip(fits, normal) if f is not None]
        if len(rows) >= 3:
            fields["horizon_row"] = float(np.median(rows))
        learned[camera] = fields

    def config_for(i):
        return replace(config, **learned[cameras[samples[i].scene]])

    key = {c: repr(v) for c, v in learned.items()}
    clean = []
    for i in calib:
        if samples[i].normal:
            cache_key = (i, key[cameras[samples[i].scene]])
            if cache_key not in CLEAN_CACHE:
                CLEAN_CACHE[cache_key] = clean_threshold(maps[i][0], maps[i][1], config_for(i))
            clean.append(CLEAN_CACHE[cache_key])
    threshold = threshold_for_rate(clean, rate)
    acc = PlannerMetricAccumulator()
    for i in report:
        s = samples[i]
        frame = process_frame(maps[i][0], maps[i][1], replace(config_for(i), threshold=threshold))
        acc.update(frame.labels, s.instances, group=cameras[s.scene])
    result = acc.compute()
    return {"calibration_scenes": sorted(calib_scenes), "threshold": threshold,
            "calibration_false_frame_rate": false_frame_rate(clean, threshold),
            "estimated": {c: {"ego_polygon_vertices": len(v["ego_mask_polygon"]) // 2,
                              "horizon_row": v.get("horizon_row")} for c, v in learned.items()},
            "false_frame_rate": result["false_frame_rate"], "object_recall": result["object_recall"],
            "stray_regions_per_frame": result["stray_regions_per_frame"],
            "region_precision": result["region_precision"], "normal_frames": result["normal_frames"],
            "frames": result["frames"], "objects": result["objects"],
            "by_camera": {k: v.get("object_recall") for k, v in result.get("by_group", {}).items()}}


def node_config():
    """The node's default post-processing (the parameter table), without a threshold yet."""
    from bench.common import node_postprocess

    return node_postprocess(0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="default: the embedded default model")
    p.add_argument("--model", help="architecture of a bare third-party state dict (espnetv2)")
    p.add_argument("--assets", type=Path, default=ASSETS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--splits", type=int, default=4, help="other calibration/report splits of the non-train scenes")
    p.add_argument("--variants", type=int, default=6, help="normal frames per scene (the frame + variants)")
    p.add_argument("--pastes", type=int, default=6, help="pasted frames per scene")
    p.add_argument("--rate", type=float, default=0.05, help="target false-frame rate of the calibration")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "planner.json")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a PostProcessConfig field (exploration)")
    args = p.parse_args(argv)
    if not args.assets.is_dir():
        print(f"bench_planner: {args.assets}: no shared assets folder", file=sys.stderr)
        return 2
    from pebal_perception.core.io import atomic_write_json

    engine = load_engine(args.checkpoint, args.model)
    config = node_config()
    for item in args.set:
        name, _, value = item.partition("=")
        config = replace(config, **{name: type(getattr(config, name))(json.loads(value))})
    runs = []
    started = time.monotonic()
    for seed in args.seeds:
        samples, cameras = build(engine, args.assets, seed, args.variants, args.pastes)
        maps = score_all(engine, samples)
        from itertools import combinations

        from pebal_training.data.road_pastes import CALIBRATION_SCENES

        others = [pair for pair in combinations(sorted(cameras), len(CALIBRATION_SCENES))
                  if set(pair) != set(CALIBRATION_SCENES)]
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(others), size=min(args.splits, len(others)), replace=False)
        splits = [CALIBRATION_SCENES] + [others[k] for k in sorted(picks)]
        for k, calib in enumerate(splits):
            r = evaluate_split(samples, maps, cameras, set(calib), config, args.rate)
            r.update(seed=seed, split=k)
            runs.append(r)
            print(f"seed {seed} split {k}: threshold {r['threshold']:.3f}  false frames {r['false_frame_rate']:.3f} "
                  f"({r['normal_frames']})  recall {r['object_recall']:.3f} ({r['objects']})  "
                  f"stray/frame {r['stray_regions_per_frame']:.3f}  by camera {r['by_camera']}", flush=True)

    def stats(key):
        values = [r[key] for r in runs if r[key] is not None and not math.isnan(r[key])]
        return {"first_split": runs[0][key], "mean": float(np.mean(values)), "min": float(np.min(values)),
                "max": float(np.max(values))} if values else None

    summary = {key: stats(key) for key in ("false_frame_rate", "object_recall", "stray_regions_per_frame")}
    report = {"model": engine.meta.model_id or engine.meta.architecture, "checkpoint": args.checkpoint or "default",
              "config": config.to_dict(), "rate": args.rate, "seeds": args.seeds, "variants": args.variants,
              "pastes": args.pastes, "summary": summary, "runs": runs,
              "seconds": round(time.monotonic() - started, 1)}
    atomic_write_json(args.output, report)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
