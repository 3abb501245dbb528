"""pebal-detect: offline PEBAL inference on image files, folders and videos.

For every frame NAME it writes, under --output:
  NAME_semantic.png  mono8 Cityscapes trainIds at the input resolution
  NAME_energy.npy    float32 H x W anomaly score (smoothed free energy, higher = more anomalous)
  NAME_obstacle.png  0/255 mask of the reported obstacles
  NAME_overlay.jpg   class colours with the reported obstacles in magenta
  NAME_debug.jpg     (--debug) drivable surface, excluded zone, horizon, every candidate region and why
                     it was rejected
and summary.json with the model, threshold and per-frame statistics and obstacles.

The obstacles are what the node reports for a single image (core/postprocess.py with the node's default
parameters, config/detector.yaml, and the ego mask a normal-driving calibration stored in the checkpoint;
no tracking over frames): regions on the drivable surface whose mean score exceeds the threshold.

--output must be a new or empty folder, or one pebal-detect wrote before (holding only files named
as above); a re-run there replaces the files of the same name. Anything else (a folder with other
files, a file, a device, a fifo) is refused before the model is loaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from pebal_perception.core.backends import BACKENDS
from pebal_perception.core.errors import first_line
from pebal_perception.core.backends import help_text as backends_help_text
from pebal_perception.cli_args import image_size_or_native
from pebal_perception.core.io import FolderLayout, json_keys, prepare_output_folder
from pebal_perception.core.settings import check_adaptation_momentum

# Read after a header check (image_conversion.read_image_file): the formats cameras write.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
PROG = "pebal-detect"
# What pebal-detect writes into --output: a folder holding only these is one it wrote before.
OUTPUT_LAYOUT = FolderLayout(PROG, files=(r".+_semantic\.png", r".+_energy\.npy", r".+_obstacle\.png",
                                          r".+_overlay\.jpg", r".+_debug\.jpg", r"summary\.json"),
                             own=json_keys("summary.json", ("frames", "threshold_source", "num_frames")))


class InputError(Exception):
    """A frame that could not be read; processing goes on with the next one."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="image files, folders (searched recursively) or videos")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="output folder: new, empty, or written by pebal-detect before")
    p.add_argument("--checkpoint", type=Path, help="model checkpoint (ours or a third-party file); "
                   "default: the embedded demo model")
    p.add_argument("--model", help="architecture of a bare third-party state dict (e.g. espnetv2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help=f"inference runtime: {backends_help_text()} (default auto)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="CUDA only")
    p.add_argument("--threshold", type=float, help="obstacle threshold on the score (default: the checkpoint's "
                   "calibrated one)")
    p.add_argument("--input-size", type=image_size_or_native, help="network input WIDTHxHEIGHT or 'native' "
                   "(default: the checkpoint's)")
    p.add_argument("--no-smoothing", action="store_true", help="skip PEBAL's 7x7 Gaussian on the energy")
    p.add_argument("--min-area", type=int, help="smallest obstacle region in pixels (default: the node's "
                   "min_obstacle_area)")
    p.add_argument("--debug", action="store_true", help="also write NAME_debug.jpg (what the post-processing decided)")
    p.add_argument("--batch-size", type=int, default=1, help="frames inferred at once (1 with --adaptation)")
    p.add_argument("--adaptation", action="store_true",
                   help="adapt the model's batch-norm statistics to the frames, in the order given (the node's "
                   "adaptation parameter: frames with obstacles do not count; one frame at a time; needs backend "
                   "torch, summary.json says whether it ran)")
    p.add_argument("--adaptation-momentum", type=float, default=0.01,
                   help="weight of each adapted frame, 0 < M <= 1 (default 0.01)")
    p.add_argument("--every", type=int, default=1, help="process every N-th frame of videos")
    return p


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files, folder contents (sorted, recursive) and videos; a missing path is an error. Files of a folder
    that are neither images nor videos by their name (a LICENSE, notes) are left out with a note on stderr."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            entries = sorted(p for p in path.rglob("*") if not p.name.startswith("."))
            kept = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            other = [p.relative_to(path).as_posix() for p in entries
                     if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            if other:
                shown = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
                print(f"{PROG}: note: {path}: left out {len(other)} file(s) that are not images or videos: {shown}",
                      file=sys.stderr)
            found.extend(kept)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def iter_frames(paths: list[Path], every: int,
                check: Callable[[int, int], None] | None = None) -> Iterator[tuple[str, np.ndarray | InputError]]:
    """Yields (frame name, RGB image) or (name, InputError) for inputs and frames that cannot be used.

    Images must be PNG or JPEG: their headers are checked (pixel limit, aspect ratio) before anything is
    decoded (``image_conversion.read_image_file``, the check the node's compressed input uses). Videos are
    checked against the same limits from the frame size they report before frames are read, and each frame
    again. ``check(height, width)`` (the engine's) may refuse a frame with a ValueError. Every problem is
    an InputError for that input or frame only: the others are still yielded.
    """
    names: Counter[str] = Counter()

    def unique(stem: str) -> str:
        names[stem] += 1
        return stem if names[stem] == 1 else f"{stem}_{names[stem] - 1}"

    for path in paths:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path, unique(path.stem), every, check)
        else:
            name = unique(path.stem)
            yield name, _read_image(path, check)


