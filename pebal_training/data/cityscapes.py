"""Cityscapes reader: the official ``leftImg8bit/`` + ``gtFine/`` tree or PEBAL's flat layout."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pebal_training.data import labels as L
from pebal_training.data.paired import (DatasetError, PairedDataset, list_files, no_label_error, pair_by_stem,
                                        require_dir)


class CityscapesSegmentation(PairedDataset):
    """Cityscapes images with trainId labels (0..18, 255 void).

    Two layouts are recognised from ``root``:

    * official: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
      ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png``; where a trainIds file is absent the
      ``<stem>_gtFine_labelIds.png`` beside it is converted on the fly
      (:func:`~pebal_training.data.labels.label_ids_to_train_ids`);
    * PEBAL flat (the reference code's layout): ``images/city_gt_fine/<split>/*.png`` with
      ``annotation/city_gt_fine/<split>/<stem>_gtFine.png`` (trainIds), ``<stem>`` being the image
      name truncated before ``_leftImg8bit``.

    ``transform``, if given, is called as ``transform(image, label)`` and must return the pair.

    ``allow_outlier_label=True`` (config ``data.inlier_outlier_label``) also accepts 254
    (:data:`~pebal_perception.core.constants.OUTLIER_LABEL`) in a ``labelTrainIds`` file: outlier
    pixels of an inlier frame (e.g. objects pasted on its road), which the training losses treat
    exactly as pasted outlier-exposure pixels. By default a 254 is a :class:`DatasetError`.
    """

    title = "Cityscapes"
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: str | Path, split: str = "train", on_error: str = "raise",
                 transform: Callable | None = None, allow_outlier_label: bool = False) -> None:
        super().__init__(on_error, transform)
        self.root = Path(root)
        self.split = split
        self.allow_outlier_label = bool(allow_outlier_label)
        if (self.root / "leftImg8bit").is_dir():
            self.layout = "cityscapes"
            self._scan_official()
        elif (self.root / "images" / "city_gt_fine").is_dir():
            self.layout = "pebal_flat"
            self._scan_flat()
        else:
            raise DatasetError(
                f"{self.root}: not a Cityscapes root (expected leftImg8bit/<split>/<city>/*_leftImg8bit.png "
                "with gtFine/<split>/<city>/, or the flat images/city_gt_fine/<split>/*.png with "
                "annotation/city_gt_fine/<split>/)")

    def _scan_official(self) -> None:
        img_dir = require_dir(self.root / "leftImg8bit" / self.split,
                               f"leftImg8bit/{self.split}/<city>/*{self.IMAGE_SUFFIX}")
        gt_dir = require_dir(self.root / "gtFine" / self.split,
                              f"gtFine/{self.split}/<city>/*_gtFine_labelTrainIds.png beside leftImg8bit/")
        images = sorted(p for p in img_dir.glob(f"*/*{self.IMAGE_SUFFIX}") if p.is_file())
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected <city>/*{self.IMAGE_SUFFIX})")
        missing = []
        for img in images:
            stem = img.name[: -len(self.IMAGE_SUFFIX)]
            city_gt = gt_dir / img.parent.name
            train_ids = city_gt / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = city_gt / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.samples.append((img, train_ids, stem))
            elif label_ids.is_file():  # converted on read
                self.samples.append((img, label_ids, stem))
            else:
                missing.append(f"{img.parent.name}/{img.name}")
        if missing:
            raise no_label_error(gt_dir, missing, "<city>/<stem>_gtFine_labelTrainIds.png or _gtFine_labelIds.png")

    def _scan_flat(self) -> None:
        img_dir = require_dir(self.root / "images" / "city_gt_fine" / self.split,
                               f"images/city_gt_fine/{self.split}/*.png")
        ann_dir = require_dir(self.root / "annotation" / "city_gt_fine" / self.split,
                               f"annotation/city_gt_fine/{self.split}/<stem>_gtFine.png beside images/")
        images = list_files(img_dir, (".png",))
        if not images:
            raise DatasetError(f"{img_dir}: no images (expected *.png)")

        def label_name(img: Path) -> str:
            return f"{img.name.split('_leftImg8bit')[0] if '_leftImg8bit' in img.name else img.stem}_gtFine.png"

        pairs, _ = pair_by_stem(images, ann_dir, label_name, "<stem>_gtFine.png")
        self.samples = [(img, lab, lab.name[: -len("_gtFine.png")]) for img, lab, _ in pairs]

    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        if label_path.name.endswith("_gtFine_labelIds.png"):
            return L.label_ids_to_train_ids(raw)
        return L.check_train_ids(raw, allow_outlier=self.allow_outlier_label)
