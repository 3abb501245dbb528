"""pebal-eval: evaluate a PEBAL model on an anomaly benchmark or on Cityscapes.

Anomaly datasets (fishyscapes_laf, fishyscapes_static, lostandfound, road_anomaly, smiyc_anomaly,
smiyc_obstacle): pixel-pooled AUROC, AP and FPR@95%TPR (fractions in [0, 1]; void excluded), per-image
metrics, SMIYC component metrics at the threshold, roc.png, pr.png and worst/NAME_overlay.png, and the
metrics planners care about (``planner``): share of normal frames with a false obstacle, obstacle recall
(a labelled obstacle is found when reported regions cover >= 25 % of it), region precision and stray
regions per frame, for the regions the node reports (its default post-processing, single images).
cityscapes: mIoU, pixel accuracy and per-class IoU (sliding-window protocol, --split val by default).

Everything goes to --output/report.json (written atomically). Images run at their native resolution
unless --input-size says otherwise. --output must be a new or empty folder, or one pebal-eval wrote
before (report.json, roc.png, pr.png, worst/; a re-run replaces them); anything else (a folder with
other files, a file, a device, a fifo) is refused before the data and model are loaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pebal_perception.cli_args import Parser as _Parser
from pebal_perception.cli_args import UsageError, image_size_or_native
from pebal_perception.core.io import FolderLayout, OutputPathError, check_output_folder, json_keys, \
    prepare_output_folder

PROG = "pebal-eval"
ANOMALY_NAMES = ("fishyscapes_laf", "fishyscapes_static", "lostandfound", "road_anomaly",
                 "smiyc_anomaly", "smiyc_obstacle")
DATASETS = ANOMALY_NAMES + ("cityscapes",)
# What pebal-eval writes into --output: a folder holding only these is one it wrote before.
OUTPUT_LAYOUT = FolderLayout(PROG, files=(r"report\.json", r"roc\.png", r"pr\.png", r"planner\.png"),
                             folders={"worst": FolderLayout(PROG, files=(r".+_overlay\.png",))},
                             own=json_keys("report.json", ("dataset", "num_images", "model")))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint (ours or third-party)")
    p.add_argument("--model", help="architecture of a bare third-party state dict (e.g. espnetv2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", type=Path, required=True, help="dataset root folder")
    p.add_argument("--split", help="split for cityscapes (default val) and lostandfound (default test)")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="output folder: new, empty, or written by pebal-eval before")
    p.add_argument("--threshold", type=float, help="obstacle threshold for the component metrics "
                   "(default: the checkpoint's calibrated one)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--input-size", type=image_size_or_native, default="native",
                   help="network input WIDTHxHEIGHT or 'native' (default; the reference protocol)")
    p.add_argument("--no-smoothing", action="store_true", help="skip PEBAL's 7x7 Gaussian on the energy")
    p.add_argument("--worst", type=int, default=4, help="number of worst frames rendered (default 4)")
    p.add_argument("--crop-size", type=int, default=800,
                   help="cityscapes: sliding-window crop (default 800, the reference); 0 = whole image")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an unreadable image or label, or a label of the wrong size or with unexpected values: "
                        "raise = stop with an error naming the file (default); skip = leave the sample out, "
                        "count it and list it in report.json")
    p.add_argument("--planner-sweep", action="store_true",
                   help="anomaly datasets: also sweep the threshold through the node's post-processing (false-frame "
                        "rate of frames without an anomaly, obstacle recall) into report.json and planner.png; "
                        "a second pass over the images, a few seconds per image")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _skipped_text(report: dict) -> str:
    return f" ({report['num_skipped']} skipped, listed in report.json)" if report.get("num_skipped") else ""


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def node_regions(engine):
    """``report_regions`` for evaluate_anomaly: the regions the node would report for a single image
    (core.postprocess with the node's default parameters and the checkpoint's calibrated ego mask /
    horizon; no tracking), at the evaluation threshold."""
    from dataclasses import replace

    from pebal_perception.core.postprocess import process_frame
    from pebal_perception.core.postprocess_config import planner_config

    config = planner_config(engine.threshold, engine.meta)

    def regions(res):
        return process_frame(res.semantic, res.score, replace(config, threshold=float(res.threshold))).labels

    return regions


def planner_sweep(engine, dataset, output: Path, threshold: float, limit: int | None, name: str,
                  progress: bool) -> dict:
    """False-frame rate (frames without a labelled anomaly) and obstacle recall against the threshold,
    through the node's post-processing (``pebal_training.normal_calibration``: per frame the highest
    threshold at which it still reports, per object the highest at which it is still found); plotted to
    ``output/planner.png``."""
    from pebal_perception.core.postprocess_config import planner_config
    from pebal_training import evaluate as ev
    from pebal_training.normal_calibration import clean_threshold, false_frame_rate, found_thresholds, recall_at
    from pebal_training.planner_metrics import plot_planner_sweep

    config = planner_config(float(threshold), engine.meta)
    clean, found = [], []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in ev.progress_bar(range(n), n, f"{PROG} planner sweep", progress):
        sample = dataset[i]
        if sample is None:
            continue
        res = engine.infer_one(sample["image"])
        instances = sample.get("instances")
        if instances is None:
            instances = ev.instance_components(sample["label"] == 1)
        if instances.max(initial=0) == 0:
            clean.append(clean_threshold(res.semantic, res.score, config))
        else:
            found += found_thresholds(res.semantic, res.score, instances, config)
    values = [v for v in clean + found if np.isfinite(v)] + [float(threshold)]
    grid = np.linspace(min(values) - 0.5, max(values) + 0.5, 60)
    ffr = [false_frame_rate(clean, t) if clean else None for t in grid]
    recall = [recall_at(found, t) if found else None for t in grid]
    plot_planner_sweep(grid, ffr, recall, [None] * len(grid), output / "planner.png", name,
                       operating_points={"evaluated": float(threshold)})
    return {"normal_frames": len(clean), "objects": len(found), "thresholds": grid.tolist(),
            "false_frame_rate": ffr, "object_recall": recall,
            "rule": "node post-processing, single images; found = reported regions cover >= 25 % of it"}


def _error(msg: object) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _error(exc)
    if args.limit is not None and args.limit < 1:
        return _error("--limit must be >= 1")
    if args.worst < 0 or args.crop_size < 0:
        return _error("--worst and --crop-size must be >= 0")
    if args.threshold is not None and args.threshold != args.threshold:
        return _error("--threshold must be a number")
    try:
        check_output_folder(args.output, OUTPUT_LAYOUT)  # before loading anything
    except OutputPathError as exc:
        return _error(exc)

    from pebal_perception.core.detector import DetectorError, open_engine
    from pebal_training import evaluate as ev
    from pebal_training.data.datasets import CityscapesSegmentation, DatasetError, open_anomaly_dataset

    try:
        if args.dataset == "cityscapes":
            dataset = CityscapesSegmentation(args.root, split=args.split or "val", on_error=args.on_error)
        elif args.dataset == "lostandfound":
            dataset = open_anomaly_dataset(args.dataset, args.root, split=args.split or "test",
                                           on_error=args.on_error)
        else:
            if args.split:
                return _error(f"--split does not apply to {args.dataset}")
            dataset = open_anomaly_dataset(args.dataset, args.root, on_error=args.on_error)
        if len(dataset) == 0:
            raise DatasetError(f"{args.root}: no samples")
    except DatasetError as exc:
        return _error(exc)
    try:
        engine = open_engine(args.checkpoint, args.model, device=args.device, input_size=args.input_size,
                             threshold=args.threshold, smoothing=not args.no_smoothing, backend="torch")
    except DetectorError as exc:
        return _error(exc)
    try:
        prepare_output_folder(args.output, OUTPUT_LAYOUT)
    except OutputPathError as exc:
        return _error(exc)
    except OSError as exc:
        return _error(f"{args.output}: cannot create the output folder ({exc.strerror})")

    info = {"checkpoint": str(args.checkpoint), "root": str(args.root)}
    try:
        if args.dataset == "cityscapes":
            report = ev.evaluate_cityscapes(engine, dataset, args.output, limit=args.limit,
                                            crop_size=args.crop_size, progress=not args.quiet,
                                            extra_info={**info, "split": dataset.split})
            print(f"{PROG}: cityscapes {report['num_images']} images{_skipped_text(report)}: mIoU "
                  f"{report['miou']:.4f}, pixel accuracy {report['pixel_accuracy']:.4f} -> "
                  f"{args.output / 'report.json'}")
        else:
            report = ev.evaluate_anomaly(engine, dataset, args.output, threshold=args.threshold,
                                         limit=args.limit, worst_k=args.worst, dataset_name=args.dataset,
                                         progress=not args.quiet, extra_info=info,
                                         report_regions=node_regions(engine))
            if args.planner_sweep:
                report["planner_sweep"] = planner_sweep(engine, dataset, args.output, report["threshold"],
                                                        args.limit, args.dataset, not args.quiet)
                from pebal_perception.core.io import atomic_write_json

                atomic_write_json(args.output / "report.json", ev.json_safe(report))
            c, planner = report["components"], report["planner"]
            print(f"{PROG}: {args.dataset} {report['num_images']} images{_skipped_text(report)}: "
                  f"AUROC {report['auroc']:.4f}, AP {report['ap']:.4f}, FPR95 {report['fpr95']:.4f}; "
                  f"sIoU {c['siou']:.3f}, "
                  f"PPV {c['ppv']:.3f}, mean F1 {c['mean_f1']:.3f} at threshold {report['threshold']:.4g}; "
                  f"planner: obstacle recall {_fmt(planner['object_recall'])}, "
                  f"stray regions/frame {_fmt(planner['stray_regions_per_frame'])}, "
                  f"false-frame rate {_fmt(planner['false_frame_rate'])} -> {args.output / 'report.json'}")
    except (DatasetError, ValueError) as exc:  # OutputPathError (a file there turned into a fifo) too
        return _error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
