"""pebal-calibrate: choose the obstacle threshold on a labelled dataset and store it in the checkpoint.

The scores are the ones the deployed engine produces: by default the checkpoint's own network input
size (what pebal-detect and the ROS node use), with PEBAL's smoothing; --input-size native follows the
benchmark protocol instead. All void-excluded pixels of all images are pooled.

Decision rule: a pixel is an obstacle when score > threshold (strictly, as the engine does). Scores are
float32, so the threshold is a float32 value too.

* --target-tpr t (default 0.95): the *highest* threshold whose TPR is >= t, i.e. the minimal TPR
  reaching the target (fewest false positives). With P anomaly pixels, k = ceil(t * P) of them must
  be above the threshold; if v is the k-th largest anomaly score, the threshold is the float32
  number just below v (so every pixel scoring v, ties included, is detected: the achieved TPR can
  exceed t when several pixels share v).
* --target-fpr f: the *lowest* threshold whose FPR is <= f (the highest TPR within the budget). With
  N inlier pixels at most m = floor(f * N) may be above it; the threshold is the (m+1)-th largest
  inlier score itself (pixels tied with it are not obstacles).

The threshold and threshold_info {target, achieved tpr/fpr, dataset, root, num images, pixels, input
size, date} go into the checkpoint's metadata (atomic rewrite). Third-party checkpoints carry no
metadata: give --output-checkpoint and the model is written there in our format with the threshold.
The file written (--checkpoint in place, or --output-checkpoint) must be a regular file or, for
--output-checkpoint, absent; it is replaced atomically (temp file + rename; a symbolic link is
replaced by the new file, the file it pointed to is left as it was). A folder, device, fifo or socket
there is refused before any work, with one line.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import sys
from pathlib import Path

import numpy as np

from pebal_perception.core.cli_args import Parser as _Parser
from pebal_perception.core.cli_args import UsageError, image_size_or_native
from pebal_perception.core.io import OutputPathError, check_output_file
from pebal_training.cli.evaluate import ANOMALY_NAMES

PROG = "pebal-calibrate"
_EPS = 1e-9  # tolerance when turning a rate into a pixel count (0.95 * 100 must give 95, not 96)


def threshold_for_tpr(pos: np.ndarray, target: float) -> float:
    """Highest float32 threshold with #(pos > thr) >= ceil(target * P); ``pos`` sorted ascending."""
    p = pos.size
    k = min(p, max(0, math.ceil(target * p - _EPS)))
    if k == 0:
        return float(pos[-1])  # nothing needs to be detected
    v = np.float32(pos[p - k])
    return float(np.nextafter(v, np.float32(-np.inf)))


def threshold_for_fpr(neg: np.ndarray, target: float, lowest: float) -> float:
    """Lowest float32 threshold with #(neg > thr) <= floor(target * N); ``neg`` sorted ascending."""
    n = neg.size
    m = max(0, math.floor(target * n + _EPS))
    if m >= n:  # every inlier may be flagged: go below every score
        return float(np.nextafter(np.float32(lowest), np.float32(-np.inf)))
    return float(np.float32(neg[n - m - 1]))


