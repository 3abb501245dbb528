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

* --normal INPUT... (bags, videos or image folders of normal driving: no anomaly on the road) with
  --max-false-frames RATE (default 0.05): the threshold at which at most RATE of those frames report any
  obstacle after the node's full post-processing (``pebal_training.normal_calibration``; the node's default
  parameters, single images, no tracking). A bag is read on one image topic: --topic, else the camera's
  default /camera/image_raw (or its /compressed), else the bag's only image topic; a bag with several
  and none of those needs --topic, and a --topic a bag lacks is refused (exit 2, naming the bag's image
  topics). Only *usable* frames count: those where the road the vehicle drives on (predicted road
  connected to the image bottom) covers at least 2 % of the frame; a frame without road cannot report an
  obstacle and says nothing about the threshold. Inputs where the road is seen in fewer than half of the
  frames (a black or white video, the wrong camera, a model that does not see this road), or fewer than 3
  usable frames in all, are refused with exit 1 and one line saying how many of how many frames had road.
  From the usable frames, when they are all of one size, the ego vehicle mask (bottom-connected pixels
  whose class and score barely change, bounded within the bottom of the frame) and the horizon (median of
  the road fits) are estimated and stored for the node. When no usable frame reports anything at any
  threshold, the threshold is the highest score on their drivable surface (nothing there can report); a
  threshold outside the range a threshold may have (+-1e6: scores of a broken or rescaled model) is
  refused with exit 1. The frames are read twice (statistics, then per-frame thresholds with the
  estimated mask and horizon), so memory does not grow with their number. The summary line and
  threshold_info["normal_driving"] give the frames read and the usable ones (per input), the inputs,
  rate, achieved rate, date and the post-processing parameters used; ``--plot`` (default
  ``<checkpoint stem>_false_frames.png`` beside the written checkpoint) plots the false-frame rate against
  the threshold. An existing file there is replaced only when pebal-calibrate wrote it (its PNG
  ``Software`` text, read from the file's first chunks without decoding the image); anything else is
  refused before any work. With --dataset as well, both operating points are computed and reported; the
  normal-driving one is stored.

The threshold and threshold_info {target, achieved tpr/fpr, dataset, root, num images, pixels, input
size, date} go into the checkpoint's metadata (atomic rewrite). Third-party checkpoints carry no
metadata: give --output-checkpoint and the model is written there in our format with the threshold.
The file written (--checkpoint in place, or --output-checkpoint) must be a regular file or, for
--output-checkpoint, absent; it is replaced atomically (temp file + rename; a symbolic link is
replaced by the new file, the file it pointed to is left as it was). A folder, device, fifo or socket
there, or a place where no file can be created (a read-only file system, no permission), is refused
before any work, with one line naming that path.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from pebal_perception.core.backends import BACKENDS
from pebal_perception.cli_args import Parser as _Parser
from pebal_perception.cli_args import UsageError, image_size_or_native
from pebal_perception.core.io import OutputPathError, check_output_file
from pebal_training.cli.evaluate import ANOMALY_NAMES

PROG = "pebal-calibrate"
# The camera topic the launch file and pebal-bag use by default (the node subscribes to image_raw).
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
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
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="inference runtime the frames are scored with: that of the node (default auto)")
    p.add_argument("--dataset", choices=ANOMALY_NAMES, help="labelled anomaly dataset (pixel-level targets)")
    p.add_argument("--root", type=Path, help="its root folder")
    p.add_argument("--normal", nargs="+", type=Path, metavar="INPUT",
                   help="bags, videos or image folders of normal driving (no anomaly on the road)")
    p.add_argument("--max-false-frames", type=float, default=0.05, metavar="RATE",
                   help="--normal: share of normal frames allowed to report an obstacle (default 0.05)")
    p.add_argument("--every", type=int, default=1, help="--normal: use every N-th frame of each input")
    p.add_argument("--topic", help=f"--normal: the image topic read from bags (default {DEFAULT_IMAGE_TOPIC}, "
                   "else a bag's only image topic)")
    p.add_argument("--plot", type=Path, help="--normal: where the false-frame plot goes (default: "
                   "<checkpoint stem>_false_frames.png beside the written checkpoint)")
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


