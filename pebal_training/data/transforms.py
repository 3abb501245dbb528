"""Training / evaluation preprocessing (the reference code's ``TrainPre``).

:class:`TrainTransform` is applied identically to plain inlier samples and to outlier-exposure samples,
*after* the paste. Every random choice comes from an explicit ``numpy.random.Generator`` passed by the
caller, so a sample is a pure function of (input, generator state) and identical in any DataLoader
worker or DDP rank.

Steps, in order (defaults are the reference's):

1. horizontal flip with probability 0.8. The reference flips when ``U(0,1) >= 0.2``, which reads like
   a coin toss but flips 80 % of the samples; we keep the code's behaviour (``flip_prob=0.8``);
2. random scale drawn uniformly from ``{0.5, 0.75, 1.0, 1.5, 1.75, 2.0}``: image bilinear, label
   nearest (so 254 outlier pixels and 255 void survive unchanged);
3. normalise: RGB / 255, minus ImageNet mean, divided by ImageNet std;
4. random crop (900 x 900 by default); a side shorter than the crop is padded symmetrically, the
   image with 0 (in normalised space), the label with 255. The crop offset is uniform over all
   positions that keep the crop inside the image (``0 .. size - crop`` inclusive). The reference
   draws it with ``random.randint(0, size - crop + 1)``, whose inclusive upper bound can yield a crop
   one row/column short that then gets padded; we do not reproduce that off-by-one;
5. HWC -> CHW; the image becomes a float32 tensor, the label an int64 tensor;
6. ``is_ood`` = the cropped label contains 254. A pasted object can be cropped away; that sample
   then counts as an inlier image, as in the reference.

The reference also computes a Canny edge map that is never used; we don't.

The crop is taken before normalising (per-pixel normalisation commutes with cropping), which gives the
same result while touching far fewer pixels. Nothing here imports ROS.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from pebal_perception.core.constants import IMAGENET_MEAN, IMAGENET_STD
from pebal_training.data.labels import IGNORE_LABEL, OUTLIER_LABEL

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)
DEFAULT_CROP_SIZE = 900
DEFAULT_FLIP_PROB = 0.8


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"crop size must be positive, got {size!r}")
    return h, w


def _check_pair(rgb: np.ndarray, label: np.ndarray | None) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
    if label is not None and label.shape != rgb.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and label {label.shape} differ in size")


def normalize_image(rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 RGB (H x W x 3) -> float32 ``(rgb / 255 - mean) / std``."""
    out = rgb.astype(np.float32) / np.float32(255.0)
    out -= np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return out


def _crop_window(size: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Start and length of the crop along one axis (uniform over valid offsets)."""
    if size > crop:
        start = int(rng.integers(0, size - crop + 1))
        return start, crop
    return 0, size


def _symmetric_pad(array: np.ndarray, out_h: int, out_w: int, value: float) -> np.ndarray:
    h, w = array.shape[:2]
    if h == out_h and w == out_w:
        return array
    top = (out_h - h) // 2
    left = (out_w - w) // 2
    out = np.full((out_h, out_w) + array.shape[2:], value, dtype=array.dtype)
    out[top:top + h, left:left + w] = array
    return out


class TrainTransform:
    """The reference's ``TrainPre`` training augmentation; ``__call__(rgb, label, rng) -> (image, label, is_ood)``.

    ``rgb``: H x W x 3 uint8; ``label``: H x W integer (trainIds, 254 outliers, 255 void).
    Returns a float32 tensor ``3 x ch x cw``, an int64 tensor ``ch x cw`` and a Python bool.
    """

    def __init__(self, crop_size: int | Sequence[int] = DEFAULT_CROP_SIZE,
                 scales: Sequence[float] = DEFAULT_SCALES, flip_prob: float = DEFAULT_FLIP_PROB,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 ignore_label: int = IGNORE_LABEL) -> None:
        self.crop_size = _pair(crop_size)
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = float(flip_prob)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.ignore_label = int(ignore_label)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scales={self.scales}, "
                f"flip_prob={self.flip_prob})")

    def __call__(self, rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        rgb = np.asarray(rgb)
        label = np.asarray(label)
        _check_pair(rgb, label)

        # 1. flip: the reference flips when U >= 0.2, i.e. with probability 0.8.
        if rng.random() >= 1.0 - self.flip_prob:
            rgb = rgb[:, ::-1]
            label = label[:, ::-1]

        # 2. random scale.
        scale = self.scales[int(rng.integers(0, len(self.scales)))]
        if scale != 1.0:
            h, w = label.shape
            sh, sw = max(1, int(h * scale)), max(1, int(w * scale))
            rgb = cv2.resize(np.ascontiguousarray(rgb), (sw, sh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(np.ascontiguousarray(label), (sw, sh), interpolation=cv2.INTER_NEAREST)

        # 4. random crop (taken before 3., see the module docstring), then 3. normalise, then pad.
        ch, cw = self.crop_size
        h, w = label.shape
        y0, hh = _crop_window(h, ch, rng)
        x0, ww = _crop_window(w, cw, rng)
        rgb = rgb[y0:y0 + hh, x0:x0 + ww]
        label = label[y0:y0 + hh, x0:x0 + ww]
        image = normalize_image(rgb, self.mean, self.std)
        image = _symmetric_pad(image, ch, cw, 0.0)
        label = _symmetric_pad(label, ch, cw, self.ignore_label)

        # 6. is_ood on the cropped label; 5. HWC -> CHW.
        is_ood = bool((label == OUTLIER_LABEL).any())
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        label_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        return image_t, label_t, is_ood


class EvalTransform:
    """Evaluation preprocessing: normalise only (native resolution, no flip/scale/crop).

    ``__call__(rgb, label=None, rng=None) -> (image, label)``: a float32 tensor ``3 x H x W`` and an
    int64 tensor ``H x W`` (or ``None`` when no label is given). ``rng`` is accepted for symmetry with
    :class:`TrainTransform` and unused.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, rgb: np.ndarray, label: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        rgb = np.asarray(rgb)
        _check_pair(rgb, None if label is None else np.asarray(label))
        image = normalize_image(rgb, self.mean, self.std)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        label_t = None if label is None else torch.from_numpy(np.asarray(label).astype(np.int64))
        return image_t, label_t
