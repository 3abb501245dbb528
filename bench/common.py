"""Shared helpers of the benchmark suite: timing, machine identification, figure records.

Every figure is a *ratio* against a baseline measured in the same process, interleaved with the
candidate (A B A B ... with the order rotated each round) and summarised by the median of the
repeats, so that a machine shared with other jobs slows both sides alike instead of biasing one.

A figure is a plain dict (what ``bench/run.py`` prints and stores as JSON):

``name``, ``value``, ``unit``, ``baseline`` (same unit, or None), ``ratio`` (baseline / value for
times, value / baseline for rates; > 1 is better; or None), ``target`` (the ratio to reach, or None),
``target_text``, ``meets_target`` (bool or None) and free-form extras (``note``, sizes, repeats,
raw samples). A figure that could not be measured is ``{"name", "skipped": True, "reason"}``; it
never carries a number.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


# ------------------------------------------------------------------------------------------ machine

def cpu_model() -> str:
    from pebal_perception.core.backends import cpu_model as core_cpu_model  # one reading of /proc/cpuinfo

    return core_cpu_model()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install only means "no GPU figure"
        pass
    return None


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu_name(),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_id(info: Mapping[str, Any] | None = None) -> str:
    """A file-name-safe id: CPU model, cores, torch version and the GPU (when there is one)."""
    info = dict(info) if info is not None else machine_info()
    cpu = _slug(re.sub(r"\((r|tm)\)|processor|\bcpu\b|[0-9]+-core", " ", str(info["cpu"]), flags=re.I))
    parts = [cpu or "cpu", f"{info['cores']}c", "torch" + _slug(str(info["torch"]).split("+")[0])]
    if info.get("gpu"):
        parts.append(_slug(str(info["gpu"])))
    return "_".join(parts)


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    info = dict(info) if info is not None else machine_info()
    gpu = info.get("gpu") or "no GPU"
    return (f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
            f"torch {info['torch']}, python {info['python']}, {gpu}")


# ------------------------------------------------------------------------------------------- timing

def interleaved(candidates: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Times every callable ``repeats`` times, interleaved, after ``warmup`` untimed calls each.

    Round ``r`` runs the candidates in an order rotated by ``r`` (A B C, B C A, ...) so that none
    always runs first (caches, frequency boosts) or right after a given other one. ``sync`` is
    called before reading the clock (e.g. ``torch.cuda.synchronize``). Returns seconds per call.
    """
    names = list(candidates)
    sync = sync or (lambda: None)
    for _ in range(max(0, warmup)):
        for name in names:
            candidates[name]()
            sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, repeats)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            t0 = time.perf_counter()
            candidates[name]()
            sync()
            samples[name].append(time.perf_counter() - t0)
    return samples


def size_wh(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height), for the bench scripts' ``--size``-style arguments."""
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class StageTimer:
    """Accumulates named stage times of one pipeline run: ``with timer("decode"): ...``."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync or (lambda: None)
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def __call__(self, name: str) -> "StageTimer":
        self._name = name
        return self

    def __enter__(self) -> "StageTimer":
        self.sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sync()
        assert self._name is not None
        self.times[self._name] = self.times.get(self._name, 0.0) + time.perf_counter() - self._t0
        self._name = None


# ------------------------------------------------------------------------------------------ figures

def figure(name: str, value: float, unit: str, baseline: float | None = None, *, higher_is_better: bool = False,
           target: float | None = None, target_text: str | None = None, **extra: Any) -> dict[str, Any]:
    """A figure record; ``ratio`` > 1 always means "better than the baseline"."""
    ratio = None
    if baseline is not None and value > 0 and baseline > 0:
        ratio = value / baseline if higher_is_better else baseline / value
    meets = None
    if target is not None and ratio is not None:
        meets = bool(ratio >= target)
    if target is not None and target_text is None:
        target_text = f">= {target:g}x"
    record = {"name": name, "value": float(value), "unit": unit,
              "baseline": None if baseline is None else float(baseline), "ratio": ratio,
              "target": target, "target_text": target_text, "meets_target": meets}
    record.update(extra)
    return record


def skipped(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "skipped": True, "reason": reason}


def _num(value: float, unit: str) -> str:
    if unit == "s" and value < 1.0:
        return f"{value * 1e3:.1f} ms"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def format_figure(fig: Mapping[str, Any]) -> str:
    """``name: value unit (ratio vs baseline: x.xx, target: ...)`` or ``name: skipped (reason)``."""
    if fig.get("skipped"):
        return f"{fig['name']}: skipped ({fig.get('reason', 'no reason given')})"
    text = f"{fig['name']}: {_num(fig['value'], fig['unit'])}"
    extras = []
    if fig.get("ratio") is not None:
        extras.append(f"ratio vs {fig.get('baseline_label', 'baseline')}: {fig['ratio']:.2f}x")
    if fig.get("target_text"):
        met = fig.get("meets_target")
        extras.append(f"target: {fig['target_text']}" + ("" if met is None else (", met" if met else ", NOT met")))
    if extras:
        text += " (" + ", ".join(extras) + ")"
    if fig.get("note"):
        text += f" [{fig['note']}]"
    return text


def node_postprocess(threshold: float):
    """The post-processing the node runs with its default parameters (config/detector.yaml), at
    ``threshold``: what the benchmarks time (single frames, no tracking)."""
    from pebal_perception.core.postprocess_config import planner_config

    return planner_config(float(threshold))
