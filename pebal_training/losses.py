"""PEBAL training losses: PAL, the energy (EBM) loss and its regularisers.

The method of Tian et al., ECCV 2022 (Sec. 3), as the reference code implements it (``Gambler``,
``energy_loss``).

Conventions
-----------
* ``logits``: ``N x C x H x W`` with ``C = 20`` for PEBAL. Channels ``0..C-2`` are the inlier classes
  (Cityscapes trainIds 0..18), channel ``C-1`` is the abstention channel ``A``.
* ``labels``: integer ``N x H x W``; ``0..C-2`` inlier trainIds, :data:`OUTLIER_LABEL` (254) pasted
  outlier pixels, :data:`IGNORE_LABEL` (255) void / padding. Any other value raises ``ValueError``.
* ``LSE(ω) = logsumexp_{k < C-1} z_k(ω)`` (temperature 1) and the free energy ``E(ω) = -LSE(ω)``.
* ``p = softmax(z)`` over **all** ``C`` channels; ``p_A`` is its last entry.

One implementation serves the training loop and the single-batch API: :func:`partial_pebal_loss` is
the loss of one part of a batch given :func:`loss_statistics` of the whole batch (summed over DDP
ranks); :func:`pebal_loss`, :func:`pal_loss` and :func:`energy_loss` use the statistics of their own
batch.

Everything is computed in float32 (float64 logits stay float64, which the tests use for tight
comparisons), with autocast disabled, so the losses are safe under mixed precision. Probabilities are
handled in log space: ``log(p_y + p_A / a) = logaddexp(log p_y, log p_A - log a)``, which is
mathematically identical to the reference code's ``log(softmax_y + softmax_A / a)`` but cannot
produce ``log(0)`` when a softmax entry underflows.

Deviations from the reference code (all only in degenerate cases where the reference gives NaN/inf):

* an empty mean (e.g. a group with no labelled pixel, or a batch that is entirely void) is 0, not NaN;
  the returned loss is still connected to ``logits`` so ``backward()`` works (with zero gradients);
* the penalty ``a`` is floored at :data:`PENALTY_FLOOR` before the division (the reference divides by
  ``a`` directly, which is infinite for ``a = 0``, i.e. ``LSE ≡ 0`` over a whole 7x7 neighbourhood).

Nothing here imports ROS.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F

from pebal_perception.core.constants import IGNORE_LABEL, OUTLIER_LABEL
from pebal_perception.core.scoring import gaussian_smooth

PAL_VARIANTS = ("code", "paper")

#: Lower bound applied to the energy-biased penalty ``a`` before dividing by it.
PENALTY_FLOOR = 1e-12
#: The reference clamps ``p_k + p_A / a`` of the PAL outlier term at 1e-7 before the log.
OUTLIER_PROB_FLOOR = 1e-7

# The reference code's defaults (``Gambler``, ``energy_loss``, the weight of the energy loss).
DEFAULT_OUTLIER_WEIGHT = 0.1
DEFAULT_M_IN = -12.0
DEFAULT_M_OUT = -6.0
DEFAULT_SMOOTH_WEIGHT = 3e-6
DEFAULT_SPARSE_WEIGHT = 5e-4
DEFAULT_ENERGY_WEIGHT = 0.1


# --------------------------------------------------------------------------------------------------
# helpers


def _autocast_off(device: torch.device):
    """Context that disables autocast on ``device`` (no-op where autocast does not exist)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device types without autocast support
        return contextlib.nullcontext()


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"expected N x C x H x W logits with C >= 2, got shape {tuple(logits.shape)}")
    n, c, h, w = logits.shape
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(f"labels must have shape {(n, h, w)} to match logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel():
        bad = ((labels < 0) | (labels > c - 2)) & (labels != OUTLIER_LABEL) & (labels != IGNORE_LABEL)
        if bool(bad.any()):
            values = torch.unique(labels[bad])[:10].tolist()
            raise ValueError(f"labels must be in 0..{c - 2}, {OUTLIER_LABEL} (outlier) or {IGNORE_LABEL} "
                             f"(void); found {values}")


# Layout of the loss statistics (float64): the counts every mean divides by and the squared norm of the
# outlier energies. Summed over ranks they are those of the global batch.
_N_IN_IMG, _N_OOD_INLIER, _N_OUT_PAIRS, _N_NONVOID, _N_INLIER, _N_OUTLIER, _SUMSQ_E_OUT = range(7)
NUM_STATISTICS = 7


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(outlier, void, inlier) pixel masks and ``is_ood`` (N x 1 x 1: the image holds a 254 pixel)."""
    outlier = labels == OUTLIER_LABEL
    void = labels == IGNORE_LABEL
    inlier = ~(outlier | void)
    is_ood = outlier.flatten(1).any(dim=1)[:, None, None]
    return outlier, void, inlier, is_ood


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where() instead of indexing: stays attached to the graph (zero gradient) when the mask is empty
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()


def _inlier_lse(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the inlier channels ``0..C-2`` of (already upcast) logits -> ``N x H x W``."""
    return torch.logsumexp(x[:, :-1], dim=1)


def _penalty_from_lse(lse: torch.Tensor) -> torch.Tensor:
    return gaussian_smooth(lse.square())


def loss_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The normalisers of the PEBAL loss of this batch: a detached float64 vector of
    :data:`NUM_STATISTICS` entries (group pixel counts, outlier-pair count, squared outlier-energy sum).

    Summed over the ranks of a distributed batch they are the global batch's; :func:`pebal_loss` uses
    the local batch's own. Raises ``ValueError`` for malformed inputs (see the module docstring).
    """
    _check_inputs(logits, labels)
    outlier, void, inlier, is_ood = _masks(labels)
    c = logits.shape[1]
    with torch.no_grad(), _autocast_off(logits.device):
        energy = -_inlier_lse(logits.detach().double())
        n_out = outlier.sum()
        return torch.stack([
            (inlier & ~is_ood).sum().double(), (inlier & is_ood).sum().double(), (n_out * (c - 1)).double(),
            (~void).sum().double(), inlier.sum().double(), n_out.double(),
            _masked_sum(energy.square(), outlier),
        ])


# --------------------------------------------------------------------------------------------------
# energy-biased penalty and PAL


def energy_biased_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Energy-biased adaptive penalty (paper Sec. 3): ``a = G * (LSE_{k<C-1} z_k)^2 = G * E^2``.

    ``G`` is the 7x7, sigma-1, reflect-padded Gaussian blur applied per image. Returns ``N x H x W``
    (float32, or float64 for float64 logits). **Not detached**: gradients flow through the penalty
    into the logits, exactly as in the reference code.
    """
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"expected N x C x H x W logits with C >= 2, got shape {tuple(logits.shape)}")
    with _autocast_off(logits.device):
        return _penalty_from_lse(_inlier_lse(_upcast(logits)))


