"""pebal-eval, the benchmark layout writers and the SMIYC component metrics.

The CLI runs in-process (``main()``), so the test-only ``tiny_test_net`` registered by tiny_models is
known to it. Every benchmark is written with the synthetic layout writers in its true file layout.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from pebal_perception.core.checkpoint import ModelMeta
from pebal_perception.core.engine import InferenceEngine
from pebal_training.cli import evaluate as eval_cli
from pebal_training.component_metrics import (F1_THRESHOLDS, ComponentMetricAccumulator, component_metrics,
                                              image_component_stats)
from pebal_training.data import synthetic_layouts as SL
from pebal_training.data.datasets import (CityscapesSegmentation, FishyscapesDataset, LostAndFoundDataset,
                                          RoadAnomalyDataset, SegmentMeIfYouCanDataset)
from pebal_training.evaluate import curves, sliding_logits

from tiny_models import TINY, write_tiny_checkpoint

SIZE = (96, 48)  # W x H of the synthetic scenes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=-3.0)


@pytest.fixture(scope="module")
def fishy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fishy")
    SL.write_fishyscapes(root, "LostAndFound", n=5, seed=1, size=SIZE)
    return root


def hendrycks_fpr95(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> float:
    """Hendrycks' ``fpr_and_fdr_at_recall`` (used by the reference's ``get_measures``), independent of the package."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[order], labels[order].astype(np.float64)
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = 1 + idx - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - level))
    return float(fps[cutoff] / np.sum(np.logical_not(y)))


# --------------------------------------------------------------------------------------------------
# pebal-eval on anomaly benchmarks


