"""PEBAL scoring: free energy over the inlier logits, its Gaussian smoothing, and the derived masks.

Conventions (PEBAL code, spec section 5): the anomaly score is the free energy
``E = -logsumexp(logits[:19])`` at temperature 1, smoothed with a 7x7 Gaussian (sigma 1, reflect
padding). Higher means more anomalous. The abstention channel (index 19) is never used for scoring.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

NUM_INLIER_CLASSES = 19
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
    ``kernel_size`` 1 (or sigma 0 handled by the caller) means no smoothing.
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
    mode = "reflect" if h > pad and w > pad else "replicate"
    k = gaussian_kernel_1d(kernel_size, sigma, device=x.device, dtype=x.dtype)
    x = x.unsqueeze(1)
    x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = x.squeeze(1)
    return x.squeeze(0) if squeeze else x


def free_energy(logits: torch.Tensor, num_classes: int = NUM_INLIER_CLASSES) -> torch.Tensor:
    """``-logsumexp`` over the first ``num_classes`` channels of ``N x C x H x W`` logits -> ``N x H x W``.

    Computed in float32 even for half-precision logits (logsumexp of fp16 values overflows easily).
    """
    if logits.dim() != 4 or logits.shape[1] < num_classes:
        raise ValueError(f"expected N x >={num_classes} x H x W logits, got shape {tuple(logits.shape)}")
    return -torch.logsumexp(logits[:, :num_classes].float(), dim=1)


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
