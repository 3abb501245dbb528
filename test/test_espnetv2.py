"""ESPNetv2 (s=2.0) segmentation network: structure, checkpoint adaptation and the real-frame reference."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pebal_perception.core import models as registry
from pebal_perception.core.models.common import CheckpointError, load_state_dict_strict
from pebal_perception.core.models.espnetv2 import (
    EESP,
    ChannelShuffle,
    DownSampler,
    ESPNetv2Segmentation,
    adapt_state_dict,
    eesp_dilations,
)

pytestmark = pytest.mark.slow

NUM_PARAMS = 789_242
NUM_KEYS = 526
CLASSIFIER_W = "bu_dec_l4.merge_layer.3.weight"
CLASSIFIER_B = "bu_dec_l4.merge_layer.3.bias"
FRAME = "frankfurt_000000_000294"
# The reference logits/free energy were stored at every 8th pixel starting at 4 (the centre of each
# 8x8 cell): [4::8, 4::8] matches the origin to ~1e-5, while [::8, ::8] differs by ~9 (checked).
SAMPLE = (slice(None), slice(4, None, 8), slice(4, None, 8))


@pytest.fixture(scope="module")
def model() -> ESPNetv2Segmentation:
    torch.manual_seed(0)
    return ESPNetv2Segmentation().eval()


# ---------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("shape", [(1, 3, 64, 128), (2, 3, 128, 256)])
def test_output_is_20_channel_logits_at_input_resolution(model, shape):
    with torch.inference_mode():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 20, shape[2], shape[3])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("height, width", [(72, 128), (64, 120)])
def test_size_not_divisible_by_16_is_rejected_with_the_size(model, height, width):
    with pytest.raises(ValueError, match=rf"16.*{height}x{width}"):
        model(torch.zeros(1, 3, height, width))


def test_parameter_and_key_counts(model):
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == NUM_PARAMS
    assert len(model.state_dict()) == NUM_KEYS


def test_only_scale_2_is_supported():
    with pytest.raises(ValueError, match="scale"):
        ESPNetv2Segmentation(scale=1.0)


def test_eesp_dilations_follow_the_receptive_field_limit():
    assert eesp_dilations(13) == eesp_dilations(11) == eesp_dilations(9) == [1, 2, 3, 4]
    assert eesp_dilations(7) == [1, 1, 2, 3]  # clipped 9 -> 3, then sorted
    model = ESPNetv2Segmentation()
    assert [m.conv.dilation[0] for m in model.base_net.level4[0].spp_dw] == [1, 1, 2, 3]
    assert [m.conv.dilation[0] for m in model.base_net.level3[0].spp_dw] == [1, 2, 3, 4]
    assert [m.conv.dilation[0] for m in model.base_net.level4_0.eesp.spp_dw] == [1, 2, 3, 4]


def test_channel_shuffle_interleaves_the_scales():
    x = torch.arange(50.0).view(1, 50, 1, 1)
    out = ChannelShuffle(5)(x).flatten().tolist()
    # out[j * 5 + g] = in[g * 10 + j]
    assert out[:6] == [0.0, 10.0, 20.0, 30.0, 40.0, 1.0]
    assert out == [float(g * 10 + j) for j in range(10) for g in range(5)]


def test_strided_eesp_never_applies_module_act():
    torch.manual_seed(1)
    block = DownSampler(32, 128, r_lim=13).eval()
    x, image = torch.randn(1, 32, 16, 32), torch.randn(1, 3, 8, 16)
    with torch.inference_mode():
        before = block(x, image)
        block.eesp.module_act.weight.fill_(-3.0)
        after = block(x, image)
    assert torch.equal(before, after)


def test_stride1_eesp_is_residual_with_module_act():
    torch.manual_seed(2)
    block = EESP(64, 64, stride=1, r_lim=9).eval()
    x = torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        y = block(x)
        block.module_act.weight.fill_(1.0)  # PReLU with slope 1 is the identity
        pre_act = block(x)
        for branch in block.spp_dw:  # with all branches zero the block output is BN-only + x
            branch.conv.weight.zero_()
        zeroed = block(x)
    assert not torch.equal(y, pre_act)
    expected = block.conv_1x1_exp(block.br_after_cat(torch.zeros(1, 64, 8, 8))) + x
    torch.testing.assert_close(zeroed, expected)


def test_registered_in_the_model_registry():
    # Reads the registry table directly: get_model_spec() would also import the other architectures.
    spec = registry._REGISTRY["espnetv2"]
    assert spec.builder is ESPNetv2Segmentation
    assert spec.adapt_state_dict is adapt_state_dict
    assert spec.input_size == (512, 1024)
    assert spec.size_divisor == 16
    assert spec.head_prefixes == ("bu_dec_l4.",)


# ------------------------------------------------------------------------------------- adapt_state_dict
def _state(model) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.clone()) for k, v in model.state_dict().items())


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: OrderedDict(("module." + k, v) for k, v in sd.items()),
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": OrderedDict(("module." + k, v) for k, v in sd.items()), "optimizer": {}},
])
def test_adapt_accepts_plain_prefixed_and_wrapped_checkpoints(model, wrap):
    sd = _state(model)
    adapted = adapt_state_dict(wrap(sd))
    assert list(adapted) == list(sd)
    target = ESPNetv2Segmentation()
    load_state_dict_strict(target, adapted)
    assert torch.equal(target.state_dict()[CLASSIFIER_W], sd[CLASSIFIER_W])


def test_adapt_widens_a_19_class_classifier(model):
    sd = _state(model)
    sd[CLASSIFIER_W] = sd[CLASSIFIER_W][:19].clone()
    sd[CLASSIFIER_B] = torch.arange(1.0, 20.0)
    adapted = adapt_state_dict(sd)
    assert adapted[CLASSIFIER_W].shape == (20, 10, 1, 1)
    assert torch.equal(adapted[CLASSIFIER_W][:19], sd[CLASSIFIER_W])
    assert adapted[CLASSIFIER_W][19].abs().sum() > 0  # the abstention filter gets a random init
    assert torch.equal(adapted[CLASSIFIER_B], torch.cat([torch.arange(1.0, 20.0), torch.zeros(1)]))
    load_state_dict_strict(ESPNetv2Segmentation(), adapted)


@pytest.mark.parametrize("bad", [None, 3, [torch.zeros(1)], torch.zeros(3), {"a.weight": np.zeros(3)},
                                 {"state_dict": {"a": "not a tensor"}}, {}])
def test_adapt_rejects_non_tensor_mappings(bad):
    with pytest.raises(CheckpointError):
        adapt_state_dict(bad)


def test_missing_or_renamed_key_is_named(model):
    sd = _state(model)
    key = "base_net.level4.3.spp_dw.2.conv.weight"
    sd["base_net.level4.3.spp_dw.2.weight"] = sd.pop(key)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_state_dict_strict(ESPNetv2Segmentation(), adapt_state_dict(sd))


def test_wrong_shape_is_named(model):
    sd = _state(model)
    key = "merge_enc_dec_l3.expansion_layer.cbr.0.weight"
    sd[key] = torch.zeros(48, 16, 3, 3)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_state_dict_strict(ESPNetv2Segmentation(), adapt_state_dict(sd))


# -------------------------------------------------------------------------------------- shared assets
def test_state_dict_matches_the_published_key_table(model, shared_assets: Path):
    table = shared_assets / "espnetv2_cityscapes" / "state_dict_keys.tsv"
    expected = []
    for line in table.read_text().splitlines():
        if line.strip():
            key, shape, _dtype = line.split("\t")
            expected.append((key, shape))
    got = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert len(expected) == NUM_KEYS
    assert sorted(got) == sorted(expected)


def _preprocess(path: Path) -> torch.Tensor:
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((1024, 512), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(registry.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(registry.IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


@pytest.fixture(scope="module")
def real_logits(shared_assets: Path) -> torch.Tensor:
    ckpt = shared_assets / "espnetv2_cityscapes" / "espnetv2_s_2.0_city_1024x512.pth"
    net = ESPNetv2Segmentation().eval()
    load_state_dict_strict(net, adapt_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)))
    x = _preprocess(shared_assets / "cityscapes_val" / f"{FRAME}_leftImg8bit.png")
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (1, 20, 512, 1024)
    return out[0]


@pytest.fixture(scope="module")
def reference(shared_assets: Path):
    return np.load(shared_assets / "espnetv2_cityscapes" / f"reference_outputs_{FRAME}.npz")


def test_real_checkpoint_matches_reference_logits(real_logits, reference):
    expected = reference["logits_sampled"]
    assert expected.shape == (20, 64, 128)
    got = real_logits[SAMPLE].numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_real_checkpoint_matches_reference_free_energy(real_logits, reference):
    energy = -torch.logsumexp(real_logits[:19], dim=0)
    assert np.abs(energy[SAMPLE[1:]].numpy() - reference["free_energy"]).max() < 1e-4


def test_real_checkpoint_argmax_agrees_with_reference(real_logits, reference):
    pred = real_logits[:19].argmax(0).numpy()
    assert pred.shape == reference["argmax19"].shape
    assert (pred == reference["argmax19"]).mean() >= 0.999


def test_real_checkpoint_pixel_accuracy(real_logits, shared_assets: Path):
    from PIL import Image

    pred = real_logits[:19].argmax(0).numpy().astype(np.uint8)
    pred = np.asarray(Image.fromarray(pred).resize((256, 128), Image.NEAREST))
    label = np.asarray(Image.open(
        shared_assets / "cityscapes_val" / "mmseg_pseudo_256x128" / f"{FRAME}_gtFine_labelTrainIds.png"))
    valid = label != 255
    accuracy = float((pred[valid] == label[valid]).mean())
    assert accuracy >= 0.95, accuracy
