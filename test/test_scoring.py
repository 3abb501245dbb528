"""PEBAL scoring: energy sign and channel use, the reference Gaussian, masks."""
import math

import numpy as np
import pytest
import torch
import torchvision

from pebal_perception.core import scoring


def test_free_energy_uses_only_the_19_inlier_channels_and_is_negative_lse():
    logits = torch.randn(2, 20, 5, 7)
    expected = -torch.logsumexp(logits[:, :19], dim=1)
    assert torch.allclose(scoring.free_energy(logits), expected)
    changed = logits.clone()
    changed[:, 19] += 100.0  # the abstention channel must not move the score
    assert torch.equal(scoring.free_energy(changed), scoring.free_energy(logits))


def test_free_energy_hand_value():
    logits = torch.zeros(1, 20, 1, 1)
    logits[0, 3] = 2.0
    expected = -math.log(18 * math.exp(0.0) + math.exp(2.0))
    assert scoring.free_energy(logits).item() == pytest.approx(expected, abs=1e-6)


def test_confident_pixels_score_lower_than_uncertain_ones():
    confident = torch.full((1, 20, 1, 1), -5.0)
    confident[0, 0] = 15.0
    uncertain = torch.zeros(1, 20, 1, 1)
    assert scoring.free_energy(confident).item() < scoring.free_energy(uncertain).item()


def test_fp16_logits_are_scored_in_fp32_without_overflow():
    logits = torch.full((1, 20, 2, 2), 60000.0, dtype=torch.float16)
    energy = scoring.free_energy(logits)
    assert energy.dtype == torch.float32 and torch.isfinite(energy).all()


def test_gaussian_matches_torchvision_reference():
    x = torch.randn(3, 31, 45)
    ours = scoring.gaussian_smooth(x)
    ref = torchvision.transforms.GaussianBlur(7, 1.0)(x.unsqueeze(1)).squeeze(1)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert scoring.gaussian_kernel_1d().numpy() == pytest.approx(
        [0.00443, 0.05401, 0.24204, 0.39905, 0.24204, 0.05401, 0.00443], abs=1e-5)


@pytest.mark.parametrize("shape", [(3, 31, 45), (1, 512, 1024), (2, 4, 4), (1, 3, 2), (1, 1, 1), (9, 17)])
def test_gaussian_opencv_cpu_path_equals_the_conv2d_path(shape):
    """Inference on the CPU smooths with OpenCV; training (gradients) and other devices use conv2d."""
    x = torch.randn(*shape) * 5 - 9
    if x.numel() > 20:
        x.view(-1)[7] = float("nan")  # NaN spreads over the same 7x7 neighbourhood in both
    fast = scoring.gaussian_smooth(x)
    with torch.enable_grad():
        slow = scoring.gaussian_smooth(x.clone().requires_grad_(True)).detach()
    assert fast.shape == slow.shape == x.shape and fast.dtype == torch.float32
    assert torch.equal(torch.isnan(fast), torch.isnan(slow))
    assert torch.allclose(fast.nan_to_num(), slow.nan_to_num(), atol=2e-6, rtol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(scoring.gaussian_smooth(x).nan_to_num(), fast.nan_to_num(), atol=0, rtol=0)
    strided = torch.randn(2, 40, 30).transpose(1, 2)  # non-contiguous input
    assert torch.allclose(scoring.gaussian_smooth(strided), scoring._gaussian_smooth_torch(strided, 7, 1.0, True),
                          atol=2e-6)


def test_gaussian_handles_2d_tiny_maps_and_rejects_bad_kernels():
    assert scoring.gaussian_smooth(torch.ones(2, 2)).shape == (2, 2)
    assert torch.allclose(scoring.gaussian_smooth(torch.ones(2, 2)), torch.ones(2, 2))
    with pytest.raises(ValueError):
        scoring.gaussian_kernel_1d(4, 1.0)
    with pytest.raises(ValueError):
        scoring.gaussian_kernel_1d(7, 0.0)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 20, 64, 96), (2, 20, 37, 5), (1, 19, 1, 1), (1, 20, 70, 33)])
def test_energy_and_prediction_equal_the_separate_functions(layout, shape):
    torch.manual_seed(sum(shape))
    logits = torch.randn(*shape) * 4
    logits[0, 3, 0, :] = logits[0, 7, 0, :]  # ties: the first maximal class wins, as argmax
    logits[0, 3, 0, :] += 100
    logits[0, 7, 0, :] += 100
    if shape[2] > 2:
        logits[0, :, 1, 0] = float("-inf")  # every class impossible
        logits[0, 2, 2, 0] = float("inf")
        logits[0, 5, 2, 1 % shape[3]] = float("nan")
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    energy, prediction = scoring.energy_and_prediction(logits, rows_per_chunk=8)
    expected_energy, expected_prediction = scoring.free_energy(logits), scoring.semantic_prediction(logits)
    assert energy.dtype == torch.float32 and prediction.dtype == torch.int64
    assert torch.equal(prediction, expected_prediction)
    assert torch.equal(torch.isnan(energy), torch.isnan(expected_energy))
    torch.testing.assert_close(energy, expected_energy, rtol=1e-6, atol=1e-5, equal_nan=True)
    _, as_uint8 = scoring.energy_and_prediction(logits.half(), prediction_dtype=torch.uint8)
    assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8.long(), scoring.semantic_prediction(logits.half()))
    with pytest.raises(ValueError):
        scoring.energy_and_prediction(logits[:, :5])


def test_semantic_ignores_the_abstention_channel():
    logits = torch.zeros(1, 20, 1, 2)
    logits[0, 19] = 50.0
    logits[0, 13, 0, 0] = 1.0
    logits[0, 0, 0, 1] = 1.0
    assert scoring.semantic_prediction(logits).tolist() == [[[13, 0]]]


def test_obstacle_mask_threshold_and_nan():
    score = torch.tensor([[-10.0, -8.0, float("nan")]])
    assert scoring.obstacle_mask(score, -9.0).tolist() == [[False, True, False]]


def test_anomaly_score_smooths_energy():
    logits = torch.randn(1, 20, 16, 16)
    raw = scoring.anomaly_score(logits, smoothing=False)
    smooth = scoring.anomaly_score(logits)
    assert torch.allclose(raw, scoring.free_energy(logits))
    assert smooth.std() < raw.std()
    assert np.isclose(smooth.mean().item(), raw.mean().item(), atol=0.05)
