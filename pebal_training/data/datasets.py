"""Readers for the real dataset layouts, exactly as the datasets ship: the one place callers import from.

* :class:`CityscapesSegmentation` (:mod:`.cityscapes`): the official ``leftImg8bit/`` + ``gtFine/`` tree,
  or PEBAL's flat ``images/city_gt_fine/`` + ``annotation/city_gt_fine/`` layout. Items:
  ``dict(image, label, name)`` with Cityscapes trainIds (0..18, 255 void; optionally 254 outlier pixels).
* Anomaly benchmarks (:data:`ANOMALY_DATASETS`, :mod:`.anomaly_benchmarks`): Fishyscapes L&F / Static,
  LostAndFound test, Road Anomaly, SegmentMeIfYouCan RoadAnomaly21 / RoadObstacle21. Items:
  ``dict(image, label, name)`` with ``image`` H x W x 3 uint8 RGB and ``label`` H x W uint8 in the
  unified encoding 0 inlier, 1 anomaly, 255 void (see :mod:`pebal_training.data.labels`).
* :class:`CocoOutlierSource` (:mod:`.coco_outliers`): COCO outlier proxies (selected as Meta-OoD's COCO
  preparation script does); items ``(rgb uint8, mask bool)``.

File reading, pairing by name, error and skip handling (:class:`DatasetError`, ``on_error``,
:func:`collate_skip_none`) are shared by all readers and live in :mod:`.paired`.

Nothing here imports ROS.
"""
from __future__ import annotations

from pebal_training.data.anomaly_benchmarks import (ANOMALY_DATASETS, IMAGES_DIR, LABELS_MASKS_DIR,
                                                    LABELS_MASKS_NAMES, FishyscapesDataset, LostAndFoundDataset,
                                                    RoadAnomalyDataset, SegmentMeIfYouCanDataset,
                                                    has_labels_masks_layout, open_anomaly_dataset)
from pebal_training.data.cityscapes import CityscapesSegmentation
from pebal_training.data.coco_outliers import (DEFAULT_MIN_SIZE, EXCLUDED_COCO80, EXCLUDED_COCO80_INDICES,
                                               EXCLUDED_COCO_NAMES, CocoOutlierSource, coco_segmentations_to_mask,
                                               parse_yolo_seg, rasterize_yolo_polygons)
from pebal_training.data.paired import (IMAGE_EXTS, ON_ERROR, DatasetError, PairedDataset, collate_skip_none,
                                        read_label, read_rgb)

__all__ = [
    "ANOMALY_DATASETS", "DEFAULT_MIN_SIZE", "EXCLUDED_COCO80", "EXCLUDED_COCO80_INDICES", "EXCLUDED_COCO_NAMES",
    "IMAGES_DIR", "IMAGE_EXTS", "LABELS_MASKS_DIR", "LABELS_MASKS_NAMES", "ON_ERROR",
    "CityscapesSegmentation", "CocoOutlierSource", "DatasetError", "FishyscapesDataset", "LostAndFoundDataset",
    "PairedDataset", "RoadAnomalyDataset", "SegmentMeIfYouCanDataset",
    "coco_segmentations_to_mask", "collate_skip_none", "has_labels_masks_layout", "open_anomaly_dataset",
    "parse_yolo_seg", "rasterize_yolo_polygons", "read_label", "read_rgb",
]