def _pal_terms(x: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, st: torch.Tensor, variant: str,
               outlier_weight: float) -> dict[str, torch.Tensor]:
    """PAL with every mean written as (sum over this batch) / (count in ``st``)."""
    if variant not in PAL_VARIANTS:
        raise ValueError(f"unknown PAL variant {variant!r}; expected one of {PAL_VARIANTS}")
    c = x.shape[1]
    outlier, void, inlier, is_ood = _masks(labels)
    count = lambda i: st[i].clamp_min(1.0)  # noqa: E731 - an empty group's mean is 0, not NaN
    logp = torch.log_softmax(x, dim=1)                        # softmax over all C channels
    penalty = _penalty_from_lse(lse)                          # a, not detached
    log_res = logp[:, c - 1] - torch.log(penalty.clamp_min(PENALTY_FLOOR))   # log(p_A / a)
    target = torch.where(inlier, labels, torch.zeros_like(labels)).long()
    log_py = logp[:, : c - 1].gather(1, target.unsqueeze(1)).squeeze(1)
    log_gain = torch.logaddexp(log_py, log_res)               # log(p_y + p_A / a)

    if variant == "paper":
        # Eq. (3) of the paper (with the softmax the code uses): anomaly pixels take y = A.
        log_gain_out = torch.logaddexp(logp[:, c - 1], log_res)  # log(p_A + p_A / a)
        per_pixel = torch.where(outlier, log_gain_out, log_gain)
        return {"pal": _masked_sum(-per_pixel, ~void) / count(_N_NONVOID)}

    # "code" variant: images split by whether they contain any outlier pixel.
    pal_in_img = _masked_sum(-log_gain, inlier & ~is_ood) / count(_N_IN_IMG)
    ood_inlier = _masked_sum(-log_gain, inlier & is_ood) / count(_N_OOD_INLIER)
    # Outlier term: mean over (outlier pixel, inlier class k) pairs of log(max(p_k + p_A/a, 1e-7)).
    # Only the outlier pixels are gathered, so memory stays O(#outliers x C).
    out_terms = torch.logaddexp(logp[:, : c - 1].permute(0, 2, 3, 1)[outlier], log_res[outlier].unsqueeze(1))
    out_terms = out_terms.clamp_min(math.log(OUTLIER_PROB_FLOOR))
    ood_outlier = -outlier_weight * out_terms.sum() / count(_N_OUT_PAIRS)
    pal_ood_img = ood_inlier + ood_outlier
    return {
        "pal": pal_in_img + pal_ood_img,
        "pal_in_img": pal_in_img,
        "pal_ood_img": pal_ood_img,
        "pal_ood_inlier": ood_inlier,
        "pal_ood_outlier": ood_outlier,
    }


