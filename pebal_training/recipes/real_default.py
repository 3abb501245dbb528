"""The recipe of the embedded default model: the EdgeNets ESPNetv2 Cityscapes weights, PEBAL-fine-tuned.

    .venv/bin/python -m pebal_training.recipes.real_default --output runs/real_default [--install]

One command (CPU, 2 threads; wall time in ``<output>/real_default.json``) does:

1. **Inlier frames** (a Cityscapes tree under ``<output>/data/cityscapes``, read with
   ``data.inlier_outlier_label: true``):

   * the real train scenes (:data:`pebal_training.data.road_pastes.TRAIN_SCENES`: three Udacity highway
     frames and one Cityscapes frame, at the network's deployment scale; ``--scenes all``: every real frame
     of the assets, the eight highway frames and both Cityscapes frames, the highway clip held out) and
     ``--variants`` photometric / mild geometric variants of each, pseudo-labelled by the base weights
     (argmax; pixels whose top probability is below ``--min-confidence`` are void);
   * ``--pastes`` frames per real scene with objects pasted on its road at perspective scale (COCO sample
     cutouts except ``HELD_OUT_COCO`` and pebal's rendered crates/tyres/debris from training seeds), the
     base pseudo-label with 254 (outlier) on the objects;
   * ``--synthetic`` procedural street scenes (:mod:`pebal_training.data.synthetic`, 1024 x 512, seeds of
     their own, never the demo drive's) with their exact labels and 254 on the road anomalies the
     generator places (so the default model also sees the synthetic world the demo drives through).

2. **Outlier exposure** (the trainer's AnomalyMix, as PEBAL): objects of ``coco128_seg`` images holding no
   Cityscapes class (person, rider, car, truck, bus, train, motorcycle, bicycle, traffic light, stop sign)
   and not in ``HELD_OUT_COCO`` (``--all-coco``: those too), resized by 0.5, ``--oe-fraction`` of them per
   frame and epoch.

3. **PEBAL fine-tuning** with :func:`pebal_training.trainer.train` (the ``pebal-finetune`` code path, the
   reference losses: PAL + energy hinge + smoothness/sparsity), the abstention row re-initialised, the
   whole ESPNetv2 decoder trained (``--trainable``; the last block alone cannot move the boundary pixels:
   ``docs/experiments/real_roads.md``), every BatchNorm kept in eval (``--bn-mode``), 256 x 512 crops.

4. **Threshold**, chosen on sets that are never reported: the lowest threshold at which at most one of
   the eight real highway frames (``real_driving_frames``; the normal-driving rule of ``pebal-calibrate
   --normal`` with :data:`NORMAL_RATE`) reports an obstacle after the product's post-processing, and the
   95 %-TPR pixel threshold of ``--calibration-scenes`` held-out synthetic scenes; the higher of the two is
   stored (neither the anomaly benchmarks nor the highway clip nor the demo drive choose it).

5. ``<output>/real_default.pt`` (our checkpoint format, ``meta.model_id`` :data:`MODEL_ID`, input size
   1024 x 512) and ``<output>/real_default.json`` (settings, data, losses, thresholds, wall times).
   ``--install`` copies both into the package (``pebal_perception/data/default_model.pt`` + ``.json``)
   with the EdgeNets licence file beside them (``LICENSE-EdgeNets.txt``: the weights derive from MIT-licensed
   weights).

``--output`` must be new, empty or written by this recipe; ``data/`` and ``run/`` are rebuilt on every run.
Quality on the real benchmarks is measured by ``bench/bench_quality.py`` (BENCHMARKS.md, figure 10), never
here: nothing in this recipe reads ``../shared/benchmarks``. Nothing here imports ROS. The embedded default
is this recipe with ``--scenes all --min-confidence 0.5 --all-coco --iters 1500 --threads 1`` (49 minutes on
2 shared CPU cores), then :mod:`pebal_training.recipes.road_default` (its score and its threshold);
``scripts/finetune_gpu.sh`` runs the same data and losses on one GPU at full resolution.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pebal_training.recipes.cityscapes_smoke import DEFAULT_ASSETS
from pebal_training.recipes.real_roads import CHECKPOINT, CITY, DECODER_PREFIXES

TOOL = "real_default"
MODEL_ID = "pebal-espnetv2-real"
LICENSE_FILE = "LICENSE-EdgeNets.txt"
SOURCE = ("EdgeNets ESPNetv2 Cityscapes weights espnetv2_s_2.0_city_1024x512.pth (sacmehta/EdgeNets, MIT, "
          "Copyright (c) 2021 Sachin Mehta; licence in LICENSE-EdgeNets.txt), PEBAL-fine-tuned by "
          "pebal_training.recipes.real_default")
NETWORK_HW = (512, 1024)
SYNTHETIC_STREAM = 5  # seed stream of the training scenes (the demo drive and the tests use others)
CALIBRATION_STREAM = 6
#: COCO-80 indices of classes that are Cityscapes inliers (or on every street): never outliers.
INLIER_COCO80 = frozenset({0, 1, 2, 3, 5, 6, 7, 9, 11})
COCO_SCALE = 0.5
#: The normal-driving rule on the eight highway frames: at most one of them may report an obstacle (5 % of
#: eight frames would be none: the one frame with distant cars at the vanishing point would set the
#: threshold above every obstacle the model was trained to score).
NORMAL_RATE = 1 / 8
CALIBRATION_TPR = 0.95


def output_layout():
    """What this recipe writes into ``--output`` (see :class:`pebal_perception.core.io.FolderLayout`)."""
    from pebal_perception.core.io import FolderLayout
    from pebal_training.run_folder import RUN_FOLDER

    return FolderLayout(TOOL, files=(r"real_default\.(pt|json)",), folders={"data": data_layout(), "run": RUN_FOLDER})


def data_layout():
    from pebal_perception.core.io import FolderLayout

    city = FolderLayout(TOOL, files=(r"[A-Za-z0-9_]+_(leftImg8bit|gtFine_labelTrainIds)\.png",))
    split = FolderLayout(TOOL, folders={"train": FolderLayout(TOOL, folders={CITY: city})})
    return FolderLayout(TOOL, folders={"cityscapes": FolderLayout(TOOL, folders={"leftImg8bit|gtFine": split})})


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="shared assets folder")
    p.add_argument("--output", type=Path, default=Path("runs/real_default"))
    p.add_argument("--iters", type=int, default=600, help="training iterations")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--energy-weight", type=float, default=0.1, help="loss.energy_weight (0.1 = the reference)")
    p.add_argument("--trainable", nargs="+", default=list(DECODER_PREFIXES), help="trained parameter prefixes")
    p.add_argument("--bn-mode", choices=("frozen", "eval", "train"), default="eval")
    p.add_argument("--scenes", choices=("train", "all"), default="train",
                   help="real inlier frames: the train scenes only, or every real frame of the assets (the eight "
                        "highway frames and both Cityscapes frames; the highway clip stays held out)")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="pseudo-label confidence filter: pixels whose top probability is below it are void")
    p.add_argument("--all-coco", action="store_true",
                   help="COCO outliers from every coco128_seg image without a Cityscapes class (HELD_OUT_COCO too)")
    p.add_argument("--variants", type=int, default=4, help="photometric variants per real train frame")
    p.add_argument("--pastes", type=int, default=6, help="frames with objects pasted on the road, per real scene")
    p.add_argument("--renders", type=int, default=24, help="rendered training obstacles (training seeds)")
    p.add_argument("--synthetic", type=int, default=48, help="synthetic street scenes (exact labels)")
    p.add_argument("--calibration-scenes", type=int, default=24, help="held-out synthetic scenes for the threshold")
    p.add_argument("--oe-fraction", type=float, default=0.5, help="COCO AnomalyMix samples per frame and epoch")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="training device: cpu (the recipe's own), cuda, auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=666)
    p.add_argument("--install", action="store_true", help="copy the result into the package as the default model")
    return p.parse_args(argv)


def _error(message: str) -> int:
    print(f"{TOOL}: error: {message}", file=sys.stderr)
    return 1


# -- data --------------------------------------------------------------------------------------------------
def synthetic_scene(index: int, seed: int, stream: int, size_hw: tuple[int, int] = NETWORK_HW):
    from pebal_training.data.synthetic import SceneConfig, generate_scene

    config = SceneConfig(height=size_hw[0], width=size_hw[1], anomaly_count_range=(1, 3))
    return generate_scene(np.random.default_rng(np.random.SeedSequence((stream, int(seed), int(index)))), config)


def synthetic_label(scene) -> np.ndarray:
    """The scene's exact trainIds with 254 (outlier) on its anomalies; void stays 255."""
    from pebal_perception.core.constants import OUTLIER_LABEL

    return np.where(scene.anomaly == 1, OUTLIER_LABEL, scene.semantic).astype(np.uint8)


