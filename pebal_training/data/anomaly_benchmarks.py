"""Anomaly-benchmark readers: Fishyscapes L&F / Static, LostAndFound, Road Anomaly, SegmentMeIfYouCan.

Items are ``dict(image, label, name)`` with ``image`` H x W x 3 uint8 RGB and ``label`` H x W uint8 in
the unified encoding 0 inlier, 1 anomaly, 255 void (see :mod:`pebal_training.data.labels`).
:func:`open_anomaly_dataset` opens one by its :data:`ANOMALY_DATASETS` name.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pebal_training.data import labels as L
from pebal_training.data.paired import (IMAGE_EXTS, DatasetError, PairedDataset, list_files, no_label_error,
                                        pair_by_stem, require_dir)

# --------------------------------------------------------------------------------------------------
# the images/ + labels_masks/ layout

#: The layout most anomaly-segmentation repositories distribute their validation sets in:
#: ``<set>/images/N.<ext>`` with ``<set>/labels_masks/N.png`` (SMIYC: ``N_labels_semantic.png``).
IMAGES_DIR, LABELS_MASKS_DIR = "images", "labels_masks"
LABELS_MASKS_NAMES = ("{stem}.png", "{stem}_labels_semantic.png")


def has_labels_masks_layout(root: Path) -> bool:
    """True when ``root`` holds the ``images/`` + ``labels_masks/`` layout."""
    return (root / IMAGES_DIR).is_dir() and (root / LABELS_MASKS_DIR).is_dir()


def scan_labels_masks(root: Path, title: str,
                      missing: str = "raise") -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """Pairs ``images/<stem>.*`` (PNG, JPEG, WebP; other files are left out) with ``labels_masks/<stem>.png``
    or ``labels_masks/<stem>_labels_semantic.png``; returns (pairs, unlabelled image names)."""
    img_dir, lab_dir = root / IMAGES_DIR, root / LABELS_MASKS_DIR
    images = list_files(img_dir, IMAGE_EXTS)
    if not images:
        raise DatasetError(f"{img_dir}: no images (expected {title} images/*.png, *.jpg or *.webp)")

    def label_name(img: Path) -> str:  # the first name that exists (the first one when none does)
        names = [pattern.format(stem=img.stem) for pattern in LABELS_MASKS_NAMES]
        return next((name for name in names if (lab_dir / name).is_file()), names[0])

    pairs, unlabelled = pair_by_stem(images, lab_dir, label_name,
                                     "labels_masks/<stem>.png or <stem>_labels_semantic.png", missing=missing)
    if not pairs:
        raise DatasetError(f"{lab_dir}: none of the {len(images)} images has a label "
                           "(expected <stem>.png or <stem>_labels_semantic.png)")
    return pairs, unlabelled


# --------------------------------------------------------------------------------------------------
# readers


class FishyscapesDataset(PairedDataset):
    """Fishyscapes L&F / Static validation. Two layouts are recognised:

    * the SynBoost-preprocessed release (which the reference evaluates on): ``<root>/<subset>/original/*.png``
      with ``<root>/<subset>/labels/<same name>.png``; the other SynBoost folders (entropy, semantic, ...)
      are ignored;
    * the layout most anomaly-segmentation repositories distribute: ``<root>/images/N.<png|jpg|webp>``
      with ``<root>/labels_masks/N.png`` (``root`` is the set's own folder).

    Labels are already 0 / 1 / 255.
    """

    title = "Fishyscapes"
    SUBSETS = ("LostAndFound", "Static")

    def __init__(self, root: str | Path, subset: str = "LostAndFound", on_error: str = "raise",
                 transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        if subset not in self.SUBSETS:
            raise DatasetError(f"unknown Fishyscapes subset {subset!r} (expected one of {self.SUBSETS})")
        self.root = Path(root)
        self.subset = subset
        if has_labels_masks_layout(self.root):
            self.layout = "labels_masks"
            self.samples, _ = scan_labels_masks(self.root, f"Fishyscapes {subset}")
            return
        self.layout = "synboost"
        base = self.root / subset
        if not base.is_dir() and self.root.name == subset and (self.root / "original").is_dir():
            base = self.root  # root already points at the subset folder
        require_dir(base, f"{subset}/original/*.png and {subset}/labels/*.png under the Fishyscapes root, "
                           "or images/* with labels_masks/*.png")
        img_dir = require_dir(base / "original", "original/*.png")
        lab_dir = require_dir(base / "labels", "labels/*.png beside original/")
        images = list_files(img_dir, (".png",))
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected original/*.png)")
        self.samples, _ = pair_by_stem(images, lab_dir, lambda p: f"{p.stem}.png", "labels/<name>.png")

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        return L.fishyscapes_to_unified(raw)


class RoadAnomalyDataset(PairedDataset):
    """Road Anomaly: the SynBoost-preprocessed release (``original/*.jpg`` with ``labels/<stem>.png``) or
    the ``images/N.jpg`` + ``labels_masks/N.png`` layout of most anomaly-segmentation repositories.

    ``encoding="synboost"`` expects 0 / 1 labels; ``"epfl"`` reads the original release's 0 / 2
    encoding; ``"auto"`` (the default) tells them apart per file (see
    :func:`~pebal_training.data.labels.road_anomaly_to_unified`).
    """

    title = "Road Anomaly"

    ENCODINGS = ("auto", "synboost", "epfl")

    def __init__(self, root: str | Path, encoding: str = "auto", on_error: str = "raise",
                 transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        if encoding not in self.ENCODINGS:
            raise ValueError(f"unknown Road Anomaly encoding {encoding!r} (expected one of {self.ENCODINGS})")
        self.root = Path(root)
        self.encoding = encoding
        if has_labels_masks_layout(self.root):
            self.layout = "labels_masks"
            self.samples, _ = scan_labels_masks(self.root, "Road Anomaly")
            return
        self.layout = "synboost"
        img_dir = require_dir(self.root / "original", "original/*.jpg and labels/*.png under the Road Anomaly root, "
                               "or images/* with labels_masks/*.png")
        lab_dir = require_dir(self.root / "labels", "labels/*.png beside original/")
        images = list_files(img_dir, IMAGE_EXTS)
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected original/*.jpg)")
        self.samples, _ = pair_by_stem(images, lab_dir, lambda p: f"{p.stem}.png", "labels/<stem>.png")

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        return L.road_anomaly_to_unified(raw, self.encoding)


class LostAndFoundDataset(PairedDataset):
    """LostAndFound (``test`` split by default): ``leftImg8bit/<split>/<seq>/<stem>_leftImg8bit.png``
    with ``gtCoarse/<split>/<seq>/<stem>_gtCoarse_labelTrainIds.png``, or the ``_gtCoarse_labelIds.png``
    beside it converted with the LostAndFound table. Unified: free road 0, obstacle 1, the rest 255.
    The ``images/`` + ``labels_masks/`` layout of most anomaly-segmentation repositories (labels already
    0 / 1 / 255) is read too.
    """

    title = "LostAndFound"
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: str | Path, split: str = "test", on_error: str = "raise",
                 transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        self.root = Path(root)
        self.split = split
        if has_labels_masks_layout(self.root):
            self.layout = "labels_masks"
            self.samples, _ = scan_labels_masks(self.root, "LostAndFound")
            return
        self.layout = "cityscapes"
        img_dir = require_dir(self.root / "leftImg8bit" / split,
                               f"leftImg8bit/{split}/<sequence>/*{self.IMAGE_SUFFIX}")
        gt_dir = require_dir(self.root / "gtCoarse" / split,
                              f"gtCoarse/{split}/<sequence>/*_gtCoarse_labelTrainIds.png beside leftImg8bit/")
        images = sorted(p for p in img_dir.glob(f"*/*{self.IMAGE_SUFFIX}") if p.is_file())
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected <sequence>/*{self.IMAGE_SUFFIX})")
        missing = []
        for img in images:
            stem = img.name[: -len(self.IMAGE_SUFFIX)]
            seq_gt = gt_dir / img.parent.name
            for candidate in (seq_gt / f"{stem}_gtCoarse_labelTrainIds.png", seq_gt / f"{stem}_gtCoarse_labelIds.png"):
                if candidate.is_file():
                    self.samples.append((img, candidate, stem))
                    break
            else:
                missing.append(f"{img.parent.name}/{img.name}")
        if missing:
            raise no_label_error(gt_dir, missing,
                                  "<sequence>/<stem>_gtCoarse_labelTrainIds.png or _gtCoarse_labelIds.png")

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        if self.layout == "labels_masks":
            return L.fishyscapes_to_unified(raw)
        if label_path.name.endswith("_gtCoarse_labelIds.png"):
            return L.laf_label_ids_to_unified(raw)
        return L.laf_train_ids_to_unified(raw)


class SegmentMeIfYouCanDataset(PairedDataset):
    """SegmentMeIfYouCan RoadAnomaly21 (``track="anomaly"``) / RoadObstacle21 (``track="obstacle"``).

    ``root`` is the ``dataset_AnomalyTrack`` / ``dataset_ObstacleTrack`` folder: ``images/*`` (.jpg,
    .png or .webp) with ``labels_masks/<stem>_labels_semantic.png`` (0 not anomaly, 1 anomaly,
    255 void; the ``*_labels_semantic_color.png`` visualisations are ignored).

    The benchmark only publishes labels for its validation images; the test images in the same
    ``images/`` folder have none. ``unlabelled="drop"`` (the default here) leaves those out and lists
    them in ``unlabelled``; ``unlabelled="raise"`` treats them as an incomplete tree.
    """

    title = "SegmentMeIfYouCan"
    TRACKS = {"anomaly": "RoadAnomaly21", "obstacle": "RoadObstacle21"}

    def __init__(self, root: str | Path, track: str = "anomaly", unlabelled: str = "drop",
                 on_error: str = "raise", transform: Callable | None = None) -> None:
        super().__init__(on_error, transform)
        if track not in self.TRACKS:
            raise DatasetError(f"unknown SegmentMeIfYouCan track {track!r} (expected one of {tuple(self.TRACKS)})")
        if unlabelled not in ("drop", "raise"):
            raise ValueError(f"unlabelled must be 'drop' or 'raise', got {unlabelled!r}")
        self.root = Path(root)
        self.track = track
        require_dir(self.root / IMAGES_DIR,
                     f"images/* and labels_masks/*_labels_semantic.png ({self.TRACKS[track]})")
        require_dir(self.root / LABELS_MASKS_DIR, "labels_masks/*_labels_semantic.png beside images/")
        self.layout = "labels_masks"
        self.samples, self.unlabelled = scan_labels_masks(self.root, self.TRACKS[track], missing=unlabelled)

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        return L.smiyc_to_unified(raw)


#: name -> factory ``(root, **options) -> dataset`` for every anomaly benchmark.
ANOMALY_DATASETS: dict[str, Callable[..., PairedDataset]] = {
    "fishyscapes_laf": partial(FishyscapesDataset, subset="LostAndFound"),
    "fishyscapes_static": partial(FishyscapesDataset, subset="Static"),
    "lostandfound": LostAndFoundDataset,
    "road_anomaly": RoadAnomalyDataset,
    "smiyc_anomaly": partial(SegmentMeIfYouCanDataset, track="anomaly"),
    "smiyc_obstacle": partial(SegmentMeIfYouCanDataset, track="obstacle"),
}


def open_anomaly_dataset(name: str, root: str | Path, **options: Any) -> PairedDataset:
    """Opens the anomaly benchmark ``name`` (a key of :data:`ANOMALY_DATASETS`) at ``root``."""
    try:
        factory = ANOMALY_DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown anomaly dataset {name!r} "
                           f"(expected one of {', '.join(ANOMALY_DATASETS)})") from None
    return factory(root, **options)

