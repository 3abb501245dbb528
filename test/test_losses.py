"""Tests for pebal_training.losses against hand-computed values, a brute-force per-pixel reference and an
independent formula-by-formula reference (test/loss_oracle.py) for every term and the gradient."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loss_oracle import oracle_terms
from pebal_training.losses import (
    energy_biased_penalty,
    energy_loss,
    pal_loss,
    pebal_loss,
    smoothness_regulariser,
    sparsity_regulariser,
)

C = 20          # 19 inlier classes + abstention
A = C - 1       # abstention channel
OUT, VOID = 254, 255


# --------------------------------------------------------------------------------------------------
# independent references (plain Python / NumPy, float64)


def np_gaussian_blur(maps: np.ndarray) -> np.ndarray:
    """7x7 sigma-1 Gaussian (torchvision construction) with reflect padding, per map, as a 2-D sum.
    The 1-D weights are rounded to float32, as the production kernel is stored."""
    offsets = np.arange(-3, 4, dtype=np.float64)
    w1 = np.exp(-0.5 * offsets ** 2)
    w1 = (w1 / w1.sum()).astype(np.float32).astype(np.float64)
    kernel = np.outer(w1, w1)
    out = np.empty_like(maps, dtype=np.float64)
    for n, m in enumerate(maps):
        padded = np.pad(m.astype(np.float64), 3, mode="reflect")
        h, w = m.shape
        for i in range(h):
            for j in range(w):
                out[n, i, j] = float((padded[i:i + 7, j:j + 7] * kernel).sum())
    return out


def lse19(z: np.ndarray) -> float:
    m = max(z[:A])
    return m + math.log(sum(math.exp(v - m) for v in z[:A]))


def np_penalty(z: np.ndarray) -> np.ndarray:
    """a = G * LSE² (the energy-biased penalty), pixel by pixel."""
    n_img, _, h, w = z.shape
    lse = np.array([[[lse19(z[n, :, i, j]) for j in range(w)] for i in range(h)] for n in range(n_img)])
    return np_gaussian_blur(lse ** 2)


def softmax20(z: np.ndarray) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def ref_pal_code(z: np.ndarray, y: np.ndarray, a: np.ndarray, w: float = 0.1) -> float:
    """Straight loops over pixels following the reference code's PAL (``Gambler``)."""
    n_img, _, h, wd = z.shape
    in_terms, ood_in_terms, ood_out_terms = [], [], []
    for n in range(n_img):
        is_ood = any(y[n, i, j] == OUT for i in range(h) for j in range(wd))
        for i in range(h):
            for j in range(wd):
                lab = int(y[n, i, j])
                if lab == VOID:
                    continue
                p = softmax20(z[n, :, i, j])
                res = p[A] / a[n, i, j]
                if lab == OUT:
                    for k in range(A):
                        ood_out_terms.append(math.log(max(p[k] + res, 1e-7)))
                elif is_ood:
                    ood_in_terms.append(math.log(p[lab] + res))
                else:
                    in_terms.append(math.log(p[lab] + res))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return -mean(in_terms) - (mean(ood_in_terms) + w * mean(ood_out_terms))


def ref_pal_paper(z: np.ndarray, y: np.ndarray, a: np.ndarray) -> float:
    terms = []
    n_img, _, h, wd = z.shape
    for n in range(n_img):
        for i in range(h):
            for j in range(wd):
                lab = int(y[n, i, j])
                if lab == VOID:
                    continue
                p = softmax20(z[n, :, i, j])
                target = A if lab == OUT else lab
                terms.append(math.log(p[target] + p[A] / a[n, i, j]))
    return -sum(terms) / len(terms) if terms else 0.0