def pal_loss(logits: torch.Tensor, labels: torch.Tensor, variant: str = "code",
             outlier_weight: float = DEFAULT_OUTLIER_WEIGHT) -> torch.Tensor:
    """Pixel-wise anomaly abstention loss (the reference's ``Gambler``), with ``a`` = :func:`energy_biased_penalty`.

    ``variant="code"`` (default, the reference implementation's behaviour). Images are split by
    ``is_ood`` (label 254 present in the image); each group's means are pooled over its images::

        L_in-img  = - mean_{ω: y≠255}        log(p_y + p_A/a)                     (images without 254)
        L_ood-img = - mean_{ω: y∉{254,255}}  log(p_y + p_A/a)
                    - w · mean_{ω: y=254, k<C-1} log(max(p_k + p_A/a, 1e-7))      (images with 254)
        PAL = L_in-img + L_ood-img          (group means simply added, w = ``outlier_weight`` = 0.1)

    ``variant="paper"``: the paper's Eq. (3) (with softmax, and as a mean instead of a sum), one mean
    over all non-void pixels of the batch, anomaly pixels using the abstention class as their label::

        PAL_paper = - mean_{ω: y≠255} log(p_{y'} + p_A/a),   y' = A if y = 254 else y
                  (i.e. log(p_A + p_A/a) on anomaly pixels); ``outlier_weight`` is unused.

    Empty groups contribute 0 (the reference would give NaN), so all-void, all-inlier and all-OOD
    batches are fine.
    """
    st = loss_statistics(logits, labels)
    with _autocast_off(logits.device):
        x = _upcast(logits)
        return _pal_terms(x, labels, _inlier_lse(x), st.to(x.device, x.dtype), variant, outlier_weight)["pal"]


# --------------------------------------------------------------------------------------------------
# energy loss


def smoothness_regulariser(energy: torch.Tensor, weight: float = DEFAULT_SMOOTH_WEIGHT) -> torch.Tensor:
    """``R_smooth = weight · ½ · [Σ (E[i+1,j] - E[i,j])² + Σ (E[i,j+1] - E[i,j])²]``.

    A **sum** (not a mean) over every pixel of every map (void included); ``energy`` is ``N x H x W``
    or ``H x W``. The reference's replicated last row/column contributes 0, so only the interior
    differences are summed. A sum over images, so it splits over the ranks of a distributed batch as is.
    """
    if energy.dim() < 2:
        raise ValueError(f"expected an N x H x W or H x W energy map, got shape {tuple(energy.shape)}")
    dv = energy[..., 1:, :] - energy[..., :-1, :]
    dh = energy[..., :, 1:] - energy[..., :, :-1]
    return weight * 0.5 * (dv.square().sum() + dh.square().sum())


