"""Write synthetic scenes in the real benchmark layouts, so every reader is tested on true-format files.

Each writer renders scenes with :func:`~pebal_training.data.synthetic.generate_scene` and writes
exactly the folder / file naming that the readers in :mod:`pebal_training.data.datasets` expect (and
the real releases use), every file atomically. Each returns the list of :class:`WrittenSample` the
reader should give back (name, RGB image as rendered, label in the reader's output encoding: unified
0 / 1 / 255 for the anomaly benchmarks, trainIds for Cityscapes), sorted by name like the readers.
Images written as JPEG (quality 95) are lossy, so their pixels only approximate ``image``; PNG and
(lossless) WebP images read back exactly.

Layouts (``size`` is ``(width, height)``):

* Fishyscapes (SynBoost release): ``<root>/<subset>/original/NAME.png`` + ``labels/NAME.png``
  (0 / 1 / 255). For ``LostAndFound`` everything off the road (and not anomalous) is void, as the
  real L&F labels restrict evaluation to the road region; ``Static`` labels the whole image.
* Road Anomaly: ``<root>/original/NAME.jpg`` + ``labels/NAME.png`` (0 / 1, no void).
* SegmentMeIfYouCan: ``<root>/images/NAME.jpg`` (anomaly track) or ``.webp`` (obstacle track) +
  ``labels_masks/NAME_labels_semantic.png`` (0 / 1 / 255) and the ignored
  ``NAME_labels_semantic_color.png``; ``unlabelled`` extra images without labels mimic the test images
  that share the folder. The obstacle track voids everything off the road.
* LostAndFound: ``<root>/leftImg8bit/<split>/<seq>/<seq>_<run>_<frame>_leftImg8bit.png`` +
  ``gtCoarse/<split>/<seq>/<stem>_gtCoarse_labelTrainIds.png`` with the LAF trainIds (1 free road,
  2 obstacle, 0 random non-hazard, 255 everything else) and/or ``_gtCoarse_labelIds.png``.
* Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` +
  ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (or ``_labelIds``), or PEBAL's flat
  ``images/city_gt_fine/<split>/`` + ``annotation/city_gt_fine/<split>/<stem>_gtFine.png``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pebal_perception.core.io import atomic_save_image, atomic_write_bytes
from pebal_training.data import labels as L
from pebal_training.data.synthetic import ROAD, SceneConfig, colorize_labels, generate_scene

LAF_TEST_SEQUENCES = ("02_Hanns_Klemm_Str_44", "04_Maurener_Weg_8", "05_Schafgasse_1",
                      "07_Festplatz_Flugfeld", "15_Rechbergstr_Deckenpfronn")
CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau", "munster"),
                     "test": ("berlin", "bielefeld")}
#: LostAndFound labelIds used when writing ``_gtCoarse_labelIds.png``: free road, an obstacle
#: ("Crate (black)") and a random non-hazard ("Wheel cap").
LAF_LABEL_ID_FREE, LAF_LABEL_ID_OBSTACLE, LAF_LABEL_ID_NON_HAZARD = 1, 2, 38


@dataclass
class WrittenSample:
    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB, as rendered (before any lossy encoding)
    label: np.ndarray  # what the reader returns: unified 0/1/255, or trainIds for Cityscapes


def _config(size: tuple[int, int], anomalies: tuple[int, int] = (1, 3), **overrides) -> SceneConfig:
    w, h = int(size[0]), int(size[1])
    return replace(SceneConfig(height=h, width=w, anomaly_count_range=anomalies), **overrides)


def _scenes(n: int, seed: int, cfg: SceneConfig):
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ss = np.random.SeedSequence(seed)
    for i, child in enumerate(ss.spawn(n)):
        yield i, generate_scene(np.random.default_rng(child), cfg)


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    """PNG / JPEG (quality 95) through the project's writer; WebP lossless (quality > 100)."""
    if path.suffix.lower() == ".webp":
        ok, buf = cv2.imencode(".webp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101])
        if not ok:
            raise ValueError(f"could not encode {path} as WebP")
        atomic_write_bytes(path, buf.tobytes())
    else:
        atomic_save_image(path, rgb, jpeg_quality=95)


def _road_roi(scene) -> np.ndarray:
    """Unified label restricted to the road region: road inliers 0, anomalies 1, the rest void."""
    out = np.full(scene.anomaly.shape, L.VOID, dtype=np.uint8)
    out[(scene.semantic == ROAD) & (scene.anomaly == 0)] = L.INLIER
    out[scene.anomaly == 1] = L.ANOMALY
    return out


def write_fishyscapes(root: str | Path, subset: str = "LostAndFound", n: int = 4, seed: int = 0,
                      size: tuple[int, int] = (128, 64)) -> list[WrittenSample]:
    if subset not in ("LostAndFound", "Static"):
        raise ValueError(f"unknown Fishyscapes subset {subset!r}")
    base = Path(root) / subset
    out = []
    for i, scene in _scenes(n, seed, _config(size)):
        name = f"{i:04d}"
        label = _road_roi(scene) if subset == "LostAndFound" else scene.anomaly.astype(np.uint8)
        atomic_save_image(base / "original" / f"{name}.png", scene.image)
        atomic_save_image(base / "labels" / f"{name}.png", label)
        out.append(WrittenSample(name, scene.image, label))
    return out


def write_road_anomaly(root: str | Path, n: int = 4, seed: int = 0,
                       size: tuple[int, int] = (128, 64)) -> list[WrittenSample]:
    root = Path(root)
    out = []
    for i, scene in _scenes(n, seed, _config(size, ego_hood_prob=0.0)):
        name = f"animals{i:02d}"
        label = (scene.anomaly == 1).astype(np.uint8)  # SynBoost release: 0 / 1, no void
        _save_rgb(root / "original" / f"{name}.jpg", scene.image)
        atomic_save_image(root / "labels" / f"{name}.png", label)
        out.append(WrittenSample(name, scene.image, label))
    return out


def write_smiyc(root: str | Path, track: str = "anomaly", n: int = 4, seed: int = 0,
                size: tuple[int, int] = (128, 64), unlabelled: int = 1) -> list[WrittenSample]:
    if track not in ("anomaly", "obstacle"):
        raise ValueError(f"unknown SegmentMeIfYouCan track {track!r}")
    root = Path(root)
    ext = ".jpg" if track == "anomaly" else ".webp"
    prefix = "validation" if track == "anomaly" else "validation_obstacle"
    out = []
    for i, scene in _scenes(n + unlabelled, seed, _config(size)):
        if i >= n:  # test images: published without labels
            _save_rgb(root / "images" / f"test_{i:04d}{ext}", scene.image)
            continue
        name = f"{prefix}{i:04d}"
        label = _road_roi(scene) if track == "obstacle" else scene.anomaly.astype(np.uint8)
        _save_rgb(root / "images" / f"{name}{ext}", scene.image)
        atomic_save_image(root / "labels_masks" / f"{name}_labels_semantic.png", label)
        colour = np.zeros(label.shape + (3,), np.uint8)
        colour[label == 1] = (255, 102, 0)
        colour[label == L.VOID] = (128, 128, 128)
        atomic_save_image(root / "labels_masks" / f"{name}_labels_semantic_color.png", colour)
        out.append(WrittenSample(name, scene.image, label))
    return sorted(out, key=lambda s: s.name)


def write_lostandfound(root: str | Path, split: str = "test", n: int = 5, seed: int = 0,
                       size: tuple[int, int] = (128, 64), labels: str = "train_ids",
                       sequences: Sequence[str] = LAF_TEST_SEQUENCES) -> list[WrittenSample]:
    """``labels``: ``"train_ids"``, ``"label_ids"`` or ``"both"`` (the reader prefers trainIds).

    Every third anomaly component (in scan order) is written as a "random non-hazard" (trainId 0,
    ignored by the evaluation) to exercise that rule.
    """
    if labels not in ("train_ids", "label_ids", "both"):
        raise ValueError(f"labels must be 'train_ids', 'label_ids' or 'both', got {labels!r}")
    root = Path(root)
    out = []
    for i, scene in _scenes(n, seed, _config(size)):
        seq = sequences[i % len(sequences)]
        stem = f"{seq}_{i // len(sequences):06d}_{30 * (i + 1):06d}"
        train = np.full(scene.anomaly.shape, L.VOID, dtype=np.uint8)
        train[(scene.semantic == ROAD) & (scene.anomaly == 0)] = L.LAF_TRAIN_ID_FREE
        ncc, cc = cv2.connectedComponents((scene.anomaly == 1).astype(np.uint8), connectivity=8)
        for c in range(1, ncc):
            train[cc == c] = L.LAF_TRAIN_ID_NON_HAZARD if c % 3 == 0 else L.LAF_TRAIN_ID_OBSTACLE
        atomic_save_image(root / "leftImg8bit" / split / seq / f"{stem}_leftImg8bit.png", scene.image)
        gt = root / "gtCoarse" / split / seq
        if labels in ("train_ids", "both"):
            atomic_save_image(gt / f"{stem}_gtCoarse_labelTrainIds.png", train)
        if labels in ("label_ids", "both"):
            ids = np.zeros_like(train)
            ids[train == L.LAF_TRAIN_ID_FREE] = LAF_LABEL_ID_FREE
            ids[train == L.LAF_TRAIN_ID_OBSTACLE] = LAF_LABEL_ID_OBSTACLE
            ids[train == L.LAF_TRAIN_ID_NON_HAZARD] = LAF_LABEL_ID_NON_HAZARD
            atomic_save_image(gt / f"{stem}_gtCoarse_labelIds.png", ids)
        out.append(WrittenSample(stem, scene.image, L.laf_train_ids_to_unified(train)))
    return sorted(out, key=lambda s: (s.name.rsplit("_", 2)[0], s.name))


def _train_to_label_ids() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # void -> 0 "unlabeled"
    for lab in L.CITYSCAPES_LABELS:
        if lab.train_id != L.IGNORE_LABEL and lab.label_id >= 0:
            lut[lab.train_id] = lab.label_id
    return lut


def write_cityscapes(root: str | Path, split: str = "val", n: int = 3, seed: int = 0,
                     size: tuple[int, int] = (128, 64), layout: str = "cityscapes",
                     labels: str = "train_ids") -> list[WrittenSample]:
    """``layout``: ``"cityscapes"`` (official tree) or ``"pebal_flat"``; ``labels``: ``"train_ids"``
    or ``"label_ids"`` (official layout only). Anomaly pixels carry the road trainId."""
    if layout not in ("cityscapes", "pebal_flat"):
        raise ValueError(f"layout must be 'cityscapes' or 'pebal_flat', got {layout!r}")
    if labels not in ("train_ids", "label_ids") or (layout == "pebal_flat" and labels != "train_ids"):
        raise ValueError(f"unsupported labels {labels!r} for layout {layout!r}")
    root = Path(root)
    cities = CITYSCAPES_CITIES.get(split, ("city",))
    lut = _train_to_label_ids()
    out = []
    for i, scene in _scenes(n, seed, _config(size, anomalies=(0, 1))):
        city = cities[i % len(cities)]
        stem = f"{city}_{i:06d}_{19 * (i + 1):06d}"
        train = scene.semantic.astype(np.uint8)
        if layout == "cityscapes":
            atomic_save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", scene.image)
            gt = root / "gtFine" / split / city
            if labels == "train_ids":
                atomic_save_image(gt / f"{stem}_gtFine_labelTrainIds.png", train)
            else:
                atomic_save_image(gt / f"{stem}_gtFine_labelIds.png", lut[train])
            atomic_save_image(gt / f"{stem}_gtFine_color.png", colorize_labels(train))  # ignored by readers
        else:
            atomic_save_image(root / "images" / "city_gt_fine" / split / f"{stem}_leftImg8bit.png", scene.image)
            atomic_save_image(root / "annotation" / "city_gt_fine" / split / f"{stem}_gtFine.png", train)
        out.append(WrittenSample(stem, scene.image, train))
    if layout == "cityscapes":
        return sorted(out, key=lambda s: (s.name.split("_", 1)[0], s.name))
    return sorted(out, key=lambda s: s.name)