def test_eval_matches_sklearn_on_pooled_scores(tmp_path, checkpoint, fishy_root, capsys):
    out = tmp_path / "eval"
    rc = eval_cli.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--dataset", "fishyscapes_laf",
                        "--root", str(fishy_root), "--output", str(out), "--worst", "3", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())

    # Recompute the scores independently: the engine at native resolution, void excluded, pooled.
    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu", input_size="native")
    scores, labels, names = [], [], []
    for sample in FishyscapesDataset(fishy_root, "LostAndFound"):
        score = engine.infer_one(sample["image"]).score
        assert score.shape == sample["label"].shape  # native resolution
        keep = sample["label"] != 255
        scores.append(score[keep])
        labels.append(sample["label"][keep])
        names.append(sample["name"])
    s, y = np.concatenate(scores).astype(np.float64), np.concatenate(labels)
    assert set(np.unique(y)) == {0, 1}
    assert report["num_pos"] == int((y == 1).sum()) and report["num_neg"] == int((y == 0).sum())
    assert report["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert report["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert report["fpr95"] == pytest.approx(hendrycks_fpr95(y, s), abs=1e-6)
    for key in ("auroc", "ap", "fpr95"):
        assert 0.0 <= report[key] <= 1.0

    assert report["num_images"] == 5 and [r["name"] for r in report["per_image"]] == names
    assert report["threshold"] == -3.0
    assert report["model"]["architecture"] == TINY and report["model"]["input_size"] == "native"
    for rec in report["per_image"]:
        assert {"name", "max_score", "auroc", "ap", "num_pos", "num_neg"} <= set(rec)
        if rec["num_pos"] and rec["num_neg"]:
            assert 0.0 <= rec["auroc"] <= 1.0 and 0.0 <= rec["ap"] <= 1.0
    comp = report["components"]
    assert {"siou", "ppv", "mean_f1", "num_gt_components", "num_pred_components"} <= set(comp)
    assert len(comp["f1_per_threshold"]) == 11

    assert (out / "roc.png").stat().st_size > 1000 and (out / "pr.png").stat().st_size > 1000
    overlays = sorted((out / "worst").glob("*_overlay.png"))
    assert len(overlays) == 3 and len(report["worst"]) == 3
    badness = [w["badness"] for w in report["worst"]]
    assert badness == sorted(badness, reverse=True)
    import cv2

    panel = cv2.imread(str(overlays[0]))
    assert panel.shape[0] == SIZE[1] and panel.shape[1] == 3 * SIZE[0] + 8  # image | heat map | errors
    assert "AUROC" in capsys.readouterr().out


def test_eval_limit_threshold_and_input_size(tmp_path, checkpoint, fishy_root):
    out = tmp_path / "eval"
    rc = eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_laf", "--root", str(fishy_root),
                        "--output", str(out), "--limit", "2", "--threshold", "-1.5", "--input-size", "48x24",
                        "--quiet"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 2 and report["threshold"] == -1.5
    assert report["model"]["input_size"] == [24, 48]


def test_curves_are_exact_at_their_thresholds():
    rng = np.random.default_rng(0)
    pos = np.sort(rng.normal(1, 1, 500).astype(np.float32))
    neg = np.sort(rng.normal(0, 1, 3000).astype(np.float32))
    c = curves(pos, neg, max_points=50)
    assert c["fpr"][0] == 0 and c["tpr"][0] == 0 and c["fpr"][-1] == 1 and c["tpr"][-1] == 1
    for t, fpr, tpr in zip(c["thresholds"][::7], c["fpr"][1::7], c["tpr"][1::7]):
        assert fpr == (neg >= t).mean() and tpr == (pos >= t).mean()
    assert np.all(np.diff(c["fpr"]) >= 0) and np.all(np.diff(c["tpr"]) >= 0)


@pytest.mark.parametrize("args, needle", [
    (["--root", "{missing}"], "{missing}"),
    (["--root", "{partial}"], "labels"),
])
def test_missing_or_incomplete_dataset_is_one_line_exit_2(tmp_path, checkpoint, capsys, args, needle):
    partial = tmp_path / "partial"
    (partial / "LostAndFound" / "original").mkdir(parents=True)
    paths = {"missing": tmp_path / "nope", "partial": partial}
    args = [a.format(**paths) for a in args]
    rc = eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_laf", "--output",
                        str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("pebal-eval: error: ")
    assert needle.format(**paths) in err


def _broken_fishyscapes(root: Path) -> Path:
    """5 samples: one unreadable image, one label of the wrong size, one with a value the encoding lacks."""
    import cv2

    SL.write_fishyscapes(root, "LostAndFound", n=5, seed=1, size=SIZE)
    (root / "LostAndFound" / "original" / "0001.png").write_bytes(b"\x89PNG truncated")
    cv2.imwrite(str(root / "LostAndFound" / "labels" / "0002.png"), np.zeros((10, 10), np.uint8))
    label = cv2.imread(str(root / "LostAndFound" / "labels" / "0003.png"), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 77
    cv2.imwrite(str(root / "LostAndFound" / "labels" / "0003.png"), label)
    return root


def test_broken_samples_stop_with_the_file_or_are_counted_skips(tmp_path, checkpoint, capsys):
    root = _broken_fishyscapes(tmp_path / "fishy")
    common = ["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_laf", "--root", str(root), "--quiet"]
    rc = eval_cli.main([*common, "-o", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "0001.png" in err
    assert not (tmp_path / "strict" / "report.json").exists()

    assert eval_cli.main([*common, "-o", str(tmp_path / "lenient"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "2 images (3 skipped, listed in report.json)" in out
    report = json.loads((tmp_path / "lenient" / "report.json").read_text())
    assert report["num_images"] == 2 and report["num_skipped"] == 3
    reasons = report["skipped"]
    assert sorted(reasons) == ["1", "2", "3"]
    assert "0001.png" in reasons["1"] and "0002.png" in reasons["2"] and "0003.png" in reasons["3"]
    assert "77" in reasons["3"]


def test_usage_errors_exit_2(tmp_path, checkpoint, capsys):
    assert eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "nope", "--root", ".", "-o", "x"]) == 2
    assert eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "road_anomaly", "--root", ".", "-o", "x",
                          "--input-size", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("pebal-eval: error: ") for line in err)


def test_bad_checkpoint_exit_2(tmp_path, fishy_root, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = eval_cli.main(["--checkpoint", str(bad), "--dataset", "fishyscapes_laf", "--root", str(fishy_root),
                        "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "bad.pt" in err


@pytest.mark.parametrize("dataset, writer", [
    ("lostandfound", lambda r: SL.write_lostandfound(r, n=3, seed=2, size=SIZE)),
    ("smiyc_obstacle", lambda r: SL.write_smiyc(r, "obstacle", n=3, seed=2, size=SIZE)),
    ("road_anomaly", lambda r: SL.write_road_anomaly(r, n=3, seed=2, size=SIZE)),
])
def test_eval_runs_on_other_benchmarks(tmp_path, checkpoint, dataset, writer):
    writer(tmp_path / "data")
    out = tmp_path / "out"
    assert eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", dataset, "--root", str(tmp_path / "data"),
                          "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 3 and 0 <= report["auroc"] <= 1


# --------------------------------------------------------------------------------------------------
# cityscapes


def _hand_miou(preds, labels):
    ious = []
    correct = total = 0
    for p, g in zip(preds, labels):
        v = g != 255
        correct += int((p[v] == g[v]).sum())
        total += int(v.sum())
    for c in range(19):
        tp = sum(int(((p == c) & (g == c) & (g != 255)).sum()) for p, g in zip(preds, labels))
        fp = sum(int(((p == c) & (g != c) & (g != 255)).sum()) for p, g in zip(preds, labels))
        fn = sum(int(((p != c) & (g == c)).sum()) for p, g in zip(preds, labels))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    return float(np.nanmean(ious)), correct / total, ious


def test_cityscapes_miou_equals_hand_computation(tmp_path, checkpoint):
    root = tmp_path / "cs"
    written = SL.write_cityscapes(root, "val", n=3, seed=3, size=SIZE)
    out = tmp_path / "out"
    assert eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "cityscapes", "--root", str(root),
                          "--split", "val", "--output", str(out), "--crop-size", "0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu", input_size="native")
    preds = [engine.infer_one(s.image).semantic for s in written]
    miou, acc, ious = _hand_miou(preds, [s.label for s in written])
    assert report["num_images"] == 3 and report["split"] == "val"
    assert report["miou"] == pytest.approx(miou, abs=1e-12)
    assert report["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    got = list(report["per_class_iou"].values())
    assert len(got) == 19
    for a, b in zip(got, ious):
        assert (a is None and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_cityscapes_default_sliding_protocol_runs(tmp_path, checkpoint):
    root = tmp_path / "cs"
    SL.write_cityscapes(root, "val", n=1, seed=4, size=SIZE, layout="pebal_flat")
    out = tmp_path / "out"
    assert eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "cityscapes", "--root", str(root),
                          "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["sliding_crop"] == 800 and 0 <= report["miou"] <= 1


def test_sliding_windows_are_summed_and_padding_cropped():
    """With a pointwise model each window adds the same logits, so the sum is logits x coverage count."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 20, 1)
    engine = InferenceEngine(model, ModelMeta.for_architecture(TINY), device="cpu", input_size="native")
    image = np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    summed = sliding_logits(engine, image, crop_size=24)  # stride 16: windows overlap
    whole = engine.forward_logits(torch.from_numpy(image).permute(2, 0, 1)[None])[0, :19]
    ones = nn.Conv2d(3, 20, 1)
    nn.init.zeros_(ones.weight)
    nn.init.ones_(ones.bias)
    counter = InferenceEngine(ones, ModelMeta.for_architecture(TINY), device="cpu", input_size="native")
    counts = sliding_logits(counter, image, crop_size=24)  # coverage count of every pixel
    assert summed.shape == counts.shape == (19, 40, 72)
    assert counts.min() >= 1 and counts.max() >= 4 and torch.equal(counts, counts.round())
    assert torch.allclose(summed, whole * counts, atol=1e-4)
    # crop larger than the image: one zero-padded window, cropped back
    one = sliding_logits(engine, image, crop_size=800)
    assert torch.allclose(one, whole, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# layout writers round-trip through their readers

WRITERS = {
    "fishyscapes_laf": (lambda r: SL.write_fishyscapes(r, "LostAndFound", n=3, seed=5, size=SIZE),
                        lambda r: FishyscapesDataset(r, "LostAndFound"), True),
    "fishyscapes_static": (lambda r: SL.write_fishyscapes(r, "Static", n=3, seed=5, size=SIZE),
                           lambda r: FishyscapesDataset(r, "Static"), True),
    "road_anomaly": (lambda r: SL.write_road_anomaly(r, n=3, seed=5, size=SIZE), RoadAnomalyDataset, False),
    "smiyc_anomaly": (lambda r: SL.write_smiyc(r, "anomaly", n=3, seed=5, size=SIZE),
                      lambda r: SegmentMeIfYouCanDataset(r, "anomaly"), False),
    "smiyc_obstacle": (lambda r: SL.write_smiyc(r, "obstacle", n=3, seed=5, size=SIZE, unlabelled=2),
                       lambda r: SegmentMeIfYouCanDataset(r, "obstacle"), True),
    "lostandfound_train_ids": (lambda r: SL.write_lostandfound(r, n=7, seed=5, size=SIZE), LostAndFoundDataset, True),
    "lostandfound_label_ids": (lambda r: SL.write_lostandfound(r, n=3, seed=5, size=SIZE, labels="label_ids"),
                               LostAndFoundDataset, True),
    "cityscapes": (lambda r: SL.write_cityscapes(r, "val", n=4, seed=5, size=SIZE),
                   lambda r: CityscapesSegmentation(r, "val"), True),
    "cityscapes_label_ids": (lambda r: SL.write_cityscapes(r, "train", n=2, seed=5, size=SIZE, labels="label_ids"),
                             lambda r: CityscapesSegmentation(r, "train"), True),
    "cityscapes_flat": (lambda r: SL.write_cityscapes(r, "val", n=2, seed=5, size=SIZE, layout="pebal_flat"),
                        lambda r: CityscapesSegmentation(r, "val"), True),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_layout_writer_round_trips_through_reader(tmp_path, kind):
    write, read, lossless = WRITERS[kind]
    written = write(tmp_path)
    dataset = read(tmp_path)
    assert dataset.names == [s.name for s in written]
    for sample, expected in zip(dataset, written):
        assert sample["name"] == expected.name
        assert np.array_equal(sample["label"], expected.label)
        if lossless:
            assert np.array_equal(sample["image"], expected.image)
        else:
            diff = np.abs(sample["image"].astype(int) - expected.image.astype(int))
            assert sample["image"].shape == expected.image.shape and diff.mean() < 4
    labels = np.stack([s.label for s in written])
    if kind.startswith("cityscapes"):
        assert labels.max() <= 18 or 255 in labels
    else:
        assert 1 in labels and 0 in labels
    if kind == "smiyc_obstacle":
        assert len(dataset.unlabelled) == 2
    if kind == "lostandfound_train_ids":  # the non-hazard trainId 0 is written and ignored
        import cv2

        raw = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (tmp_path / "gtCoarse").rglob("*labelTrainIds.png")]
        assert set(np.unique(np.stack(raw))) <= {0, 1, 2, 255} and 2 in np.stack(raw)
        assert len({p.parent.name for p in (tmp_path / "leftImg8bit" / "test").rglob("*.png")}) == 5


# --------------------------------------------------------------------------------------------------
# component metrics on hand-made masks


def _canvas(h=10, w=12):
    return np.zeros((h, w), np.uint8), np.zeros((h, w), bool)


def test_component_siou_ppv_and_f1_single_object():
    label, pred = _canvas()
    label[2:6, 2:6] = 1          # 16 px
    pred[2:6, 2:8] = True        # 24 px, covers the object
    siou, ppv = image_component_stats(pred, label)
    assert siou.tolist() == pytest.approx([16 / 24]) and ppv.tolist() == pytest.approx([16 / 24])
    res = component_metrics(pred, label)
    f1 = {r["tau"]: r["f1"] for r in res["f1_per_threshold"]}
    assert list(f1) == list(F1_THRESHOLDS) and len(f1) == 11
    assert all(f1[t] == 1.0 for t in F1_THRESHOLDS if t < 0.66)
    assert f1[0.7] == 0.0 and f1[0.75] == 0.0      # TP 0, FN 1, FP 1
    assert res["mean_f1"] == pytest.approx(9 / 11)


def test_component_siou_excludes_other_gt_components():
    label, pred = _canvas()
    label[0:4, 0:4] = 1          # A
    label[0:4, 6:10] = 1         # B
    pred[0:4, 0:10] = True       # one prediction over both (40 px)
    siou, ppv = image_component_stats(pred, label)
    # |A ∩ P| = 16; |A ∪ P| = 40, minus B's 16 pixels -> 24
    assert siou.tolist() == pytest.approx([16 / 24, 16 / 24])
    assert ppv.tolist() == pytest.approx([32 / 40])


def test_component_void_missed_and_false_positive():
    label, pred = _canvas()
    label[0:3, :] = 255          # void band
    label[5:7, 0:2] = 1          # missed object
    pred[0:3, 0:5] = True        # prediction entirely in void: no component
    pred[8:10, 8:12] = True      # false positive on inliers
    pred[2:5, 10:12] = True      # partly void: only the non-void 4 px count
    siou, ppv = image_component_stats(pred, label)
    assert siou.tolist() == [0.0]
    assert sorted(ppv.tolist()) == [0.0, 0.0]
    res = component_metrics(pred, label)
    assert res["num_pred_components"] == 2 and res["mean_f1"] == 0.0
    assert all(r["tp"] == 0 and r["fn"] == 1 and r["fp"] == 2 for r in res["f1_per_threshold"])


def test_component_accumulator_sums_counts_over_images():
    acc = ComponentMetricAccumulator()
    label, pred = _canvas()
    label[1:4, 1:4] = 1
    pred[1:4, 1:4] = True
    first = acc.update(pred, label)               # perfect
    assert first["siou"] == 1.0 and first["ppv"] == 1.0
    label2, pred2 = _canvas()
    pred2[5:7, 5:7] = True                         # FP only, no GT
    second = acc.update(pred2, label2)
    assert second["num_gt_components"] == 0 and math.isnan(second["siou"])
    res = acc.compute()
    assert res["num_gt_components"] == 1 and res["num_pred_components"] == 2
    assert all(r["f1"] == pytest.approx(2 / 3) for r in res["f1_per_threshold"])  # 2TP/(2TP+FN+FP)=2/3
    empty = ComponentMetricAccumulator()
    empty.update(*_canvas()[::-1])
    assert math.isnan(empty.compute()["mean_f1"])


def test_planner_sweep_writes_curves_and_the_plot(tmp_path, checkpoint, fishy_root, capsys):
    out = tmp_path / "sweep"
    assert eval_cli.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_laf", "--root", str(fishy_root),
                          "--output", str(out), "--limit", "2", "--planner-sweep", "--quiet", "--worst", "0"]) == 0
    assert "planner: obstacle recall" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    sweep = report["planner_sweep"]
    assert sweep["objects"] > 0 and len(sweep["thresholds"]) == len(sweep["object_recall"]) == 60
    recall = sweep["object_recall"]
    assert recall[0] >= recall[-1] and recall[-1] == 0.0  # nothing is found above every score
    assert (out / "planner.png").stat().st_size > 0
