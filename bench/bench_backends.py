#!/usr/bin/env python3
"""Figure 8: runtimes. Our default CPU path against OpenVINO and ONNX Runtime run by hand on our export.

    python bench/bench_backends.py [--quick] [--sizes 1024x512,2048x1024] [--repeats 7]

ESPNetv2 (random init with randomised BatchNorm statistics: speed does not depend on the weights), batch
1, fp32, one uint8 RGB frame at the network size in, semantic + energy out, the torch thread count of
this process for every runtime (2 on the reference machine). Timed interleaved, median of the repeats:

* **ours** (``backend: auto``, the default of the node and the CLIs): ``infer_maps`` through
  ``InferenceEngine(backend="auto")``, smoothing on, everything the node gets;
* **ours torch** (``backend: torch``, the reference path): the same with PyTorch;
* **OpenVINO by hand** / **ONNX Runtime by hand**: what a user would deploy instead: ``pebal-export``'s
  ONNX (normalised float input, *no* smoothing: less work than ours), the frame normalised with numpy on
  the host (timed), ``compiled_model(x)`` / ``session.run``.

Figures: ``runtimes_<WxH>_ours`` (ratio = the faster by-hand runtime / ours, target >= 1.0x),
``runtimes_<WxH>_torch`` (ratio vs ours, informative), and ``runtimes_<WxH>_prepost_share``: the share of
each call of ours spent outside the compiled graph (host resize, upsampling, smoothing, copies; median
over the calls), target <= 10 %. Outputs
of ours and ours torch are compared (class agreement, max energy difference) and stored.

``--whole-frame`` (and the full suite) adds ``runtimes_whole_frame_<camera WxH>``: a camera frame
(1920x1080 into 1024x512) through ours (host resize, network-size graph, host upsampling and
smoothing) against the whole-frame graph of the same runtime (everything in the graph, one graph per
camera size: issue 15's item 2); ratio = whole-frame graph / ours, informative: it says whether the
runtimes should take the whole frame.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, interleaved, median, size_wh, skipped

FULL_SIZES = [(1024, 512), (2048, 1024)]
QUICK_SIZES = [(1024, 512), (2048, 1024)]  # 2048x1024 only while the budget lasts
REPEATS = 7
QUICK_REPEATS = 7  # the protocol of issue 15 (median of 7 interleaved repeats)
QUICK_BUDGET_S = 120.0  # --quick: sizes started after this are reported as skipped
PREPOST_TARGET = 0.10
WHOLE_FRAME_CAMERA, WHOLE_FRAME_NETWORK = (1920, 1080), (1024, 512)


def _by_hand(model, meta, size_hw, threads: int) -> dict[str, Any]:
    """OpenVINO and ONNX Runtime on pebal-export's ONNX (no smoothing), the frame normalised by hand."""
    import numpy as np

    from pebal_perception.core import backends
    from pebal_training.export import onnx_bytes, scoring_model

    onnx = onnx_bytes(scoring_model(model, smoothing=False), size_hw)
    mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)

    def normalised(rgb):
        return np.ascontiguousarray((rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0 - mean) / std)

    runs = {}
    if backends.installed("openvino"):
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(core.read_model(model=onnx), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def ov(rgb):
            request.infer({0: normalised(rgb)})
            return request.get_output_tensor(0).data.copy(), request.get_output_tensor(1).data.copy()

        runs["openvino_by_hand"] = ov
    if backends.installed("onnxruntime"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        runs["onnxruntime_by_hand"] = lambda rgb: session.run(None, {"image": normalised(rgb)})
    return runs


def bench_size(size_wh_: tuple[int, int], repeats: int, verbose: bool = True) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from bench.bench_forward import randomise_batchnorm
    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine, infer_maps
    from pebal_perception.core.models import create_model

    w, h = size_wh_
    tag = f"runtimes_{w}x{h}"
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("espnetv2").eval())
    meta = ModelMeta.for_architecture("espnetv2", input_size=[h, w])
    threads = torch.get_num_threads()
    ours = InferenceEngine(model, meta, device="cpu", backend="auto")
    reference = InferenceEngine(model, meta, device="cpu", backend="torch")
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    graph_s: list[float] = []  # the compiled graph's share of each timed call of ours
    if ours.backend != "torch":
        key = ((h, w), ours.backend)
        inner = ours._runners[key]  # noqa: SLF001 - timing the graph inside the engine's own call

        def timed_graph(x):
            t0 = time.perf_counter()
            out = inner(x)
            graph_s.append(time.perf_counter() - t0)
            return out

        ours._runners[key] = timed_graph  # noqa: SLF001
    calls: list[tuple[float, float]] = []  # (whole call, graph inside it) per call of ours

    def ours_frame():
        before = len(graph_s)
        t0 = time.perf_counter()
        infer_maps(ours, rgb)
        calls.append((time.perf_counter() - t0, sum(graph_s[before:])))

    runs = {"ours": ours_frame, "ours_torch": lambda: infer_maps(reference, rgb)}
    for name, run in _by_hand(model, meta, (h, w), threads).items():
        runs[name] = lambda run=run: run(rgb)
    samples = interleaved(runs, repeats=repeats, warmup=1)
    ms = {name: median(times) * 1e3 for name, times in samples.items()}
    sem, score, _ = infer_maps(ours, rgb)
    sem_ref, score_ref, _ = infer_maps(reference, rgb)
    check = {"class_agreement": float((sem == sem_ref).mean()),
             "max_energy_diff": float(np.abs(score - score_ref).max())}
    by_hand = {k: v for k, v in ms.items() if k.endswith("_by_hand")}
    if verbose:
        print(f"  {tag}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()) + f"; ours = {ours.backend}; "
              f"vs torch: agreement {check['class_agreement']:.5f}, max |energy diff| {check['max_energy_diff']:.2e}",
              flush=True)
    figs = []
    extra = {"backend": ours.backend, "threads": threads, "repeats": repeats, "ms": ms, **check}
    if by_hand:
        best_name = min(by_hand, key=by_hand.get)
        figs.append(figure(f"{tag}_ours", ms["ours"] / 1e3, "s", by_hand[best_name] / 1e3, target=1.0,
                           baseline_label=best_name, note=f"backend {ours.backend}", **extra))
    else:
        figs.append(skipped(f"{tag}_ours", "neither openvino nor onnxruntime installed"))
    figs.append(figure(f"{tag}_torch", ms["ours_torch"] / 1e3, "s", ms["ours"] / 1e3,
                       baseline_label=f"ours ({ours.backend})", note="backend torch, informative"))
    if graph_s:
        # per call: the time outside the graph over the whole call (same call, so no noise between runs)
        share = median([(total - graph) / total for total, graph in calls[-len(samples["ours"]):]])
        fig = figure(f"{tag}_prepost_share", max(share, 1e-6) * 100.0, "%",
                     target_text=f"<= {PREPOST_TARGET * 100:.0f} %", note="host resize, upsampling, smoothing, copies")
        fig["meets_target"] = bool(share <= PREPOST_TARGET)
        figs.append(fig)
    return figs


def bench_whole_frame(camera_wh: tuple[int, int], network_wh: tuple[int, int], repeats: int,
                      verbose: bool = True) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from bench.bench_forward import randomise_batchnorm
    from pebal_perception.core import backends
    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine, infer_maps
    from pebal_perception.core.frame_graph import RUNTIME_FORMS, FrameGraph, onnx_bytes
    from pebal_perception.core.models import create_model

    (w, h), (nw, nh) = camera_wh, network_wh
    tag = f"runtimes_whole_frame_{w}x{h}"
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("espnetv2").eval())
    meta = ModelMeta.for_architecture("espnetv2", input_size=[nh, nw])
    ours = InferenceEngine(model, meta, device="cpu", backend="auto")
    if ours.backend == "torch":
        return [skipped(tag, "auto runs torch here: no compiled runtime to compare")]
    graph = FrameGraph(ours.model, meta.mean, meta.std, (h, w), (nh, nw), **RUNTIME_FORMS[ours.backend]).eval()
    onnx = onnx_bytes(graph)
    threads = torch.get_num_threads()
    whole = (backends.OpenVinoRunner(onnx, threads) if ours.backend == "openvino"
             else backends.OnnxRuntimeRunner(onnx, threads))
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), 8, 0), 8, 1)
    rgb = np.ascontiguousarray(rgb[:h, :w])
    samples = interleaved({"ours": lambda: infer_maps(ours, rgb), "whole_frame_graph": lambda: whole(rgb[None])},
                          repeats=repeats, warmup=1)
    ms = {name: median(times) * 1e3 for name, times in samples.items()}
    sem, score, _ = infer_maps(ours, rgb)
    sem_w, score_w = (a[0] for a in whole(rgb[None]))
    check = {"class_agreement": float((sem == sem_w).mean()), "max_energy_diff": float(np.abs(score - score_w).max())}
    if verbose:
        print(f"  {tag} into {nw}x{nh}: ours {ms['ours']:.1f} ms, whole-frame graph {ms['whole_frame_graph']:.1f} ms "
              f"({ours.backend}); agreement {check['class_agreement']:.5f}, max |energy diff| "
              f"{check['max_energy_diff']:.2e}", flush=True)
    return [figure(tag, ms["whole_frame_graph"] / 1e3, "s", ms["ours"] / 1e3, baseline_label=f"ours ({ours.backend})",
                   note="informative: whole-frame graph vs host pre/post", backend=ours.backend, ms=ms, **check)]


