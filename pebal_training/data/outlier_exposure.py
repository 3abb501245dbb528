"""Outlier exposure ("AnomalyMix" in Tian et al., ECCV 2022): paste COCO objects onto Cityscapes scenes.

:func:`paste_outlier` is the paste itself; :class:`CityscapesCocoMix` is the mixed training set that
is rebuilt every epoch. Unlike the reference, everything is deterministic: the outlier subset of an
epoch is a function of ``(seed, epoch)`` and sample ``i`` of ``(seed, epoch, i)``, each drawn from its
own ``numpy.random.default_rng``. No global RNG is read, so any number of DataLoader workers and any
DDP rank produce bit-identical samples (give every rank the same ``seed``; the sampler splits the
indices).

Nothing here imports ROS.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from pebal_training.data.labels import OUTLIER_LABEL

#: Stream tags put first in every seed tuple so that the generators of different purposes never
#: collide (``SeedSequence`` treats trailing zeros as absent, so ``(s, e)`` equals ``(s, e, 0)``).
_STREAM_SUBSET = 1
_STREAM_SAMPLE = 2


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch`` (all arguments non-negative integers)."""
    return np.random.default_rng((_STREAM_SAMPLE, int(seed), int(epoch), int(index)))


def paste_outlier(scene_rgb: np.ndarray, scene_label: np.ndarray, obj_rgb: np.ndarray, obj_mask: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pastes the masked object onto the scene; returns new ``(rgb, label)`` arrays.

    1. crop the object image and mask to the bounding box of the mask;
    2. draw the top-left corner uniformly among the positions where the box fits in the scene,
       ``y in [0, H - h]`` and ``x in [0, W - w]`` (both inclusive);
    3. copy only the masked pixels, RGB from the object and label :data:`OUTLIER_LABEL` (254); no
       blending, scaling or colour change.

    Differences from the reference, on purpose: its scene index is drawn with an off-by-one upper
    bound, and it silently skips the paste when the scene is not 1024 x 2048; we do neither (any
    scene size works). A box larger than the scene (which cannot happen with COCO on 1024 x 2048
    Cityscapes) is clipped to a random scene-sized window of the box instead of failing. An empty
    mask returns unchanged copies of the scene.
    """
    scene_rgb = np.asarray(scene_rgb)
    scene_label = np.asarray(scene_label)
    obj_rgb = np.asarray(obj_rgb)
    mask = np.asarray(obj_mask).astype(bool, copy=False)
    if scene_rgb.ndim != 3 or scene_rgb.shape[:2] != scene_label.shape:
        raise ValueError(f"scene image {scene_rgb.shape} and label {scene_label.shape} do not match")
    if obj_rgb.ndim != 3 or obj_rgb.shape[:2] != mask.shape:
        raise ValueError(f"object image {obj_rgb.shape} and mask {mask.shape} do not match")
    out_rgb = scene_rgb.copy()
    out_label = scene_label.copy()
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out_rgb, out_label
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    H, W = scene_label.shape
    # clip an over-sized box to a random window that fits (never needed for COCO on Cityscapes)
    if y1 - y0 > H:
        y0 += int(rng.integers(0, (y1 - y0) - H + 1))
        y1 = y0 + H
    if x1 - x0 > W:
        x0 += int(rng.integers(0, (x1 - x0) - W + 1))
        x1 = x0 + W
    box_mask = mask[y0:y1, x0:x1]
    box_rgb = obj_rgb[y0:y1, x0:x1]
    h, w = box_mask.shape
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    out_rgb[top:top + h, left:left + w][box_mask] = box_rgb[box_mask]
    out_label[top:top + h, left:left + w][box_mask] = OUTLIER_LABEL
    return out_rgb, out_label


def _split_sample(sample: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Accepts ``dict(image, label[, name])`` or a ``(image, label[, ...])`` sequence."""
    if isinstance(sample, dict):
        return sample["image"], sample["label"], str(sample.get("name", ""))
    return sample[0], sample[1], ""


class CityscapesCocoMix(Dataset):
    """Inlier scenes plus an outlier-exposure subset re-drawn every epoch, as the reference's class of that name.

    ``len = N + M`` with ``N = len(inlier_dataset)`` and ``M = int(outlier_fraction * N)``, at least 1
    when an outlier source with any image is given (``M = 0`` without one). Sample ``i < N`` is inlier
    scene ``i``; sample ``N + j`` pastes outlier ``subset[j]`` onto an inlier scene drawn uniformly
    from ``0 .. N-1``. ``subset`` is a permutation of the outlier source truncated to ``M``, drawn
    from ``(seed, epoch)``; when the source holds fewer than ``M`` images, further permutations are
    appended so the length stays as specified (objects then repeat within the epoch).

    Items are dicts: ``image``, ``label``, ``is_ood`` (bool), ``name`` (str) and ``index`` (int).
    With a ``transform`` (e.g. :class:`~pebal_training.data.transforms.TrainTransform`, called as
    ``transform(rgb, label, rng)`` and returning ``(image, label, is_ood)``), ``image``/``label`` are
    what it returns; without one they are the uint8 arrays and ``is_ood`` is ``254 in label``.

    Call :meth:`set_epoch` before each epoch (before creating the DataLoader iterator; with
    ``persistent_workers=True`` the workers keep the epoch their copy had when they started).
    An inlier sample that its dataset skips (returns ``None``) is replaced by the next index.
    """

    def __init__(self, inlier_dataset: Dataset, outlier_source: Dataset | None = None,
                 outlier_fraction: float = 0.1, transform: Callable | None = None, seed: int = 0) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if outlier_fraction < 0:
            raise ValueError(f"outlier_fraction must be >= 0, got {outlier_fraction}")
        self.inlier = inlier_dataset
        self.outliers = outlier_source
        self.transform = transform
        self.seed = int(seed)
        self.num_inlier = len(inlier_dataset)
        if self.num_inlier == 0:
            raise ValueError("the inlier dataset is empty")
        n_source = 0 if outlier_source is None else len(outlier_source)
        self.num_outlier = max(1, int(outlier_fraction * self.num_inlier)) if n_source else 0
        self.epoch = 0
        self.outlier_indices: np.ndarray = np.zeros(0, dtype=np.int64)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Selects epoch ``epoch``'s outlier subset (deterministic in ``(seed, epoch)``)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        self.epoch = int(epoch)
        if not self.num_outlier:
            self.outlier_indices = np.zeros(0, dtype=np.int64)
            return
        rng = np.random.default_rng((_STREAM_SUBSET, self.seed, self.epoch))
        n_source = len(self.outliers)
        reps = -(-self.num_outlier // n_source)
        order = np.concatenate([rng.permutation(n_source) for _ in range(reps)])
        self.outlier_indices = order[: self.num_outlier].astype(np.int64)

    def __len__(self) -> int:
        return self.num_inlier + self.num_outlier

    def _inlier(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        for k in range(self.num_inlier):
            sample = self.inlier[(index + k) % self.num_inlier]
            if sample is not None:
                return _split_sample(sample)
        raise RuntimeError("every inlier sample was skipped")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = sample_rng(self.seed, self.epoch, index)
        if index < self.num_inlier:
            rgb, label, name = self._inlier(index)
        else:
            obj_idx = int(self.outlier_indices[index - self.num_inlier])
            obj_rgb, obj_mask = self.outliers[obj_idx]
            scene_idx = int(rng.integers(0, self.num_inlier))
            rgb, label, scene_name = self._inlier(scene_idx)
            rgb, label = paste_outlier(rgb, label, obj_rgb, obj_mask, rng)
            obj_name = getattr(self.outliers, "names", None)
            obj_name = obj_name[obj_idx] if obj_name is not None else str(obj_idx)
            name = f"{scene_name}+{obj_name}"
        if self.transform is not None:
            image, label, is_ood = self.transform(rgb, label, rng)
        else:
            image, is_ood = rgb, bool((np.asarray(label) == OUTLIER_LABEL).any())
        return {"image": image, "label": label, "is_ood": bool(is_ood), "name": name, "index": index}


# --------------------------------------------------------------------------------------------------
# global RNG seeding (for code that reads the global generators; the datasets above do not)


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's legacy global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seeds ``random`` and NumPy from the worker's torch seed.

    torch already gives each worker ``base_seed + worker_id``; this propagates it to the other
    global generators so that they differ between workers and repeat across runs when the
    DataLoader's ``generator`` is seeded (see :func:`loader_generator`).
    """
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def loader_generator(seed: int) -> torch.Generator:
    """A seeded ``torch.Generator`` for a DataLoader (shuffle order and worker base seeds)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
