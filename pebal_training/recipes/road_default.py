"""The embedded default model's last step: the road-relative score, with its threshold chosen on the
development set.

    .venv/bin/python -m pebal_training.recipes.real_default --output runs/real_frames --scenes all \\
        --min-confidence 0.5 --all-coco --iters 1500 --threads 1          # PEBAL fine-tuning (CPU, < 90 min)
    .venv/bin/python -m pebal_training.recipes.road_default --checkpoint runs/real_frames/real_default.pt \\
        --output runs/road_default [--install]                              # score + threshold (minutes)

1. ``meta.score``: the road-relative score of :mod:`pebal_perception.core.road_score` with its defaults
   (free energy + 3 x the gated distance from the frame's own road features; the weight and the other
   settings were chosen on Fishyscapes Lost & Found val's pixel AP).
2. **Threshold, chosen on the development set** (Fishyscapes Lost & Found val, ``../shared/benchmarks``:
   evaluation and calibration only, never trained on): every frame through the engine as the node runs it
   (1024x512, the product's post-processing at its analysis width, single frames), thresholds swept over
   the road pixels' score quantiles and then refined around the best; the threshold that finds the most
   obstacles (>= 25 % covered) at no more than :data:`STRAY_BUDGET` stray regions per frame (ties: the
   higher threshold). That is the operating point of issue 26's targets; normal driving is measured there by
   ``bench/bench_quality.py`` (the 38-frame highway clip is never used here).
3. ``<output>/road_default.pt`` + ``.json`` (the sweep, the chosen point, wall time, and the fine-tuning's
   own record when it lies beside the checkpoint); ``--install`` copies
   them into the package as the default model, with the EdgeNets licence file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

TOOL = "road_default"
STRAY_BUDGET = 0.3
COARSE_QUANTILES = (0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995, 0.9998, 0.9999)
REFINE_STEPS = 12


def output_layout():
    from pebal_perception.core.io import FolderLayout

    return FolderLayout(TOOL, files=(r"road_default\.(pt|json)",))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from pebal_training.recipes.cityscapes_smoke import DEFAULT_ASSETS

    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="the fine-tuned model (real_default's output)")
    p.add_argument("--benchmarks", type=Path, default=DEFAULT_ASSETS.parent / "benchmarks",
                   help="folder holding fishyscapes_lostandfound_val")
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="shared assets (the EdgeNets licence)")
    p.add_argument("--output", type=Path, default=Path("runs/road_default"))
    p.add_argument("--install", action="store_true", help="copy the result into the package as the default model")
    return p.parse_args(argv)


def planner_counts(frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], threshold: float,
                   meta: Any) -> dict[str, float]:
    """Obstacles found and stray regions per frame of labelled ``(semantic, score, label)`` frames at the
    analysis width, under the product's post-processing at ``threshold``."""
    from pebal_perception.core.constants import VOID
    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.postprocess_config import planner_config
    from pebal_training.evaluate import instance_components
    from pebal_training.planner_metrics import frame_planner_stats

    found = objects = stray = 0
    config = planner_config(threshold, meta)
    for semantic, score, label in frames:
        stats = frame_planner_stats(process_frame(semantic, score, config).labels, instance_components(label == 1),
                                    label == VOID)
        found, objects, stray = found + stats["num_found"], objects + stats["num_objects"], stray + stats["num_stray"]
    return {"threshold": float(threshold), "found": found / max(1, objects), "found_count": found,
            "objects": objects, "stray_per_frame": stray / max(1, len(frames))}


def stray_budget_threshold(frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], meta: Any,
                           budget: float = STRAY_BUDGET) -> dict[str, Any]:
    """The threshold with the most obstacles found at <= ``budget`` stray regions per frame (module
    docstring): a coarse sweep over road-pixel score quantiles, then :data:`REFINE_STEPS` thresholds between
    the best coarse point's neighbours. Returns the chosen point and every swept one."""
    from pebal_perception.core.obstacles import ROAD_TRAIN_ID

    road = np.concatenate([score[semantic == ROAD_TRAIN_ID] for semantic, score, _ in frames])
    if road.size == 0:
        raise ValueError("no road pixel in the development frames")
    coarse = sorted({float(np.quantile(road, q)) for q in COARSE_QUANTILES})
    sweep = {t: planner_counts(frames, t, meta) for t in coarse}

    def best() -> float:
        within = [p for p in sweep.values() if p["stray_per_frame"] <= budget]
        if not within:
            raise ValueError(f"no swept threshold keeps stray regions within {budget} per frame")
        return max(within, key=lambda p: (p["found"], p["threshold"]))["threshold"]

    chosen = best()
    i = coarse.index(chosen)
    low, high = coarse[max(0, i - 1)], coarse[min(len(coarse) - 1, i + 1)]
    for t in np.linspace(low, high, REFINE_STEPS + 2)[1:-1]:
        sweep.setdefault(float(t), planner_counts(frames, float(t), meta))
    chosen = best()
    return {**sweep[chosen], "budget": budget, "sweep": [sweep[t] for t in sorted(sweep)]}