def run(quick: bool = False, sizes: list[tuple[int, int]] | None = None, repeats: int | None = None,
        verbose: bool = True, whole_frame: bool | None = None) -> list[dict[str, Any]]:
    import torch

    from pebal_perception.core import backends

    sizes = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    if verbose:
        print(f"runtimes: ESPNetv2, fp32, CPU, {torch.get_num_threads()} threads; auto = "
              f"{backends.resolve_backend('auto', 'cpu')}", flush=True)
    figs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pebal_bench_cache_") as cache:
        import os

        previous = os.environ.get("PEBAL_CACHE_DIR")
        os.environ["PEBAL_CACHE_DIR"] = cache  # a cold cache of its own: nothing of the user's touched
        try:
            for size in sizes:
                if quick and time.perf_counter() - t_start > QUICK_BUDGET_S:
                    figs.append(skipped(f"runtimes_{size[0]}x{size[1]}_ours",
                                        f"--quick time budget of {QUICK_BUDGET_S:.0f} s used up"))
                    continue
                figs += bench_size(size, repeats, verbose=verbose)
            if (not quick) if whole_frame is None else whole_frame:
                figs += bench_whole_frame(WHOLE_FRAME_CAMERA, WHOLE_FRAME_NETWORK, repeats, verbose=verbose)
        finally:
            if previous is None:
                os.environ.pop("PEBAL_CACHE_DIR", None)
            else:
                os.environ["PEBAL_CACHE_DIR"] = previous
    return figs


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated WxH network sizes")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--whole-frame", action="store_true", default=None,
                        help="also time the whole-frame graph against ours at 1920x1080 (always in the full suite)")
    args = parser.parse_args(argv)
    sizes = [size_wh(s) for s in args.sizes.split(",")] if args.sizes else None
    for fig in run(args.quick, sizes, args.repeats, whole_frame=args.whole_frame):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
