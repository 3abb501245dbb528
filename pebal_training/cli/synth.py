"""``pebal-synth``: write procedural synthetic street scenes (or one drive) to a folder.

Per scene ``NAME``: ``NAME.png`` (RGB image), ``NAME_labelTrainIds.png`` (mono8 Cityscapes trainIds, 255
void), ``NAME_anomaly.png`` (mono8: 0 inlier, 1 anomaly, 255 void), and one ``scenes.json`` describing
every scene (camera, obstacles).  Every file is written atomically (temporary file in the same folder, then
``os.replace``), so readers never see partial files.

``--output`` must be a new or empty folder, or one pebal-synth wrote before (holding only such files and
its ``scenes.json``; a re-run replaces the files of the same name). Anything else (a folder with other
files, a file, a device, a fifo) is refused with one line and left untouched.

Examples::

    pebal-synth --output out/synth --count 100 --seed 1
    pebal-synth --output out/drive --count 200 --drive --fps 10 --size 1024x512
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from pebal_perception.cli_args import Parser as _Parser
from pebal_perception.cli_args import UsageError as _UsageError
from pebal_perception.cli_args import positive_int, positive_number
from pebal_perception.core.io import FolderLayout, OutputPathError, json_keys, prepare_output_folder, replace_checked

PROG = "pebal-synth"
# What pebal-synth writes into --output: a folder holding only these is one it wrote before.
OUTPUT_LAYOUT = FolderLayout(PROG, files=(r"[A-Za-z0-9_.-]+_\d{6}(_labelTrainIds|_anomaly)?\.png", r"scenes\.json",
                                          r"\.pebal-synth-probe\..+"),
                             own=json_keys("scenes.json", ("generator", "label_encoding", "scenes")))


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (expected WxH, e.g. 1024x512)")
    w, h = int(m.group(1)), int(m.group(2))
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"size {w}x{h} out of range (16..8192 per side)")
    return w, h


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Render procedural synthetic street scenes with road anomalies.")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="output folder: new (created), empty, or written by pebal-synth before")
    p.add_argument("--count", "-n", type=positive_int, default=10,
                   help="number of scenes (frames with --drive); default 10")
    p.add_argument("--seed", "-s", type=_nonneg_int, default=0, help="random seed, >= 0 (default 0)")
    p.add_argument("--size", type=_size, default=(1024, 512), metavar="WxH",
                   help="image size, default 1024x512")
    p.add_argument("--drive", action="store_true",
                   help="write one temporally coherent drive (camera moving along the road) instead of "
                        "independent scenes")
    p.add_argument("--fps", type=positive_number, default=10.0, help="frame rate of a drive (default 10)")
    p.add_argument("--speed", type=_nonneg_float, default=10.0, help="speed of a drive in m/s (default 10)")
    p.add_argument("--anomalies", type=str, default=None, metavar="MIN:MAX",
                   help="number of anomalies per scene, e.g. 1:3 (default 0:3)")
    p.add_argument("--prefix", type=str, default=None,
                   help="file name prefix (default 'scene' or 'frame' with --drive)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def _file_mode() -> int:
    """Permissions of a newly created regular file under the current umask (mkstemp uses 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file next to ``path``, then atomically rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        replace_checked(tmp, path)  # refuses to replace anything but a regular file
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _png(array, rgb: bool) -> bytes:
    import cv2

    img = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if rgb else array
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def _prepare_output(folder: Path) -> None:
    prepare_output_folder(folder, OUTPUT_LAYOUT)  # OutputPathError for what pebal-synth did not write
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"output folder {str(folder)!r} is not writable")
    # os.access can lie (root, read-only mounts): try for real
    fd, probe = tempfile.mkstemp(prefix=".pebal-synth-probe.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pebal_training.data.synthetic import SceneConfig, generate_drive, generate_scene

    w, h = args.size
    cfg_kwargs = {"width": w, "height": h}
    if args.anomalies is not None:
        m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+))?\s*", args.anomalies)
        if not m:
            raise _UsageError(f"argument --anomalies: invalid value {args.anomalies!r} (expected MIN:MAX)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo > hi:
            raise _UsageError(f"argument --anomalies: MIN > MAX in {args.anomalies!r}")
        cfg_kwargs["anomaly_count_range"] = (lo, hi)
    cfg = SceneConfig(**cfg_kwargs)
    try:
        cfg.validate()
    except ValueError as e:
        raise _UsageError(str(e)) from None

    out: Path = args.output
    try:
        _prepare_output(out)
    except OutputPathError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        msg = e.strerror if getattr(e, "strerror", None) else str(e)
        print(f"{PROG}: error: cannot write to {str(out)!r}: {msg}", file=sys.stderr)
        return 1

    prefix = args.prefix or ("frame" if args.drive else "scene")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise _UsageError(f"argument --prefix: invalid file name prefix {prefix!r}")
    if args.drive:
        scenes = generate_drive(args.seed, args.count, cfg, speed_mps=args.speed, fps=args.fps)
    else:
        scenes = (generate_scene(args.seed * 1_000_003 + i, cfg) for i in range(args.count))

    mode = _file_mode()
    records = []
    bar = tqdm(total=args.count, desc=PROG, unit="scene", disable=args.quiet or None, file=sys.stderr)
    try:
        for i, scene in enumerate(scenes):
            name = f"{prefix}_{i:06d}"
            _atomic_write(out / f"{name}.png", _png(scene.image, rgb=True), mode)
            _atomic_write(out / f"{name}_labelTrainIds.png", _png(scene.semantic, rgb=False), mode)
            _atomic_write(out / f"{name}_anomaly.png", _png(scene.anomaly, rgb=False), mode)
            rec = {"name": name, "image": f"{name}.png", "label": f"{name}_labelTrainIds.png",
                   "anomaly": f"{name}_anomaly.png"}
            if not args.drive:
                rec["seed"] = args.seed * 1_000_003 + i
            rec.update(scene.metadata())
            records.append(rec)
            bar.update(1)
    finally:
        bar.close()
    meta = {
        "generator": "pebal_training.data.synthetic",
        "seed": args.seed,
        "size": [w, h],
        "drive": bool(args.drive),
        "fps": args.fps if args.drive else None,
        "speed_mps": args.speed if args.drive else None,
        "label_encoding": {"semantic": "cityscapes trainIds, 255 void",
                           "anomaly": "0 inlier, 1 anomaly, 255 void"},
        "scenes": records,
    }
    _atomic_write(out / "scenes.json", (json.dumps(meta, indent=1) + "\n").encode(), mode)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _run(args)
    except _UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    except OutputPathError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        target = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error: cannot write{target}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
