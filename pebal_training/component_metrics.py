"""SegmentMeIfYouCan component-level metrics: sIoU, PPV and mean F1 (Chan et al., NeurIPS 2021).

Written from the definitions in the SMIYC paper (datasets and benchmarks track); this module's
interpretation, where the paper leaves room, is stated here.

Inputs per image: a binary anomaly prediction ``pred`` (e.g. ``score > threshold``) and a label map in
the unified encoding (0 inlier, 1 anomaly, 255 void).

* **Components.** Ground-truth components ``K`` are the 8-connected components of ``label == 1``.
  Predicted components ``K̂`` are the 8-connected components of ``pred & (label != 255)``: predictions
  on void pixels are discarded *before* the component analysis (void is outside the evaluated region,
  so it can neither create nor enlarge a false positive).
* **sIoU** of a ground-truth component ``k``::

      sIoU(k) = |k ∩ K̂(k)| / |(k ∪ K̂(k)) \\ A(k)|

  with ``K̂(k)`` the union of the predicted components that intersect ``k`` and ``A(k)`` the pixels of
  the *other* ground-truth components (the adjusted union: a prediction that correctly covers a
  neighbouring anomaly does not penalise ``k``). A ground-truth component no prediction touches has
  ``sIoU = 0``.
* **PPV** of a predicted component ``k̂``: ``|k̂ ∩ K(k̂)| / |k̂|``, with ``K(k̂)`` the union of the
  ground-truth components intersecting ``k̂`` (equivalently, the anomaly fraction of ``k̂``).
* **F1 at τ**: ``TP(τ) = #{k : sIoU(k) > τ}``, ``FN(τ) = #{k : sIoU(k) <= τ}``,
  ``FP(τ) = #{k̂ : PPV(k̂) <= τ}``, ``F1(τ) = 2TP / (2TP + FN + FP)``. Counts are summed over all images
  of the dataset before F1 is formed; ``mean_f1`` averages F1 over ``τ ∈ {0.25, 0.30, ..., 0.75}``
  (11 values).
* Reported ``siou`` is the mean sIoU over all ground-truth components of the dataset, ``ppv`` the mean
  PPV over all predicted components (NaN where there are none). A dataset with neither ground-truth
  nor predicted components has F1 NaN.

No minimum component size is applied (the benchmark's size filtering is not part of the paper's
definitions and is left out deliberately).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pebal_perception.core.constants import VOID

#: τ values of the F1 average: 0.25, 0.30, ..., 0.75.
F1_THRESHOLDS = tuple(round(0.25 + 0.05 * i, 2) for i in range(11))
CONNECTIVITY = 8


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of components, int32 label map with 0 background and 1..n components)."""
    n, cc = cv2.connectedComponents(mask.astype(np.uint8), connectivity=CONNECTIVITY, ltype=cv2.CV_32S)
    return n - 1, cc


def image_component_stats(pred: np.ndarray, label: np.ndarray, ignore_label: int = VOID,
                          anomaly_label: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(sIoU of every ground-truth component, PPV of every predicted component)``."""
    pred = np.asarray(pred).astype(bool)
    label = np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 2:
        raise ValueError(f"prediction and label must be equal-shape 2-D maps, got {pred.shape} and {label.shape}")
    gt_mask = label == anomaly_label
    pred_mask = pred & (label != ignore_label)
    n_gt, gt_cc = _components(gt_mask)
    n_pred, pred_cc = _components(pred_mask)
    if n_gt == 0 and n_pred == 0:
        return np.zeros(0), np.zeros(0)
    # contingency[g, p]: pixels in GT component g (0 = none) and predicted component p (0 = none)
    idx = gt_cc.astype(np.int64).ravel() * (n_pred + 1) + pred_cc.ravel()
    table = np.bincount(idx, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
    pred_size = table.sum(0)[1:]              # |k̂|  (void already removed)
    gt_size = table.sum(1)[1:]                # |k|
    overlap = table[1:, 1:]                   # |k ∩ k̂|
    anomalous_in_pred = overlap.sum(0)        # |k̂ ∩ all GT components| = |k̂ ∩ K(k̂)|

    siou = np.zeros(n_gt)
    for g in range(n_gt):
        touching = overlap[g] > 0
        if not touching.any():
            continue
        inter = overlap[g, touching].sum()
        pred_union = pred_size[touching].sum()                       # |K̂(k)|
        other_gt = anomalous_in_pred[touching].sum() - inter         # |K̂(k) ∩ A(k)|
        union = gt_size[g] + pred_union - inter - other_gt
        siou[g] = inter / union
    ppv = anomalous_in_pred / np.maximum(pred_size, 1) if n_pred else np.zeros(0)
    return siou.astype(np.float64), ppv.astype(np.float64)


class ComponentMetricAccumulator:
    """Accumulates component statistics over a dataset; ``compute()`` gives sIoU, PPV and mean F1."""

    def __init__(self, thresholds: tuple[float, ...] = F1_THRESHOLDS, ignore_label: int = VOID,
                 anomaly_label: int = 1):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.ignore_label = ignore_label
        self.anomaly_label = anomaly_label
        self._siou: list[np.ndarray] = []
        self._ppv: list[np.ndarray] = []

    def update(self, pred: Any, label: Any) -> dict:
        """Adds one image; returns its own ``dict(num_gt, num_pred, siou, ppv)`` (means, NaN if none)."""
        siou, ppv = image_component_stats(pred, label, self.ignore_label, self.anomaly_label)
        self._siou.append(siou)
        self._ppv.append(ppv)
        return {"num_gt_components": int(siou.size), "num_pred_components": int(ppv.size),
                "siou": float(siou.mean()) if siou.size else float("nan"),
                "ppv": float(ppv.mean()) if ppv.size else float("nan")}

    def compute(self) -> dict:
        siou = np.concatenate(self._siou) if self._siou else np.zeros(0)
        ppv = np.concatenate(self._ppv) if self._ppv else np.zeros(0)
        per_t = []
        for t in self.thresholds:
            tp = int((siou > t).sum())
            fn = int(siou.size - tp)
            fp = int((ppv <= t).sum())
            denom = 2 * tp + fn + fp
            per_t.append({"tau": t, "tp": tp, "fn": fn, "fp": fp,
                          "f1": (2 * tp / denom) if denom else float("nan")})
        f1s = np.array([r["f1"] for r in per_t], dtype=np.float64)
        return {
            "siou": float(siou.mean()) if siou.size else float("nan"),
            "ppv": float(ppv.mean()) if ppv.size else float("nan"),
            "mean_f1": float(f1s.mean()) if f1s.size and np.isfinite(f1s).all() else float("nan"),
            "num_gt_components": int(siou.size),
            "num_pred_components": int(ppv.size),
            "f1_per_threshold": per_t,
        }


def component_metrics(preds: Any, labels: Any, **kwargs: Any) -> dict:
    """One-shot over a list of (pred, label) maps (or a single pair of 2-D maps)."""
    acc = ComponentMetricAccumulator(**kwargs)
    if isinstance(preds, np.ndarray) and preds.ndim == 2:
        preds, labels = [preds], [labels]
    for p, lab in zip(preds, labels):
        acc.update(p, lab)
    return acc.compute()
