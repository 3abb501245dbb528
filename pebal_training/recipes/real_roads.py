"""PEBAL fine-tuning of the EdgeNets ESPNetv2 Cityscapes model on real road frames, on CPU.

    .venv/bin/python -m pebal_training.recipes.real_roads --output runs/real_roads [--gap]

One command (2 CPU threads, about 20 minutes with the defaults) does:

1. **Inlier frames**: the real train scenes (:data:`pebal_training.data.road_pastes.TRAIN_SCENES`) at the
   network's deployment scale (1024 wide) plus ``--variants`` photometric / mild geometric copies,
   pseudo-labelled by the base model (argmax; below ``--min-confidence`` = void) and written as a
   Cityscapes tree under ``<output>/data/cityscapes``.
2. **Outliers on the road**: ``--pastes`` frames per train scene with COCO cutouts (except
   ``HELD_OUT_COCO``) and procedural renders pasted on the road at perspective scale. ``--road-pastes
   inliers`` (the default) writes them into the Cityscapes tree with 254 on the objects, so they stay on
   the road; ``ood_seg`` gives them to AnomalyMix, which re-pastes them anywhere. The trainer's COCO
   outlier exposure (``<output>/data/ood_seg``, ``--oe-fraction`` per frame and epoch) is kept.
3. **Fine-tuning** with :func:`pebal_training.trainer.train` (the ``pebal-finetune`` code path, the
   reference PEBAL losses, the abstention row re-initialised): ``--trainable`` prefixes (default the
   whole decoder, :data:`DECODER_PREFIXES`), ``--bn-mode`` (default ``eval``: BatchNorm keeps its
   pretrained statistics), 256 x 512 crops, poly lr schedule, ``--iters`` iterations.
4. **Held-out measurement** of the base and the fine-tuned weights: (a) segmentation pixel accuracy on
   Cityscapes ``frankfurt_000000_000294``; (b) pixel AP / AUROC / FPR95 on normal and held-out pasted
   frames of the calibration and report scenes; (c) with ``--gap``, the region-score gap under the
   node's default post-processing (:mod:`pebal_training.normal_calibration`): ``median(found) -
   max(clean)`` > 0 means one threshold separates most objects from every normal frame. No threshold
   is calibrated here: run ``pebal-calibrate --normal`` afterwards.
5. **Outputs**: ``<output>/real_roads.pt`` (``meta.model_id = "espnetv2-real-roads"``, no threshold),
   ``<output>/real_roads.json`` (settings, wall time, metrics), ``<output>/data`` (resized Cityscapes
   frames: never ship them) and ``<output>/run`` (the trainer's run folder). ``--output`` must be new,
   empty or written by this recipe; ``data/`` and ``run/`` are rebuilt on every run.

Why the defaults are what they are, and every measured attempt: ``docs/experiments/real_roads.md``.
Nothing here imports ROS.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pebal_training.recipes.cityscapes_smoke import DEFAULT_ASSETS

TOOL = "real_roads"
MODEL_ID = "espnetv2-real-roads"
CHECKPOINT = Path("espnetv2_cityscapes") / "espnetv2_s_2.0_city_1024x512.pth"
SOURCE = ("EdgeNets ESPNetv2 Cityscapes weights espnetv2_s_2.0_city_1024x512.pth (sacmehta/EdgeNets, MIT, "
          "Copyright (c) 2021 Sachin Mehta), PEBAL-fine-tuned on real road frames by pebal_training.recipes.real_roads")
DEPLOY_WIDTH = 1024
CITY = "real"  # the one "city" folder of the written Cityscapes tree
OOD_SPLIT = "train2017"
COCO_SCALE = 0.5  # the trainer-style COCO outlier exposure: objects resized as for 1024-wide scenes
EVAL_CITYSCAPES_SIZE = (1024, 512)  # width, height (as bench/bench_planner.py)
SEG_FRAME = "frankfurt_000000_000294"
#: The ESPNetv2 decoder: its four pyramid blocks, the encoder-to-decoder skips and their BN+PReLU (43,556
#: parameters of 789,242; the last two blocks alone hold 3,656, too few to move the boundary pixels).
DECODER_PREFIXES = ("bu_dec_l1.", "bu_dec_l2.", "bu_dec_l3.", "bu_dec_l4.", "merge_enc_dec_", "bu_br_")


def output_layout():
    """What this recipe writes into ``--output`` (see :class:`pebal_perception.core.io.FolderLayout`)."""
    from pebal_perception.core.io import FolderLayout
    from pebal_training.run_folder import RUN_FOLDER

    return FolderLayout(TOOL, files=(r"real_roads\.(pt|json)",),
                        folders={"data": data_layout(), "run": RUN_FOLDER})


def data_layout():
    """``<output>/data``: the Cityscapes tree of inlier frames and the ood_seg outlier source."""
    from pebal_perception.core.io import FolderLayout

    city = FolderLayout(TOOL, files=(r"[A-Za-z0-9_]+_(leftImg8bit|gtFine_labelTrainIds)\.png",))
    split = FolderLayout(TOOL, folders={"train": FolderLayout(TOOL, folders={CITY: city})})
    cityscapes = FolderLayout(TOOL, folders={"leftImg8bit|gtFine": split})
    ood = FolderLayout(TOOL, folders={
        OOD_SPLIT: FolderLayout(TOOL, files=(r"[A-Za-z0-9_]+\.jpg",)),
        "annotations": FolderLayout(TOOL, folders={f"ood_seg_{OOD_SPLIT}": FolderLayout(
            TOOL, files=(r"[A-Za-z0-9_]+\.png",))})})
    return FolderLayout(TOOL, folders={"cityscapes": cityscapes, "ood_seg": ood})


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="shared assets folder")
    p.add_argument("--output", type=Path, default=Path("runs/real_roads"))
    p.add_argument("--iters", type=int, default=210, help="training iterations")
    p.add_argument("--batch", type=int, default=4, help="batch size")
    p.add_argument("--crop", type=int, nargs=2, default=[256, 512], metavar=("H", "W"), help="training crop")
    p.add_argument("--energy-weight", type=float, default=0.1,
                   help="lambda of the energy loss (loss.energy_weight; 0.1 = the reference)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--trainable", nargs="+", default=list(DECODER_PREFIXES),
                   help="trained parameter-name prefixes (default: the whole decoder)")
    p.add_argument("--bn-mode", choices=("frozen", "eval", "train"), default="eval",
                   help="train.bn_mode: frozen = BN of the trained blocks uses batch statistics; eval = every BN "
                        "keeps its pretrained running statistics")
    p.add_argument("--variants", type=int, default=4, help="extra photometric variants per train frame")
    p.add_argument("--pastes", type=int, default=6, help="training frames with objects pasted on the road, per scene")
    p.add_argument("--renders", type=int, default=24, help="rendered training obstacles (seed 0)")
    p.add_argument("--oe-fraction", type=float, default=0.5,
                   help="COCO outlier-exposure samples per training frame and epoch")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="pseudo-label confidence threshold (0: every pixel labelled with the argmax class)")
    p.add_argument("--road-pastes", choices=("inliers", "ood_seg"), default="inliers",
                   help="where the on-road pasted training frames go: inliers = Cityscapes tree with 254 on the "
                        "objects (data.inlier_outlier_label, objects stay on the road); ood_seg = outlier source "
                        "(AnomalyMix re-pastes them at random positions)")
    p.add_argument("--eval-pastes", type=int, default=4, help="held-out pasted frames per evaluation scene")
    p.add_argument("--eval-normals", type=int, default=2, help="normal frames per evaluation scene (frame + variants)")
    p.add_argument("--gap", action="store_true",
                   help="also measure the region-score gap (c); slow: about 5 extra CPU minutes")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=666)
    return p.parse_args(argv)


# -- data preparation --------------------------------------------------------------------------------------

def deployment_size(height: int, width: int, target_width: int = DEPLOY_WIDTH) -> tuple[int, int]:
    """``(height, width)`` of a frame seen at ``target_width`` wide, aspect kept, height a multiple of 16."""
    h = max(16, int(round(height * target_width / width / 16.0)) * 16)
    return h, int(target_width)


def to_deployment_scale(rgb: np.ndarray, target_width: int = DEPLOY_WIDTH) -> np.ndarray:
    import cv2

    h, w = deployment_size(*rgb.shape[:2], target_width)
    if (h, w) == rgb.shape[:2]:
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if w < rgb.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


def class_probabilities(model, rgb: np.ndarray):
    """Softmax over the 19 inlier classes of ``model`` on ``rgb`` at its own size: ``19 x H x W`` tensor."""
    import torch

    from pebal_perception.core.constants import IMAGENET_MEAN, IMAGENET_STD, NUM_INLIER_CLASSES

    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    x = torch.from_numpy(((rgb.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1).copy())[None]
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(x)[0, :NUM_INLIER_CLASSES].float(), dim=0)


def pseudo_label(model, rgb: np.ndarray, min_confidence: float) -> np.ndarray:
    """The model's argmax trainIds (uint8), 255 where the top probability is below ``min_confidence``
    (as cityscapes_smoke's pseudo-labels)."""
    from pebal_perception.core.constants import IGNORE_LABEL

    conf, pred = class_probabilities(model, rgb).max(dim=0)
    label = pred.numpy().astype(np.uint8)
    label[conf.numpy() < min_confidence] = IGNORE_LABEL
    return label


def train_frames(assets: Path) -> list:
    """The train scenes (``TRAIN_SCENES``) at deployment scale, as ``RealFrame``s."""
    from pebal_training.data.road_pastes import TRAIN_SCENES, RealFrame, load_real_frames

    frames = [fr for fr in load_real_frames(assets) if fr.name in TRAIN_SCENES]
    missing = sorted(set(TRAIN_SCENES) - {fr.name for fr in frames})
    if missing:
        raise FileNotFoundError(f"{assets}: train scenes {missing} not found")
    return [RealFrame(fr.name, to_deployment_scale(fr.rgb), fr.camera) for fr in frames]


def all_real_frames(assets: Path) -> list:
    """Every real frame of the assets (``load_real_frames``: the eight highway frames and both Cityscapes
    frames) at deployment scale, as ``RealFrame``s."""
    from pebal_training.data.road_pastes import RealFrame, load_real_frames

    return [RealFrame(fr.name, to_deployment_scale(fr.rgb), fr.camera) for fr in load_real_frames(assets)]


def prepare_inliers(model, frames: Sequence, root: Path, min_confidence: float, variants: int,
                    seed: int) -> list[dict[str, Any]]:
    """Writes each frame and its ``variants`` (pseudo-labelled) as ``<root>`` (official Cityscapes layout);
    returns ``dict(name, scene, image, label)`` per written frame."""
    import zlib

    from pebal_perception.core.io import atomic_save_image
    from pebal_training.data.road_pastes import normal_variants

    out = []
    for fr in frames:
        rng = np.random.default_rng((int(seed), zlib.crc32(fr.name.encode()), 11))
        images = [fr.rgb] + normal_variants(fr.rgb, rng, variants)
        for k, rgb in enumerate(images):
            name = f"{fr.name}_v{k:02d}"
            label = pseudo_label(model, rgb, min_confidence)
            atomic_save_image(root / "leftImg8bit" / "train" / CITY / f"{name}_leftImg8bit.png", rgb)
            atomic_save_image(root / "gtFine" / "train" / CITY / f"{name}_gtFine_labelTrainIds.png", label)
            out.append({"name": name, "scene": fr.name, "image": rgb, "label": label})
    return out


def training_cutouts(assets: Path, renders: int) -> list:
    """COCO sample cutouts except HELD_OUT_COCO, plus ``renders`` procedural obstacles from seed 0."""
    from pebal_training.data.road_pastes import (EVALUATION_RENDER_SEED, HELD_OUT_COCO, coco_cutouts,
                                                 rendered_obstacle_cutouts)

    coco = assets / "coco_outlier_samples"
    names = sorted(p.stem for p in (coco / "images").glob("*.jpg") if p.stem not in HELD_OUT_COCO)
    cutouts = coco_cutouts(coco, names=names)
    seed = 0
    assert seed < EVALUATION_RENDER_SEED
    if renders > 0:
        cutouts += rendered_obstacle_cutouts(renders, seed=seed)
    return cutouts


def _road_pastes(inliers: Sequence[dict[str, Any]], cutouts: Sequence, pastes: int, seed: int):
    """Per scene ``pastes`` frames with objects pasted on the road of its inlier frames (cycling through the
    frame and its variants; road = the pseudo-label's road, holes filled): yields
    ``(name, scene, base item, rgb, instances, meta)``; frames without usable road are left out."""
    import zlib

    from pebal_perception.core.road import drivable_mask
    from pebal_training.data.road_pastes import paste_on_road

    by_scene: dict[str, list[dict[str, Any]]] = {}
    for item in inliers:
        by_scene.setdefault(item["scene"], []).append(item)
    for scene, items in by_scene.items():
        for j in range(pastes):
            base = items[j % len(items)]
            road = drivable_mask(base["label"])
            rng = np.random.default_rng((int(seed), zlib.crc32(scene.encode()), 12, j))
            rgb, instances, meta = paste_on_road(base["image"], road, cutouts, rng)
            if meta:
                yield f"{scene}_p{j:02d}", scene, base, rgb, instances, meta


def prepare_outliers(inliers: Sequence[dict[str, Any]], cutouts: Sequence, root: Path, pastes: int, seed: int,
                     coco_objects: Sequence[tuple[str, np.ndarray, np.ndarray]] = ()) -> list[dict[str, Any]]:
    """Writes the ood_seg outlier source ``<root>``: per scene ``pastes`` frames with objects pasted on the
    road of its inlier frames (:func:`_road_pastes`; none with ``pastes=0``), and the ``coco_objects``
    ``(name, rgb, mask)``. Mask files hold 254 on the objects and 0 elsewhere. Returns one dict (name, scene,
    frame, objects, kinds, pixels) per sample."""
    from pebal_perception.core.constants import OUTLIER_LABEL
    from pebal_perception.core.io import atomic_save_image

    img_dir = root / OOD_SPLIT
    ann_dir = root / "annotations" / f"ood_seg_{OOD_SPLIT}"
    written = []
    for name, scene, base, rgb, instances, meta in _road_pastes(inliers, cutouts, pastes, seed):
        mask = np.where(instances > 0, OUTLIER_LABEL, 0).astype(np.uint8)
        atomic_save_image(img_dir / f"{name}.jpg", rgb, jpeg_quality=95)
        atomic_save_image(ann_dir / f"{name}.png", mask)
        written.append({"name": name, "scene": scene, "frame": base["name"], "objects": [m["name"] for m in meta],
                        "kinds": [m["kind"] for m in meta], "pixels": int((instances > 0).sum())})
    for name, rgb, obj_mask in coco_objects:
        mask = np.where(obj_mask, OUTLIER_LABEL, 0).astype(np.uint8)
        atomic_save_image(img_dir / f"coco_{name}.jpg", rgb, jpeg_quality=95)
        atomic_save_image(ann_dir / f"coco_{name}.png", mask)
        written.append({"name": f"coco_{name}", "scene": None, "frame": None, "objects": [name], "kinds": ["coco"],
                        "pixels": int(obj_mask.sum())})
    return written


def prepare_pasted_inliers(inliers: Sequence[dict[str, Any]], cutouts: Sequence, root: Path, pastes: int,
                           seed: int) -> list[dict[str, Any]]:
    """Writes the road pastes (:func:`_road_pastes`) into the Cityscapes tree ``<root>`` as inlier frames:
    the base frame's pseudo-label with 254 (OUTLIER_LABEL) on the pasted objects, so the objects stay
    where they were pasted (read with ``data.inlier_outlier_label: true``). Returns one dict (name, scene,
    frame, objects, kinds, pixels) per frame."""
    from pebal_perception.core.constants import OUTLIER_LABEL
    from pebal_perception.core.io import atomic_save_image

    written = []
    for name, scene, base, rgb, instances, meta in _road_pastes(inliers, cutouts, pastes, seed):
        label = np.where(instances > 0, OUTLIER_LABEL, base["label"]).astype(np.uint8)
        atomic_save_image(root / "leftImg8bit" / "train" / CITY / f"{name}_leftImg8bit.png", rgb)
        atomic_save_image(root / "gtFine" / "train" / CITY / f"{name}_gtFine_labelTrainIds.png", label)
        written.append({"name": name, "scene": scene, "frame": base["name"], "objects": [m["name"] for m in meta],
                        "kinds": [m["kind"] for m in meta], "pixels": int((instances > 0).sum())})
    return written


def coco_oe_objects(assets: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The trainer's COCO outlier exposure objects (YOLO source, ``min_size 0``, HELD_OUT_COCO left out,
    every instance of an image as one mask, resized by :data:`COCO_SCALE`)."""
    from pebal_training.data.datasets import CocoOutlierSource
    from pebal_training.data.road_pastes import HELD_OUT_COCO
    from pebal_training.data.sources import OutlierView

    source = CocoOutlierSource(assets / "coco_outlier_samples", fmt="yolo", min_size=0)
    view = OutlierView(source, [n for n in source.names if n not in HELD_OUT_COCO], COCO_SCALE)
    return [(name, *view[i]) for i, name in enumerate(view.names)]


# -- held-out measurement ----------------------------------------------------------------------------------

def evaluation_frames(assets: Path) -> list:
    """Calibration + report scenes as the node gets them (Udacity native, Cityscapes at 1024 x 512)."""
    import cv2

    from pebal_training.data.road_pastes import CALIBRATION_SCENES, REPORT_SCENES, RealFrame, load_real_frames

    wanted = set(CALIBRATION_SCENES) | set(REPORT_SCENES)
    frames = []
    for fr in load_real_frames(assets):
        if fr.name not in wanted:
            continue
        if fr.camera == "cityscapes":
            fr = RealFrame(fr.name, cv2.resize(fr.rgb, EVAL_CITYSCAPES_SIZE, interpolation=cv2.INTER_AREA), fr.camera)
        frames.append(fr)
    return frames


def held_out_samples(engine, assets: Path, seed: int, pastes: int, normals: int) -> tuple[list, dict]:
    """Normal and pasted evaluation samples (held-out objects on the road ``engine`` predicts)."""
    from pebal_perception.core.road import drivable_mask
    from pebal_perception.core.engine import infer_maps
    from pebal_training.data.road_pastes import (EVALUATION_RENDER_SEED, HELD_OUT_COCO, build_road_benchmark,
                                                 coco_cutouts, rendered_obstacle_cutouts)

    frames = evaluation_frames(assets)
    cutouts = (coco_cutouts(assets / "coco_outlier_samples", names=HELD_OUT_COCO)
               + rendered_obstacle_cutouts(12, seed=EVALUATION_RENDER_SEED))
    roads = {fr.name: drivable_mask(infer_maps(engine, fr.rgb)[0]) for fr in frames}
    samples = build_road_benchmark(frames, roads, cutouts, seed=seed, pastes_per_frame=pastes,
                                   variants_per_frame=normals)
    samples = [s for s in samples if s.normal or s.meta]
    return samples, {fr.name: fr.camera for fr in frames}


def segmentation_accuracy(model, assets: Path) -> dict[str, Any]:
    """Pixel accuracy (non-ignore pixels) of the 19-class argmax on ``SEG_FRAME`` vs its 256 x 128 GT."""
    import cv2

    from pebal_perception.core.constants import IGNORE_LABEL
    from pebal_training.data.datasets import read_label, read_rgb

    gt = read_label(assets / "cityscapes_val" / "mmseg_pseudo_256x128" / f"{SEG_FRAME}_gtFine_labelTrainIds.png")
    rgb = read_rgb(assets / "cityscapes_val" / f"{SEG_FRAME}_leftImg8bit.png")
    rgb = cv2.resize(rgb, EVAL_CITYSCAPES_SIZE, interpolation=cv2.INTER_AREA)
    pred = class_probabilities(model, rgb).argmax(dim=0).numpy().astype(np.uint8)
    pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
    valid = gt != IGNORE_LABEL
    return {"frame": SEG_FRAME, "pixel_accuracy": float((pred[valid] == gt[valid]).mean()),
            "pixels": int(valid.sum()), "size": [int(gt.shape[1]), int(gt.shape[0])]}


def anomaly_metrics(engine, samples: Sequence) -> dict[str, Any]:
    from pebal_training.evaluate import evaluate_anomaly

    items = [{"image": s.rgb, "label": (s.instances > 0).astype(np.uint8), "name": s.name,
              "instances": s.instances} for s in samples]
    report = evaluate_anomaly(engine, items, output=None, dataset_name="real-roads held-out", progress=False)
    return {k: report[k] for k in ("auroc", "ap", "fpr95", "num_pos", "num_neg", "num_images")}


def node_config():
    """The node's default post-processing (its parameter table), threshold 0 (scanned below)."""
    from pebal_perception.core.postprocess_config import planner_config

    return planner_config(0.0)


def region_gap(engine, samples: Sequence, cameras: dict[str, str]) -> dict[str, Any]:
    """Found thresholds of the pasted objects vs clean thresholds of the normal frames (see the docstring)."""
    from pebal_perception.core.road import drivable_mask, fit_road_scale
    from pebal_perception.core.engine import infer_maps
    from pebal_training.normal_calibration import clean_threshold, ego_polygon, found_thresholds

    maps = [infer_maps(engine, s.rgb)[:2] for s in samples]
    base = node_config()
    configs = {}
    for camera in sorted(set(cameras.values())):
        normal = [i for i, s in enumerate(samples) if s.normal and cameras[s.scene] == camera]
        fields: dict[str, Any] = {"ego_mask_polygon": ego_polygon([maps[i][0] for i in normal],
                                                                  [maps[i][1] for i in normal])}
        fits = [fit_road_scale(drivable_mask(maps[i][0])) for i in normal]
        rows = [f.horizon_row / maps[i][0].shape[0] for f, i in zip(fits, normal) if f is not None]
        if len(rows) >= 3:
            fields["horizon_row"] = float(np.median(rows))
        configs[camera] = replace(base, **fields)
    clean, found = [], []
    for s, (semantic, score) in zip(samples, maps):
        cfg = configs[cameras[s.scene]]
        if s.normal:
            clean.append(clean_threshold(semantic, score, cfg))
        else:
            found.extend(found_thresholds(semantic, score, s.instances, cfg))

    def finite(values):
        return [float(v) for v in values if math.isfinite(v)]

    max_clean = max(finite(clean), default=-math.inf)
    med_found = float(np.median(np.maximum(found, -1e6))) if found else -math.inf
    return {"median_found_threshold": med_found, "max_clean_threshold": max_clean,
            "gap": med_found - max_clean if math.isfinite(med_found) and math.isfinite(max_clean) else None,
            "objects_found_above_max_clean": float(np.mean(np.asarray(found) > max_clean)) if found else None,
            "normal_frames": len(clean), "objects": len(found),
            "normal_frames_never_reporting": int(sum(not math.isfinite(v) for v in clean))}


def measure(model, meta, assets: Path, samples: Sequence, cameras: dict[str, str], gap: bool) -> dict[str, Any]:
    from pebal_perception.core.engine import InferenceEngine

    engine = InferenceEngine(model, meta, device="cpu", optimize=False)
    out = {"segmentation": segmentation_accuracy(model, assets), "anomaly": anomaly_metrics(engine, samples)}
    if gap:
        out["region_gap"] = region_gap(engine, samples, cameras)
    return out


# -- main --------------------------------------------------------------------------------------------------

def _error(message: str) -> int:
    print(f"{TOOL}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if not 0.0 <= args.min_confidence <= 1.0:
        return _error(f"--min-confidence: expected 0..1, got {args.min_confidence}")
    ckpt = args.assets / CHECKPOINT
    for path in (ckpt, args.assets / "coco_outlier_samples", args.assets / "cityscapes_val",
                 args.assets / "real_driving_frames"):
        if not path.exists():
            return _error(f"{path}: not found (set --assets or PEBAL_SHARED_ASSETS)")
    import torch

    from pebal_perception.core.io import (OutputPathError, atomic_write_json, prepare_output_folder,
                                          remove_output_folder)
    from pebal_training.run_folder import RUN_FOLDER

    out = args.output
    try:
        prepare_output_folder(out, output_layout())  # refuses what this recipe did not write
        remove_output_folder(out / "run", RUN_FOLDER)  # always a fresh run
        remove_output_folder(out / "data", data_layout())  # no stale frames from other settings
    except OutputPathError as exc:
        return _error(str(exc))
    from pebal_perception.core.checkpoint import load_checkpoint, save_checkpoint
    from pebal_perception.core.engine import InferenceEngine
    from pebal_training.config import config_from_dict
    from pebal_training.data.road_pastes import CALIBRATION_SCENES, HELD_OUT_COCO, REPORT_SCENES, TRAIN_SCENES
    from pebal_training.trainer import train

    t0 = time.time()
    torch.set_num_threads(max(1, args.threads))
    base, base_meta = load_checkpoint(ckpt, "espnetv2")
    data_root = out / "data" / "cityscapes"
    ood_root = out / "data" / "ood_seg"
    inliers = prepare_inliers(base, train_frames(args.assets), data_root, args.min_confidence, args.variants,
                              args.seed)
    cutouts = training_cutouts(args.assets, args.renders)
    coco_objects = coco_oe_objects(args.assets)
    if args.road_pastes == "inliers":
        pasted = prepare_pasted_inliers(inliers, cutouts, data_root, args.pastes, args.seed)
        outliers = prepare_outliers(inliers, cutouts, ood_root, 0, args.seed, coco_objects)
    else:
        pasted = []
        outliers = prepare_outliers(inliers, cutouts, ood_root, args.pastes, args.seed, coco_objects)
    n_frames = len(inliers) + len(pasted)  # the Cityscapes tree the trainer reads
    t_data = time.time() - t0
    print(f"{TOOL}: {len(inliers)} inlier frames + {len(pasted)} with road pastes, {len(outliers)} outlier samples "
          f"({t_data:.0f} s)", file=sys.stderr)

    samples, cameras = held_out_samples(InferenceEngine(base, base_meta, device="cpu", optimize=False), args.assets,
                                        args.seed + 1, args.eval_pastes, args.eval_normals)
    t1 = time.time()
    before = measure(base, base_meta, args.assets, samples, cameras, args.gap)
    t_eval = time.time() - t1

    n_oe = max(1, int(args.oe_fraction * n_frames)) if outliers and args.oe_fraction > 0 else 0
    full_epoch = max(1, (n_frames + n_oe) // args.batch)
    epochs = max(1, -(-args.iters // full_epoch))
    iters_per_epoch = -(-args.iters // epochs)  # <= full_epoch; epochs x iters_per_epoch ~ --iters
    cfg = config_from_dict({
        "model": {"name": "espnetv2", "init_checkpoint": str(ckpt), "trainable_prefixes": list(args.trainable)},
        "data": {"kind": "cityscapes", "root": str(data_root), "split": "train", "crop_size": list(args.crop),
                 "inlier_outlier_label": bool(pasted),
                 "outliers": ({"kind": "ood_seg", "root": str(ood_root), "split": OOD_SPLIT, "min_size": 0,
                               "fraction": args.oe_fraction} if n_oe else {"kind": "none"})},
        "optim": {"lr": args.lr},
        "loss": {"objective": "pebal", "energy_weight": args.energy_weight},
        "train": {"epochs": epochs, "batch_size": args.batch, "iters_per_epoch": iters_per_epoch,
                  "seed": args.seed, "bn_mode": args.bn_mode, "device": "cpu", "log_every": 1, "image_every": 0,
                  "keep_checkpoints": 1, "progress": False},
        "output": str(out / "run"),
    })
    t2 = time.time()
    summary = train(cfg)
    t_train = time.time() - t2
    model, meta = load_checkpoint(summary["final_checkpoint"], "espnetv2")
    after = measure(model, meta, args.assets, samples, cameras, args.gap)

    def log_losses() -> tuple[float, float]:
        import json

        lines = (out / "run" / "train_log.jsonl").read_text().splitlines()
        return json.loads(lines[0])["loss"], json.loads(lines[-1])["loss"]

    first_loss, last_loss = log_losses()
    seg_drop = 100.0 * (before["segmentation"]["pixel_accuracy"] - after["segmentation"]["pixel_accuracy"])
    result = {
        "model_id": MODEL_ID, "source": SOURCE,
        "data": {
            "train_scenes": list(TRAIN_SCENES), "inlier_frames": [i["name"] for i in inliers],
            "pasted_inlier_frames": pasted, "outlier_samples": outliers,
            "train_objects": sorted({c.name for c in cutouts}), "coco_oe_images": [n for n, _, _ in coco_objects],
            "evaluation_scenes": {"calibration": list(CALIBRATION_SCENES), "report": list(REPORT_SCENES)},
            "held_out_coco": list(HELD_OUT_COCO), "evaluation_images": len(samples),
            "evaluation_objects": sum(len(s.meta) for s in samples),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "iterations": summary["global_step"], "epochs": epochs, "iters_per_epoch": iters_per_epoch,
        "loss_first_step": first_loss, "loss_last_step": last_loss,
        "before": before, "after": after,
        "segmentation_drop_points": seg_drop, "segmentation_within_0.5_points": seg_drop <= 0.5,
        "wall_seconds": {"total": round(time.time() - t0, 1), "data": round(t_data, 1),
                         "training": round(t_train, 1), "one_evaluation": round(t_eval, 1)},
        "threads": torch.get_num_threads(),
    }
    meta.model_id = MODEL_ID
    meta.source = SOURCE
    meta.metrics = {"real_roads": {"before": before, "after": after}}
    save_checkpoint(out / "real_roads.pt", model, meta)
    result["checkpoint"] = str(out / "real_roads.pt")
    atomic_write_json(out / "real_roads.json", result)
    b, a = before["anomaly"], after["anomaly"]
    line = (f"{TOOL}: seg acc {before['segmentation']['pixel_accuracy']:.4f} -> "
            f"{after['segmentation']['pixel_accuracy']:.4f}; held-out AP {b['ap']:.4f} -> {a['ap']:.4f}, "
            f"AUROC {b['auroc']:.4f} -> {a['auroc']:.4f}, FPR95 {b['fpr95']:.4f} -> {a['fpr95']:.4f}")
    if "region_gap" in after:
        line += (f"; region gap {before['region_gap']['gap']} -> {after['region_gap']['gap']}")
    print(f"{line} ({summary['global_step']} iterations, {result['wall_seconds']['total']} s); "
          f"{out / 'real_roads.pt'}, details in {out / 'real_roads.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
