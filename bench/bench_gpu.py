#!/usr/bin/env python3
"""Figure 6: the same figures on CUDA (fp16), for sessions that are lent a GPU.

    python bench/bench_gpu.py [--quick] [--device cuda] [--no-compile] [--no-node]
    python bench/run.py --only gpu [--quick]

Without CUDA every figure is reported as skipped with the reason (never a number). Written and
smoke-tested on a CPU-only machine (``test/test_bench_smoke.py`` runs the same code on the CPU at
tiny sizes); **not yet run on a GPU**: the first session with one should run it and fix what breaks.

What is measured, on ``--device`` (default ``cuda``), batch 1, random weights with randomised
BatchNorm statistics (as figure 1):

* **forward** per model and size (ESPNetv2 1024x512 and 2048x1024, WRN38-DeepLabv3+ 2048x1024,
  ResNet-101-DeepLabv3+ 1024x512): plain eager fp32 ``model(x)`` (autograd on, the baseline) vs the
  engine (``InferenceEngine.forward_logits``: uint8 in, normalisation on the device, BatchNorm folded,
  channels-last, ``inference_mode``) in fp32, fp16 and bf16 autocast; frames per second, ratio vs the
  baseline, and the logits' deviation from eager fp32 (relative to the largest logit; fp16/bf16 are
  held to 2e-2, fp32 to 1e-3). Targets (on an H100): ESPNetv2 2048x1024 fp16 >= 150 fps,
  WRN38 2048x1024 fp16 >= 15 fps.
* **torch.compile** of the engine's model, fp16, ``mode="reduce-overhead"`` (inductor + CUDA graphs)
  and ``"max-autotune-no-cudagraphs"`` for ESPNetv2 2048x1024: fps vs the engine's fp16 path,
  compile time; report only (the engine does not use it).
* **TensorRT** (when ``tensorrt`` is installed: ``pip install -e '.[tensorrt]'``): per model at
  2048x1024 (ESPNetv2, WRN38), ``infer_maps`` through ``InferenceEngine(backend="tensorrt",
  precision="fp16")`` against ``backend="torch"`` fp16, fps ratio (issue 15), with the class agreement
  and the largest energy difference between the two; skipped with the reason otherwise.
* **full frame** at 1024x512 and 2048x1024, ESPNetv2 fp16: ``infer_maps`` (pinned upload, forward,
  energy + argmax + resize + smoothing on the device, one copy back) + ``process_frame``; fps and
  the share outside the forward.
* **node at 30 Hz** (``--no-node`` skips it): the real node (``bench_soak.soak``) on the GPU in fp16
  with ESPNetv2 at a 1024x512 network input, fed a looping 1024x512 bag replay at 30 Hz for 30 s
  (15 s with ``--quick``); target: zero dropped frames after the warm-up.

Timing: every candidate is followed by ``torch.cuda.synchronize()`` before the clock is read; the
candidates are interleaved (``bench.common.interleaved``) after a warm-up (cuDNN autotuning
included, ``torch.backends.cudnn.benchmark = True``). The GPU name is recorded in every figure.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_forward import SHORT_NAMES, build, compare
from bench.common import figure, interleaved, median, node_postprocess, skipped

TARGET_FPS = {("espnetv2", (2048, 1024)): 150.0, ("wrn38_deeplabv3plus", (2048, 1024)): 15.0}
FP32_TOLERANCE = 1e-3
HALF_TOLERANCE = 2e-2
FULL_PLAN = [
    ("espnetv2", (1024, 512), 10, 50),
    ("espnetv2", (2048, 1024), 10, 50),
    ("wrn38_deeplabv3plus", (2048, 1024), 3, 10),
    ("resnet101_deeplabv3plus", (1024, 512), 3, 10),
]
QUICK_PLAN = [
    ("espnetv2", (2048, 1024), 5, 20),
    ("wrn38_deeplabv3plus", (2048, 1024), 2, 5),
]
PRECISIONS = ("fp32", "fp16", "bf16")
NODE_SIZE = (1024, 512)
NODE_FPS = 30.0


def cuda_unavailable(device: str) -> str | None:
    """None when ``device`` can run; else why not."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA device (figure 6 needs a GPU: run on a machine lent by the device tool)"
    return None


