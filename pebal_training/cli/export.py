"""pebal-export: export a PEBAL model for deployment, or convert a third-party checkpoint.

--format torchscript|onnx|both: writes into the --output folder NAME.pt (TorchScript, traced), NAME.onnx
(opset >= 17) and NAME.json (sidecar: normalisation, input size, outputs, threshold). The exported
module maps a normalised N x 3 x H x W image (fixed H x W, --input-size, default the checkpoint's) to
(semantic int64 N x H x W, energy float32 N x H x W), smoothing included unless --no-smoothing.

--format pebal: writes the checkpoint (ours or third-party, e.g. EdgeNets ESPNetv2 or the PEBAL
release) in our self-describing format to --output (a file path), with its metadata.

What --output may be (checked before the checkpoint is loaded): for torchscript/onnx/both a new or
empty folder, or one pebal-export wrote before (NAME.pt / NAME.onnx with their NAME.json sidecars; a
re-export replaces the files of the same name); for pebal a new file or a regular file, replaced
atomically. Anything else (a folder of other files, a device, a fifo, a file where a folder goes) is
refused with one line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pebal_perception.cli_args import Parser as _Parser
from pebal_perception.cli_args import UsageError, image_size
from pebal_perception.core.io import OutputPathError, check_output_file, check_output_folder, prepare_output_folder

PROG = "pebal-export"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", help="architecture of a bare third-party state dict (e.g. espnetv2)")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="output folder (torchscript/onnx/both: new, empty, or written by pebal-export) or "
                        "checkpoint file (pebal: new or a regular file)")
    p.add_argument("--format", default="both", choices=("torchscript", "onnx", "both", "pebal"))
    p.add_argument("--name", help="base name of the exported files (default: the checkpoint's stem)")
    p.add_argument("--input-size", type=image_size, help="WIDTHxHEIGHT the export runs at (default: the checkpoint's)")
    p.add_argument("--no-smoothing", action="store_true", help="leave PEBAL's Gaussian out of the graph")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="ONNX: symbolic batch axis (not possible for ESPNetv2's adaptive pooling)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--threshold", type=_threshold, help="pebal format: store this threshold in the metadata")
    return p


def _threshold(text: str) -> float:
    from pebal_perception.core.limits import check_threshold

    try:
        return check_threshold(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _error(msg: object) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _error(exc)
    if args.opset < 17:
        return _error(f"--opset must be >= 17, got {args.opset}")
    from pebal_training.export import OUTPUT_LAYOUT

    try:  # before loading anything
        if args.format == "pebal":
            check_output_file(args.output)
        else:
            check_output_folder(args.output, OUTPUT_LAYOUT)
    except OutputPathError as exc:
        return _error(exc)

    from pebal_perception.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    try:
        model, meta = load_checkpoint(args.checkpoint, args.model)
    except (CheckpointError, KeyError) as exc:
        return _error(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)

    if args.format == "pebal":
        if args.threshold is not None:
            meta.threshold = args.threshold
            meta.threshold_info = {"source": "pebal-export --threshold"}
        if not meta.source:
            meta.source = args.checkpoint.name
        try:
            save_checkpoint(args.output, model, meta)
        except OutputPathError as exc:
            return _error(exc)
        except OSError as exc:
            return _error(f"{args.output}: cannot write ({exc.strerror})")
        print(f"{PROG}: {meta.architecture} checkpoint in pebal format -> {args.output}")
        return 0

    from pebal_training.export import export_model

    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    name = args.name or args.checkpoint.stem
    try:
        prepare_output_folder(args.output, OUTPUT_LAYOUT)
        written = export_model(model, meta, args.output, name, formats, size_hw=args.input_size,
                               smoothing=not args.no_smoothing, opset=args.opset,
                               dynamic_batch=args.dynamic_batch)
    except ValueError as exc:  # OutputPathError too
        return _error(exc)
    except OSError as exc:  # the output folder cannot be made or written
        return _error(f"{args.output}: cannot write ({exc.strerror or exc})")
    except Exception as exc:  # noqa: BLE001 - exporter failures of any type: one line, not a trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG}: export failed: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    print(f"{PROG}: " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