def _checked(image: np.ndarray, what: str, check: Callable[[int, int], None] | None) -> np.ndarray | InputError:
    if check is not None:
        try:
            check(*image.shape[:2])
        except ValueError as exc:
            return InputError(f"{what}: {first_line(exc)}")
    return image


def _read_image(path: Path, check: Callable[[int, int], None] | None) -> np.ndarray | InputError:
    from pebal_perception.core.compressed_images import read_image_file
    from pebal_perception.core.image_conversion import ImageRejected

    try:
        image = read_image_file(path)
    except ImageRejected as exc:
        return InputError(f"{exc.message} ({exc.reason})")
    except OSError as exc:
        return InputError(f"{path}: cannot read ({exc.strerror or first_line(exc)})")
    return _checked(image, str(path), check)


def _video_frames(path: Path, base: str, every: int,
                  check: Callable[[int, int], None] | None) -> Iterator[tuple[str, np.ndarray | InputError]]:
    from pebal_perception.core.image_conversion import ImageRejected, check_image_shape

    cap = None
    try:
        try:
            cap = cv2.VideoCapture(str(path))
            opened = cap.isOpened()
        except cv2.error as exc:
            opened, cap = False, None
            yield base, InputError(f"{path}: not a readable video ({first_line(exc)})")
            return
        if not opened:
            yield base, InputError(f"{path}: not a readable video")
            return
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            if width > 0 and height > 0:  # refused before the first frame is decoded
                check_image_shape(width, height, what="video")
        except ImageRejected as exc:
            yield base, InputError(f"{path}: {exc.message} ({exc.reason})")
            return
        index = 0
        while True:
            name = f"{base}_{index:06d}"
            try:
                ok, frame = cap.read()
            except cv2.error as exc:
                yield name, InputError(f"{path}: frame {index} cannot be decoded ({first_line(exc)})")
                break
            if not ok:
                break
            if index % every == 0:
                try:
                    check_image_shape(frame.shape[1], frame.shape[0], what=f"frame {index}")
                except ImageRejected as exc:
                    yield name, InputError(f"{path}: {exc.message} ({exc.reason})")
                    break
                yield name, _checked(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), f"{path} frame {index}", check)
            index += 1
        if index == 0:
            yield base, InputError(f"{path}: video has no readable frames")
    finally:
        if cap is not None:
            cap.release()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.every < 1 or (args.min_area is not None and args.min_area < 0):
        print(f"{PROG}: error: --batch-size and --every must be >= 1, --min-area >= 0", file=sys.stderr)
        return 2
    try:
        check_adaptation_momentum(args.adaptation_momentum)  # the node parameter's own check
    except ValueError as exc:
        print(f"{PROG}: error: --adaptation-momentum: {exc}", file=sys.stderr)
        return 2
    try:
        paths = expand_inputs(args.inputs)
        if not paths:
            raise FileNotFoundError(f"no images or videos found in {', '.join(map(str, args.inputs))}")
        prepare_output_folder(args.output, OUTPUT_LAYOUT)  # refuses what pebal-detect did not write
    except (FileNotFoundError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    # Heavy imports after argument checks, so `--help` and usage errors are instant.
    from tqdm import tqdm

    from pebal_perception.core.default_model import default_checkpoint
    from pebal_perception.core.detector import Detector, DetectorError, open_engine

    try:
        checkpoint = args.checkpoint or default_checkpoint()
        engine = open_engine(checkpoint, args.model, device=args.device, precision=args.precision,
                             threshold=args.threshold, input_size=args.input_size, smoothing=not args.no_smoothing,
                             backend=args.backend)
        # The node's post-processing at its defaults; each image on its own (no tracking).
        detector = Detector.for_engine(engine, {"threshold": engine.threshold, "smoothing": not args.no_smoothing,
                                                "adaptation": args.adaptation,
                                                "adaptation_momentum": args.adaptation_momentum,
                                                **({} if args.min_area is None else
                                                   {"min_obstacle_area": args.min_area})},
                                       on_event=lambda kind, text: print(f"{PROG}: note: {text}", file=sys.stderr)
                                       if kind == "adaptation_unavailable" else None)
    except (DetectorError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    # With adaptation each frame's statistics count (or not) before the next frame is inferred.
    batch_size = 1 if args.adaptation else args.batch_size
    frames, failures = [], []
    started = time.perf_counter()
    with tqdm(desc=PROG, unit="frame", disable=None) as bar:
        pending: list[tuple[str, np.ndarray]] = []
        def fail(name: str, error: str) -> None:
            failures.append({"name": name, "error": error})
            tqdm.write(f"{PROG}: error: {error}", file=sys.stderr)

        def run(batch: list[tuple[str, np.ndarray]]) -> list[dict]:
            try:
                records = _run_batch(detector, batch, args)
            except (RuntimeError, MemoryError, ValueError) as exc:  # e.g. out of memory: these frames only
                for name, _ in batch:
                    fail(name, f"{name}: inference failed ({first_line(exc)})")
                records = []
            bar.update(len(batch))
            return records

        for name, item in iter_frames(paths, args.every, engine.check_image):
            if isinstance(item, InputError):
                fail(name, str(item))
                continue
            if pending and (len(pending) >= batch_size or pending[0][1].shape != item.shape):
                frames += run(pending)
                pending = []
            pending.append((name, item))
        if pending:
            frames += run(pending)

    from dataclasses import asdict

    from pebal_perception.core.io import atomic_write_json

    elapsed = time.perf_counter() - started
    summary = {
        "model": engine.meta.model_id, "architecture": engine.meta.architecture,
        "checkpoint": str(checkpoint), "device": str(engine.device), "precision": engine.precision,
        "backend": engine.backend,
        "threshold": engine.threshold,
        "threshold_source": "command line" if args.threshold is not None else
        ("calibrated" if engine.meta.threshold is not None else "default (uncalibrated)"),
        "frames": frames, "failures": failures, "num_frames": len(frames),
        "adaptation": asdict(detector.status().adaptation),
        "seconds": round(elapsed, 3),
    }
    atomic_write_json(args.output / "summary.json", summary)
    print(f"{PROG}: {len(frames)} frame(s) -> {args.output} ({elapsed:.1f} s, {len(failures)} failed)")
    return 1 if failures else 0


def _run_batch(detector, batch: list[tuple[str, np.ndarray]], args) -> list[dict]:
    """Inference of the batch at once, then the detector's step after inference for each image; with
    adaptation on, the detector's whole step for each image in turn (its statistics are committed or
    discarded before the next image is inferred)."""
    from pebal_perception.core.io import atomic_save_image, atomic_save_npy
    from pebal_perception.core.visualize import debug_overlay, overlay

    if detector.settings.adaptation:
        steps = [detector.step(image, track=False) for _, image in batch]
        maps = [(step.semantic, step.score, step.inference_ms, step.frame) for step in steps]
    else:
        t0 = time.perf_counter()
        results = detector.engine.infer([img for _, img in batch])
        per_frame_ms = (time.perf_counter() - t0) * 1000.0 / len(batch)
        maps = [(res.semantic, res.score, per_frame_ms, None) for res in results]
    threshold = detector.engine.threshold
    records = []
    for (name, image), (semantic, score, infer_ms, frame) in zip(batch, maps):
        out = args.output
        atomic_save_image(out / f"{name}_semantic.png", semantic)
        atomic_save_npy(out / f"{name}_energy.npy", score.astype(np.float32, copy=False))
        if frame is None:
            frame = detector.finish(semantic, score, infer_ms, track=False).frame
        atomic_save_image(out / f"{name}_obstacle.png", frame.mask.astype(np.uint8) * 255)
        atomic_save_image(out / f"{name}_overlay.jpg", overlay(image, semantic, frame.mask))
        if args.debug:
            atomic_save_image(out / f"{name}_debug.jpg", debug_overlay(image, frame))
        records.append({
            "name": name, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "anomalous_fraction": float((score > threshold).mean()), "max_score": float(np.nanmax(score)),
            "inference_ms": round(infer_ms, 2), "obstacles": [o.to_dict() for o in frame.obstacles],
            "rejected_regions": dict(Counter(r.rejected for r in frame.regions if r.rejected)),
        })
    return records


if __name__ == "__main__":
    sys.exit(main())