def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def bench_forward(model_name: str, size_wh: tuple[int, int], warmup: int, repeats: int, device: str,
                  precisions: tuple[str, ...] = PRECISIONS, verbose: bool = True) -> list[dict[str, Any]]:
    import torch

    from pebal_perception.core.engine import InferenceEngine

    w, h = size_wh
    tag = f"gpu_forward_{SHORT_NAMES.get(model_name, model_name)}_{w}x{h}"
    model, cpu_engine, u8, x = build(model_name, size_wh)
    # One engine per precision, each folding its own copy of the plain model (as from_checkpoint does).
    engines = {p: InferenceEngine(model, cpu_engine.meta, device=device, precision=p, input_size=(h, w))
               for p in precisions}
    del cpu_engine
    model = model.to(device)
    x, u8 = x.to(device), u8.to(device)
    with torch.no_grad():
        ref = model(x).float()
    candidates: dict[str, Callable[[], Any]] = {"eager_fp32": lambda: model(x)}
    deviations: dict[str, tuple[float, float]] = {}
    for p, engine in engines.items():
        deviations[p] = compare(ref, engine.forward_logits(u8))
        candidates[f"ours_{p}"] = (lambda e=engine: e.forward_logits(u8))
    samples = interleaved(candidates, repeats=repeats, warmup=warmup, sync=_sync(device))
    t_eager = median(samples["eager_fp32"])
    gpu = _device_name(device)
    target = TARGET_FPS.get((model_name, tuple(size_wh)))
    figs = []
    for p in precisions:
        t = median(samples[f"ours_{p}"])
        diff, rel = deviations[p]
        tolerance = FP32_TOLERANCE if p == "fp32" else HALF_TOLERANCE
        fps = 1.0 / t
        meets = None if target is None or p != "fp16" else bool(fps >= target)
        fig = figure(f"{tag}_ours_{p}", fps, "fps", 1.0 / t_eager, higher_is_better=True,
                     baseline_label="plain eager fp32 (grad on)", target_text=(f">= {target:g} fps (fp16)"
                                                                              if target and p == "fp16" else None),
                     meets_target=meets, gpu=gpu, device=device, precision=p, latency_ms=t * 1e3,
                     eager_latency_ms=t_eager * 1e3, max_abs_diff=diff, max_rel_diff=rel,
                     outputs_match=bool(rel <= tolerance), tolerance=tolerance, warmup=warmup, repeats=repeats,
                     samples=samples)
        if rel > tolerance:
            fig["note"] = f"OUTPUT MISMATCH: max |d logits| {diff:.2e} (relative {rel:.1e} > {tolerance:g})"
        figs.append(fig)
        if verbose:
            print(f"  {tag} {p}: {fps:.1f} fps ({t * 1e3:.2f} ms) vs eager fp32 {1 / t_eager:.1f} fps; "
                  f"max |d logits| {diff:.2e} (relative {rel:.1e})", flush=True)
    return figs


def bench_compile(size_wh: tuple[int, int], warmup: int, repeats: int, device: str,
                  modes: tuple[str, ...] = ("reduce-overhead", "max-autotune-no-cudagraphs"),
                  verbose: bool = True) -> list[dict[str, Any]]:
    """torch.compile of the engine's ESPNetv2 model in fp16 vs the engine's fp16 path."""
    import torch

    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.preprocess import normalize

    w, h = size_wh
    model, cpu_engine, u8, _ = build("espnetv2", size_wh)
    engine = InferenceEngine(model, cpu_engine.meta, device=device, precision="fp16", input_size=(h, w))
    u8 = u8.to(device)
    ref = engine.forward_logits(u8).float()
    figs = []
    for mode in modes:
        name = f"gpu_forward_espnetv2_{w}x{h}_compile_{mode}"
        try:
            compiled = torch.compile(engine.model, mode=mode)

            def run_compiled(compiled=compiled):
                with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16):
                    xx = normalize(u8, engine.meta.mean, engine.meta.std, (h, w))
                    return compiled(xx.contiguous(memory_format=torch.channels_last))

            t0 = time.perf_counter()
            out = run_compiled()
            _sync(device)()
            compile_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - report, never fake a number
            figs.append(skipped(name, f"torch.compile failed: {type(exc).__name__}: {str(exc)[:160]}"))
            continue
        diff, rel = compare(ref, out)
        samples = interleaved({"ours_fp16": lambda: engine.forward_logits(u8), "compiled": run_compiled},
                              repeats=repeats, warmup=warmup, sync=_sync(device))
        t_c, t_o = median(samples["compiled"]), median(samples["ours_fp16"])
        figs.append(figure(name, 1.0 / t_c, "fps", 1.0 / t_o, higher_is_better=True,
                           baseline_label="ours fp16 (engine path)", compile_s=compile_s, gpu=_device_name(device),
                           max_abs_diff=diff, max_rel_diff=rel, samples=samples,
                           note=f"compile {compile_s:.0f} s; report only, not used by the engine"))
        if verbose:
            print(f"  {name}: {1 / t_c:.1f} fps vs ours fp16 {1 / t_o:.1f} fps (compile {compile_s:.0f} s)",
                  flush=True)
    return figs