def prepare_synthetic(root: Path, count: int, seed: int) -> list[str]:
    from pebal_perception.core.io import atomic_save_image

    names = []
    for i in range(count):
        scene = synthetic_scene(i, seed, SYNTHETIC_STREAM)
        name = f"synthetic_{i:04d}"
        atomic_save_image(root / "leftImg8bit" / "train" / CITY / f"{name}_leftImg8bit.png", scene.image)
        atomic_save_image(root / "gtFine" / "train" / CITY / f"{name}_gtFine_labelTrainIds.png", synthetic_label(scene))
        names.append(name)
    return names


def coco_outlier_images(coco_root: Path, hold_out: bool = True) -> list[str]:
    """coco128_seg images usable as outliers: at least one instance, none of an inlier class, not held out
    (``hold_out``: HELD_OUT_COCO is left out)."""
    from pebal_training.data.datasets import parse_yolo_seg
    from pebal_training.data.road_pastes import HELD_OUT_COCO

    names = []
    for label in sorted((coco_root / "labels" / "train2017").glob("*.txt")):
        classes = {int(c) for c, _ in parse_yolo_seg(label)}
        if (classes and not classes & INLIER_COCO80 and not (hold_out and label.stem in HELD_OUT_COCO)
                and (coco_root / "images" / "train2017" / f"{label.stem}.jpg").is_file()):
            names.append(label.stem)
    return names