def development_frames(engine, benchmarks: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """FS L&F val through ``engine`` (the node's path), at the post-processing's analysis width."""
    from tqdm import tqdm

    from pebal_perception.core.postprocess import at_analysis_width
    from pebal_perception.core.postprocess_config import PLANNER_DEFAULTS
    from pebal_training.data.datasets import open_anomaly_dataset

    dataset = open_anomaly_dataset("fishyscapes_laf", benchmarks / "fishyscapes_lostandfound_val")
    out = []
    for i in tqdm(range(len(dataset)), desc="FS L&F val", unit="frame"):
        sample = dataset[i]
        semantic, score = engine.score_frame(sample["image"])
        score, semantic, label = at_analysis_width(int(PLANNER_DEFAULTS["analysis_width"]), score, semantic,
                                                   sample["label"])
        out.append((semantic, score, label))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if not (args.benchmarks / "fishyscapes_lostandfound_val").is_dir():
        print(f"{TOOL}: error: {args.benchmarks / 'fishyscapes_lostandfound_val'}: not found", file=sys.stderr)
        return 1
    import torch

    from pebal_perception.core.checkpoint import load_checkpoint, save_checkpoint
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.io import OutputPathError, atomic_write_json, prepare_output_folder
    from pebal_perception.core.road_score import RoadScoreConfig
    from pebal_training.recipes.real_default import install_default

    try:
        prepare_output_folder(args.output, output_layout())
        model, meta = load_checkpoint(args.checkpoint, "espnetv2")
    except (OutputPathError, ValueError, OSError) as exc:
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        return 1
    t0 = time.time()
    meta.score = RoadScoreConfig().to_dict()
    engine = InferenceEngine(model, meta, device="cpu", threshold=0.0, backend="torch")
    with torch.inference_mode():
        frames = development_frames(engine, args.benchmarks)
    point = stray_budget_threshold(frames, meta)
    meta.threshold = point["threshold"]
    meta.threshold_info = {
        "method": f"most Fishyscapes L&F val obstacles found at <= {STRAY_BUDGET} stray regions per frame "
                  "(the product's post-processing, single frames, 1024x512)",
        "chosen_on": "fishyscapes_lostandfound_val (the development set; never trained on)",
        "found": point["found"], "stray_per_frame": point["stray_per_frame"], "score": meta.score,
        "previous": dict(meta.threshold_info), "date": time.strftime("%Y-%m-%d")}
    save_checkpoint(args.output / "road_default.pt", model, meta)
    record = {"recipe": "python -m pebal_training.recipes.road_default "
                        + " ".join(argv if argv is not None else sys.argv[1:]),
              "checkpoint": str(args.checkpoint), "score": meta.score, "threshold": point["threshold"],
              "chosen": {k: v for k, v in point.items() if k != "sweep"}, "sweep": point["sweep"],
              "wall_seconds": round(time.time() - t0, 1)}
    training = args.checkpoint.with_suffix(".json")  # real_default's record beside its checkpoint
    if training.is_file():
        try:
            record["fine_tuning"] = json.loads(training.read_text())
        except ValueError:
            record["fine_tuning"] = f"{training}: not JSON"
    atomic_write_json(args.output / "road_default.json", record)
    print(f"{TOOL}: threshold {point['threshold']:.4g}: {point['found']:.2f} of the FS L&F obstacles found at "
          f"{point['stray_per_frame']:.2f} stray regions per frame; {args.output / 'road_default.pt'}")
    if args.install:
        install_default(args.output / "road_default.pt", args.output / "road_default.json", args.assets, TOOL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
