"""The recipe of the embedded default model: a synthetic-world ESPNetv2, PEBAL-fine-tuned, calibrated.

    .venv/bin/python -m pebal_training.recipes.default_model --output runs/default_model [--install]

Everything runs through the normal ``pebal-finetune`` / ``pebal-eval`` / ``pebal-calibrate`` code:

1. **Closed-set training from scratch** (``loss.objective: cross_entropy``, all parameters trained):
   ESPNetv2 (s = 2.0) on procedural street scenes from :mod:`pebal_training.data.synthetic` at
   ``--size`` (default 256 x 512), road anomalies in those scenes labelled void (never seen as a class).
2. **PEBAL fine-tuning** (``loss.objective: pebal``, head ``bu_dec_l4.`` only, abstention row
   re-initialised): outlier exposure with the trainer's *synthetic textured blobs* pasted into the
   scenes (label 254). The generator's own anomaly objects (boxes, crates, tyres, animals, debris,
   rocks) are never used for training, so the evaluation below measures detection of object kinds
   the model has not been exposed to.
3. **Evaluation** with ``pebal-eval`` on held-out synthetic scenes written in the Fishyscapes layout
   (different seeds), before and after step 2.
4. **Calibration** with ``pebal-calibrate`` at 95 % TPR on a separate synthetic validation set.
5. ``--install`` copies the result to ``pebal_perception/data/default_model.pt`` (the embedded
   default used by ``pebal-detect`` and the node) with ``default_model.json`` beside it.

It is a *demo* model for a synthetic world: it says nothing about real roads.

``--output`` must be new, empty or written by this recipe (only ``data/``, the run folders
``pretrain/`` and ``finetune/``, ``eval_before/``, ``eval_after/``, ``default_model.pt`` and
``default_model.json``); anything else is refused before any work. A re-run continues the runs
(``--resume auto``) and replaces the recipe's own files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from pebal_perception.core.default_model import DEFAULT_MODEL_PATH


def output_layout():
    """What this recipe writes into ``--output`` (see :class:`pebal_perception.core.io.FolderLayout`)."""
    from pebal_perception.core.io import FolderLayout
    from pebal_training.cli.evaluate import OUTPUT_LAYOUT as EVAL_FOLDER
    from pebal_training.run_folder import RUN_FOLDER

    tool = "default_model"
    images = FolderLayout(tool, files=(r"\d{4}\.png",))
    subset = FolderLayout(tool, folders={"LostAndFound": FolderLayout(tool, folders={"original|labels": images})})
    return FolderLayout(tool, files=(r"default_model\.pt", r"default_model\.json"),
                        folders={"data": FolderLayout(tool, folders={"test|calibration": subset}),
                                 "pretrain|finetune": RUN_FOLDER, "eval_before|eval_after": EVAL_FOLDER})


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="default_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=Path("runs/default_model"))
    p.add_argument("--size", default="512x256", help="training/evaluation scene size WxH")
    p.add_argument("--scenes", type=int, default=512, help="synthetic training scenes")
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--finetune-epochs", type=int, default=6)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--eval-scenes", type=int, default=24)
    p.add_argument("--seed", type=int, default=666)
    p.add_argument("--install", action="store_true", help="copy the result into the package as the default model")
    return p.parse_args(argv)


def _train(stage: str, run: Path, overrides: list[str]) -> dict:
    from pebal_training.config import config_from_dict
    from pebal_training.trainer import train

    cfg = config_from_dict(None, [f"output={run}", *overrides])
    started = time.time()
    print(f"default_model: {stage}: {run}", flush=True)
    summary = train(cfg, resume="auto")
    summary["seconds"] = round(time.time() - started, 1)
    return summary


def _evaluate(checkpoint: Path, root: Path, out: Path) -> dict:
    from pebal_training.cli.evaluate import main as eval_main

    rc = eval_main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_laf", "--root", str(root),
                    "--output", str(out), "--device", "cpu", "--input-size", "native"])
    if rc != 0:
        raise SystemExit(f"default_model: pebal-eval failed on {checkpoint} (exit {rc})")
    report = json.loads((out / "report.json").read_text())
    return {k: report[k] for k in ("auroc", "ap", "fpr95", "num_images")}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    out = args.output
    from pebal_perception.core.io import OutputPathError, atomic_write_bytes, atomic_write_json, prepare_output_folder

    try:
        prepare_output_folder(out, output_layout())  # refuses what this recipe did not write
    except OutputPathError as exc:
        print(f"default_model: error: {exc}", file=sys.stderr)
        return 2
    from pebal_training.data.synthetic_layouts import write_fishyscapes

    test_root, calib_root = out / "data" / "test", out / "data" / "calibration"
    if not (test_root / "LostAndFound").is_dir():
        write_fishyscapes(test_root, "LostAndFound", n=args.eval_scenes, seed=10_000 + args.seed, size=(width, height))
    if not (calib_root / "LostAndFound").is_dir():
        write_fishyscapes(calib_root, "LostAndFound", n=args.eval_scenes, seed=20_000 + args.seed,
                          size=(width, height))

    common = ["data.kind=synthetic", f"data.synthetic.num_scenes={args.scenes}",
              f"data.synthetic.height={height}", f"data.synthetic.width={width}", f"data.synthetic.seed={args.seed}",
              f"data.crop_size={args.crop}", "data.scales=[0.75, 1.0, 1.25, 1.5]", f"train.batch_size={args.batch}",
              f"train.seed={args.seed}", "train.device=cpu", "train.image_every=0", "model.name=espnetv2"]
    pre = _train("closed-set training from scratch", out / "pretrain", common + [
        "loss.objective=cross_entropy", "model.trainable_prefixes=['']", "data.outliers.kind=none",
        f"optim.lr={args.pretrain_lr}", f"train.epochs={args.pretrain_epochs}", "train.bn_mode=train"])
    before = _evaluate(Path(pre["final_checkpoint"]), test_root, out / "eval_before")
    fin = _train("PEBAL fine-tuning", out / "finetune", common + [
        f"model.init_checkpoint={pre['final_checkpoint']}", "model.reinit_abstention=true",
        "loss.objective=pebal", "data.outliers.kind=synthetic", "data.outliers.fraction=0.3",
        f"optim.lr={args.finetune_lr}", f"train.epochs={args.finetune_epochs}", "train.bn_mode=frozen"])
    final = Path(fin["final_checkpoint"])
    after = _evaluate(final, test_root, out / "eval_after")

    from pebal_training.cli.calibrate import main as calibrate_main

    from pebal_perception.core.checkpoint import update_checkpoint_meta

    calibrated = out / "default_model.pt"
    atomic_write_bytes(calibrated, final.read_bytes())
    # Deployed at the resolution it was trained on (a larger frame is resized down to it).
    update_checkpoint_meta(calibrated, input_size=[height, width], model_id="pebal-demo-synthetic-espnetv2",
                           source="pebal_training.recipes.default_model")
    rc = calibrate_main(["--checkpoint", str(calibrated), "--dataset", "fishyscapes_laf", "--root", str(calib_root),
                         "--target-tpr", "0.95", "--device", "cpu", "--input-size", "native"])
    if rc != 0:
        print(f"default_model: error: pebal-calibrate failed (exit {rc})", file=sys.stderr)
        return rc
    from pebal_perception.core.checkpoint import load_checkpoint

    _, meta = load_checkpoint(calibrated)
    record = {
        "description": "Synthetic-world demo model (ESPNetv2 s=2.0 trained from scratch on pebal's procedural "
                       "street scenes, then PEBAL-fine-tuned with synthetic outlier blobs). Not for real roads.",
        "recipe": "python -m pebal_training.recipes.default_model "
                  + " ".join(argv if argv is not None else sys.argv[1:]),
        "size_hw": [height, width],
        "pretrain": {"epochs": args.pretrain_epochs, "lr": args.pretrain_lr, "scenes": args.scenes,
                     "seconds": pre["seconds"], "global_step": pre["global_step"]},
        "finetune": {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "seconds": fin["seconds"],
                     "global_step": fin["global_step"]},
        "held_out_anomaly_metrics": {"before_pebal": before, "after_pebal": after,
                                     "dataset": f"{args.eval_scenes} synthetic scenes, Fishyscapes layout, "
                                                "anomaly kinds never used for training"},
        "threshold": meta.threshold, "threshold_info": meta.threshold_info,
    }
    atomic_write_json(out / "default_model.json", record)
    print(json.dumps(record["held_out_anomaly_metrics"], indent=2))
    if args.install:
        DEFAULT_MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(DEFAULT_MODEL_PATH, calibrated.read_bytes())  # the package's own files
        atomic_write_bytes(DEFAULT_MODEL_PATH.with_suffix(".json"), (out / "default_model.json").read_bytes())
        print(f"default_model: installed {DEFAULT_MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