def sparsity_regulariser(outlier_energies: torch.Tensor, weight: float = DEFAULT_SPARSE_WEIGHT) -> torch.Tensor:
    """``R_sparse = weight · ‖E_out‖₂``: the Euclidean norm of the vector of outlier-pixel energies.

    Neither squared, averaged nor L1, as in the reference's ``energy_loss``. Any shape is accepted and
    flattened; zero entries contribute nothing, so a map with zeros outside the outlier pixels gives the same value. The
    gradient at an all-zero (or empty) input is 0.
    """
    return weight * torch.linalg.vector_norm(outlier_energies.reshape(-1))


def _energy_terms(energy: torch.Tensor, labels: torch.Tensor, st: torch.Tensor, m_in: float, m_out: float,
                  smooth_weight: float, sparse_weight: float) -> dict[str, torch.Tensor]:
    """EBM loss with the means over the counts in ``st`` and the sparsity norm split as below."""
    outlier, _, inlier, _ = _masks(labels)
    l_in = _masked_sum(F.relu(energy - m_in).square(), inlier) / st[_N_INLIER].clamp_min(1.0)
    l_out = _masked_sum(F.relu(m_out - energy).square(), outlier) / st[_N_OUTLIER].clamp_min(1.0)
    # Branch-free: with no outliers l_out = 0 and R_sparse = 0, so only the ½ factor needs selecting.
    hinge = torch.where(st[_N_OUTLIER] > 0, 0.5 * (l_in + l_out), l_in)
    # w·‖E_out‖₂ of the whole batch as w·(S + S.detach()) / (2‖E_out‖₂), S = this part's squared outlier
    # energies and the norm taken from st (detached): summed over the parts of a batch its value is
    # w·‖E_out‖₂ and its gradient the exact w·E/‖E_out‖₂. A zero norm means S = 0, hence 0 / 1.
    norm = st[_SUMSQ_E_OUT].sqrt()
    s_part = _masked_sum(energy.square(), outlier)
    sparse = sparse_weight * (s_part + s_part.detach()) / (2.0 * torch.where(norm > 0, norm, torch.ones_like(norm)))
    smooth = smoothness_regulariser(energy, smooth_weight)
    return {
        "energy": hinge + sparse + smooth,
        "energy_in": l_in,
        "energy_out": l_out,
        "energy_sparse": sparse,
        "energy_smooth": smooth,
    }


def energy_loss(logits: torch.Tensor, labels: torch.Tensor, m_in: float = DEFAULT_M_IN,
                m_out: float = DEFAULT_M_OUT, smooth_weight: float = DEFAULT_SMOOTH_WEIGHT,
                sparse_weight: float = DEFAULT_SPARSE_WEIGHT) -> torch.Tensor:
    """EBM loss (the reference's ``energy_loss``) on the free energy ``E = -LSE_{k<C-1} z_k`` of the whole batch.

    With ``E_in`` = energies of pixels labelled ``0..C-2`` and ``E_out`` = energies of 254 pixels::

        no 254 pixel in the batch:  L_E = mean(relu(E_in - m_in)²) + R_smooth
        otherwise:                  L_E = ½·[mean(relu(E_in - m_in)²) + mean(relu(m_out - E_out)²)]
                                          + R_sparse + R_smooth

    with ``R_sparse`` = :func:`sparsity_regulariser` (``5e-4·‖E_out‖₂``) and ``R_smooth`` =
    :func:`smoothness_regulariser` (``3e-6·½·Σ squared neighbour differences`` over all pixels).
    Defaults ``m_in = -12``, ``m_out = -6``. An empty mean counts as 0.
    """
    st = loss_statistics(logits, labels)
    with _autocast_off(logits.device):
        x = _upcast(logits)
        return _energy_terms(-_inlier_lse(x), labels, st.to(x.device, x.dtype), m_in, m_out, smooth_weight,
                             sparse_weight)["energy"]


# --------------------------------------------------------------------------------------------------
# total objective