# -- threshold ---------------------------------------------------------------------------------------------
def normal_threshold(engine, meta, assets: Path) -> dict[str, Any]:
    """The normal-driving rule on the eight highway frames (as ``pebal-calibrate --normal``)."""
    import cv2

    from pebal_perception.core.postprocess_config import planner_config
    from pebal_perception.core.frame_sources import open_source
    from pebal_training.normal_calibration import clean_threshold, threshold_for_rate

    clean = []
    for _, bgr in open_source(assets / "real_driving_frames").frames():
        semantic, score = engine.score_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        clean.append(clean_threshold(semantic, score, planner_config(0.0, meta)))
    return {"threshold": threshold_for_rate(clean, NORMAL_RATE), "rate": NORMAL_RATE, "frames": len(clean),
            "clean_thresholds": clean, "chosen_on": "real_driving_frames (8 Udacity highway frames)"}


def synthetic_threshold(engine, seed: int, count: int) -> dict[str, Any]:
    """The pixel threshold of 95 % TPR on held-out synthetic scenes (stream of their own)."""
    from pebal_training.metrics import AnomalyMetricAccumulator

    acc = AnomalyMetricAccumulator(ignore_label=255, positive_label=1, negative_label=0)
    for i in range(count):
        scene = synthetic_scene(i, seed, CALIBRATION_STREAM)
        _, score = engine.score_frame(scene.image)
        acc.update(score, scene.anomaly)
    from pebal_training.cli.calibrate import threshold_for_tpr
    from pebal_training.evaluate import sorted_scores

    pos, _ = sorted_scores(acc)
    thr = threshold_for_tpr(pos, CALIBRATION_TPR)  # pebal-calibrate --target-tpr's rule
    return {"threshold": thr, "target_tpr": CALIBRATION_TPR, "scenes": count, **acc.compute(),
            "chosen_on": f"{count} held-out synthetic scenes (seed stream {CALIBRATION_STREAM})"}


