"""Tests for pebal_training.metrics: equality with scikit-learn and an independent FPR@95 reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from pebal_training.metrics import (
    AnomalyMetricAccumulator,
    ConfusionMatrix,
    anomaly_metrics,
    auroc,
    average_precision,
    fpr_at_tpr,
)

TOL = 1e-6


def ref_fpr_at_recall(scores, is_pos, level=0.95) -> float:
    """Hendrycks' fpr_and_fdr_at_recall procedure written out with plain Python loops.

    Walk the scores from high to low; at the end of every run of equal scores record the cumulative
    (TP, FP) - one ROC point per distinct threshold. From the first point reaching full recall, walk
    back towards higher thresholds and keep the first point with the smallest |recall - level|.
    """
    pairs = sorted(zip(np.asarray(scores).tolist(), np.asarray(is_pos).tolist()), key=lambda p: -p[0])
    n_pos = sum(1 for _, p in pairs if p)
    n_neg = len(pairs) - n_pos
    curve = []
    tp = fp = 0
    for i, (s, p) in enumerate(pairs):
        if p:
            tp += 1
        else:
            fp += 1
        if i == len(pairs) - 1 or pairs[i + 1][0] != s:
            curve.append((tp, fp))
    first_full = next(i for i, (t, _) in enumerate(curve) if t == n_pos)
    best_i, best_d = None, None
    for i in range(first_full, -1, -1):
        d = abs(curve[i][0] / n_pos - level)
        if best_d is None or d < best_d:
            best_i, best_d = i, d
    return curve[best_i][1] / n_neg


def make_data(seed, n=20000, decimals=2, pos_frac=0.07, ignore_frac=0.1):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(np.uint8)
    scores = rng.normal(size=n) + 1.5 * labels
    scores = np.round(scores, decimals).astype(np.float32)           # many ties, across classes too
    r = rng.random(n)
    labels[r < ignore_frac] = 255
    labels[(r >= ignore_frac) & (r < ignore_frac + 0.02)] = 7         # some other (ignored) class
    return scores, labels


def sklearn_values(scores, labels, pos=1, neg=0):
    m = (labels == pos) | (labels == neg)
    y = (labels[m] == pos).astype(int)
    s = scores[m]
    return roc_auc_score(y, s), average_precision_score(y, s), ref_fpr_at_recall(s, y.astype(bool))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_sklearn_with_ties_image_by_image(seed):
    scores, labels = make_data(seed, decimals=1 + seed % 3)
    acc = AnomalyMetricAccumulator(chunk_size=1000)        # small chunks: exercise chunk boundaries
    for s, lab in zip(np.split(scores, 8), np.split(labels, 8)):     # 2-D images of 25 x 100
        acc.update(s.reshape(25, 100), lab.reshape(25, 100))
    got = acc.compute()
    want_auc, want_ap, want_fpr = sklearn_values(scores, labels)
    assert got["auroc"] == pytest.approx(want_auc, abs=TOL)
    assert got["ap"] == pytest.approx(want_ap, abs=TOL)
    assert got["fpr95"] == pytest.approx(want_fpr, abs=TOL)
    assert got["num_pos"] == int((labels == 1).sum())
    assert got["num_neg"] == int((labels == 0).sum())


def test_plain_functions_and_other_label_ids():
    scores, labels = make_data(5)
    laf = labels.copy()                           # LostAndFound: anomaly 2, road 1
    laf[labels == 1] = 2
    laf[labels == 0] = 1
    want_auc, want_ap, want_fpr = sklearn_values(scores, labels)
    kw = dict(positive_label=2, negative_label=1)
    assert auroc(scores, laf, **kw) == pytest.approx(want_auc, abs=TOL)
    assert average_precision(scores, laf, **kw) == pytest.approx(want_ap, abs=TOL)
    assert fpr_at_tpr(scores, laf, **kw) == pytest.approx(want_fpr, abs=TOL)
    assert anomaly_metrics(scores, laf, **kw)["fpr95"] == pytest.approx(want_fpr, abs=TOL)


@pytest.mark.parametrize("level", [0.05, 0.3, 0.5, 0.8, 0.99, 1.0])
def test_fpr_at_other_recall_levels(level):
    scores, labels = make_data(6, n=3000, decimals=1)
    m = labels <= 1
    assert fpr_at_tpr(scores, labels, tpr=level) == pytest.approx(
        ref_fpr_at_recall(scores[m], labels[m] == 1, level), abs=1e-12)


def test_recall_zero_threshold_candidate():
    # Few positives and a negative above every positive: at a tiny recall level the threshold above all
    # positives (recall 0, FP = negatives above the top positive) is the closest point.
    scores = np.array([10, 9, 5, 4, 3, 2, 1, 0], dtype=np.float32)
    labels = np.array([0, 0, 1, 0, 1, 0, 0, 1])
    for level in (0.01, 0.2, 0.5, 0.95):
        assert fpr_at_tpr(scores, labels, tpr=level) == pytest.approx(
            ref_fpr_at_recall(scores, labels == 1, level), abs=1e-12)
    assert fpr_at_tpr(scores, labels, tpr=0.01) == pytest.approx(2 / 5)


def test_degenerate_rankings():
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    same = np.full(7, 0.25, dtype=np.float32)           # one big tie across both classes
    r = anomaly_metrics(same, y)
    assert r["auroc"] == pytest.approx(0.5) and r["ap"] == pytest.approx(3 / 7) and r["fpr95"] == 1.0
    perfect = y.astype(np.float32) * 2 - 1
    r = anomaly_metrics(perfect, y)
    assert (r["auroc"], r["ap"], r["fpr95"]) == (1.0, 1.0, 0.0)
    r = anomaly_metrics(-perfect, y)
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0
    assert r["ap"] == pytest.approx(average_precision_score(y, -perfect), abs=TOL)


def test_ignore_label_and_other_values_are_ignored():
    scores = np.array([[0.9, 0.1, 5.0], [0.2, 0.8, -3.0]], dtype=np.float32)
    labels = np.array([[1, 0, 255], [0, 1, 3]], dtype=np.uint8)
    acc = AnomalyMetricAccumulator()
    acc.update(scores, labels)
    r = acc.compute()
    assert (r["num_pos"], r["num_neg"]) == (2, 2)
    assert (r["auroc"], r["ap"], r["fpr95"]) == (1.0, 1.0, 0.0)
    acc.update(np.array([np.nan, 0.0]), np.array([255, 0]))    # NaN on an ignored pixel is fine
    assert acc.num_neg == 3


def test_torch_inputs():
    scores, labels = make_data(8, n=5000)
    want = anomaly_metrics(scores, labels)
    acc = AnomalyMetricAccumulator()
    acc.update(torch.from_numpy(scores).view(50, 100), torch.from_numpy(labels).view(50, 100))
    assert acc.compute() == want
    r16 = anomaly_metrics(torch.from_numpy(scores).to(torch.bfloat16), torch.from_numpy(labels).long())
    assert 0.0 <= r16["auroc"] <= 1.0
    t = torch.from_numpy(scores).requires_grad_(True)
    assert anomaly_metrics(t, torch.from_numpy(labels)) == want


def test_nan_scores_raise():
    acc = AnomalyMetricAccumulator()
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 0]))
    assert acc.num_pos == 0 and acc.num_neg == 0              # nothing stored by the failed update
    with pytest.raises(ValueError, match="NaN"):
        acc.update(torch.tensor([float("nan")]), torch.tensor([0]))


def test_missing_class_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="positive"):
        anomaly_metrics(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="negative"):
        auroc(np.array([0.1, 0.2]), np.array([1, 255]))
    with pytest.raises(ValueError, match="positive"):
        AnomalyMetricAccumulator().compute()
    with pytest.raises(ValueError, match="shape"):
        AnomalyMetricAccumulator().update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        AnomalyMetricAccumulator(ignore_label=1)


def test_repeated_compute_and_continued_updates():
    scores, labels = make_data(9, n=4000)
    acc = AnomalyMetricAccumulator(chunk_size=300)
    acc.update(scores[:2000], labels[:2000])
    first = acc.compute()
    assert acc.compute() == first
    acc.update(scores[2000:], labels[2000:])
    assert acc.compute() == anomaly_metrics(scores, labels)
    acc.reset()
    assert acc.num_pos == 0


def test_memory_is_four_bytes_per_labelled_pixel():
    scores, labels = make_data(10, n=100_000)
    acc = AnomalyMetricAccumulator(chunk_size=1 << 12)
    for s, lab in zip(np.array_split(scores, 10), np.array_split(labels, 10)):
        acc.update(s.astype(np.float64), lab)
    labelled = acc.num_pos + acc.num_neg
    assert labelled < scores.size                                 # ignored pixels are not stored
    assert 4 * labelled <= acc.nbytes <= 4 * labelled + 2 * 4 * (1 << 12)
    acc.compute()
    assert acc.nbytes == 4 * labelled                             # consolidated into one sorted array each


def test_float64_storage_is_exact_for_float64_scores():
    rng = np.random.default_rng(11)
    y = (rng.random(3000) < 0.2).astype(int)
    s = rng.normal(size=3000) * 1e-9 + 1.0 + 1e-9 * y           # collapses to few values in float32
    acc = AnomalyMetricAccumulator(dtype=np.float64)
    acc.update(s, y)
    r = acc.compute()
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert r["fpr95"] == pytest.approx(ref_fpr_at_recall(s, y == 1), abs=TOL)


@settings(max_examples=50, deadline=None)
@given(data=st.lists(st.tuples(st.integers(-3, 3), st.sampled_from([0, 1, 255])), min_size=2, max_size=60),
       n_parts=st.integers(1, 4),
       level=st.sampled_from([0.95, 0.5, 0.1]))
def test_property_matches_references(data, n_parts, level):
    scores = np.array([d[0] for d in data], dtype=np.float32) / 2
    labels = np.array([d[1] for d in data], dtype=np.uint8)
    m = labels != 255
    y = labels[m]
    if not (y == 1).any() or not (y == 0).any():
        with pytest.raises(ValueError):
            anomaly_metrics(scores, labels)
        return
    acc = AnomalyMetricAccumulator(chunk_size=7)
    for s, lab in zip(np.array_split(scores, n_parts), np.array_split(labels, n_parts)):
        acc.update(s, lab)
    r = acc.compute()
    assert r["auroc"] == pytest.approx(roc_auc_score(y, scores[m]), abs=TOL)
    assert r["ap"] == pytest.approx(average_precision_score(y, scores[m]), abs=TOL)
    assert r["fpr95"] == pytest.approx(ref_fpr_at_recall(scores[m], y == 1), abs=TOL)
    assert acc.fpr_at_tpr(level) == pytest.approx(ref_fpr_at_recall(scores[m], y == 1, level), abs=TOL)


# --------------------------------------------------------------------------------------------------
# confusion matrix


def test_confusion_matrix_hand_example():
    cm = ConfusionMatrix(num_classes=3, ignore_label=255)
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 7]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm.update(pred, labels)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    r = cm.compute()
    # class 0: TP 1, FP 1 (from class 2), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    np.testing.assert_allclose(r["iou"], [1 / 3, 2 / 3, 1 / 2])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert r["num_pixels"] == 6
    cm.update(torch.tensor([[1]]), torch.tensor([[1]]))          # torch input, accumulates
    assert cm.matrix[1, 1] == 3


def test_confusion_matrix_absent_class_is_nan_and_bad_pred_raises():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 1]))
    r = cm.compute()
    assert math.isnan(r["iou"][2]) and math.isnan(r["iou"][3])
    assert r["miou"] == 1.0
    with pytest.raises(ValueError):
        cm.update(np.array([5]), np.array([0]))
    cm.update(np.array([5]), np.array([255]))                     # ignored pixel: prediction not checked