def ref_energy(z: np.ndarray, y: np.ndarray, m_in=-12.0, m_out=-6.0, ws=3e-6, wsp=5e-4) -> float:
    n_img, _, h, wd = z.shape
    energy = [[[-lse19(z[n, :, i, j]) for j in range(wd)] for i in range(h)] for n in range(n_img)]
    e_in, e_out = [], []
    for n in range(n_img):
        for i in range(h):
            for j in range(wd):
                lab = int(y[n, i, j])
                if lab == OUT:
                    e_out.append(energy[n][i][j])
                elif lab != VOID:
                    e_in.append(energy[n][i][j])
    l_in = sum(max(e - m_in, 0.0) ** 2 for e in e_in) / len(e_in) if e_in else 0.0
    smooth = 0.0
    for n in range(n_img):
        for i in range(h):
            for j in range(wd):
                below = energy[n][min(i + 1, h - 1)][j]   # replicated last row -> difference 0
                right = energy[n][i][min(j + 1, wd - 1)]
                smooth += (below - energy[n][i][j]) ** 2 + (right - energy[n][i][j]) ** 2
    smooth *= ws * 0.5
    if not e_out:
        return l_in + smooth
    l_out = sum(max(m_out - e, 0.0) ** 2 for e in e_out) / len(e_out)
    sparse = wsp * math.sqrt(sum(e * e for e in e_out))
    return 0.5 * (l_in + l_out) + sparse + smooth


def random_case(seed: int, n: int = 3, h: int = 5, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, C, h, w, generator=g, dtype=torch.float64) * 3.0 + 2.0
    y = torch.randint(0, 19, (n, h, w), generator=g)
    r = torch.rand(n, h, w, generator=g)
    y[r < 0.15] = VOID
    y[(r > 0.85) & (torch.arange(n)[:, None, None] != 1)] = OUT    # image 1 has no outliers
    # one outlier pixel whose p_k + p_A/a falls below the 1e-7 clamp for most k
    y[0, 0, 0] = OUT
    z[0, :, 0, 0] = 0.0
    z[0, 0, 0, 0] = 30.0
    z[0, A, 0, 0] = -30.0
    return z, y


# --------------------------------------------------------------------------------------------------
# hand-computed values


def _uniform_lse_case():
    """1 x 20 x 2 x 2 where every pixel has the same multiset of logits, so LSE (hence a) is uniform."""
    z = torch.zeros(1, C, 2, 2, dtype=torch.float64)
    z[0, A] = 1.0
    z[0, 0, 0, 0] = 2.0        # pixel (0,0): big logit on class 0, label 0
    z[0, 3, 0, 1] = 2.0        # pixel (0,1): big logit on class 3, label 5
    z[0, 7, 1, 0] = 2.0        # pixel (1,0): outlier
    z[0, 8, 1, 1] = 2.0        # pixel (1,1): void
    y = torch.tensor([[[0, 5], [OUT, VOID]]])
    return z, y


def test_hand_computed_ood_image():
    z, y = _uniform_lse_case()
    e = math.e
    lse = math.log(e ** 2 + 18)                  # 19 inlier logits: one 2, eighteen 0
    a = lse ** 2                                 # uniform map -> blur is the identity
    s = e ** 2 + 18 + e                          # softmax denominator incl. the abstention logit 1
    p_big, p_small, p_a = e ** 2 / s, 1 / s, e / s
    in_mean = (math.log(p_big + p_a / a) + math.log(p_small + p_a / a)) / 2
    out_mean = (math.log(p_big + p_a / a) + 18 * math.log(p_small + p_a / a)) / 19
    expected_pal = -(in_mean + 0.1 * out_mean)
    expected_paper = -(math.log(p_big + p_a / a) + math.log(p_small + p_a / a) + math.log(p_a + p_a / a)) / 3
    energy = -lse
    expected_e = 0.5 * ((energy + 12) ** 2 + max(-6 - energy, 0.0) ** 2) + 5e-4 * abs(energy) + 0.0

    # The blur kernel is stored in float32 (pebal_perception.core.scoring), so a uniform map is
    # reproduced to ~1e-7 relative even in float64; hence rel=1e-7 wherever the penalty enters.
    assert torch.allclose(energy_biased_penalty(z), torch.full((1, 2, 2), a, dtype=torch.float64), rtol=1e-7)
    assert pal_loss(z, y).item() == pytest.approx(expected_pal, rel=1e-7)
    assert pal_loss(z, y, variant="paper").item() == pytest.approx(expected_paper, rel=1e-7)
    assert energy_loss(z, y).item() == pytest.approx(expected_e, rel=1e-12)
    total, parts = pebal_loss(z, y)
    assert total.item() == pytest.approx(expected_pal + 0.1 * expected_e, rel=1e-7)
    assert parts["pal_in_img"].item() == 0.0
    assert parts["pal_ood_img"].item() == pytest.approx(expected_pal, rel=1e-7)
    assert parts["energy_weighted"].item() == pytest.approx(0.1 * expected_e, rel=1e-12)
    # float32 path agrees to float32 precision
    assert pal_loss(z.float(), y).item() == pytest.approx(expected_pal, rel=1e-5)
    assert energy_loss(z.float(), y).item() == pytest.approx(expected_e, rel=1e-5)


