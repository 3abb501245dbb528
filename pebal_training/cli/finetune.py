"""``pebal-finetune`` (also ``ros2 run pebal_training finetune``): PEBAL fine-tuning.

Examples::

    pebal-finetune --config config/finetune.yaml --output runs/exp1
    pebal-finetune --config config/finetune.yaml train.epochs=5 optim.lr=2e-5 data.kind=synthetic
    pebal-finetune --config config/finetune.yaml --output runs/exp1 --resume auto   # continue exactly
    torchrun --nproc_per_node 2 -m pebal_training.cli.finetune --config ...         # DDP

Positional ``key=value`` arguments override the config (dotted keys, values read as YAML, type-checked;
unknown keys are an error). ``--output`` overrides ``output``. ``--resume auto`` continues from the
newest complete checkpoint in ``<output>/checkpoints`` (a fresh run when there is none), ``--resume
PATH`` from that checkpoint.

Exit status: 0 done, 1 training stopped: it diverged (NaN/Inf loss; the message names the global step)
or an output could not be written (full disk, read-only folder; the message names the file); the
checkpoints written before stay intact and ``--resume auto`` continues from them. 2 bad usage /
configuration / data / checkpoint. Every error is one line on stderr.
Nothing here imports ROS.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from pebal_perception.cli_args import Parser as _Parser
from pebal_perception.cli_args import UsageError as _UsageError

PROG = "pebal-finetune"
DEFAULT_CONFIG = "config/finetune.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Fine-tune a segmentation network with PEBAL (energy-biased abstention).")
    p.add_argument("--config", default=None,
                   help=f"YAML config (default: {DEFAULT_CONFIG} if it exists, else built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=2e-5")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH|auto",
                   help="resume from a checkpoint, or 'auto' (newest complete checkpoint of the run folder)")
    p.add_argument("--output", default=None, help="run folder (overrides 'output')")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from pathlib import Path

    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        # "--resume key=value": argparse gave the override to --resume; it meant "--resume auto key=value"
        args.overrides.insert(0, args.resume)
        args.resume = "auto"

    from pebal_training.config import ConfigError, load_config

    try:
        config_path = args.config
        if config_path is None and Path(DEFAULT_CONFIG).is_file():
            config_path = DEFAULT_CONFIG
        overrides = list(args.overrides)
        if args.output:
            overrides.append(f"output={args.output}")
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0

    from pebal_perception.core.models.common import CheckpointError
    from pebal_training.data.datasets import DatasetError
    from pebal_training.trainer import TrainingDiverged, train

    try:
        summary = train(cfg, resume=args.resume)
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (DatasetError, CheckpointError, ConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # cannot write: full disk, quota, read-only folder
        where = exc.filename or cfg.output
        print(f"{PROG}: error: cannot write {where}: {exc.strerror or _one_line(exc)}; the checkpoints "
              "written before are intact (free space, then --resume auto)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; resume with --resume auto", file=sys.stderr)
        return 130
    if summary.get("final_checkpoint"):
        print(json.dumps({k: summary[k] for k in ("final_checkpoint", "global_step", "metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