def bench_frame(size_wh: tuple[int, int], warmup: int, repeats: int, device: str, precision: str = "fp16",
                verbose: bool = True) -> dict[str, Any]:
    """``infer_maps`` + ``process_frame`` of one ESPNetv2 frame at ``size_wh`` (network at the same size)."""
    import numpy as np

    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.engine import infer_maps
    from pebal_perception.core.postprocess import process_frame

    w, h = size_wh
    model, cpu_engine, _, _ = build("espnetv2", size_wh)
    engine = InferenceEngine(model, cpu_engine.meta, device=device, precision=precision, input_size=(h, w))
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    config = node_postprocess(-9.0)
    forward_ms: list[float] = []

    def frame():
        semantic, score, infer_ms = infer_maps(engine, rgb)  # ends with the device -> host copy
        forward_ms.append(infer_ms)
        return process_frame(semantic, score, config)

    samples = interleaved({"frame": frame}, repeats=repeats, warmup=warmup, sync=_sync(device))
    t = median(samples["frame"])
    infer = float(np.median(forward_ms[-repeats:]))
    if verbose:
        print(f"  gpu_frame_espnetv2_{w}x{h}_{precision}: {1 / t:.1f} fps ({t * 1e3:.2f} ms, of which "
              f"infer_maps {infer:.2f} ms)", flush=True)
    return figure(f"gpu_frame_espnetv2_{w}x{h}_{precision}", 1.0 / t, "fps", None, higher_is_better=True,
                  gpu=_device_name(device), latency_ms=t * 1e3, infer_maps_ms=infer,
                  host_postprocess_share=max(0.0, 1.0 - infer / (t * 1e3)), samples=samples)


TENSORRT_PLAN = [("espnetv2", (2048, 1024)), ("wrn38_deeplabv3plus", (2048, 1024))]


def bench_tensorrt(model_name: str, size_wh: tuple[int, int], warmup: int, repeats: int, device: str,
                   precision: str = "fp16", verbose: bool = True) -> dict[str, Any]:
    """One frame at ``size_wh`` through the engine with backend tensorrt against backend torch, both in
    ``precision``: fps, ratio = TensorRT / torch (issue 15)."""
    import numpy as np

    from pebal_perception.core import backends
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.engine import infer_maps

    w, h = size_wh
    name = f"gpu_tensorrt_{SHORT_NAMES.get(model_name, model_name)}_{w}x{h}_{precision}"
    if not backends.installed("tensorrt"):
        return skipped(name, "tensorrt is not installed (pip install -e '.[tensorrt]')")
    model, cpu_engine, _, _ = build(model_name, size_wh)
    engines = {backend: InferenceEngine(model, cpu_engine.meta, device=device, precision=precision,
                                        input_size=(h, w), backend=backend) for backend in ("torch", "tensorrt")}
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    samples = interleaved({b: (lambda e=e: infer_maps(e, rgb)) for b, e in engines.items()}, repeats=repeats,
                          warmup=warmup, sync=_sync(device))
    t_torch, t_trt = median(samples["torch"]), median(samples["tensorrt"])
    (sem_t, score_t, _), (sem_r, score_r, _) = (infer_maps(engines[b], rgb) for b in ("torch", "tensorrt"))
    agreement = float((sem_t == sem_r).mean())
    diff = float(np.abs(score_t - score_r).max())
    if verbose:
        print(f"  {name}: TensorRT {1 / t_trt:.1f} fps, torch {1 / t_torch:.1f} fps; agreement {agreement:.5f}, "
              f"max |energy diff| {diff:.3g}", flush=True)
    return figure(name, 1.0 / t_trt, "fps", 1.0 / t_torch, higher_is_better=True,
                  baseline_label=f"backend torch {precision}", gpu=_device_name(device), class_agreement=agreement,
                  max_energy_diff=diff, samples=samples)


