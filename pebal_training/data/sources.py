"""Where the fine-tuning samples come from: inlier scenes (Cityscapes or procedural), outlier objects
(COCO-style sources or synthetic blobs) and the validation set, each built from the run's config.

Synthetic sources need no files: every item is a pure function of ``(seed, index)``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from pebal_perception.core.models import get_model_spec
from pebal_training.config import FinetuneConfig
from pebal_training.data.outlier_exposure import CityscapesCocoMix
from pebal_training.data.transforms import TrainTransform


def _scene_seed(seed: int, index: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence((int(stream), int(seed), int(index)))


class SyntheticScenes(Dataset):
    """Procedural street scenes without anomalies: item ``i`` = ``dict(image, label, name)`` generated
    from ``(seed, i)`` (deterministic, cached per process). With ``anomalies=True`` items also carry
    ``anomaly`` (0 inlier, 1 anomaly, 255 void), for validation."""

    def __init__(self, num_scenes: int, height: int, width: int, seed: int = 0, anomalies: bool = False) -> None:
        from pebal_training.data.synthetic import SceneConfig

        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
        self.num_scenes = int(num_scenes)
        self.seed = int(seed)
        self.anomalies = bool(anomalies)
        self.config = SceneConfig(height=int(height), width=int(width),
                                  anomaly_count_range=(1, 3) if anomalies else (0, 0))
        self.config.validate()
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_scenes:
            raise IndexError(index)
        if index not in self._cache:
            from pebal_training.data.synthetic import generate_scene

            scene = generate_scene(np.random.default_rng(_scene_seed(self.seed, index, 3 if self.anomalies else 1)),
                                   self.config)
            item = {"image": scene.image, "label": scene.semantic, "name": f"synthetic_{index:05d}"}
            if self.anomalies:
                item["anomaly"] = scene.anomaly
            self._cache[index] = item
        return self._cache[index]


class SyntheticOutliers(Dataset):
    """Random textured blobs standing in for COCO objects: ``source[i] -> (rgb uint8, mask bool)``,
    a pure function of ``(seed, i)``. Object size is 10-40 % of ``size``."""

    def __init__(self, num_objects: int, size: int = 128, seed: int = 0) -> None:
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        self.num_objects = int(num_objects)
        self.size = max(8, int(size))
        self.seed = int(seed)
        self.names = [f"blob_{i:04d}" for i in range(self.num_objects)]

    def __len__(self) -> int:
        return self.num_objects

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        rng = np.random.default_rng(_scene_seed(self.seed, index, 2))
        s = self.size
        side = max(4, int(s * rng.uniform(0.1, 0.4)))
        mask = np.zeros((side, side), np.uint8)
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.25, 0.5, n) * side
        pts = np.stack([side / 2 + rad * np.cos(ang), side / 2 + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, 40, (side, side, 1)) * rng.uniform(0.2, 1.0, 3)
        rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
        return rgb, mask.astype(bool)


# --------------------------------------------------------------------------------------------------
# datasets from the config


def build_inlier_dataset(cfg: FinetuneConfig) -> Dataset:
    """Cityscapes (``data.root``) or synthetic scenes; raises DatasetError for a missing folder. With
    ``data.inlier_outlier_label`` the Cityscapes labels may hold 254 (outlier pixels of an inlier frame)."""
    if cfg.data.kind == "cityscapes":
        from pebal_training.data.datasets import CityscapesSegmentation

        return CityscapesSegmentation(cfg.data.root, split=cfg.data.split, on_error=cfg.data.on_error,
                                      allow_outlier_label=cfg.data.inlier_outlier_label)
    s = cfg.data.synthetic
    return SyntheticScenes(s.num_scenes, s.height, s.width, seed=s.seed)


class OutlierView(Dataset):
    """A subset (by name) of an outlier source, objects optionally resized by ``scale``."""

    def __init__(self, source: Dataset, include: Sequence[str] | None = None, scale: float = 1.0) -> None:
        names = list(getattr(source, "names", [str(i) for i in range(len(source))]))
        if include is not None:
            wanted = [str(n) for n in include]
            missing = sorted(set(wanted) - set(names))
            if missing:
                from pebal_training.data.datasets import DatasetError

                raise DatasetError(f"data.outliers.include: {', '.join(missing[:5])} not in the outlier source "
                                   f"({getattr(source, 'root', '')})")
            self.indices = [names.index(n) for n in wanted]
        else:
            self.indices = list(range(len(names)))
        if scale <= 0:
            raise ValueError(f"data.outliers.scale must be > 0, got {scale}")
        self.source = source
        self.scale = float(scale)
        self.names = [names[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, mask = self.source[self.indices[index]]
        if self.scale != 1.0:
            import cv2

            h, w = mask.shape
            size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return rgb, mask


def build_outlier_source(cfg: FinetuneConfig) -> Dataset | None:
    o = cfg.data.outliers
    if o.kind == "none":
        return None
    if o.kind == "synthetic":
        s = cfg.data.synthetic
        source: Dataset = SyntheticOutliers(s.num_outliers, size=min(s.height, s.width), seed=s.seed)
    else:
        from pebal_training.data.datasets import CocoOutlierSource

        fmt = {"coco_json": "coco", "yolo": "yolo", "ood_seg": "ood_seg"}[o.kind]
        source = CocoOutlierSource(o.root, fmt=fmt, split=o.split, min_size=o.min_size)
    if o.include is not None or o.scale != 1.0:
        source = OutlierView(source, o.include, o.scale)
    return source


def build_train_dataset(cfg: FinetuneConfig) -> CityscapesCocoMix:
    transform = TrainTransform(crop_size=cfg.data.crop_size, scales=cfg.data.scales, flip_prob=cfg.data.flip_prob,
                               mean=get_model_spec(cfg.model.name).mean, std=get_model_spec(cfg.model.name).std)
    return CityscapesCocoMix(build_inlier_dataset(cfg), build_outlier_source(cfg),
                             outlier_fraction=cfg.data.outliers.fraction, transform=transform, seed=cfg.train.seed)


class AnomalyLabels(Dataset):
    """Scenes generated with anomalies as an anomaly benchmark: item ``i`` = ``dict(image, label, name)``
    with ``label`` the scene's anomaly map (0 inlier, 1 anomaly, 255 void)."""

    def __init__(self, scenes: SyntheticScenes) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.scenes[index]
        return {"image": item["image"], "label": item["anomaly"], "name": item["name"]}


def build_validation_dataset(cfg: FinetuneConfig) -> Dataset:
    """The configured validation set (``validation.kind``), items ``dict(image, label 0/1/255, name)``."""
    v = cfg.validation
    if v.kind == "synthetic":
        s = cfg.data.synthetic
        return AnomalyLabels(SyntheticScenes(v.num_scenes, s.height, s.width, seed=v.seed, anomalies=True))
    from pebal_training.data.datasets import open_anomaly_dataset

    return open_anomaly_dataset(v.kind, v.root)
