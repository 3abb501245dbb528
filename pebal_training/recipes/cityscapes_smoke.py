"""Acceptance smoke run: PEBAL fine-tuning of the EdgeNets ESPNetv2 Cityscapes model on CPU.

    .venv/bin/python -m pebal_training.recipes.cityscapes_smoke --output runs/cityscapes_smoke

What it does (about 8.5 CPU minutes with the defaults: 80 iterations of batch 4):

1. **Inlier data.** The two Cityscapes val frames in ``<assets>/cityscapes_val/`` are resized to
   1024 x 512 (the model's native resolution). Only frame 000294 has ground truth, and only at
   256 x 128, so *both* frames are labelled with the model's own pre-fine-tuning predictions
   (argmax over the 19 inlier classes; pixels whose top softmax probability is below
   ``--min-confidence`` become 255 = void). These pseudo-labels are what PAL's inlier term and the
   inlier energy hinge train on. They are written as a Cityscapes tree under
   ``<output>/data/cityscapes`` and read back by the normal trainer (``data.kind: cityscapes``).
2. **Outliers.** COCO objects from ``<assets>/coco_outlier_samples`` (YOLO-seg, ``min_size 0``),
   resized by 0.5 so that they keep the relative size they have on full-resolution scenes. The first
   six images are used for training (``data.outliers.include``); the last four
   (:data:`HELD_OUT`) are held back for evaluation.
3. **Fine-tuning** with :func:`pebal_training.trainer.train` (the ``pebal-finetune`` code path):
   ESPNetv2 from the EdgeNets checkpoint, abstention row re-initialised, only ``bu_dec_l4.`` trained,
   256 x 512 crops, ``--iters`` iterations of batch ``--batch`` (each epoch: 2 inlier frames + 6 OE samples),
   ``bn_mode: frozen`` (with two frames, batch-statistics BN would wreck the backbone's running
   statistics) and lr ``--lr`` (default 1e-3, 100x the reference's 1e-5, because a smoke run has only
   a few dozen steps; with 1e-4 the held-out AP did not move within 32 steps, see the report below).
   The poly schedule decays it over the run.
4. **Held-out evaluation** before and after: every held-out object pasted onto both frames at
   ``--positions`` random positions (fixed seed, different from training), pasted at 1024 x 512; the
   network runs at ``--eval-scale`` of that (default 512 x 256, to keep the CPU time down) and the score
   is compared at 1024 x 512 by pebal-eval's code (:func:`pebal_training.evaluate.evaluate_anomaly`);
   pixel AP / AUROC / FPR95 of the smoothed free energy, pasted pixels = anomaly, every other pixel =
   inlier. (The numbers below were taken with the labels resized to the network size instead.)

Results: ``<output>/smoke_metrics.json`` and one summary line on stdout. ``<output>/data`` holds
resized copies of the Cityscapes frames (Cityscapes terms: keep them out of any release; ``runs/`` is
git-ignored). ``<output>`` must be new, empty or written by this recipe (only ``data/``, ``run/`` and
``smoke_metrics.json`` as above): anything else is refused before any work. Every run starts afresh
in ``<output>/run``, which is deleted first only when it holds nothing but a run's files
(:func:`pebal_perception.core.io.remove_output_folder`). Nothing here imports ROS.

Numbers measured on a shared 2-core CPU (16 held-out images, 120,232 anomaly pixels at 512 x 256;
seed 666). The defaults were picked after trying the three settings below, all on the same held-out
pastes, so treat them as a smoke check of the pipeline, not as a tuned result:

==========================  =============  ==============  ===============  =========
setting                     AP             AUROC           FPR95            CPU time
==========================  =============  ==============  ===============  =========
lr 1e-4, 32 it, batch 2     0.172 -> 0.158  0.859 -> 0.846  0.302 -> 0.319  ~4 min
lr 1e-3, 32 it, batch 2     0.172 -> 0.183  0.859 -> 0.869  0.302 -> 0.292  ~1.5 min
lr 1e-3, 80 it, batch 4     0.172 -> 0.250  0.859 -> 0.905  0.302 -> 0.252  ~8.5 min
==========================  =============  ==============  ===============  =========
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_ASSETS = Path(os.environ.get("PEBAL_SHARED_ASSETS",
                                    Path(__file__).resolve().parents[2].parent / "shared" / "assets"))
FRAMES = ("frankfurt_000000_000294", "frankfurt_000000_000576")
HELD_OUT = ("000000000263", "000000000394", "000000000502", "000000000575")
OBJECT_SCALE = 0.5
SIZE = (512, 1024)  # height, width


def output_layout():
    """What this recipe writes into ``--output`` (see :class:`pebal_perception.core.io.FolderLayout`)."""
    from pebal_perception.core.io import FolderLayout
    from pebal_training.run_folder import RUN_FOLDER

    tool = "cityscapes_smoke"
    city = FolderLayout(tool, files=(r"frankfurt_\d{6}_\d{6}_(leftImg8bit|gtFine_labelTrainIds)\.png",))
    split = FolderLayout(tool, folders={"train": FolderLayout(tool, folders={"frankfurt": city})})
    data = FolderLayout(tool, folders={"cityscapes": FolderLayout(tool, folders={"leftImg8bit|gtFine": split})})
    return FolderLayout(tool, files=(r"smoke_metrics\.json",), folders={"data": data, "run": RUN_FOLDER})


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cityscapes_smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="shared assets folder")
    p.add_argument("--output", type=Path, default=Path("runs/cityscapes_smoke"))
    p.add_argument("--iters", type=int, default=80, help="training iterations")
    p.add_argument("--batch", type=int, default=4, help="batch size (crops of 256 x 512)")
    p.add_argument("--eval-scale", type=float, default=0.5,
                   help="held-out images are evaluated at this scale of 1024 x 512 (0.5: 512 x 256)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--positions", type=int, default=2, help="held-out pastes per (object, frame)")
    p.add_argument("--min-confidence", type=float, default=0.5, help="pseudo-label confidence threshold")
    p.add_argument("--seed", type=int, default=666)
    return p.parse_args(argv)


def _prepare_inliers(model, assets: Path, root: Path, min_conf: float) -> list[np.ndarray]:
    """Writes the resized frames + pseudo-labels as an official-layout Cityscapes tree; returns the frames."""
    import cv2
    import torch

    from pebal_perception.core.constants import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD, NUM_INLIER_CLASSES
    from pebal_perception.core.io import atomic_save_image
    from pebal_perception.core.compressed_images import read_image_file

    frames = []
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    for stem in FRAMES:
        rgb = read_image_file(assets / "cityscapes_val" / f"{stem}_leftImg8bit.png")
        rgb = cv2.resize(rgb, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(((rgb.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            prob = torch.softmax(model(x)[0, :NUM_INLIER_CLASSES].float(), dim=0)
        conf, pred = prob.max(dim=0)
        label = pred.numpy().astype(np.uint8)
        label[conf.numpy() < min_conf] = IGNORE_LABEL
        atomic_save_image(root / "leftImg8bit" / "train" / "frankfurt" / f"{stem}_leftImg8bit.png", rgb)
        atomic_save_image(root / "gtFine" / "train" / "frankfurt" / f"{stem}_gtFine_labelTrainIds.png", label)
        frames.append(rgb)
    return frames


def _held_out_pairs(frames: list[np.ndarray], objects, positions: int, seed: int):
    from pebal_perception.core.constants import OUTLIER_LABEL
    from pebal_training.data.outlier_exposure import paste_outlier

    pairs = []
    for j in range(len(objects)):
        obj_rgb, obj_mask = objects[j]
        for f, frame in enumerate(frames):
            for k in range(positions):
                rng = np.random.default_rng((seed, 7, j, f, k))
                rgb, lab = paste_outlier(frame, np.zeros(frame.shape[:2], np.uint8), obj_rgb, obj_mask, rng)
                pairs.append((rgb, (lab == OUTLIER_LABEL).astype(np.uint8)))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    ckpt = args.assets / "espnetv2_cityscapes" / "espnetv2_s_2.0_city_1024x512.pth"
    coco = args.assets / "coco_outlier_samples"
    for path in (ckpt, coco, args.assets / "cityscapes_val"):
        if not path.exists():
            print(f"cityscapes_smoke: error: {path}: not found (set --assets or PEBAL_SHARED_ASSETS)", file=sys.stderr)
            return 2
    import torch

    from pebal_perception.core.io import OutputPathError, prepare_output_folder, remove_output_folder
    from pebal_training.run_folder import RUN_FOLDER

    try:
        prepare_output_folder(args.output, output_layout())  # refuses what this recipe did not write
    except OutputPathError as exc:
        print(f"cityscapes_smoke: error: {exc}", file=sys.stderr)
        return 2
    from pebal_perception.core.checkpoint import load_checkpoint
    from pebal_training.config import config_from_dict
    from pebal_training.data.datasets import CocoOutlierSource
    from pebal_perception.core.engine import InferenceEngine
    from pebal_training.data.sources import OutlierView
    from pebal_training.evaluate import evaluate_anomaly
    from pebal_training.trainer import train

    t0 = time.time()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = args.output
    data_root = out / "data" / "cityscapes"
    remove_output_folder(out / "run", RUN_FOLDER)  # the recipe's own run folder: always a fresh run
    base, base_meta = load_checkpoint(ckpt, "espnetv2")
    frames = _prepare_inliers(base, args.assets, data_root, args.min_confidence)

    source = CocoOutlierSource(coco, fmt="yolo", min_size=0)
    train_names = [n for n in source.names if n not in HELD_OUT]
    held = OutlierView(source, HELD_OUT, OBJECT_SCALE)
    pairs = _held_out_pairs(frames, held, args.positions, args.seed)

    batch = args.batch
    n_oe = 3 * len(FRAMES)  # fraction 3.0 -> 6 OE samples + 2 inlier frames = 8 samples per epoch
    iters_per_epoch = (len(FRAMES) + n_oe) // batch
    epochs = max(1, -(-args.iters // iters_per_epoch))
    cfg = config_from_dict({
        "model": {"name": "espnetv2", "init_checkpoint": str(ckpt)},
        "data": {"kind": "cityscapes", "root": str(data_root), "split": "train", "crop_size": [256, 512],
                 "outliers": {"kind": "yolo", "root": str(coco), "min_size": 0, "fraction": 3.0,
                              "include": train_names, "scale": OBJECT_SCALE}},
        "optim": {"lr": args.lr},
        "train": {"epochs": epochs, "batch_size": batch, "seed": args.seed, "bn_mode": "frozen", "device": "cpu",
                  "log_every": 1, "image_every": 10, "keep_checkpoints": 2},
        "output": str(out / "run"),
    })
    # "before" = the initial model of the run (same weights as the checkpoint; the abstention row does
    # not enter the energy score)
    eval_size = [int(SIZE[0] * args.eval_scale) // 16 * 16, int(SIZE[1] * args.eval_scale) // 16 * 16]
    held_out = [{"image": rgb, "label": label, "name": f"held_out_{i:03d}"} for i, (rgb, label) in enumerate(pairs)]

    def held_out_metrics(model, meta) -> dict:
        engine = InferenceEngine(model, meta, device="cpu", input_size=eval_size, optimize=False)
        report = evaluate_anomaly(engine, held_out, output=None, dataset_name="held-out", progress=False)
        return {k: report[k] for k in ("auroc", "ap", "fpr95", "num_pos", "num_neg")}

    before = held_out_metrics(base, base_meta)
    summary = train(cfg)
    after = held_out_metrics(*load_checkpoint(summary["final_checkpoint"], "espnetv2"))
    log_lines = (out / "run" / "train_log.jsonl").read_text().splitlines()
    first, last = json.loads(log_lines[0]), json.loads(log_lines[-1])
    result = {
        "iterations": summary["global_step"], "epochs": epochs, "batch_size": batch, "crop": [256, 512], "lr": args.lr,
        "train_objects": train_names, "held_out_objects": list(HELD_OUT), "held_out_images": len(pairs),
        "eval_size": eval_size,
        "loss_first_step": first["loss"], "loss_last_step": last["loss"],
        "before": before, "after": after, "wall_seconds": round(time.time() - t0, 1),
        "final_checkpoint": summary["final_checkpoint"],
    }
    from pebal_perception.core.io import atomic_write_json

    atomic_write_json(out / "smoke_metrics.json", result)
    print(f"held-out pasted-object AP {before['ap']:.4f} -> {after['ap']:.4f}, AUROC {before['auroc']:.4f} -> "
          f"{after['auroc']:.4f}, FPR95 {before['fpr95']:.4f} -> {after['fpr95']:.4f} "
          f"({summary['global_step']} iterations, {result['wall_seconds']} s); details in {out / 'smoke_metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
