"""Image -> network input: resize on the model's device, scale to [0, 1], normalise per channel."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def network_size(image_hw: tuple[int, int], requested: Sequence[int] | None, divisor: int) -> tuple[int, int]:
    """The (height, width) the network runs at.

    ``requested`` (height, width) is used as given (it must be a multiple of ``divisor``); ``None``
    means the image's own size rounded to the nearest multiple of ``divisor``.
    """
    if requested is not None:
        h, w = int(requested[0]), int(requested[1])
        if h <= 0 or w <= 0 or h % divisor or w % divisor:
            raise ValueError(f"network input size {h}x{w} (HxW) must be positive multiples of {divisor}")
        return h, w
    h, w = image_hw
    return max(divisor, int(round(h / divisor)) * divisor), max(divisor, int(round(w / divisor)) * divisor)


def to_uint8_batch(images: Sequence[np.ndarray] | np.ndarray, device: torch.device,
                   pin_memory: bool = False) -> torch.Tensor:
    """Stacks H x W x 3 uint8 RGB arrays (one size) into an N x 3 x H x W uint8 tensor on ``device``.

    The copy to a CUDA device goes through pinned memory and is asynchronous.
    """
    batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if batch.ndim == 3:
        batch = batch[None]
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected H x W x 3 uint8 RGB images, got array {batch.shape} {batch.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(batch))
    if device.type == "cuda":
        if pin_memory:
            t = t.pin_memory()
        t = t.to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2)


def normalize(batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: tuple[int, int],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float N x 3 x h x w at the network size.

    Resizing uses antialiased bilinear interpolation (what PIL's BILINEAR does when shrinking; within
    one grey level of PIL, see espnetv2-spec 11.2).
    """
    x = batch_uint8.to(torch.float32)
    if tuple(x.shape[-2:]) != tuple(size):
        shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s).to(dtype)


def pil_preprocess(rgb: np.ndarray, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Reference pre-processing of the original training code (PIL bilinear resize, /255, mean/std).

    Slower than :func:`normalize`; used where logits must match third-party references exactly.
    """
    from PIL import Image

    img = Image.fromarray(rgb)
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)
