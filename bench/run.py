#!/usr/bin/env python3
"""Runs the benchmark suite (BENCHMARKS.md) and stores the figures per machine.

    python bench/run.py [--quick] [--only forward,frame,node,metrics,training,soak,gpu,dds,runtimes,precision]

Every figure module exposes ``run(quick) -> list[dict]`` (see ``bench/common.py`` for the record).
One line is printed per figure::

    name: value unit (ratio vs baseline: x.xx, target: ..., met|NOT met)
    name: skipped (reason)

and all of them go to ``bench/results/<machine>.json`` (written atomically). With ``--only`` the
figures of the selected modules replace those of the same name in an existing file; the others are
kept. ``--quick`` is the smoke-sized suite (a few minutes on a 2-core CPU); the full suite runs
every figure at its documented size and takes much longer on a CPU (the soak alone replays for 10 minutes;
25 s with ``--quick``).

A module whose prerequisites are missing reports its figures as skipped, never with a number; a
module that raises is reported as ``<module>: failed (...)`` and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import format_figure, machine_id, machine_info, machine_line  # noqa: E402

# Suite order: the figures' order in BENCHMARKS.md (1-5, soak, 6, 7), not cheapest-to-fail first.
MODULES = {
    "forward": "bench.bench_forward",    # figure 1
    "frame": "bench.bench_frame",        # figure 2
    "node": "bench.bench_node",          # figure 3
    "metrics": "bench.bench_metrics",    # figure 4
    "training": "bench.bench_training",  # figure 5
    "soak": "bench.bench_soak",          # soak: 10 minutes at 10 Hz (full), 25 s (--quick)
    "gpu": "bench.bench_gpu",            # figure 6: CUDA fp16 (skipped without a GPU)
    "dds": "bench.bench_dds",            # figure 7: 1920x1080 at 30 Hz best effort into the node
    "runtimes": "bench.bench_backends",  # figure 8: ours (backend auto) vs OpenVINO / ONNX Runtime by hand
    "precision": "bench.bench_precision",  # figure 9: fp16 / bf16 against fp32 on real frames (CPU: not --quick)
}
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_suite(quick: bool, only: list[str] | None = None, results_dir: Path = RESULTS_DIR,
              write: bool = True, threads: int | None = None) -> tuple[list[dict[str, Any]], bool, Path | None]:
    """Runs the selected modules; returns (figures, all_ok, path written).

    ``threads``: torch intra-op threads for this process and ``OMP_NUM_THREADS`` for its subprocesses
    (node, loader workers); the results file name then ends in ``_<n>threads``. On a machine shared
    with other jobs, one thread per process avoids OpenMP barrier stalls (see BENCHMARKS.md).
    """
    names = only or list(MODULES)
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    info = machine_info()
    load_start = _loadavg()
    print(f"machine: {machine_line(info)}", flush=True)
    print(f"suite: {'quick' if quick else 'full'}; modules: {', '.join(names)}; load average {load_start}", flush=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    t_suite = time.perf_counter()
    figures: list[dict[str, Any]] = []
    per_module: dict[str, dict[str, Any]] = {}
    ok = True
    for name in names:
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(MODULES[name])
            figs = module.run(quick)
            status = "ok"
        except Exception as exc:  # noqa: BLE001 - one broken module must not hide the others' figures
            traceback.print_exc()
            figs = [{"name": name, "failed": True, "reason": f"{type(exc).__name__}: {exc}"}]
            status = "failed"
            ok = False
        seconds = time.perf_counter() - t0
        per_module[name] = {"status": status, "seconds": round(seconds, 1)}
        for fig in figs:
            fig.setdefault("module", name)
        figures += figs
        print(f"-- {name}: {status} in {seconds:.0f} s", flush=True)
    total_s = time.perf_counter() - t_suite

    print(f"\n== figures ({'quick' if quick else 'full'} suite, {total_s:.0f} s, load average now {_loadavg()}) ==")
    for fig in figures:
        if fig.get("failed"):
            print(f"{fig['name']}: failed ({fig['reason']})")
        else:
            print(format_figure(fig))

    path = None
    if write:
        suffix = f"_{int(threads)}threads" if threads is not None else ""
        path = results_dir / f"{machine_id(info)}{suffix}.json"
        previous = _load(path) if only else None
        kept = []
        if previous and isinstance(previous.get("figures"), list):
            new_names = {f["name"] for f in figures}
            kept = [f for f in previous["figures"] if f.get("name") not in new_names and f.get("module") not in names]
        record = {
            "machine": machine_id(info),
            "machine_info": info,
            "date_utc": started.isoformat(timespec="seconds"),
            "command": "python bench/run.py " + " ".join(sys.argv[1:]) if sys.argv else "bench/run.py",
            "quick": quick,
            # with --only, the other modules' entries (and figures) come from the earlier run
            "modules": {**((previous or {}).get("modules") or {}), **per_module},
            "suite_seconds": round(total_s, 1),
            # 1/5/15-minute load averages: above the core count means other jobs shared the machine.
            "load_average_start": load_start,
            "load_average_end": _loadavg(),
            "figures": kept + figures,
        }
        from pebal_perception.core.io import atomic_write_json

        atomic_write_json(path, record)
        print(f"\nwrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return figures, ok, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized suite (minutes on a CPU)")
    parser.add_argument("--only", default="", help=f"comma-separated modules: {','.join(MODULES)}")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update bench/results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenMP threads (default: torch's choice); results go to <machine>_<n>threads.json")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] or None
    unknown = [n for n in only or [] if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    _, ok, _ = run_suite(args.quick, only, write=not args.no_write, threads=args.threads)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
