"""Evaluation metrics: pixel-pooled anomaly metrics (reference ``get_measures``) and the Cityscapes confusion matrix.

Anomaly metrics
---------------
All labelled pixels of all images are pooled (no per-image averaging). Positives are the pixels whose
label equals ``positive_label`` (the anomaly), negatives those equal to ``negative_label``; every other
label value (``ignore_label``, other classes) is ignored. Higher score = more anomalous.

* ``auroc`` equals ``sklearn.metrics.roc_auc_score`` (ties count ½), computed as the Mann-Whitney
  statistic ``Σ_pos (#neg < s + ½ #neg = s) / (P·N)`` with exact int64 counting;
* ``ap`` equals ``sklearn.metrics.average_precision_score`` (step-wise, not trapezoidal):
  ``Σ_v (#pos = v / P) · precision(score ≥ v)`` over the distinct positive scores ``v``;
* ``fpr95`` equals the Hendrycks ``fpr_and_fdr_at_recall(recall_level=0.95)`` procedure used by the
  reference code: the ROC curve at the distinct score thresholds (descending), walked back from the
  first full-recall point, picking the first threshold with the smallest ``|recall - 0.95|``; FPR = FP at
  that threshold / #negatives. With ties in ``|recall - 0.95|`` this is the largest such recall, and for
  a given recall the lowest threshold (the most false positives), as in the reference.

Algorithm: positives and negatives are sorted separately (``ndarray.sort`` on float32); every quantity
is then obtained at the distinct positive scores only, with ``np.searchsorted`` into the sorted
negatives. Cost ``O(P log P + N log N)``, no argsort and no float64 copy of the data.

Memory: :class:`AnomalyMetricAccumulator` keeps only the scores of labelled pixels, split into a
positive and a negative buffer of float32 (4 bytes per labelled pixel; ignored pixels cost nothing, no
label array is stored). The buffers are lists of fixed-size chunks (1 Mi values = 4 MiB each), so
growing never copies what is already stored. :meth:`~AnomalyMetricAccumulator.compute` concatenates
and sorts each buffer in place, which transiently needs another 4 bytes per labelled pixel, and keeps
the sorted array as the new single chunk so later ``compute`` calls are cheap and ``update`` can still
continue. Scores are rounded to float32 when stored (``dtype=np.float64`` keeps them exact at 8 bytes
per pixel); results equal scikit-learn's on the stored (float32) scores.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from pebal_perception.core.constants import NUM_INLIER_CLASSES, VOID

DEFAULT_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------
# input conversion


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy view/copy of a numpy array, torch tensor (any device, any float dtype) or array-like."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):       # torch.Tensor without importing torch
        t = x.detach().cpu()
        if t.dtype.is_floating_point and t.dtype not in _TORCH_NUMPY_FLOATS:
            t = t.float()                                 # bfloat16 has no numpy equivalent
        return t.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got an object array")
    return arr


def _torch_float_names() -> tuple:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        return ()
    return (torch.float16, torch.float32, torch.float64)


_TORCH_NUMPY_FLOATS = _torch_float_names()


def _flatten_pair(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores, "scores")
    lab = _to_numpy(labels, "labels")
    if s.shape != lab.shape:
        if s.size != lab.size or np.squeeze(s).shape != np.squeeze(lab).shape:
            raise ValueError(f"scores and labels must have the same shape, got {s.shape} and {lab.shape}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_) or np.iscomplexobj(s):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    return s.reshape(-1), lab.reshape(-1)


# --------------------------------------------------------------------------------------------------
# chunked storage


class _ChunkedBuffer:
    """Append-only 1-D buffer stored as a list of fixed-size chunks (no copy of old data on growth)."""

    def __init__(self, dtype: np.dtype, chunk_size: int = DEFAULT_CHUNK):
        self.dtype = np.dtype(dtype)
        self.chunk_size = int(chunk_size)
        self.clear()

    def clear(self) -> None:
        self._chunks: list[np.ndarray] = []   # full (or consolidated) chunks
        self._tail: np.ndarray | None = None  # partially filled chunk
        self._fill = 0
        self._size = 0
        self._sorted: np.ndarray | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        tail = 0 if self._tail is None else self._tail.nbytes
        return sum(c.nbytes for c in self._chunks) + tail

    def append(self, values: np.ndarray) -> None:
        v = values.reshape(-1)
        if v.size == 0:
            return
        self._sorted = None
        self._size += v.size
        pos = 0
        while pos < v.size:
            if self._tail is None or self._fill == self._tail.size:
                if self._tail is not None:
                    self._chunks.append(self._tail)
                self._tail = np.empty(self.chunk_size, dtype=self.dtype)
                self._fill = 0
            n = min(v.size - pos, self._tail.size - self._fill)
            self._tail[self._fill:self._fill + n] = v[pos:pos + n]
            self._fill += n
            pos += n

    def sorted(self) -> np.ndarray:
        """All values sorted ascending; consolidates the storage into that one sorted array."""
        if self._sorted is not None:
            return self._sorted
        parts = list(self._chunks)
        if self._tail is not None and self._fill:
            parts.append(self._tail[:self._fill])
        if not parts:
            arr = np.empty(0, dtype=self.dtype)
        elif len(parts) == 1:
            arr = parts[0]            # sorted in place (possibly a view of the partly filled chunk)
        else:
            arr = np.concatenate(parts)
        del parts
        arr.sort()
        self._chunks = [arr]
        self._tail = None
        self._fill = 0
        self._sorted = arr
        return arr


# --------------------------------------------------------------------------------------------------
# exact metrics from sorted positive / negative scores


class _SortedStats:
    """Per-distinct-positive-score statistics shared by AUROC, AP and FPR@TPR."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray):
        if pos.size == 0 or neg.size == 0:
            raise ValueError(f"anomaly metrics need at least one positive and one negative pixel; got "
                             f"{pos.size} positive and {neg.size} negative labelled pixels")
        self.num_pos = int(pos.size)
        self.num_neg = int(neg.size)
        new_value = np.empty(pos.size, dtype=bool)
        new_value[0] = True
        np.not_equal(pos[1:], pos[:-1], out=new_value[1:])
        self.starts = np.flatnonzero(new_value)                       # first index of each distinct value
        del new_value
        self.values = pos[self.starts]                                # distinct positive scores, ascending
        self.counts = np.diff(np.append(self.starts, pos.size))        # multiplicity of each
        self.neg_below = np.searchsorted(neg, self.values, side="left")     # #neg <  v
        self.neg_upto = np.searchsorted(neg, self.values, side="right")     # #neg <= v
        self.neg_max = neg[-1]

    def auroc(self) -> float:
        # Σ_pos (#neg < s) + ½ (#neg == s)  =  ½ Σ_v count_v (neg_below_v + neg_upto_v)
        pairs = 2.0 * self.num_pos * self.num_neg
        below_plus_upto = self.neg_below + self.neg_upto
        if pairs < 2.0 ** 62:      # exact integer count
            twice = int(np.dot(self.counts.astype(np.int64), below_plus_upto.astype(np.int64)))
        else:  # astronomically large data: float64 accumulation (relative error ~1e-16 per term)
            twice = float(np.dot(self.counts.astype(np.float64), below_plus_upto.astype(np.float64)))
        return float(twice / pairs)

    def average_precision(self) -> float:
        tp = (self.num_pos - self.starts).astype(np.float64)              # #pos >= v
        fp = (self.num_neg - self.neg_below).astype(np.float64)           # #neg >= v
        precision = tp / (tp + fp)
        return float(np.dot(self.counts.astype(np.float64), precision) / self.num_pos)

    def fpr_at_tpr(self, tpr: float = 0.95) -> float:
        # Candidate recalls, from full recall down (the Hendrycks walk order): j = 0, 1, ... with
        # tps_j = #pos >= values[j]; recall computed exactly as the reference does (float64 tps / P).
        tps = (self.num_pos - self.starts).astype(np.float64)
        dist = np.abs(tps / float(self.num_pos) - tpr)
        j = int(np.argmin(dist))          # first minimum = the largest recall among ties
        best = dist[j]
        if j == 0:
            fps = self.num_neg - int(self.neg_below[0])          # threshold = min positive score
        else:
            # lowest threshold with this recall: the smallest labelled score above values[j-1]
            fps = self.num_neg - int(self.neg_upto[j - 1])
        # Thresholds above every positive (recall 0) exist when some negative exceeds them all; the
        # walk reaches them last, so they win only with a strictly smaller distance.
        if self.neg_max > self.values[-1] and abs(0.0 - tpr) < best:
            fps = self.num_neg - int(self.neg_upto[-1])
        return float(fps / self.num_neg)