def rates(pos: np.ndarray, neg: np.ndarray, thr: float) -> tuple[float, float]:
    t = np.float32(thr)
    tp = pos.size - np.searchsorted(pos, t, side="right")
    fp = neg.size - np.searchsorted(neg, t, side="right")
    return float(tp / pos.size), float(fp / neg.size)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", help="architecture of a bare third-party state dict")
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", required=True, choices=ANOMALY_NAMES)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--split", help="lostandfound split (default test)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-tpr", type=float, help="wanted true-positive rate (default 0.95)")
    target.add_argument("--target-fpr", type=float, help="allowed false-positive rate")
    p.add_argument("--output-checkpoint", type=Path, help="write the calibrated checkpoint here (required for "
                   "third-party files; default: update --checkpoint in place)")
    p.add_argument("--input-size", type=image_size_or_native, help="network input WIDTHxHEIGHT or 'native' "
                   "(default: the checkpoint's, as deployed)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--no-smoothing", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _error(msg: object) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _error(exc)
    if args.target_tpr is None and args.target_fpr is None:
        args.target_tpr = 0.95
    value = args.target_tpr if args.target_tpr is not None else args.target_fpr
    if not 0.0 <= value <= 1.0:
        return _error(f"the target rate must be in [0, 1], got {value}")
    if args.limit is not None and args.limit < 1:
        return _error("--limit must be >= 1")
    dest = args.output_checkpoint or args.checkpoint
    try:  # before any work: only a regular file (or a new one) is written, atomically
        check_output_file(dest)
    except OutputPathError as exc:
        return _error(exc)

    from tqdm import tqdm

    from pebal_perception.core.checkpoint import (CheckpointError, _torch_load, is_pebal_checkpoint,
                                                  load_checkpoint, save_checkpoint, update_checkpoint_meta)
    from pebal_perception.core.engine import InferenceEngine
    from pebal_training.data.datasets import DatasetError, open_anomaly_dataset
    from pebal_training.evaluate import sorted_scores
    from pebal_perception.core.constants import VOID
    from pebal_training.metrics import AnomalyMetricAccumulator

    try:
        options = {"split": args.split or "test"} if args.dataset == "lostandfound" else {}
        if args.split and args.dataset != "lostandfound":
            return _error(f"--split does not apply to {args.dataset}")
        dataset = open_anomaly_dataset(args.dataset, args.root, **options)
    except DatasetError as exc:
        return _error(exc)
    try:
        ours = is_pebal_checkpoint(_torch_load(args.checkpoint))
        if not ours and args.output_checkpoint is None:
            raise CheckpointError(f"{args.checkpoint}: a third-party checkpoint has no metadata to store the "
                                  "threshold in; give --output-checkpoint to write one in the pebal format")
        # The engine may rewrite its own copy of the model for speed (BatchNorm folding); the
        # untouched ``model`` is the one written to a new checkpoint.
        model, meta = load_checkpoint(args.checkpoint, args.model)
        engine = InferenceEngine(model, meta, device=args.device, input_size=args.input_size,
                                 smoothing=not args.no_smoothing)
    except (CheckpointError, KeyError, ValueError) as exc:
        return _error(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)

    acc = AnomalyMetricAccumulator(ignore_label=VOID, positive_label=1, negative_label=0)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    used = 0
    try:
        for i in tqdm(range(n), desc=PROG, unit="img", disable=True if args.quiet else None):
            sample = dataset[i]
            if sample is None:
                continue
            acc.update(engine.infer_one(sample["image"]).score, sample["label"])
            used += 1
    except DatasetError as exc:
        return _error(exc)
    if acc.num_pos == 0 or acc.num_neg == 0:
        return _error(f"{args.root}: calibration needs anomaly and inlier pixels; found {acc.num_pos} "
                      f"anomaly and {acc.num_neg} inlier pixels")
    pos, neg = sorted_scores(acc)
    if args.target_tpr is not None:
        thr = threshold_for_tpr(pos, args.target_tpr)
        target = {"tpr": args.target_tpr}
    else:
        thr = threshold_for_fpr(neg, args.target_fpr, min(float(pos[0]), float(neg[0])))
        target = {"fpr": args.target_fpr}
    tpr, fpr = rates(pos, neg, thr)
    info = {
        "target": target, "achieved_tpr": tpr, "achieved_fpr": fpr, "rule": "obstacle = score > threshold",
        "dataset": args.dataset, "root": str(args.root), "num_images": used,
        "num_pos": int(pos.size), "num_neg": int(neg.size),
        "input_size": "native" if engine.native_size else list(engine.input_size),
        "smoothing": engine.smoothing,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        if ours and args.output_checkpoint is None:
            update_checkpoint_meta(dest, threshold=thr, threshold_info=info)
        else:
            meta.threshold, meta.threshold_info = thr, info
            if not meta.source:
                meta.source = Path(args.checkpoint).name
            if ours:  # copy of ours with new meta: keep anything stored beside the weights
                update_target = _torch_load(args.checkpoint)
                extra = {k: v for k, v in update_target.items()
                         if k not in ("format", "format_version", "meta", "state_dict")}
            else:
                extra = None
            save_checkpoint(dest, model, meta, extra=extra)
    except (CheckpointError, OSError) as exc:
        return _error(exc)
    print(f"{PROG}: threshold {thr:.6g} (TPR {tpr:.4f}, FPR {fpr:.4f} on {used} images of {args.dataset}) "
          f"-> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