def _error(msg: object, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def _refuse(msg: object) -> int:
    """The inputs cannot give a calibration (exit 1; a usage or input error is exit 2)."""
    return _error(msg, code=1)


def _write_error(path: Path, exc: OSError) -> str:
    """One line naming the output ``path`` (not the temp file beside it that the write failed on)."""
    if isinstance(exc, OutputPathError):
        return str(exc)
    return f"{path}: cannot write ({exc.strerror or exc})"


def check_writable_place(path: Path) -> Path:
    """``path`` when a file can be created where it goes: a temp file is created in its folder (or the
    nearest existing one above it, where the missing folders would be made) and removed again. A
    read-only file system, a folder without permission, /proc: :class:`OutputPathError` naming ``path``."""
    folder = next((p for p in Path(path).parents if os.path.isdir(p)), Path("."))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputPathError(_write_error(path, exc)) from None
    os.close(fd)
    os.unlink(tmp)
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _error(exc)
    if args.dataset is None and not args.normal:
        return _error("give --dataset and --root (labelled anomalies), --normal INPUT... (normal driving), or both")
    if args.dataset is not None and args.root is None:
        return _error("--dataset needs --root")
    if not 0.0 <= args.max_false_frames <= 1.0 or args.every < 1:
        return _error("--max-false-frames must lie in [0, 1] and --every be >= 1")
    if args.target_tpr is None and args.target_fpr is None:
        args.target_tpr = 0.95
    value = args.target_tpr if args.target_tpr is not None else args.target_fpr
    if not 0.0 <= value <= 1.0:
        return _error(f"the target rate must be in [0, 1], got {value}")
    if args.limit is not None and args.limit < 1:
        return _error("--limit must be >= 1")
    dest = args.output_checkpoint or args.checkpoint
    try:  # before any work: only a regular file (or a new one) is written, atomically, where one can be
        check_writable_place(check_output_file(dest))
        if args.normal:
            args.plot = args.plot or dest.with_name(dest.stem + "_false_frames.png")
            check_writable_place(check_plot_path(args.plot))
    except OutputPathError as exc:
        return _error(exc)
    if args.normal:
        from pebal_perception.core.bag import BagError

        try:  # before any work too: which image topic of each bag is read
            args.topics = {path: bag_image_topic(path, args.topic) for path in args.normal if _is_bag(path)}
        except (BagError, ValueError, OSError) as exc:
            return _error(exc)

    from tqdm import tqdm

    from pebal_perception.core.checkpoint import CheckpointError
    from pebal_training.data.datasets import DatasetError, open_anomaly_dataset
    from pebal_training.evaluate import sorted_scores
    from pebal_perception.core.constants import VOID
    from pebal_training.metrics import AnomalyMetricAccumulator

    if args.dataset is None:
        return _calibrate_normal(args, dest)
    try:
        options = {"split": args.split or "test"} if args.dataset == "lostandfound" else {}
        if args.split and args.dataset != "lostandfound":
            return _error(f"--split does not apply to {args.dataset}")
        dataset = open_anomaly_dataset(args.dataset, args.root, **options)
    except DatasetError as exc:
        return _error(exc)
    try:
        model, meta, engine, ours = _load_model(args)
    except (CheckpointError, KeyError, ValueError) as exc:
        return _error(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)

    acc = AnomalyMetricAccumulator(ignore_label=VOID, positive_label=1, negative_label=0)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    used = 0
    found: list[float] = []  # with --normal: per labelled obstacle, the highest threshold that finds it
    try:
        for i in tqdm(range(n), desc=PROG, unit="img", disable=True if args.quiet else None):
            sample = dataset[i]
            if sample is None:
                continue
            result = engine.infer_one(sample["image"])
            acc.update(result.score, sample["label"])
            if args.normal:
                found.extend(_found_thresholds(result.semantic, result.score, sample["label"], engine.threshold))
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
    if args.normal:
        return _calibrate_normal(args, dest, engine=engine, model=model, meta=meta, ours=ours, pixel_info=info,
                                 pixel_threshold=thr, found=found)
    try:
        _store(args, dest, model, meta, ours, thr, info)
    except CheckpointError as exc:
        return _error(exc)
    except OSError as exc:
        return _error(_write_error(dest, exc))
    print(f"{PROG}: threshold {thr:.6g} (TPR {tpr:.4f}, FPR {fpr:.4f} on {used} images of {args.dataset}) "
          f"-> {dest}")
    return 0


def _found_thresholds(semantic, score, label, threshold: float) -> list[float]:
    """Per labelled obstacle of one frame (8-connected components of label 1), the highest threshold at which
    the product's post-processing (single image, no calibrated ego mask or horizon: another camera) finds
    it; at the post-processing's analysis width, where the regions are found anyway."""
    from pebal_perception.core.postprocess import at_analysis_width
    from pebal_perception.core.postprocess_config import PLANNER_DEFAULTS, planner_config
    from pebal_training.evaluate import instance_components
    from pebal_training.normal_calibration import found_thresholds

    score, semantic, label = at_analysis_width(int(PLANNER_DEFAULTS["analysis_width"]), score, semantic, label)
    return found_thresholds(semantic, score, instance_components(label == 1), planner_config(threshold))


def _load_model(args):
    """(model, meta, engine, ours) of --checkpoint; CheckpointError when a third-party file has no
    --output-checkpoint to write the threshold to. The engine may rewrite its own copy of the model for
    speed (BatchNorm folding); the untouched ``model`` is the one written to a new checkpoint."""
    from pebal_perception.core.checkpoint import CheckpointError, _torch_load, is_pebal_checkpoint, load_checkpoint
    from pebal_perception.core.engine import InferenceEngine

    ours = is_pebal_checkpoint(_torch_load(args.checkpoint))
    if not ours and args.output_checkpoint is None:
        raise CheckpointError(f"{args.checkpoint}: a third-party checkpoint has no metadata to store the "
                              "threshold in; give --output-checkpoint to write one in the pebal format")
    model, meta = load_checkpoint(args.checkpoint, args.model)
    engine = InferenceEngine(model, meta, device=args.device, input_size=args.input_size,
                             smoothing=not args.no_smoothing, backend=args.backend)
    return model, meta, engine, ours


def _store(args, dest: Path, model, meta, ours: bool, threshold: float, info: dict) -> None:
    """Writes ``threshold`` and ``info`` into ``dest``: in place for ours, else a copy in our format
    (anything stored beside the weights of ours is kept)."""
    from pebal_perception.core.checkpoint import _torch_load, save_checkpoint, update_checkpoint_meta

    if ours and args.output_checkpoint is None:
        update_checkpoint_meta(dest, threshold=threshold, threshold_info=info)
        return
    meta.threshold, meta.threshold_info = threshold, info
    if not meta.source:
        meta.source = Path(args.checkpoint).name
    extra = None
    if ours:
        loaded = _torch_load(args.checkpoint)
        extra = {k: v for k, v in loaded.items() if k not in ("format", "format_version", "meta", "state_dict")}
    save_checkpoint(dest, model, meta, extra=extra)


def _is_bag(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def bag_image_topic(path: Path, topic: str | None = None) -> str:
    """The one image topic of the bag at ``path`` a calibration reads: ``topic`` (a leading / added), else
    the camera's default (:data:`DEFAULT_IMAGE_TOPIC`, or its /compressed), else the bag's only image
    topic. Ground-truth and debug images recorded beside the camera are not normal frames. ValueError
    (one line, naming the bag's image topics) when ``topic`` is not one of them or the choice is unclear."""
    from pebal_perception.core.bag import open_bag

    with open_bag(path) as reader:
        images = sorted(t for t, kind in reader.topics().items() if kind in IMAGE_TYPES)
    listed = ", ".join(images) or "none"
    if topic is not None:
        wanted = topic if topic.startswith("/") else f"/{topic}"
        if wanted not in images:
            raise ValueError(f"{path}: no image topic {wanted} in the bag (its image topics: {listed})")
        return wanted
    if not images:
        raise ValueError(f"{path}: the bag has no sensor_msgs Image or CompressedImage topic")
    for default in (DEFAULT_IMAGE_TOPIC, f"{DEFAULT_IMAGE_TOPIC}/compressed"):
        if default in images:
            return default
    if len(images) == 1:
        return images[0]
    raise ValueError(f"{path}: the bag has several image topics ({listed}) and none is {DEFAULT_IMAGE_TOPIC}; "
                     "choose one with --topic")


def _normal_frames(inputs: list[Path], every: int, topics: dict[Path, str]):
    """(input name, index, RGB frame) of the normal-driving inputs: bags (on their topic of ``topics``,
    the input name is ``BAG:TOPIC``), videos and image folders. A fresh pass over them at each call."""
    import cv2

    from pebal_perception.core.frame_sources import open_source

    for path in inputs:
        if _is_bag(path):
            from pebal_perception.core.bag import deserialize, open_bag
            from pebal_perception.core.image_conversion import ImageConverter, ImageRejected

            converter = ImageConverter()
            topic = topics[path]
            with open_bag(path) as reader:
                for index, (conn, _, data) in enumerate(reader.messages([topic])):
                    if index % every:
                        continue
                    msg = deserialize(data, conn.msgtype)
                    try:
                        rgb = (converter.to_rgb(msg) if conn.msgtype.endswith("/Image")
                               else converter.compressed_to_rgb(msg))
                    except ImageRejected:
                        continue
                    yield f"{path}:{topic}", index, rgb
        else:
            source = open_source(path, every=every)
            for index, bgr in source.frames():
                yield str(path), index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _detector(engine):
    """The node's detector around ``engine``: its frames are inferred as the node infers them (the
    out-of-memory fallback included); the thresholds are searched on the maps."""
    from pebal_perception.core.detector import Detector

    return Detector.for_engine(engine, {"threshold": engine.threshold, "smoothing": engine.smoothing})


def _progress(iterable, desc: str, quiet: bool, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="frame", total=total, disable=True if quiet else None)


def _survey(args, detector):
    """First pass: every frame through the detector's inference into a :class:`DriveSurvey` (usable
    frames, ego statistics, horizon rows), keeping none of them."""
    from pebal_training.normal_calibration import DriveSurvey

    survey = DriveSurvey()
    frames = _normal_frames(list(args.normal), args.every, args.topics)
    for source, _, rgb in _progress(frames, f"{PROG} --normal", args.quiet):
        if args.limit is not None and survey.num_frames >= args.limit:
            break
        semantic, score, _ = detector.infer(rgb)
        survey.add(source, semantic, score)
    return survey


def _clean_thresholds(args, detector, usable: list[bool], config) -> list[float]:
    """Second pass: the clean threshold of each usable frame (the frames in the order of the first pass),
    with the ego mask and horizon estimated from all of them; one frame in memory at a time."""
    from pebal_training.normal_calibration import clean_threshold

    clean = []
    frames = _normal_frames(list(args.normal), args.every, args.topics)
    for ordinal, (_, _, rgb) in enumerate(_progress(frames, f"{PROG} thresholds", args.quiet, len(usable))):
        if ordinal >= len(usable):
            break
        if usable[ordinal]:
            semantic, score, _ = detector.infer(rgb)
            clean.append(clean_threshold(semantic, score, config))
    return clean


def _float32_at_least(value: float) -> float:
    """The smallest float32 not below ``value`` (rounding to nearest could land below a clean threshold)."""
    v = np.float32(value)
    if float(v) < value:
        v = np.nextafter(v, np.float32(np.inf))
    return float(v)


def _calibrate_normal(args, dest: Path, engine=None, model=None, meta=None, ours=None, pixel_info=None,
                      pixel_threshold=None, found=None) -> int:
    """The --normal path: threshold for at most --max-false-frames usable normal frames with an obstacle.
    With ``found`` (the labelled obstacles' found thresholds of --dataset) the trade-off is shown: the share
    of those obstacles still found at the chosen threshold is printed, stored and plotted."""
    from dataclasses import replace

    from pebal_perception.core.bag import BagError
    from pebal_perception.core.checkpoint import CheckpointError
    from pebal_perception.core.limits import MAX_ABS_THRESHOLD
    from pebal_perception.core.postprocess_config import planner_config
    from pebal_perception.core.frame_sources import FootageError
    from pebal_training.normal_calibration import MIN_ROAD_SHARE, TOLERANCE, false_frame_rate, threshold_for_rate

    if engine is None:
        try:
            model, meta, engine, ours = _load_model(args)
        except (CheckpointError, KeyError, ValueError) as exc:
            return _error(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    inputs = ", ".join(map(str, args.normal))
    config = planner_config(engine.threshold)  # the node's defaults; ego mask and horizon estimated below
    try:
        detector = _detector(engine)  # one for both passes: an out-of-memory fallback, once applied, stays
        survey = _survey(args, detector)
        if not survey.num_frames:
            return _error(f"{inputs}: no frames to calibrate on")
        refusal = survey.refusal()
        if refusal:
            return _refuse(refusal)
        learned = survey.learned()
        config = replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in learned.items()})
        clean = _clean_thresholds(args, detector, survey.usable, config)
    except (FootageError, BagError, ValueError, OSError) as exc:
        return _error(exc)
    # Frames that never report leave the threshold unbounded below: then not below the highest score on
    # their drivable surface, where nothing can report (see threshold_for_rate).
    ceiling = survey.road_ceiling + TOLERANCE if math.isfinite(survey.road_ceiling) else None
    try:
        thr = _float32_at_least(threshold_for_rate(clean, args.max_false_frames, fallback=ceiling))
    except ValueError as exc:
        return _refuse(f"{inputs}: {exc}")
    if not abs(thr) <= MAX_ABS_THRESHOLD:
        return _refuse(f"{inputs}: these frames call for threshold {thr:.6g}, outside the range a threshold may "
                       f"have ([-{MAX_ABS_THRESHOLD:g}, {MAX_ABS_THRESHOLD:g}]): the model's scores (up to "
                       f"{survey.road_ceiling:.3g} on the road) are not those of a working model")
    achieved = false_frame_rate(clean, thr)
    usable, frames = survey.num_usable, survey.num_frames
    normal = {
        "inputs": [str(p) for p in args.normal], "frames_per_input": survey.frames_per_input,
        "num_frames": frames, "usable_frames": usable, "usable_per_input": survey.usable_per_input,
        "usable_rule": f"road connected to the image bottom covers >= {MIN_ROAD_SHARE:.0%} of the frame; "
                       "the others are left out",
        "max_false_frames": args.max_false_frames, "achieved_false_frames": achieved,
        "rule": "false frame = any obstacle reported after the full post-processing (single images)",
        "postprocess": {**config.to_dict(), **learned, "threshold": thr}, "estimated": sorted(learned),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not any(math.isfinite(c) for c in clean):
        normal["threshold_rule"] = "no usable frame reports an obstacle at any threshold: the highest score " \
                                   "on their drivable surface"
    info = dict(pixel_info or {})
    if pixel_info is not None:
        info["pixel_threshold"] = pixel_threshold
    recall = None
    if found:
        from pebal_training.normal_calibration import recall_at

        recall = recall_at(found, thr)
        normal["obstacles_found"] = {"dataset": args.dataset, "objects": len(found), "found": recall,
                                     "rule": "found = reported regions cover >= 25 % of it (single images)"}
    info["normal_driving"] = normal
    try:
        _store(args, dest, model, meta, ours, thr, info)
    except CheckpointError as exc:
        return _error(exc)
    except OSError as exc:
        return _error(_write_error(dest, exc))
    try:
        check_plot_path(args.plot)  # again: something may have appeared there meanwhile
        _plot_false_frames(clean, thr, args.max_false_frames, args.plot, _save_plot, found, args.dataset)
    except OSError as exc:
        return _error(f"{_write_error(args.plot, exc)} (the checkpoint {dest} was written)")
    both = f"; pixel-level operating point {pixel_threshold:.6g}" if pixel_threshold is not None else ""
    print(f"{PROG}: threshold {thr:.6g} ({achieved:.1%} of {usable} usable normal frames report an obstacle, "
          f"target {args.max_false_frames:.1%}; road seen in {usable} of {frames} frames; estimated "
          f"{', '.join(sorted(learned)) or 'nothing'}){both} -> {dest}")
    if recall is not None:
        print(f"{PROG}: at this threshold {recall:.1%} of the {len(found)} labelled obstacles of {args.dataset} are "
              f"found (the trade-off against the false-frame rate is plotted in {args.plot})")
        if recall == 0:
            print(f"{PROG}: warning: the threshold that keeps these normal frames clean finds none of the "
                  f"obstacles; choose a higher --max-false-frames or other normal footage", file=sys.stderr)
    return 0


PLOT_SOFTWARE = "pebal-calibrate"
def check_plot_path(path: Path) -> Path:
    """``path`` may take the plot: absent, or a PNG pebal-calibrate wrote (its ``Software`` text); a user's
    file of that name, or anything that is not a regular file, raises :class:`OutputPathError`."""
    path = check_output_file(path)
    from pebal_training.figures import png_text

    if path.exists() and png_text(path, "Software") != PLOT_SOFTWARE:
        raise OutputPathError(f"{path}: exists and was not written by {PLOT_SOFTWARE} (choose --plot)")
    return path


def _save_plot(path: Path, fig) -> None:
    from pebal_training.figures import save_figure

    save_figure(path, fig, software=PLOT_SOFTWARE)


def _plot_false_frames(clean, threshold: float, rate: float, path: Path, save, found=None,
                       dataset: str | None = None) -> None:
    """False-frame rate against threshold (the empirical survival of the clean thresholds); with ``found``
    (found thresholds of labelled obstacles) also the share of them found, on the same axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.sort(np.asarray([c for c in [*clean, *(found or [])] if np.isfinite(c)], np.float64))
    fig, ax = plt.subplots(figsize=(6, 4))
    if finite.size:
        xs = np.linspace(finite[0] - 0.5, finite[-1] + 0.5, 200)
        ax.plot(xs, [(np.asarray(clean) >= x).mean() for x in xs], label="normal frames with an obstacle")
        if found:
            ax.plot(xs, [(np.asarray(found) >= x).mean() for x in xs], color="tab:green",
                    label=f"{dataset or 'labelled'} obstacles found")
    ax.axvline(threshold, color="k", linestyle=":", label=f"calibrated {threshold:.3g}")
    ax.axhline(rate, color="r", linestyle="--", linewidth=0.8, label=f"target {rate:.0%}")
    ax.set_xlabel("threshold (score)")
    ax.set_ylabel("share of frames / obstacles" if found else "false-frame rate")
    ax.legend()
    save(path, fig)


if __name__ == "__main__":
    sys.exit(main())
