"""Image -> network input: resize on the model's device, scale to [0, 1], normalise per channel.

Sizes are bounded before anything is allocated (all limits raise :class:`ImageSizeError`, a ValueError):

* network input sizes (checkpoint ``input_size``, ``--input-size``, native sizes): each side at most
  :data:`MAX_NETWORK_SIDE`, aspect ratio within :data:`~pebal_perception.core.limits.MAX_ASPECT_RATIO`;
* images: at most :data:`~pebal_perception.core.limits.MAX_IMAGE_PIXELS` pixels, same aspect-ratio limit
  (:func:`check_image_size`);
* every resize: at most :data:`MAX_RESIZE_VALUES` values per channel in the intermediate of a separable
  resize (:func:`check_resize`), so a thin side is never upscaled to the network size into gigabytes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .limits import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, aspect_ratio_problem

#: Largest network input side (height or width) the engine runs at.
MAX_NETWORK_SIDE = 4096
#: Most values per channel one resize may hold: a separable resize has one axis done at a time, i.e. up to
#: max(input height x output width, output height x input width) values (512 MB of float32 per channel).
MAX_RESIZE_VALUES = 2 * MAX_IMAGE_PIXELS


class ImageSizeError(ValueError):
    """An image (or network input size) outside the limits: refused before anything is allocated for it."""


def check_network_size(hw: Sequence[int], divisor: int, what: str = "network input size") -> tuple[int, int]:
    """(height, width) as ints when they are positive multiples of ``divisor``, at most
    :data:`MAX_NETWORK_SIDE` each and within the aspect-ratio limit; ImageSizeError otherwise."""
    h, w = int(hw[0]), int(hw[1])
    if h <= 0 or w <= 0 or h % divisor or w % divisor:
        raise ImageSizeError(f"{what} {h}x{w} (HxW) must be positive multiples of {divisor}")
    if h > MAX_NETWORK_SIDE or w > MAX_NETWORK_SIDE:
        raise ImageSizeError(f"{what} {h}x{w} (HxW) is larger than {MAX_NETWORK_SIDE} per side")
    problem = aspect_ratio_problem(w, h, what)
    if problem is not None:
        raise ImageSizeError(problem)
    return h, w


def network_size(image_hw: tuple[int, int], requested: Sequence[int] | None, divisor: int) -> tuple[int, int]:
    """The (height, width) the network runs at.

    ``requested`` (height, width) is used as given (it must be a multiple of ``divisor``); ``None``
    means the image's own size rounded to the nearest multiple of ``divisor``. Either is checked by
    :func:`check_network_size` (ImageSizeError).
    """
    if requested is not None:
        return check_network_size(requested, divisor)
    h, w = image_hw
    size = max(divisor, int(round(h / divisor)) * divisor), max(divisor, int(round(w / divisor)) * divisor)
    try:
        return check_network_size(size, divisor, what="native network size")
    except ImageSizeError as exc:
        raise ImageSizeError(f"{exc} (image {w}x{h} WxH); run it at a fixed network input size") from None


def check_image_size(height: int, width: int) -> None:
    """ImageSizeError unless a ``height x width`` image is non-empty, at most MAX_IMAGE_PIXELS pixels and
    within the aspect-ratio limit (1:MAX_ASPECT_RATIO..MAX_ASPECT_RATIO:1)."""
    if height <= 0 or width <= 0:
        raise ImageSizeError(f"image {width}x{height} (WxH) is empty")
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageSizeError(f"image {width}x{height} (WxH) has {height * width} pixels, over {MAX_IMAGE_PIXELS}")
    problem = aspect_ratio_problem(width, height)
    if problem is not None:
        raise ImageSizeError(problem)


def check_resize(image_hw: Sequence[int], size: Sequence[int]) -> None:
    """ImageSizeError when resizing ``image_hw`` to ``size`` would hold more than the limits: either side
    over MAX_IMAGE_PIXELS pixels, or a separable-resize intermediate over MAX_RESIZE_VALUES values."""
    (h_in, w_in), (h_out, w_out) = (int(v) for v in image_hw), (int(v) for v in size)
    for what, (h, w) in (("image", (h_in, w_in)), ("resize target", (h_out, w_out))):
        if h * w > MAX_IMAGE_PIXELS:
            raise ImageSizeError(f"{what} {w}x{h} (WxH) has {h * w} pixels, over {MAX_IMAGE_PIXELS}")
    if (h_in, w_in) != (h_out, w_out):
        work = max(h_in * w_out, h_out * w_in)
        if work > MAX_RESIZE_VALUES:
            raise ImageSizeError(f"resize of a {w_in}x{h_in} image to {w_out}x{h_out} (WxH) would hold {work} values "
                                 f"per channel, over {MAX_RESIZE_VALUES} (aspect ratios too different; the limit "
                                 f"for images is {MAX_ASPECT_RATIO}:1)")


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


def resize_batch(batch_uint8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 N x 3 x H x W -> N x 3 x h x w at ``size``, antialiased bilinear when shrinking (sizes checked
    first, :func:`check_resize`): uint8 (whole grey levels) on the CPU, float32 elsewhere; see
    :func:`normalize`."""
    check_resize(tuple(batch_uint8.shape[-2:]), size)
    x = batch_uint8
    if tuple(x.shape[-2:]) != tuple(size):
        shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        if x.dtype == torch.uint8 and x.device.type == "cpu":
            # The uint8 kernel wants channels-last (what to_uint8_batch gives: a permuted N x H x W x 3).
            x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                              align_corners=False, antialias=shrinking)
        else:
            x = F.interpolate(x.to(torch.float32), size=size, mode="bilinear", align_corners=False,
                              antialias=shrinking)
    return x


def normalize(batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: tuple[int, int],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float N x 3 x h x w at the network size.

    Resizing uses antialiased bilinear interpolation (what PIL's BILINEAR, the resize of the EdgeNets
    ESPNetv2 evaluation, does when shrinking; within one grey level of PIL). Sizes are checked first
    (:func:`check_resize`).

    A uint8 batch on the CPU is resized *as uint8* (torch's channels-last uint8 kernel, what PIL does
    too: results rounded to whole grey levels, at most 1 level from the float resize) and only the
    network-sized result becomes float: no float copy of a full-size frame. From 1920x1080 that is 2.2x
    (to 1024x512) to 4x (to 320x160) cheaper than the float resize with 2 threads (bench/bench_frame.py,
    figure 2b; BENCHMARKS.md). Elsewhere (CUDA, float input) the resize runs in float32 as before.
    """
    x = resize_batch(batch_uint8, size).to(torch.float32)
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