def bench_node(duration_s: float, device: str, verbose: bool = True) -> list[dict[str, Any]]:
    """The real node on the GPU at 30 Hz (bench_soak's harness); target: no dropped frames."""
    from bench import bench_soak

    name = f"gpu_node_espnetv2_{NODE_SIZE[0]}x{NODE_SIZE[1]}_{NODE_FPS:g}hz"
    reason = bench_soak.prerequisites()
    if reason is not None:
        return [skipped(name, reason)]
    params = [f"device:={device}", "precision:=fp16", f"input_width:={NODE_SIZE[0]}",
              f"input_height:={NODE_SIZE[1]}"]
    try:
        record = bench_soak.soak(duration_s, write_bag=bench_soak.drive_bag, fps=NODE_FPS, size=NODE_SIZE,
                                 node_params=params, verbose=verbose, progress_every_s=10.0)
    except (bench_soak.SoakUnavailable, bench_soak.SoakError) as exc:
        return [skipped(name, str(exc))]
    a = record["analysis"]
    diags = [d for d in record["diagnostics"] if d["t"] >= record["warmup_s"]]
    dropped = diags[-1]["dropped_frames"] - diags[0]["dropped_frames"] if len(diags) >= 2 else None
    if verbose:
        print("  node: " + bench_soak.summary_line(record), flush=True)
    lf, ll = a.get("latency_first_third", {}), a.get("latency_last_third", {})
    return [figure(name, a["processed_fps"], "fps", NODE_FPS, higher_is_better=True,
                   baseline_label="camera rate", target_text="0 frames dropped after the warm-up",
                   meets_target=None if dropped is None else dropped == 0, dropped_after_warmup=dropped,
                   gpu=_device_name(device), node_params=params, latency_first_third=lf, latency_last_third=ll,
                   rss_growth_pct=a.get("rss_growth_pct"), accounting_ok=a.get("accounting_ok"),
                   note=f"{dropped} dropped after the warm-up; processing_time_ms p95 "
                        f"{ll.get('p95_ms', float('nan')):.1f} ms (last third)")]


def run(quick: bool = False, device: str = "cuda", plan: list | None = None, try_compile: bool = True,
        node: bool = True, precisions: tuple[str, ...] = PRECISIONS, verbose: bool = True) -> list[dict[str, Any]]:
    plan = plan if plan is not None else (QUICK_PLAN if quick else FULL_PLAN)
    names = [f"gpu_forward_{SHORT_NAMES.get(m, m)}_{s[0]}x{s[1]}_ours_fp16" for m, s, _, _ in plan]
    reason = cuda_unavailable(device)
    if reason is not None:
        return [skipped(n, reason) for n in names]
    import torch

    torch.backends.cudnn.benchmark = True
    if verbose:
        print(f"gpu: {_device_name(device)}, torch {torch.__version__}", flush=True)
    figs: list[dict[str, Any]] = []
    for model_name, size, warmup, repeats in plan:
        figs += bench_forward(model_name, size, warmup, repeats, device, precisions, verbose)
    if try_compile and device.startswith("cuda"):
        figs += bench_compile((2048, 1024), 5, 10 if quick else 30, device, verbose=verbose)
    for model_name, size in TENSORRT_PLAN[:1] if quick else TENSORRT_PLAN:
        figs.append(bench_tensorrt(model_name, size, 5 if quick else 10, 10 if quick else 30, device, verbose=verbose))
    for size in ((1024, 512), (2048, 1024)):
        figs.append(bench_frame(size, 5, 10 if quick else 30, device, verbose=verbose))
    if node:
        figs += bench_node(15.0 if quick else 30.0, device, verbose)
    return figs


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu only to check the harness)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile figures")
    parser.add_argument("--no-node", action="store_true", help="skip the node-at-30-Hz figure")
    args = parser.parse_args(argv)
    for fig in run(args.quick, args.device, try_compile=not args.no_compile, node=not args.no_node):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
