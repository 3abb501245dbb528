"""PEBAL scoring: free energy over the inlier logits, its Gaussian smoothing, and the derived masks.

Conventions (the PEBAL reference code's inference): the anomaly score is the free energy
``E = -logsumexp(logits[:19])`` at temperature 1, smoothed with a 7x7 Gaussian (sigma 1, reflect
padding). Higher means more anomalous. The abstention channel (index 19) is never used for scoring.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from .constants import NUM_INLIER_CLASSES
DEFAULT_KERNEL_SIZE = 7
DEFAULT_SIGMA = 1.0


@lru_cache(maxsize=16)
def _gaussian_kernel_1d_cpu(kernel_size: int, sigma: float) -> torch.Tensor:
    # Same construction as torchvision's GaussianBlur: samples at integer offsets, normalised to 1.
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def gaussian_kernel_1d(kernel_size: int = DEFAULT_KERNEL_SIZE, sigma: float = DEFAULT_SIGMA,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be a positive odd number, got {kernel_size}")
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"Gaussian sigma must be positive and finite, got {sigma}")
    return _gaussian_kernel_1d_cpu(int(kernel_size), float(sigma)).to(device=device, dtype=dtype)


def gaussian_smooth(score: torch.Tensor, kernel_size: int = DEFAULT_KERNEL_SIZE,
                    sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of ``N x H x W`` (or ``H x W``) maps with reflect padding.

    Equal (to float rounding) to ``torchvision.transforms.GaussianBlur(kernel_size, sigma)`` applied
    per map. Differentiable, so the training loss can use it for the energy-biased penalty.
    ``kernel_size`` 1 (or sigma 0 handled by the caller) means no smoothing. Float32 CPU maps that
    need no gradient go through OpenCV's separable filter: same result, ~40x faster than
    ``conv2d`` on a 1024x512 map (bench/bench_frame.py's score stage).
    """
    if kernel_size == 1:
        return score
    squeeze = score.dim() == 2
    x = score.unsqueeze(0) if squeeze else score
    if x.dim() != 3:
        raise ValueError(f"expected an N x H x W or H x W map, got shape {tuple(score.shape)}")
    pad = kernel_size // 2
    h, w = x.shape[-2:]
    # Reflect padding needs pad < size; tiny maps fall back to replicate (torchvision would fail).
    reflect = h > pad and w > pad
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if x.device.type == "cpu" and x.dtype == torch.float32 and not needs_grad and x.numel() > 0:
        x = _gaussian_smooth_cv2(x, kernel_size, sigma, reflect)
    else:
        x = _gaussian_smooth_torch(x, kernel_size, sigma, reflect)
    return x.squeeze(0) if squeeze else x


def _gaussian_smooth_torch(x: torch.Tensor, kernel_size: int, sigma: float, reflect: bool) -> torch.Tensor:
    pad = kernel_size // 2
    k = gaussian_kernel_1d(kernel_size, sigma, device=x.device, dtype=x.dtype)
    x = F.pad(x.unsqueeze(1), (pad, pad, pad, pad), mode="reflect" if reflect else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def _gaussian_smooth_cv2(x: torch.Tensor, kernel_size: int, sigma: float, reflect: bool) -> torch.Tensor:
    import cv2

    # torch's "reflect" (edge not repeated) is OpenCV's BORDER_REFLECT_101.
    border = cv2.BORDER_REFLECT_101 if reflect else cv2.BORDER_REPLICATE
    k = gaussian_kernel_1d(kernel_size, sigma).numpy()
    src = x.detach().contiguous().numpy()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    dst = out.numpy()
    for i in range(src.shape[0]):
        cv2.sepFilter2D(src[i], cv2.CV_32F, k, k, dst=dst[i], borderType=border)
    return out


def free_energy(logits: torch.Tensor, num_classes: int = NUM_INLIER_CLASSES) -> torch.Tensor:
    """``-logsumexp`` over the first ``num_classes`` channels of ``N x C x H x W`` logits -> ``N x H x W``.

    Computed in float32 even for half-precision logits (logsumexp of fp16 values overflows easily).
    """
    if logits.dim() != 4 or logits.shape[1] < num_classes:
        raise ValueError(f"expected N x >={num_classes} x H x W logits, got shape {tuple(logits.shape)}")
    return -torch.logsumexp(logits[:, :num_classes].float(), dim=1)


def energy_and_prediction(logits: torch.Tensor, num_classes: int = NUM_INLIER_CLASSES,
                          prediction_dtype: torch.dtype = torch.int64,
                          rows_per_chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(free_energy(logits), semantic_prediction(logits))`` for inference, equal to the two.

    On the CPU one pass per band of ``rows_per_chunk`` rows yields the maximum, its index and the
    shifted exponential sum while the band is still in cache: 2.3x (channels-last) to 4.8x (NCHW)
    faster than the two separate reductions over a 1x20x512x1024 map. Elsewhere it is the two
    functions. No gradient (use :func:`free_energy` for training).
    """
    if logits.dim() != 4 or logits.shape[1] < num_classes:
        raise ValueError(f"expected N x >={num_classes} x H x W logits, got shape {tuple(logits.shape)}")
    if logits.device.type != "cpu":
        return free_energy(logits, num_classes), semantic_prediction(logits, num_classes).to(prediction_dtype)
    n, _, h, w = logits.shape
    energy = torch.empty((n, h, w), dtype=torch.float32)
    prediction = torch.empty((n, h, w), dtype=prediction_dtype)
    with torch.no_grad():
        for r in range(0, h, max(1, int(rows_per_chunk))):
            band = logits[:, :num_classes, r:r + rows_per_chunk].float()
            peak, index = band.max(dim=1)  # first maximal index, as argmax
            # Shift by the maximum, except where it is infinite (as torch.logsumexp does).
            shift = peak.masked_fill(peak.isinf(), 0.0)
            total = (band - shift.unsqueeze(1)).exp_().sum(dim=1)
            energy[:, r:r + rows_per_chunk] = total.log_().add_(shift).neg_()
            prediction[:, r:r + rows_per_chunk] = index
    return energy, prediction


def anomaly_score(logits: torch.Tensor, smoothing: bool = True, kernel_size: int = DEFAULT_KERNEL_SIZE,
                  sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """PEBAL's anomaly map: (smoothed) free energy of the inlier logits, higher = more anomalous."""
    energy = free_energy(logits)
    return gaussian_smooth(energy, kernel_size, sigma) if smoothing else energy


def semantic_prediction(logits: torch.Tensor, num_classes: int = NUM_INLIER_CLASSES) -> torch.Tensor:
    """Argmax over the inlier classes only (the abstention/void channel never wins) -> ``N x H x W`` int64."""
    return logits[:, :num_classes].argmax(dim=1)


def obstacle_mask(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels whose anomaly score is above ``threshold`` (NaN scores are never obstacles)."""
    return score > threshold