def test_hand_computed_groups_are_added_not_pooled():
    z1, y1 = _uniform_lse_case()
    z = torch.cat([z1, z1])
    y = torch.cat([y1, torch.tensor([[[0, 5], [5, VOID]]])])   # image 1: inlier-only
    e = math.e
    lse = math.log(e ** 2 + 18)
    a = lse ** 2
    s = e ** 2 + 18 + e
    g_big, g_small = math.log(e ** 2 / s + e / s / a), math.log(1 / s + e / s / a)
    in_img = -(g_big + 2 * g_small) / 3        # image 1: (0,0) big on class 0; (0,1), (1,0) small
    ood_img = -((g_big + g_small) / 2 + 0.1 * (g_big + 18 * g_small) / 19)
    _, parts = pebal_loss(z, y)
    assert parts["pal_in_img"].item() == pytest.approx(in_img, rel=1e-7)
    assert parts["pal_ood_img"].item() == pytest.approx(ood_img, rel=1e-7)
    assert parts["pal"].item() == pytest.approx(in_img + ood_img, rel=1e-7)


def test_inlier_only_energy_has_no_half_factor():
    z = torch.zeros(1, C, 2, 2, dtype=torch.float64)   # LSE = log 19 everywhere, smooth term 0
    y = torch.zeros(1, 2, 2, dtype=torch.long)
    energy = -math.log(19)
    assert energy_loss(z, y).item() == pytest.approx((energy + 12) ** 2, rel=1e-12)


