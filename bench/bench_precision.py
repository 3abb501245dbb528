#!/usr/bin/env python3
"""Half-precision tolerances: what fp16 and bf16 change in the maps the node publishes, on real frames.

    python bench/bench_precision.py [--precisions fp16,bf16] [--frames N] [--checkpoint PATH]

The real ESPNetv2 Cityscapes weights (``../shared/assets/espnetv2_cityscapes``) on the ten real frames
there (two Cityscapes, eight highway), 1024x512, against the same engine in fp32 (the reference):

* on CUDA: ``InferenceEngine(precision=p)``, the engine's autocast (energy, argmax, upsampling and
  smoothing in float32), as the node runs it;
* on the CPU (autocast has no half convolutions there): every layer of the network in ``p`` (weights
  and input cast; BatchNorm folded first, as an inference runtime does), the logits back in float32
  for the energy, argmax, upsampling and smoothing. That is stricter than autocast and close to what
  a TensorRT fp16 engine computes; it is an estimate, not TensorRT's own numbers. fp16 takes about
  10 s a frame on a 2-core CPU, so ``--quick`` on a CPU reports the figures as skipped.

Figures ``precision_<p>``: value = class agreement with fp32 in % (informative, no target); extras:
the anomaly score's absolute difference (max, p99, mean, over all pixels of all frames) and the share
of pixels whose obstacle decision flips at the checkpoint's threshold.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, skipped

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
CHECKPOINT = ASSETS / "espnetv2_cityscapes" / "espnetv2_s_2.0_city_1024x512.pth"
PRECISIONS = ("fp16", "bf16")
NETWORK_HW = (512, 1024)


def _half_maps(engine, half_model, rgb, dtype):
    """The CPU emulation of the module docstring: (semantic, score) of one frame, network in ``dtype``."""
    import torch

    from pebal_perception.core import scoring
    from pebal_perception.core.preprocess import normalize, to_uint8_batch

    with torch.inference_mode():
        x = normalize(to_uint8_batch(rgb[None], torch.device("cpu")), engine.meta.mean, engine.meta.std,
                      tuple(engine.input_size)).contiguous(memory_format=torch.channels_last)
        logits = half_model(x.to(dtype)).float()
        energy, semantic = scoring.energy_and_prediction(logits, prediction_dtype=torch.uint8)
        semantic, score = engine._to_image(semantic, energy, rgb.shape[:2], None)  # noqa: SLF001 - the engine's own
    return semantic[0].numpy(), score[0].numpy()


def run(quick: bool = False, precisions: tuple[str, ...] = PRECISIONS, frames: int | None = None,
        checkpoint: Path = CHECKPOINT, assets: Path = ASSETS, verbose: bool = True) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    names = [f"precision_{p}" for p in precisions]
    cuda = torch.cuda.is_available()
    if quick and not cuda:
        return [skipped(n, "--quick on a CPU: half precision runs ~10 s a frame there (bench_precision.py)")
                for n in names]
    if not checkpoint.is_file():
        return [skipped(n, f"{checkpoint}: not found (the real ESPNetv2 weights)") for n in names]
    from pebal_perception.core.checkpoint import load_checkpoint
    from pebal_perception.core.engine import PRECISIONS as DTYPES
    from pebal_perception.core.engine import InferenceEngine, infer_maps
    from pebal_training.data.road_pastes import load_real_frames

    real = load_real_frames(assets)[:frames]
    if not real:
        return [skipped(n, f"no real frames under {assets}") for n in names]
    model, meta = load_checkpoint(checkpoint, "espnetv2")
    device = "cuda" if cuda else "cpu"
    reference = InferenceEngine(model, meta, device=device, input_size=NETWORK_HW, backend="torch")
    threshold = reference.threshold
    refs = [infer_maps(reference, fr.rgb)[:2] for fr in real]
    figs = []
    for precision in precisions:
        if cuda:
            engine = InferenceEngine(model, meta, device="cuda", input_size=NETWORK_HW, precision=precision,
                                     backend="torch")
            maps = [infer_maps(engine, fr.rgb)[:2] for fr in real]
        else:
            half_model = copy.deepcopy(reference.model).to(DTYPES[precision])
            maps = [_half_maps(reference, half_model, fr.rgb, DTYPES[precision]) for fr in real]
        agree = np.concatenate([(s == r[0]).ravel() for (s, _), r in zip(maps, refs)])
        diff = np.concatenate([np.abs(e - r[1]).ravel() for (_, e), r in zip(maps, refs)])
        flips = np.concatenate([((e > threshold) != (r[1] > threshold)).ravel() for (_, e), r in zip(maps, refs)])
        stats = {"energy_abs_diff_max": float(diff.max()), "energy_abs_diff_p99": float(np.quantile(diff, 0.99)),
                 "energy_abs_diff_mean": float(diff.mean()), "obstacle_flips": float(flips.mean()),
                 "threshold": float(threshold), "frames": len(real), "device": device,
                 "method": "autocast" if cuda else "network cast to the precision (CPU emulation)"}
        if verbose:
            print(f"  precision {precision} ({stats['method']}, {len(real)} real frames): class agreement "
                  f"{agree.mean() * 100:.3f} %, |energy diff| max {stats['energy_abs_diff_max']:.3g} p99 "
                  f"{stats['energy_abs_diff_p99']:.3g} mean {stats['energy_abs_diff_mean']:.3g}, obstacle flips "
                  f"{stats['obstacle_flips'] * 100:.4f} % at threshold {threshold:.3f}", flush=True)
        figs.append(figure(f"precision_{precision}", float(agree.mean()) * 100.0, "%", higher_is_better=True,
                           note="class agreement with fp32, informative", **stats))
    return figs


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--frames", type=int, default=None, help="use the first N real frames (default all)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--assets", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        print(f"bench_precision: error: --precisions: {', '.join(bad)} not in {', '.join(PRECISIONS)}", file=sys.stderr)
        return 2
    for fig in run(args.quick, precisions, args.frames, args.checkpoint, args.assets):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
