"""Benchmark evaluation of a PEBAL model: pixel-pooled AUROC / AP / FPR95, component metrics, mIoU.

Anomaly benchmarks (metrics as the reference's ``get_measures``): every image is scored by the
:class:`InferenceEngine` (at native resolution by default, the reference code's test protocol), the score map
and the unified label (0 inlier, 1 anomaly, 255 void) of all images are pooled in an exact
:class:`~pebal_training.metrics.AnomalyMetricAccumulator` (void excluded; no per-image averaging).
Per-image AUROC / AP are reported where the image has both classes. Component metrics (SMIYC sIoU,
PPV, mean F1, :mod:`pebal_training.component_metrics`) use the binary prediction ``score > threshold``.
Planner metrics (false-frame rate, obstacle recall at 25 % coverage, region precision, stray regions per
frame, :mod:`pebal_training.planner_metrics`) score the regions a ``report_regions`` hook reports per frame
(default: the 8-connected components of ``score > threshold``) against the obstacle instances (the
sample's ``instances`` map, else the 8-connected components of ``label == 1``; void is ``label == 255``).

Curves (``roc.png``, ``pr.png``) are evaluated exactly from the accumulated, sorted scores at a subset
of thresholds (quantiles of the pooled scores plus the extremes), so the plotted points lie on the
exact curves; only their number is reduced.

Cityscapes: the semantic prediction uses the reference ``SlidingEval`` protocol: crop 800,
stride ⌈800·2/3⌉, zero padding in normalised space, logits of overlapping windows summed, argmax over
the 19 classes; confusion matrix over the split (``crop_size=0`` runs the whole image at once).

The worst frames (lowest per-image AP; frames without anomaly pixels are ranked by their
false-positive rate at the threshold instead, on the same 0..1 "badness" scale ``1 - AP`` / ``FPR``)
are rendered to ``worst/NAME_overlay.png``: image | score heat map | GT / prediction
(green true positive, red false positive, blue missed anomaly, grey void).
"""
from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from pebal_perception.core.constants import CITYSCAPES_CLASSES, IGNORE_LABEL, NUM_INLIER_CLASSES, VOID
from pebal_perception.core.engine import FrameResult
from pebal_perception.core.io import atomic_save_image, atomic_write_json
from pebal_perception.core.preprocess import normalize, to_uint8_batch
from pebal_perception.core.visualize import score_to_colour
from pebal_training.component_metrics import ComponentMetricAccumulator
from pebal_training.metrics import AnomalyMetricAccumulator, ConfusionMatrix, anomaly_metrics
from pebal_training.figures import save_figure
from pebal_training.planner_metrics import PlannerMetricAccumulator

PLOT_POINTS = 2000
WORST_K = 4
PANEL_MAX_WIDTH = 1024


# --------------------------------------------------------------------------------------------------
# curves


def sorted_scores(acc: AnomalyMetricAccumulator) -> tuple[np.ndarray, np.ndarray]:
    """(positive scores, negative scores), each sorted ascending (consolidates the accumulator)."""
    return acc._pos.sorted(), acc._neg.sorted()  # noqa: SLF001 - same package, read-only use


