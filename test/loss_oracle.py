"""An independent PEBAL loss for the tests (reference ``Gambler`` + ``energy_loss``), written from the formulas.

Plain float64 torch so autograd gives its gradient, but nothing shared with ``pebal_training``: the
softmax and LSE are spelled out, the 7x7 blur is a hand-indexed reflect pad and 49 shifted sums,
every group mean is an explicit masked sum over an explicit count, and ``R_sparse`` is ``sqrt(Σ E²)``.
"""
from __future__ import annotations

import math

import torch

OUT, VOID = 254, 255


def blur7(maps: torch.Tensor) -> torch.Tensor:
    """7x7 sigma-1 Gaussian with reflect padding. The 1-D weights are rounded to float32 because the
    production kernel is stored that way; the comparison then holds to float64 round-off."""
    w1 = [math.exp(-0.5 * k * k) for k in range(-3, 4)]
    w1 = torch.tensor([v / sum(w1) for v in w1], dtype=torch.float32).double()
    h, w = maps.shape[-2:]

    def reflect(i: int, n: int) -> int:
        i = abs(i)
        return 2 * (n - 1) - i if i > n - 1 else i

    padded = maps[:, [reflect(i, h) for i in range(-3, h + 3)]][:, :, [reflect(j, w) for j in range(-3, w + 3)]]
    return sum(w1[a] * w1[b] * padded[:, a:a + h, b:b + w] for a in range(7) for b in range(7))


def oracle_terms(z: torch.Tensor, y: torch.Tensor, variant: str = "code", outlier_weight: float = 0.1,
                 m_in: float = -12.0, m_out: float = -6.0, smooth_weight: float = 3e-6, sparse_weight: float = 5e-4,
                 energy_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Every term of the PEBAL loss of the batch ``z`` (N x C x H x W float64), ``y`` (N x H x W)."""
    c = z.shape[1]
    k_a = c - 1
    expz = torch.exp(z - z.amax(dim=1, keepdim=True))
    p = expz / expz.sum(dim=1, keepdim=True)                      # softmax over all C channels
    m19 = z[:, :k_a].amax(dim=1)
    lse = m19 + torch.log(torch.exp(z[:, :k_a] - m19[:, None]).sum(dim=1))
    energy = -lse
    a = blur7(lse * lse)
    res = p[:, k_a] / a                                           # p_A / a
    out = y == OUT
    void = y == VOID
    inl = ~(out | void)
    ood_img = out.flatten(1).any(dim=1)[:, None, None].expand_as(y)
    y_safe = torch.where(inl, y, torch.zeros_like(y)).long()
    p_y = p.gather(1, y_safe[:, None])[:, 0]

    def mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = int(mask.sum())
        return (values * mask).sum() / n if n else (values * 0).sum()

    terms: dict[str, torch.Tensor] = {}
    if variant == "paper":
        target_p = torch.where(out, p[:, k_a], p_y)
        terms["pal"] = -mean(torch.log(target_p + res), ~void)
    else:
        in_img = -mean(torch.log(p_y + res), inl & ~ood_img)
        ood_inlier = -mean(torch.log(p_y + res), inl & ood_img)
        pairs = torch.log(torch.clamp(p[:, :k_a] + res[:, None], min=1e-7))   # N x (C-1) x H x W
        n_pairs = int(out.sum()) * k_a
        ood_outlier = -outlier_weight * ((pairs * out[:, None]).sum() / n_pairs if n_pairs else (pairs * 0).sum())
        terms.update(pal=in_img + ood_inlier + ood_outlier, pal_in_img=in_img, pal_ood_img=ood_inlier + ood_outlier,
                     pal_ood_inlier=ood_inlier, pal_ood_outlier=ood_outlier)
    l_in = mean(torch.clamp(energy - m_in, min=0) ** 2, inl)
    l_out = mean(torch.clamp(m_out - energy, min=0) ** 2, out)
    dv = energy[:, 1:, :] - energy[:, :-1, :]
    dh = energy[:, :, 1:] - energy[:, :, :-1]
    smooth = smooth_weight * 0.5 * ((dv ** 2).sum() + (dh ** 2).sum())
    if out.any():
        sparse = sparse_weight * torch.sqrt((energy ** 2 * out).sum())
        ebm = 0.5 * (l_in + l_out) + sparse + smooth
    else:
        sparse = (energy * 0).sum()
        ebm = l_in + smooth
    terms.update(energy=ebm, energy_in=l_in, energy_out=l_out, energy_sparse=sparse, energy_smooth=smooth,
                 energy_weighted=energy_weight * ebm)
    terms["total"] = terms["pal"] + energy_weight * ebm
    return terms