# --------------------------------------------------------------------------------------------------
# public API


class AnomalyMetricAccumulator:
    """Pixel-pooled AUROC / AP / FPR@95%TPR over many images, fed one image (or batch) at a time.

    ``update(scores, labels)`` takes numpy arrays or torch tensors of any (equal) shape. Pixels whose
    label is neither ``positive_label`` nor ``negative_label`` are ignored (``ignore_label`` is only
    validated; every other value is ignored too). NaN scores of labelled pixels raise ``ValueError``
    (before anything is stored); ±inf are ordered normally.

    ``compute()`` returns ``dict(auroc, ap, fpr95, num_pos, num_neg)`` and can be called repeatedly,
    also between updates. See the module docstring for exactness and memory (4 bytes per labelled
    pixel with the default float32 storage).
    """

    def __init__(self, ignore_label: int | None = VOID, positive_label: int = 1, negative_label: int = 0,
                 dtype: Any = np.float32, chunk_size: int = DEFAULT_CHUNK):
        if positive_label == negative_label:
            raise ValueError("positive_label and negative_label must differ")
        if ignore_label is not None and ignore_label in (positive_label, negative_label):
            raise ValueError(f"ignore_label {ignore_label} collides with the positive/negative label")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.ignore_label = ignore_label
        self.positive_label = positive_label
        self.negative_label = negative_label
        self.dtype = dtype
        self._pos = _ChunkedBuffer(dtype, chunk_size)
        self._neg = _ChunkedBuffer(dtype, chunk_size)

    # -- accumulation ------------------------------------------------------------------------------

    def update(self, scores: Any, labels: Any) -> None:
        s, lab = _flatten_pair(scores, labels)
        pos = s[lab == self.positive_label]
        neg = s[lab == self.negative_label]
        if np.issubdtype(s.dtype, np.inexact) and (np.isnan(pos).any() or np.isnan(neg).any()):
            raise ValueError("anomaly scores contain NaN at labelled pixels; fix the score map "
                             "(NaN cannot be ranked)")
        self._pos.append(pos.astype(self.dtype, copy=False))
        self._neg.append(neg.astype(self.dtype, copy=False))

    def reset(self) -> None:
        self._pos.clear()
        self._neg.clear()

    @property
    def num_pos(self) -> int:
        return len(self._pos)

    @property
    def num_neg(self) -> int:
        return len(self._neg)

    @property
    def nbytes(self) -> int:
        """Bytes currently held by the score buffers (including the unfilled part of the last chunk)."""
        return self._pos.nbytes + self._neg.nbytes

    # -- results -----------------------------------------------------------------------------------

    def _stats(self) -> _SortedStats:
        return _SortedStats(self._pos.sorted(), self._neg.sorted())

    def compute(self) -> dict:
        st = self._stats()
        return {
            "auroc": st.auroc(),
            "ap": st.average_precision(),
            "fpr95": st.fpr_at_tpr(0.95),
            "num_pos": st.num_pos,
            "num_neg": st.num_neg,
        }

    def fpr_at_tpr(self, tpr: float = 0.95) -> float:
        return self._stats().fpr_at_tpr(tpr)


