#!/usr/bin/env python3
"""Figure 1: model forward, batch 1, fp32: the engine's path vs plain eager ``model(x)``.

    python bench/bench_forward.py [--quick] [--models espnetv2,...] [--no-compile]

Per model and input size (width x height), on a random uint8 image at the network size:

* **baseline** "plain eager": ``model.eval(); model(x)`` in fp32 with autograd *enabled* (what a
  user gets from ``model(x)`` without any context manager), ``x`` already normalised (not timed);
* **eager no_grad**: the same under ``torch.no_grad()``, reported as a second, clearly labelled
  ratio (``..._vs_no_grad``) so the gain of inference mode alone is not mistaken for ours;
* **ours**: ``InferenceEngine.forward_logits(uint8)``: normalisation on the device (timed, so ours
  pays for something the baseline gets for free), ``torch.inference_mode``, BatchNorm folded into
  the convolutions, channels-last;
* **torch.compile** (ESPNetv2 at 1024x512 only): inductor on the engine's folded channels-last model,
  reported against ours, with its compile time; never used by the engine itself.

Weights are the random init with randomised BatchNorm statistics (so folding is not a no-op).
The three paths are timed interleaved (median of the repeats) and their logits compared: the
maximum absolute difference against eager no_grad is printed and stored (``max_abs_diff``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, interleaved, median, skipped

ESPNET_TARGET = 1.3
# Relative tolerance (max |diff| / max |logit|) between the engine and eager: folding and the
# channels-last kernels change float rounding only.
REL_TOLERANCE = 1e-3

# (model, (width, height), warmup, repeats) per mode. WRN38 and ResNet-101 take minutes per forward
# at 1024x512 on a small shared CPU, so --quick runs them at 256x128 (named in the figure).
FULL_PLAN = [
    ("espnetv2", (1024, 512), 2, 10),
    ("espnetv2", (2048, 1024), 1, 5),
    ("resnet101_deeplabv3plus", (1024, 512), 1, 3),
    ("wrn38_deeplabv3plus", (1024, 512), 1, 3),
]
QUICK_PLAN = [
    ("espnetv2", (1024, 512), 1, 3),
    ("resnet101_deeplabv3plus", (256, 128), 1, 1),
    ("wrn38_deeplabv3plus", (256, 128), 1, 1),
    ("espnetv2", (2048, 1024), 1, 1),  # only while the quick time budget lasts
]
# --quick: items started after this many seconds of the forward figure are reported as skipped
# (so that the quick suite stays within minutes on a heavily shared machine).
QUICK_BUDGET_S = 150.0
SHORT_NAMES = {"espnetv2": "espnetv2", "resnet101_deeplabv3plus": "resnet101", "wrn38_deeplabv3plus": "wrn38"}


def randomise_batchnorm(model, seed: int = 0):
    """Random BN statistics and affine parameters (deterministic in ``seed``), in place."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # noqa: SLF001 - torch's BN base class
                n = m.num_features
                if m.track_running_stats and m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def build(model_name: str, size_wh: tuple[int, int], seed: int = 0):
    """(plain eval model, engine, uint8 input 1x3xHxW, normalised input) for one model and size."""
    import torch

    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.models import create_model
    from pebal_perception.core.preprocess import normalize

    torch.manual_seed(seed)
    model = randomise_batchnorm(create_model(model_name), seed).eval()
    meta = ModelMeta.for_architecture(model_name)
    w, h = size_wh
    engine = InferenceEngine(model, meta, device="cpu", input_size=(h, w), optimize=True)
    gen = torch.Generator().manual_seed(seed + 1)
    u8 = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)
    x = normalize(u8, meta.mean, meta.std, (h, w))
    return model, engine, u8, x


def compare(ref, got) -> tuple[float, float]:
    """(max |diff|, max |diff| / max |ref|)."""
    diff = float((ref.float() - got.float()).abs().max())
    scale = float(ref.float().abs().max())
    return diff, diff / scale if scale > 0 else diff