def test_regularisers_by_hand():
    e = torch.tensor([[1.0, 2.0, 4.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    # vertical: (0-1)^2 + (2-2)^2 + (1-4)^2 = 10; horizontal: 1 + 4 + 4 + 1 = 10
    assert smoothness_regulariser(e).item() == pytest.approx(3e-6 * 0.5 * 20, rel=1e-12)
    assert smoothness_regulariser(e.unsqueeze(0), weight=1.0).item() == pytest.approx(10.0)
    v = torch.tensor([3.0, -4.0], dtype=torch.float64)
    assert sparsity_regulariser(v).item() == pytest.approx(5e-4 * 5.0, rel=1e-12)
    assert sparsity_regulariser(torch.zeros(0)).item() == 0.0


def test_penalty_matches_independent_blur():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, C, 9, 11, generator=g, dtype=torch.float64) * 2
    lse = torch.logsumexp(z[:, :A], dim=1).numpy()
    expected = np_gaussian_blur(lse ** 2)
    # float32-stored kernel weights (scoring.gaussian_kernel_1d) limit float64 agreement to ~1e-7
    np.testing.assert_allclose(energy_biased_penalty(z).numpy(), expected, rtol=2e-7)
    np.testing.assert_allclose(energy_biased_penalty(z.float()).numpy(), expected, rtol=2e-5)


# --------------------------------------------------------------------------------------------------
# brute-force reference on random logits with mixed labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_bruteforce_reference(seed):
    z, y = random_case(seed)
    a = np_penalty(z.numpy())
    zn, yn = z.numpy(), y.numpy()
    assert (yn == OUT).any() and (yn == VOID).any() and not (yn[1] == OUT).any()
    want_code = ref_pal_code(zn, yn, a)
    want_paper = ref_pal_paper(zn, yn, a)
    want_energy = ref_energy(zn, yn)

    assert pal_loss(z, y).item() == pytest.approx(want_code, rel=1e-10)
    assert pal_loss(z, y, variant="paper").item() == pytest.approx(want_paper, rel=1e-10)
    assert energy_loss(z, y).item() == pytest.approx(want_energy, rel=1e-10)
    total, parts = pebal_loss(z, y)
    assert total.item() == pytest.approx(want_code + 0.1 * want_energy, rel=1e-10)
    total_p, _ = pebal_loss(z, y, pal_variant="paper", energy_weight=0.5)
    assert total_p.item() == pytest.approx(want_paper + 0.5 * want_energy, rel=1e-10)

    # float32 computation (the training path) agrees to float32 precision
    zf = z.float()
    assert pal_loss(zf, y).item() == pytest.approx(want_code, rel=1e-5)
    assert energy_loss(zf, y).item() == pytest.approx(want_energy, rel=1e-5)


def test_outlier_weight_and_non_default_margins():
    z, y = random_case(7)
    a = np_penalty(z.numpy())
    zn, yn = z.numpy(), y.numpy()
    assert pal_loss(z, y, outlier_weight=0.5).item() == pytest.approx(ref_pal_code(zn, yn, a, w=0.5), rel=1e-10)
    got = energy_loss(z, y, m_in=-5.0, m_out=-1.0, smooth_weight=1e-2, sparse_weight=1e-1).item()
    assert got == pytest.approx(ref_energy(zn, yn, -5.0, -1.0, 1e-2, 1e-1), rel=1e-10)


def test_all_ood_batch():
    z, y = random_case(4)
    y[1, 2, 3] = OUT                       # now every image has an outlier pixel
    a = np_penalty(z.numpy())
    _, parts = pebal_loss(z, y)
    assert parts["pal_in_img"].item() == 0.0
    assert parts["pal"].item() == pytest.approx(ref_pal_code(z.numpy(), y.numpy(), a), rel=1e-10)


def test_inlier_only_batch():
    z, y = random_case(5)
    y[y == OUT] = 3
    a = np_penalty(z.numpy())
    want = ref_pal_code(z.numpy(), y.numpy(), a) + 0.1 * ref_energy(z.numpy(), y.numpy())
    z.requires_grad_(True)
    total, parts = pebal_loss(z, y)
    assert parts["pal_ood_img"].item() == 0.0
    assert parts["energy_out"].item() == 0.0 and parts["energy_sparse"].item() == 0.0
    assert total.item() == pytest.approx(want, rel=1e-10)
    total.backward()
    assert torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("seed", [0, 4])
def test_every_term_and_the_gradient_match_the_independent_reference(seed, variant):
    z, y = random_case(seed, n=3, h=9, w=11)
    if seed == 4:
        y[y == OUT] = 3  # a batch without outliers: no ½ factor, no sparsity term
    z.requires_grad_(True)
    want = oracle_terms(z, y, variant=variant)
    (g_want,) = torch.autograd.grad(want["total"], z)
    total, parts = pebal_loss(z, y, pal_variant=variant)
    (g_got,) = torch.autograd.grad(total, z)
    assert set(parts) == set(want)
    for key, value in want.items():
        assert parts[key].item() == pytest.approx(value.item(), rel=1e-10, abs=1e-15), key
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-15)


def test_gradient_flows_through_penalty():
    """A void pixel is in no loss term itself; its inlier logits still get a PAL gradient through the
    blurred penalty of its neighbours, while its abstention logit (not in the LSE) gets none."""
    g = torch.Generator().manual_seed(11)
    z = (torch.randn(1, C, 6, 6, generator=g) * 2).requires_grad_(True)
    y = torch.randint(0, 19, (1, 6, 6), generator=g)
    y[0, 2, 3] = VOID
    pal_loss(z, y).backward()
    grad = z.grad[0, :, 2, 3]
    assert grad[:A].abs().max() > 1e-6
    assert grad[A].item() == 0.0
    assert torch.isfinite(z.grad).all()


def test_autograd_matches_finite_differences():
    """Central differences (float64) along random directions and along single coordinates, including
    the inlier logits of a void pixel (reached only through the penalty) and an outlier pixel."""
    g = torch.Generator().manual_seed(12)
    z = torch.randn(2, C, 4, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 19, (2, 4, 4), generator=g)
    y[0, 1, 1] = OUT
    y[0, 2, 2] = OUT
    y[1, 0, 3] = VOID
    eps = 1e-6
    for variant in ("code", "paper"):
        f = lambda t: pebal_loss(t, y, pal_variant=variant)[0]  # noqa: E731
        zg = z.clone().requires_grad_(True)
        f(zg).backward()
        grad = zg.grad
        directions = [torch.randn(z.shape, generator=g, dtype=torch.float64) for _ in range(3)]
        for idx in [(1, 0, 0, 3), (1, 5, 0, 3), (0, 4, 1, 1), (0, A, 2, 2), (1, A, 3, 3)]:
            d = torch.zeros_like(z)
            d[idx] = 1.0
            directions.append(d)
        for d in directions:
            numeric = (f(z + eps * d) - f(z - eps * d)).item() / (2 * eps)
            assert (grad * d).sum().item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        assert abs(grad[1, 5, 0, 3].item()) > 1e-8          # void pixel: via the penalty and R_smooth


# --------------------------------------------------------------------------------------------------
# edge cases and input handling


def test_all_void_batch_is_zero_with_grad():
    z = torch.randn(2, C, 5, 5, requires_grad=True)
    y = torch.full((2, 5, 5), VOID)
    loss = pal_loss(z, y)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(z.grad) == 0
    z.grad = None
    total, parts = pebal_loss(z, y)
    assert parts["pal"].item() == 0.0 and parts["energy_in"].item() == 0.0
    assert parts["energy"].item() == pytest.approx(parts["energy_smooth"].item())   # only R_smooth left
    total.backward()
    assert torch.isfinite(z.grad).all()
    assert pal_loss(z, y, variant="paper").item() == 0.0


def test_empty_batch():
    z = torch.randn(0, C, 5, 5, requires_grad=True)
    y = torch.zeros(0, 5, 5, dtype=torch.long)
    total, _ = pebal_loss(z, y)
    assert total.item() == 0.0
    total.backward()


def test_autocast_bfloat16_is_computed_in_float32():
    z, y = random_case(6)
    zb = z.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = pebal_loss(zb, y)
    assert total.dtype == torch.float32
    ref, _ = pebal_loss(zb.float(), y)
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)


def test_invalid_inputs():
    z = torch.randn(1, C, 3, 3)
    with pytest.raises(ValueError, match="labels must be in"):
        pal_loss(z, torch.full((1, 3, 3), 19))
    with pytest.raises(ValueError, match="labels must be in"):
        energy_loss(z, torch.full((1, 3, 3), -1))
    with pytest.raises(ValueError, match="shape"):
        pebal_loss(z, torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        pal_loss(z, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="variant"):
        pal_loss(z, torch.zeros(1, 3, 3, dtype=torch.long), variant="nope")


def test_uint8_labels_accepted():
    z, y = random_case(8)
    assert pal_loss(z, y.to(torch.uint8)).item() == pytest.approx(pal_loss(z, y).item(), rel=1e-12)