def _one_shot(scores: Any, labels: Any, positive_label: int, negative_label: int) -> _SortedStats:
    acc = AnomalyMetricAccumulator(ignore_label=None, positive_label=positive_label,
                                   negative_label=negative_label)
    acc.update(scores, labels)
    return acc._stats()  # noqa: SLF001 - same module's accumulator


def anomaly_metrics(scores: Any, labels: Any, positive_label: int = 1, negative_label: int = 0) -> dict:
    """All three metrics at once (one sort); same dict as :meth:`AnomalyMetricAccumulator.compute`."""
    acc = AnomalyMetricAccumulator(ignore_label=None, positive_label=positive_label,
                                   negative_label=negative_label)
    acc.update(scores, labels)
    return acc.compute()


def auroc(scores: Any, labels: Any, positive_label: int = 1, negative_label: int = 0) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score`` (other labels ignored)."""
    return _one_shot(scores, labels, positive_label, negative_label).auroc()


def average_precision(scores: Any, labels: Any, positive_label: int = 1, negative_label: int = 0) -> float:
    """Step-wise average precision, equal to ``sklearn.metrics.average_precision_score``."""
    return _one_shot(scores, labels, positive_label, negative_label).average_precision()


def fpr_at_tpr(scores: Any, labels: Any, tpr: float = 0.95, positive_label: int = 1,
               negative_label: int = 0) -> float:
    """False-positive rate at ``tpr`` recall, the Hendrycks ``fpr_and_fdr_at_recall`` procedure."""
    return _one_shot(scores, labels, positive_label, negative_label).fpr_at_tpr(tpr)


# --------------------------------------------------------------------------------------------------
# semantic segmentation


class ConfusionMatrix:
    """Confusion matrix for semantic segmentation (rows = ground truth, columns = prediction).

    Pixels whose label is ``ignore_label`` or outside ``0..num_classes-1`` are ignored; a prediction
    outside that range at a labelled pixel raises ``ValueError``. ``IoU_c = TP/(TP+FP+FN)`` (NaN for a
    class absent from both labels and predictions), ``mIoU = nanmean(IoU)``, pixel accuracy =
    correct / labelled pixels.
    """

    def __init__(self, num_classes: int = NUM_INLIER_CLASSES, ignore_label: int | None = VOID):
        if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError("num_classes must be a positive integer")
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: Any, labels: Any) -> None:
        p, lab = _flatten_pair(pred, labels)
        lab = lab.astype(np.int64, copy=False)
        valid = (lab >= 0) & (lab < self.num_classes)
        if self.ignore_label is not None:
            valid &= lab != self.ignore_label
        p = p[valid]
        if p.size and not np.issubdtype(p.dtype, np.integer):
            if not np.all(np.mod(p, 1) == 0):
                raise ValueError("predictions must be integer class indices")
        p = p.astype(np.int64, copy=False)
        if p.size and (p.min() < 0 or p.max() >= self.num_classes):
            raise ValueError(f"predictions must be in 0..{self.num_classes - 1} at labelled pixels")
        idx = lab[valid] * self.num_classes + p
        self.matrix += np.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - np.diag(self.matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def compute(self) -> dict:
        iou = self.iou()
        total = int(self.matrix.sum())
        return {
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "iou": iou,
            "pixel_accuracy": float(np.trace(self.matrix) / total) if total else float("nan"),
            "num_pixels": total,
        }
