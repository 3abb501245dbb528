#!/usr/bin/env python3
"""Benchmark: pixel-pooled AUROC + AP + FPR@95%TPR, ours vs scikit-learn, on the same data in one run.

    python bench/bench_metrics.py [--pixels 20000000] [--quick] [--seed 0]

Data: ``--pixels`` random pixels (default 20 M; ``--quick`` = 2 M) split into images of 1 M pixels,
scores float32 rounded to 3 decimals (many ties within and across classes), about 5 % anomaly pixels
(label 1), about 10 % ignore (255), the rest inliers (0).

* ours: ``AnomalyMetricAccumulator.update`` image by image + ``compute()``;
* baseline: pool the images as the reference evaluation does (concatenate, drop ignored pixels), then
  ``roc_auc_score`` + ``average_precision_score`` + FPR@95 from ``roc_curve(drop_intermediate=False)``
  following the Hendrycks procedure.

The three values must agree within 1e-6. ``run(quick)`` returns the figures for a suite runner.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pebal_perception.core.constants import VOID  # noqa: E402
from pebal_training.metrics import AnomalyMetricAccumulator  # noqa: E402

IMAGE_PIXELS = 1_000_000
TARGET_RATIO = 5.0
TOLERANCE = 1e-6


def make_images(pixels: int, seed: int = 0, image_pixels: int = IMAGE_PIXELS):
    rng = np.random.default_rng(seed)
    images = []
    remaining = pixels
    while remaining > 0:
        n = min(image_pixels, remaining)
        r = rng.random(n, dtype=np.float32)
        labels = np.zeros(n, dtype=np.uint8)
        labels[r < 0.05] = 1
        labels[r > 0.90] = VOID
        scores = rng.standard_normal(n, dtype=np.float32) + 1.5 * (labels == 1)
        scores = np.round(scores, 3).astype(np.float32)
        side = int(np.sqrt(n))
        shape = (side, n // side) if side * (n // side) == n else (n,)
        images.append((scores.reshape(shape), labels.reshape(shape)))
        remaining -= n
    return images


def ours(images) -> dict:
    acc = AnomalyMetricAccumulator(ignore_label=VOID, positive_label=1, negative_label=0)
    for scores, labels in images:
        acc.update(scores, labels)
    result = acc.compute()
    result["nbytes"] = acc.nbytes
    return result


def sklearn_fpr_at_tpr(y: np.ndarray, s: np.ndarray, level: float = 0.95) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    last = int(np.searchsorted(tpr, 1.0, side="left"))          # first point with full recall
    walk = tpr[last::-1]                                         # back towards higher thresholds
    k = int(np.argmin(np.abs(walk - level)))
    return float(fpr[last - k])


def baseline(images) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.concatenate([s.reshape(-1) for s, _ in images])
    labels = np.concatenate([lab.reshape(-1) for _, lab in images])
    keep = (labels == 0) | (labels == 1)
    s, y = scores[keep], (labels[keep] == 1).astype(np.int64)
    del scores, labels, keep
    return {
        "auroc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "fpr95": sklearn_fpr_at_tpr(y, s),
    }


def run(quick: bool = False, pixels: int | None = None, seed: int = 0, verbose: bool = True) -> list[dict]:
    pixels = int(pixels if pixels is not None else (2_000_000 if quick else 20_000_000))
    tag = f"{pixels / 1e6:g}M"
    images = make_images(pixels, seed)

    t0 = time.perf_counter()
    got = ours(images)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    want = baseline(images)
    t_base = time.perf_counter() - t0

    diffs = {k: abs(got[k] - want[k]) for k in ("auroc", "ap", "fpr95")}
    agree = all(d <= TOLERANCE for d in diffs.values())
    ratio = t_base / t_ours if t_ours > 0 else float("inf")
    if verbose:
        print(f"data: {pixels} pixels in {len(images)} images, {got['num_pos']} positive, "
              f"{got['num_neg']} negative; accumulator memory {got['nbytes'] / 1e6:.1f} MB")
        for k in ("auroc", "ap", "fpr95"):
            print(f"  {k:6s} ours {got[k]:.9f}  sklearn {want[k]:.9f}  |diff| {diffs[k]:.2e}")
        print(f"values agree within {TOLERANCE:g}: {agree}")
        print(f"metrics_auroc_ap_fpr95_{tag}: {t_ours:.2f} s (ratio vs baseline: {ratio:.2f}x, "
              f"target: >= {TARGET_RATIO:g}x)")
        print(f"metrics_auroc_ap_fpr95_{tag}_sklearn_baseline: {t_base:.2f} s")
    if not agree:
        raise AssertionError(f"metric values disagree with scikit-learn: {diffs}")
    return [
        {"name": f"metrics_auroc_ap_fpr95_{tag}", "value": t_ours, "unit": "s", "baseline": t_base,
         "ratio": ratio, "target": TARGET_RATIO, "target_text": f">= {TARGET_RATIO:g}x",
         "meets_target": ratio >= TARGET_RATIO, "max_abs_diff": max(diffs.values())},
        {"name": f"metrics_auroc_ap_fpr95_{tag}_sklearn_baseline", "value": t_base, "unit": "s",
         "baseline": None, "ratio": None, "target": None},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=None, help="number of pixels (default 20 M)")
    parser.add_argument("--quick", action="store_true", help="2 M pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(quick=args.quick, pixels=args.pixels, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