def curves(pos: np.ndarray, neg: np.ndarray, max_points: int = PLOT_POINTS) -> dict[str, np.ndarray]:
    """Exact ROC and PR points at up to ``max_points`` thresholds (decision: score >= t).

    Thresholds are quantiles of the pooled scores (so points are spread evenly over the data) plus
    every extreme; TPR, FPR and precision are exact counts at each threshold via binary search in the
    sorted arrays. Returns ``fpr, tpr, recall, precision, thresholds`` (thresholds descending, curve
    starting at (0, 0) and ending at (1, 1)).
    """
    if pos.size == 0 or neg.size == 0:
        raise ValueError("curves need positive and negative pixels")
    q = np.linspace(0.0, 1.0, max(2, max_points // 2))
    cand = np.concatenate([np.quantile(pos, q), np.quantile(neg, q), pos[[0, -1]], neg[[0, -1]]])
    thr = np.unique(cand.astype(pos.dtype))[::-1]
    tp = pos.size - np.searchsorted(pos, thr, side="left")
    fp = neg.size - np.searchsorted(neg, thr, side="left")
    tpr = tp / pos.size
    fpr = fp / neg.size
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return {"fpr": np.concatenate([[0.0], fpr]), "tpr": np.concatenate([[0.0], tpr]),
            "recall": np.concatenate([[0.0], tpr]), "precision": np.concatenate([[1.0], precision]),
            "thresholds": thr}


def plot_curves(c: dict[str, np.ndarray], metrics: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot state: safe in-process and in threads

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(c["fpr"], c["tpr"], lw=1.5, label=f"AUROC {metrics['auroc']:.4f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.axhline(0.95, color="grey", lw=0.6, ls="--")
    ax.plot([metrics["fpr95"]], [0.95], "ro", ms=4, label=f"FPR95 {metrics['fpr95']:.4f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC - {title}",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(out / "roc.png", fig)

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.step(c["recall"], c["precision"], where="post", lw=1.5, label=f"AP {metrics['ap']:.4f}")
    base = metrics["num_pos"] / (metrics["num_pos"] + metrics["num_neg"])
    ax.axhline(base, color="k", ls=":", lw=0.8, label=f"chance {base:.4f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR - {title}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right")
    fig.tight_layout()
    save_figure(out / "pr.png", fig)


# --------------------------------------------------------------------------------------------------
# worst-frame panels


def _fit_width(img: np.ndarray, width: int) -> np.ndarray:
    import cv2

    if img.shape[1] <= width:
        return img
    h = max(1, round(img.shape[0] * width / img.shape[1]))
    interp = cv2.INTER_NEAREST if img.dtype != np.uint8 or img.ndim == 2 else cv2.INTER_AREA
    return cv2.resize(img, (width, h), interpolation=interp)


def error_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Image dimmed, with TP green, FP red, FN blue and void grey."""
    out = (image.astype(np.float32) * 0.4).astype(np.uint8)
    void = label == VOID
    gt = label == 1
    colours = {(0, 200, 0): gt & pred, (230, 30, 30): pred & (label == 0), (40, 90, 255): gt & ~pred}
    out[void] = (0.5 * out[void] + 0.5 * np.array([128, 128, 128])).astype(np.uint8)
    for colour, mask in colours.items():
        out[mask] = colour
    return out


def worst_frame_panel(image: np.ndarray, score: np.ndarray, label: np.ndarray, threshold: float,
                      low: float | None = None, high: float | None = None) -> np.ndarray:
    width = min(PANEL_MAX_WIDTH, image.shape[1])
    panels = [image, score_to_colour(score, low, high), error_panel(image, label, score > threshold)]
    panels = [_fit_width(p, width) for p in panels]
    sep = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1)


# --------------------------------------------------------------------------------------------------
# evaluation loops


def json_safe(x: Any) -> Any:
    """NaN / inf -> None, recursively, so report.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def model_info(engine, checkpoint: str | Path | None = None) -> dict:
    meta = engine.meta
    return {"model_id": meta.model_id, "architecture": meta.architecture, "source": meta.source,
            "checkpoint": str(checkpoint) if checkpoint is not None else None, "device": str(engine.device),
            "input_size": "native" if engine.native_size else list(engine.input_size),
            "smoothing": engine.smoothing, "threshold_calibrated": meta.threshold is not None}


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=None if enabled else True)


def skipped_samples(dataset) -> dict[str, Any]:
    """Report fields for samples the reader skipped (``on_error="skip"``): count and reason per file."""
    skipped = dict(getattr(dataset, "skipped", {}) or {})
    return {"num_skipped": len(skipped), "skipped": {str(i): reason for i, reason in sorted(skipped.items())}}


def instance_components(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)[1]


def threshold_regions(res: FrameResult) -> np.ndarray:
    """Default ``report_regions``: the 8-connected components of ``score > threshold`` (int32 ids)."""
    return instance_components(res.score > res.threshold)


def evaluate_anomaly(engine, dataset, output: str | Path | None, threshold: float | None = None,
                     limit: int | None = None, worst_k: int = WORST_K, dataset_name: str = "",
                     progress: bool = True, extra_info: dict | None = None,
                     report_regions: Callable[[FrameResult], np.ndarray] | None = None) -> dict:
    """Runs ``engine`` over ``dataset`` (items ``dict(image, label, name)``; label 1 anomaly, 0 inlier,
    255 ignored; optional ``instances``, an H x W int map of the obstacle instances) and returns the report.
    With an ``output`` folder it also writes ``report.json``, the curves and the worst-frame panels;
    ``output=None`` (the trainer's validation) writes nothing.

    ``report_regions(frame_result)`` gives the H x W int label map of the regions reported to the planner
    (0 none, 1..R); the frame result it gets carries the evaluation threshold (``threshold`` when given)
    and ``obstacle = score > threshold``. None: :func:`threshold_regions`."""
    out = Path(output) if output is not None else None
    if out is None:
        worst_k = 0
    else:
        out.mkdir(parents=True, exist_ok=True)
    thr = engine.threshold if threshold is None else float(threshold)
    acc = AnomalyMetricAccumulator(ignore_label=VOID, positive_label=1, negative_label=0)
    comp = ComponentMetricAccumulator()
    planner = PlannerMetricAccumulator()
    regions_of = threshold_regions if report_regions is None else report_regions
    per_image: list[dict] = []
    worst: list[tuple[float, int, str, Any]] = []  # min-heap on badness: keeps the worst_k largest
    n = len(dataset) if limit is None else min(limit, len(dataset))
    score_lo, score_hi = math.inf, -math.inf
    for i in progress_bar(range(n), n, f"pebal-eval {dataset_name}", progress):
        sample = dataset[i]
        if sample is None:  # skipped by the reader (on_error="skip")
            continue
        image, label, name = sample["image"], sample["label"], sample["name"]
        res = engine.infer_one(image)
        score = res.score
        acc.update(score, label)
        pred = score > thr
        comp_stats = comp.update(pred, label)
        frame = FrameResult(semantic=getattr(res, "semantic", None), score=score, obstacle=pred, threshold=thr)
        instances = sample.get("instances")
        if instances is None:
            instances = instance_components(label == 1)
        planner_stats = planner.update(regions_of(frame), instances, ignore=label == VOID,
                                       group=sample.get("group"))
        valid = label != VOID
        num_pos, num_neg = int((label == 1).sum()), int((label == 0).sum())
        rec: dict[str, Any] = {"name": name, "num_pos": num_pos, "num_neg": num_neg,
                               "max_score": float(score[valid].max()) if valid.any() else float(score.max()),
                               "auroc": None, "ap": None, "fpr95": None,
                               "fpr_at_threshold": float((pred & (label == 0)).sum() / num_neg) if num_neg else None,
                               "tpr_at_threshold": float((pred & (label == 1)).sum() / num_pos) if num_pos else None,
                               **comp_stats, "planner": planner_stats}
        if num_pos and num_neg:
            m = anomaly_metrics(score, label)
            rec["auroc"], rec["ap"], rec["fpr95"] = m["auroc"], m["ap"], m["fpr95"]
        per_image.append(rec)
        if valid.any():
            score_lo = min(score_lo, float(np.percentile(score[valid], 1)))
            score_hi = max(score_hi, float(np.percentile(score[valid], 99)))
        badness = 1.0 - rec["ap"] if rec["ap"] is not None else rec["fpr_at_threshold"]
        if worst_k > 0 and badness is not None:
            item = (badness, -i, name, (image, score, label))
            if len(worst) < worst_k:
                heapq.heappush(worst, item)
            elif item[:2] > worst[0][:2]:
                heapq.heapreplace(worst, item)
    if acc.num_pos == 0 or acc.num_neg == 0:
        raise ValueError(f"{dataset_name or 'dataset'}: {acc.num_pos} anomaly and {acc.num_neg} inlier pixels "
                         "in the evaluated images; AUROC/AP/FPR95 need both")
    metrics = acc.compute()
    if out is not None:
        pos, neg = sorted_scores(acc)
        plot_curves(curves(pos, neg), metrics, out, dataset_name or "anomaly")
    worst_records = []
    for badness, neg_index, name, (image, score, label) in sorted(worst, reverse=True):
        path = out / "worst" / f"{name}_overlay.png"
        atomic_save_image(path, worst_frame_panel(image, score, label, thr, score_lo, score_hi))
        worst_records.append({"name": name, "badness": badness, "file": str(path.relative_to(out))})
    report = {
        "dataset": dataset_name, "auroc": metrics["auroc"], "ap": metrics["ap"], "fpr95": metrics["fpr95"],
        "num_images": len(per_image), "num_pos": metrics["num_pos"], "num_neg": metrics["num_neg"],
        "threshold": thr, "components": comp.compute(), "planner": planner.compute(),
        "model": model_info(engine, (extra_info or {}).get("checkpoint")),
        "worst": worst_records, "per_image": per_image, **skipped_samples(dataset),
    }
    if extra_info:
        report.update(extra_info)
    if out is not None:
        atomic_write_json(out / "report.json", json_safe(report))
    return report


@torch.inference_mode()
def sliding_logits(engine, image: np.ndarray, crop_size: int = 800, stride_rate: float = 2 / 3,
                   num_classes: int = NUM_INLIER_CLASSES) -> torch.Tensor:
    """Reference ``SlidingEval`` at scale 1: summed inlier logits (19 x H x W) of overlapping crops."""
    batch = to_uint8_batch(image, engine.device)
    h, w = image.shape[:2]
    x = normalize(batch, engine.meta.mean, engine.meta.std, (h, w))
    div = engine.spec.size_divisor
    crop = int(math.ceil(crop_size / div) * div)
    stride = int(math.ceil(crop * stride_rate))
    ph, pw = max(h, crop), max(w, crop)
    x = F.pad(x, (0, pw - w, 0, ph - h), value=0.0)  # zero in normalised space
    total = torch.zeros((num_classes, ph, pw), dtype=torch.float32, device=engine.device)
    rows = int(math.ceil((ph - crop) / stride)) + 1
    cols = int(math.ceil((pw - crop) / stride)) + 1
    for r in range(rows):
        for c in range(cols):
            y1 = min(r * stride + crop, ph)
            x1 = min(c * stride + crop, pw)
            y0, x0 = y1 - crop, x1 - crop
            logits = engine.model(x[:, :, y0:y1, x0:x1])
            total[:, y0:y1, x0:x1] += logits[0, :num_classes].float()
    return total[:, :h, :w]


def evaluate_cityscapes(engine, dataset, output: str | Path, limit: int | None = None, crop_size: int = 800,
                        progress: bool = True, extra_info: dict | None = None) -> dict:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cm = ConfusionMatrix(num_classes=NUM_INLIER_CLASSES, ignore_label=IGNORE_LABEL)
    per_image = []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in progress_bar(range(n), n, "pebal-eval cityscapes", progress):
        sample = dataset[i]
        if sample is None:
            continue
        if crop_size > 0:
            pred = sliding_logits(engine, sample["image"], crop_size).argmax(0).to(torch.uint8).cpu().numpy()
        else:
            pred = engine.infer_one(sample["image"]).semantic
        label = sample["label"]
        cm.update(pred, label)
        valid = label != IGNORE_LABEL
        per_image.append({"name": sample["name"],
                          "pixel_accuracy": float((pred[valid] == label[valid]).mean()) if valid.any() else None})
    res = cm.compute()
    report = {
        "dataset": "cityscapes", "miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"],
        "per_class_iou": {name: float(v) for name, v in zip(CITYSCAPES_CLASSES, res["iou"])},
        "num_images": len(per_image), "num_pixels": res["num_pixels"],
        "protocol": {"sliding_crop": crop_size, "stride_rate": 2 / 3} if crop_size > 0 else {"whole_image": True},
        "model": model_info(engine, (extra_info or {}).get("checkpoint")), "per_image": per_image,
        **skipped_samples(dataset),
    }
    if extra_info:
        report.update(extra_info)
    atomic_write_json(out / "report.json", json_safe(report))
    return report