# -- main --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    ckpt = args.assets / CHECKPOINT
    coco_root = args.assets / "coco128_seg"
    for path in (ckpt, coco_root, args.assets / "coco_outlier_samples", args.assets / "cityscapes_val",
                 args.assets / "real_driving_frames"):
        if not path.exists():
            return _error(f"{path}: not found (set --assets or PEBAL_SHARED_ASSETS)")
    import torch

    from pebal_perception.core.checkpoint import load_checkpoint, save_checkpoint
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.io import (OutputPathError, atomic_write_json,
                                          prepare_output_folder, remove_output_folder)
    from pebal_training.config import config_from_dict
    from pebal_training.recipes.real_roads import (all_real_frames, prepare_inliers, prepare_pasted_inliers,
                                                   train_frames, training_cutouts)
    from pebal_training.run_folder import RUN_FOLDER
    from pebal_training.trainer import train

    out = args.output
    try:
        prepare_output_folder(out, output_layout())
        remove_output_folder(out / "run", RUN_FOLDER)
        remove_output_folder(out / "data", data_layout())
    except OutputPathError as exc:
        return _error(str(exc))
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        base, _ = load_checkpoint(ckpt, "espnetv2")
        root = out / "data" / "cityscapes"
        frames = train_frames(args.assets) if args.scenes == "train" else all_real_frames(args.assets)
        inliers = prepare_inliers(base, frames, root, args.min_confidence, args.variants, args.seed)
        pasted = prepare_pasted_inliers(inliers, training_cutouts(args.assets, args.renders), root, args.pastes,
                                        args.seed)
        synthetic = prepare_synthetic(root, args.synthetic, args.seed)
        coco = coco_outlier_images(coco_root, hold_out=not args.all_coco)
        n_frames = len(inliers) + len(pasted) + len(synthetic)
        t_data = time.time() - t0
        print(f"{TOOL}: {len(inliers)} real inlier frames, {len(pasted)} with road pastes, {len(synthetic)} "
              f"synthetic scenes, {len(coco)} COCO outlier images ({t_data:.0f} s)", file=sys.stderr)

        n_oe = max(1, int(args.oe_fraction * n_frames)) if args.oe_fraction > 0 else 0
        full_epoch = max(1, (n_frames + n_oe) // args.batch)
        epochs = max(1, -(-args.iters // full_epoch))
        iters_per_epoch = -(-args.iters // epochs)
        cfg = config_from_dict({
            "model": {"name": "espnetv2", "init_checkpoint": str(ckpt), "trainable_prefixes": list(args.trainable)},
            "data": {"kind": "cityscapes", "root": str(root), "split": "train", "crop_size": list(args.crop),
                     "inlier_outlier_label": True, "num_workers": args.workers,
                     "outliers": ({"kind": "yolo", "root": str(coco_root), "split": "train2017", "min_size": 0,
                                   "fraction": args.oe_fraction, "include": coco, "scale": COCO_SCALE}
                                  if n_oe else {"kind": "none"})},
            "optim": {"lr": args.lr},
            "loss": {"objective": "pebal", "energy_weight": args.energy_weight},
            "train": {"epochs": epochs, "batch_size": args.batch, "iters_per_epoch": iters_per_epoch,
                      "seed": args.seed, "bn_mode": args.bn_mode, "device": args.device, "log_every": 10,
                      "image_every": 0, "keep_checkpoints": 1, "progress": False},
            "output": str(out / "run"),
        })
        t1 = time.time()
        summary = train(cfg)
        t_train = time.time() - t1
        model, meta = load_checkpoint(summary["final_checkpoint"], "espnetv2")
        meta.model_id, meta.source = MODEL_ID, SOURCE
        meta.input_size = list(NETWORK_HW)
        engine = InferenceEngine(model, meta, device="cpu", input_size=NETWORK_HW, threshold=-9.0)
        normal = normal_threshold(engine, meta, args.assets)
        synthetic_thr = synthetic_threshold(engine, args.seed, args.calibration_scenes)
        threshold = max(normal["threshold"], synthetic_thr["threshold"])
        meta.threshold = float(threshold)
        meta.threshold_info = {"method": "max of the normal-driving rule and the synthetic 95 % TPR",
                               "normal_driving": {k: v for k, v in normal.items() if k != "clean_thresholds"},
                               "synthetic_tpr": {k: synthetic_thr[k] for k in ("threshold", "target_tpr", "scenes",
                                                                               "chosen_on", "auroc", "ap", "fpr95")},
                               "date": time.strftime("%Y-%m-%d")}
        save_checkpoint(out / "real_default.pt", model, meta)
    finally:
        torch.set_num_threads(threads)
    lines = (out / "run" / "train_log.jsonl").read_text().splitlines()
    record = {
        "description": "ESPNetv2 (s=2.0) from the EdgeNets Cityscapes weights (MIT), PEBAL-fine-tuned on real "
                       "road frames, road pastes and synthetic scenes with COCO outlier exposure.",
        "model_id": MODEL_ID, "source": SOURCE,
        "recipe": "python -m pebal_training.recipes.real_default "
                  + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"real_inlier_frames": [i["name"] for i in inliers], "road_pasted_frames": len(pasted),
                 "synthetic_scenes": len(synthetic), "coco_outlier_images": coco},
        "iterations": summary["global_step"], "epochs": epochs, "iters_per_epoch": iters_per_epoch,
        "loss_first_logged": json.loads(lines[0]).get("loss"), "loss_last_logged": json.loads(lines[-1]).get("loss"),
        "threshold": threshold, "threshold_info": meta.threshold_info,
        "wall_seconds": {"total": round(time.time() - t0, 1), "data": round(t_data, 1), "training": round(t_train, 1)},
    }
    atomic_write_json(out / "real_default.json", record)
    print(f"{TOOL}: threshold {threshold:.4g} (normal rule {normal['threshold']:.4g}, synthetic 95 % TPR "
          f"{synthetic_thr['threshold']:.4g}); {summary['global_step']} iterations, "
          f"{record['wall_seconds']['total']} s; {out / 'real_default.pt'}")
    if args.install:
        install_default(out / "real_default.pt", out / "real_default.json", args.assets, TOOL)
    return 0


def install_default(checkpoint: Path, record: Path, assets: Path, tool: str) -> None:
    """Copies ``checkpoint`` and its ``record`` into the package as the embedded default model (the package's
    own files), with the EdgeNets licence file beside them (the weights derive from MIT-licensed weights)."""
    from pebal_perception.core.default_model import DEFAULT_MODEL_PATH
    from pebal_perception.core.io import atomic_write_bytes

    DEFAULT_MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(DEFAULT_MODEL_PATH, checkpoint.read_bytes())
    atomic_write_bytes(DEFAULT_MODEL_PATH.with_suffix(".json"), record.read_bytes())
    atomic_write_bytes(DEFAULT_MODEL_PATH.parent / LICENSE_FILE,
                       (assets / CHECKPOINT).parent.joinpath(LICENSE_FILE).read_bytes())
    print(f"{tool}: installed {DEFAULT_MODEL_PATH} (with {LICENSE_FILE})")


if __name__ == "__main__":
    sys.exit(main())