def bench_model(model_name: str, size_wh: tuple[int, int], warmup: int, repeats: int, *,
                target: float | None, try_compile: bool = False, verbose: bool = True) -> list[dict[str, Any]]:
    import torch

    w, h = size_wh
    short = SHORT_NAMES.get(model_name, model_name)
    tag = f"forward_{short}_{w}x{h}"
    t0 = time.perf_counter()
    model, engine, u8, x = build(model_name, size_wh)
    build_s = time.perf_counter() - t0

    def eager():
        return model(x)  # autograd on: the parameters require grad, a graph is recorded

    def eager_no_grad():
        with torch.no_grad():
            return model(x)

    def ours():
        return engine.forward_logits(u8)

    with torch.no_grad():
        ref = model(x)
    diff, rel = compare(ref, engine.forward_logits(u8))
    ok = rel <= REL_TOLERANCE
    samples = interleaved({"eager": eager, "eager_no_grad": eager_no_grad, "ours": ours},
                          repeats=repeats, warmup=warmup)
    t_eager, t_nograd, t_ours = (median(samples[k]) for k in ("eager", "eager_no_grad", "ours"))
    common = {"model": model_name, "width": w, "height": h, "batch": 1, "precision": "fp32",
              "warmup": warmup, "repeats": repeats, "samples": samples,
              "max_abs_diff": diff, "max_rel_diff": rel, "outputs_match": ok}
    if verbose:
        print(f"  {tag}: build {build_s:.1f} s; medians eager {t_eager * 1e3:.1f} ms, eager no_grad "
              f"{t_nograd * 1e3:.1f} ms, ours {t_ours * 1e3:.1f} ms; max |d logits| vs eager {diff:.2e} "
              f"(relative {rel:.1e}, {'OK' if ok else 'MISMATCH'})", flush=True)
    figs = [
        figure(f"{tag}_ours", t_ours, "s", t_eager, target=target, baseline_label="plain eager (grad on)",
               ratio_vs_no_grad=t_nograd / t_ours, **common),
        figure(f"{tag}_ours_vs_no_grad", t_ours, "s", t_nograd, baseline_label="eager torch.no_grad()",
               note="same run as above; baseline = eager under torch.no_grad()"),
    ]
    if not ok:
        figs[0]["note"] = f"OUTPUT MISMATCH: max |d logits| {diff:.2e} (relative {rel:.1e})"
    if try_compile:
        figs.append(bench_compile(tag, engine, u8, ref, t_ours, t_eager, warmup, repeats, verbose))
    return figs


def bench_compile(tag: str, engine, u8, ref, t_ours: float, t_eager: float, warmup: int, repeats: int,
                  verbose: bool) -> dict[str, Any]:
    """torch.compile (inductor) of the engine's optimised model; timed against ours, interleaved."""
    import torch

    from pebal_perception.core.preprocess import normalize

    name = f"{tag}_torch_compile"
    size = engine.input_size
    try:
        compiled = torch.compile(engine.model)

        def run_compiled():
            with torch.inference_mode():
                xx = normalize(u8, engine.meta.mean, engine.meta.std, size)
                xx = xx.contiguous(memory_format=torch.channels_last)
                return compiled(xx)

        t0 = time.perf_counter()
        out = run_compiled()
        compile_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - report, never fake a number
        msg = f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        if verbose:
            print(f"  {name}: {msg}", flush=True)
        return {"name": name, "skipped": True, "reason": msg}
    diff, rel = compare(ref, out)
    samples = interleaved({"ours": lambda: engine.forward_logits(u8), "compiled": run_compiled},
                          repeats=repeats, warmup=warmup)
    t_c, t_o = median(samples["compiled"]), median(samples["ours"])
    if verbose:
        print(f"  {name}: compile + first call {compile_s:.1f} s; medians compiled {t_c * 1e3:.1f} ms, "
              f"ours {t_o * 1e3:.1f} ms; max |d logits| vs eager {diff:.2e}", flush=True)
    return figure(name, t_c, "s", t_o, baseline_label="ours (engine path)", compile_s=compile_s,
                  max_abs_diff=diff, max_rel_diff=rel, samples=samples,
                  note=f"inductor, compile {compile_s:.0f} s; {'faster' if t_c < t_o else 'slower'} than ours; "
                       "not used by the engine")


def run(quick: bool = False, models: list[str] | None = None, try_compile: bool = True,
        plan: list | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    import torch

    plan = plan if plan is not None else (QUICK_PLAN if quick else FULL_PLAN)
    figs: list[dict[str, Any]] = []
    if verbose:
        print(f"forward: batch 1, fp32, CPU, {torch.get_num_threads()} torch threads", flush=True)
    t_start = time.perf_counter()
    for model_name, size, warmup, repeats in plan:
        if models and model_name not in models and SHORT_NAMES.get(model_name) not in models:
            continue
        is_espnet = model_name == "espnetv2"
        tag = f"forward_{SHORT_NAMES.get(model_name, model_name)}_{size[0]}x{size[1]}"
        if quick and time.perf_counter() - t_start > QUICK_BUDGET_S:
            figs.append(skipped(f"{tag}_ours", f"--quick time budget of {QUICK_BUDGET_S:.0f} s used up; "
                                               "run without --quick"))
            continue
        # torch.compile takes minutes on a small CPU: the quick suite reports it as skipped.
        compile_here = try_compile and is_espnet and tuple(size) == (1024, 512)
        figs += bench_model(model_name, size, warmup, repeats, target=ESPNET_TARGET if is_espnet else None,
                            try_compile=compile_here and not quick, verbose=verbose)
        if compile_here and quick:
            figs.append(skipped(f"{tag}_torch_compile", "--quick: inductor compile takes minutes on this CPU; "
                                                        "run bench/bench_forward.py --models espnetv2"))
    return figs


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="", help="comma-separated subset (espnetv2, resnet101, wrn38)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile figure")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m] or None
    for fig in run(args.quick, models, try_compile=not args.no_compile):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