def partial_pebal_loss(logits: torch.Tensor, labels: torch.Tensor, stats: torch.Tensor,
                       energy_weight: float = DEFAULT_ENERGY_WEIGHT, pal_variant: str = "code",
                       outlier_weight: float = DEFAULT_OUTLIER_WEIGHT, m_in: float = DEFAULT_M_IN,
                       m_out: float = DEFAULT_M_OUT, smooth_weight: float = DEFAULT_SMOOTH_WEIGHT,
                       sparse_weight: float = DEFAULT_SPARSE_WEIGHT
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This part's share of the PEBAL objective of a batch split into parts (e.g. over DDP ranks).

    ``stats`` is :func:`loss_statistics` summed over all parts. Every mean is (this part's sum) /
    (the batch's count), the smoothness term is a plain sum and the sparsity norm is split as in
    :func:`_energy_terms`, so the returned losses summed over the parts *are* :func:`pebal_loss` of
    the whole batch, value and gradient (up to summation order). Components as for :func:`pebal_loss`.
    """
    _check_inputs(logits, labels)
    with _autocast_off(logits.device):
        x = _upcast(logits)
        st = stats.to(x.device, x.dtype)
        lse = _inlier_lse(x)
        pal = _pal_terms(x, labels, lse, st, pal_variant, outlier_weight)
        ebm = _energy_terms(-lse, labels, st, m_in, m_out, smooth_weight, sparse_weight)
        total = pal["pal"] + energy_weight * ebm["energy"]
    components = {"total": total.detach()}
    components.update({k: v.detach() for k, v in pal.items()})
    components.update({k: v.detach() for k, v in ebm.items()})
    components["energy_weighted"] = (energy_weight * ebm["energy"]).detach()
    return total, components


def pebal_loss(logits: torch.Tensor, labels: torch.Tensor, energy_weight: float = DEFAULT_ENERGY_WEIGHT,
               pal_variant: str = "code", outlier_weight: float = DEFAULT_OUTLIER_WEIGHT,
               m_in: float = DEFAULT_M_IN, m_out: float = DEFAULT_M_OUT,
               smooth_weight: float = DEFAULT_SMOOTH_WEIGHT,
               sparse_weight: float = DEFAULT_SPARSE_WEIGHT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total PEBAL objective (paper Sec. 3): ``L = PAL + energy_weight · L_E`` (``energy_weight`` = 0.1),
    i.e. :func:`partial_pebal_loss` with the statistics of this batch alone.

    Returns ``(total, components)``; ``components`` holds **detached** 0-d tensors (call ``.item()``
    to log them; keeping them as tensors avoids a device sync per key):

    * ``total``; ``pal`` and, for the code variant, ``pal_in_img``, ``pal_ood_img`` (=
      ``pal_ood_inlier + pal_ood_outlier``, the latter already weighted by ``outlier_weight``);
    * ``energy`` (unweighted ``L_E``), ``energy_weighted`` (``energy_weight · L_E``, what the reference
      logs as "energy_loss"), ``energy_in``, ``energy_out`` (hinge means), ``energy_sparse``,
      ``energy_smooth`` (already weighted regularisers).

    The LSE of the inlier logits is computed once and shared by the penalty and the energy loss.
    """
    return partial_pebal_loss(logits, labels, loss_statistics(logits, labels), energy_weight=energy_weight,
                              pal_variant=pal_variant, outlier_weight=outlier_weight, m_in=m_in, m_out=m_out,
                              smooth_weight=smooth_weight, sparse_weight=sparse_weight)


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This part's share of the batch's cross-entropy over the inlier classes (closed-set training).

    Pixels labelled 254 (outlier) or 255 (void) are ignored; the abstention channel takes no part. The
    sum is divided by the labelled-pixel count of the whole batch (``reduce_sum`` sums a tensor over
    the parts, e.g. an all-reduce), so the shares of all parts add up to the batch's mean.
    """
    _check_inputs(logits, labels)
    c = logits.shape[1]
    valid = labels < c - 1
    count = reduce_sum(valid.sum().double().reshape(1)).clamp_min(1.0)[0]
    with _autocast_off(logits.device):
        target = torch.where(valid, labels, torch.full_like(labels, IGNORE_LABEL)).long()
        total = F.cross_entropy(logits[:, : c - 1].float(), target, ignore_index=IGNORE_LABEL,
                                reduction="sum") / count.to(logits.device).float()
    return total, {"total": total.detach(), "cross_entropy": total.detach()}
