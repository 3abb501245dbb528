"""PEBAL's networks: WRN38 DeepLabv3+ (``DeepWV3Plus``) and the ResNet101 DeepLabv3+ variant.

The WRN38 key/shape list below is the layout of NVIDIA's sdcnet ``DeepWV3Plus`` checkpoints
(``cityscapes_best.pth`` without the ``module.`` prefix; 19 or 20 outputs), written out by hand, not
derived from the model code, and the fake checkpoints are built from that list. The big models are
built once per module; forward passes run on small inputs only.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import pytest
import torch

from pebal_perception.core.models import get_model_spec
from pebal_perception.core.models.common import CheckpointError, load_state_dict_strict
from pebal_perception.core.models.resnet101 import DeepR101V3Plus
from pebal_perception.core.models.resnet101 import adapt_state_dict as adapt_r101
from pebal_perception.core.models.wrn38 import DeepWV3Plus
from pebal_perception.core.models.wrn38 import adapt_state_dict as adapt_wrn

# --------------------------------------------------------------------------------------------------
# The WRN38 checkpoint key list. An int is BN(c) (5 entries); a tuple is a conv ``.weight`` of that shape.

pytestmark = pytest.mark.slow

_SPEC_BLOCKS = [
    (["mod2.block1"], [("bn1.0", 64), ("convs.conv1", (128, 64, 3, 3)), ("convs.bn2.0", 128),
                       ("convs.conv2", (128, 128, 3, 3)), ("proj_conv", (128, 64, 1, 1))]),
    (["mod2.block2", "mod2.block3"], [("bn1.0", 128), ("convs.conv1", (128, 128, 3, 3)), ("convs.bn2.0", 128),
                                      ("convs.conv2", (128, 128, 3, 3))]),
    (["mod3.block1"], [("bn1.0", 128), ("convs.conv1", (256, 128, 3, 3)), ("convs.bn2.0", 256),
                       ("convs.conv2", (256, 256, 3, 3)), ("proj_conv", (256, 128, 1, 1))]),
    (["mod3.block2", "mod3.block3"], [("bn1.0", 256), ("convs.conv1", (256, 256, 3, 3)), ("convs.bn2.0", 256),
                                      ("convs.conv2", (256, 256, 3, 3))]),
    (["mod4.block1"], [("bn1.0", 256), ("convs.conv1", (512, 256, 3, 3)), ("convs.bn2.0", 512),
                       ("convs.conv2", (512, 512, 3, 3)), ("proj_conv", (512, 256, 1, 1))]),
    ([f"mod4.block{i}" for i in range(2, 7)], [("bn1.0", 512), ("convs.conv1", (512, 512, 3, 3)),
                                               ("convs.bn2.0", 512), ("convs.conv2", (512, 512, 3, 3))]),
    (["mod5.block1"], [("bn1.0", 512), ("convs.conv1", (512, 512, 3, 3)), ("convs.bn2.0", 512),
                       ("convs.conv2", (1024, 512, 3, 3)), ("proj_conv", (1024, 512, 1, 1))]),
    (["mod5.block2", "mod5.block3"], [("bn1.0", 1024), ("convs.conv1", (512, 1024, 3, 3)), ("convs.bn2.0", 512),
                                      ("convs.conv2", (1024, 512, 3, 3))]),
    (["mod6.block1"], [("bn1.0", 1024), ("convs.conv1", (512, 1024, 1, 1)), ("convs.bn2.0", 512),
                       ("convs.conv2", (1024, 512, 3, 3)), ("convs.bn3.0", 1024),
                       ("convs.conv3", (2048, 1024, 1, 1)), ("proj_conv", (2048, 1024, 1, 1))]),
    (["mod7.block1"], [("bn1.0", 2048), ("convs.conv1", (1024, 2048, 1, 1)), ("convs.bn2.0", 1024),
                       ("convs.conv2", (2048, 1024, 3, 3)), ("convs.bn3.0", 2048),
                       ("convs.conv3", (4096, 2048, 1, 1)), ("proj_conv", (4096, 2048, 1, 1))]),
]


def _spec_head(num_classes: int):
    return [
        ("aspp.features.0.0", (256, 4096, 1, 1)), ("aspp.features.0.1", 256),
        ("aspp.features.1.0", (256, 4096, 3, 3)), ("aspp.features.1.1", 256),
        ("aspp.features.2.0", (256, 4096, 3, 3)), ("aspp.features.2.1", 256),
        ("aspp.features.3.0", (256, 4096, 3, 3)), ("aspp.features.3.1", 256),
        ("aspp.img_conv.0", (256, 4096, 1, 1)), ("aspp.img_conv.1", 256),
        ("bot_fine", (48, 128, 1, 1)),
        ("bot_aspp", (256, 1280, 1, 1)),
        ("final.0", (256, 304, 3, 3)), ("final.1", 256), ("final.3", (256, 256, 3, 3)), ("final.4", 256),
        ("final.6", (num_classes, 256, 1, 1)),
    ]


def _expand(name: str, shape) -> list[tuple[str, tuple[int, ...]]]:
    if isinstance(shape, int):  # BN(c)
        return [(f"{name}.{p}", (shape,)) for p in ("weight", "bias", "running_mean", "running_var")] + [
            (f"{name}.num_batches_tracked", ())]
    return [(f"{name}.weight", tuple(shape))]


def spec_wrn38_entries(num_classes: int = 20) -> list[tuple[str, tuple[int, ...]]]:
    entries = [("mod1.conv1.weight", (64, 3, 3, 3))]
    for blocks, items in _SPEC_BLOCKS:
        for block in blocks:
            for name, shape in items:
                entries += _expand(f"{block}.{name}", shape)
    for name, shape in _spec_head(num_classes):
        entries += _expand(name, shape)
    return entries


def _fake_tensor(key: str, shape, gen: torch.Generator) -> torch.Tensor:
    """A random tensor whose values keep a forward pass finite (scaled conv weights, sane BN stats)."""
    if key.endswith("num_batches_tracked"):
        return torch.randint(0, 1000, shape, generator=gen, dtype=torch.long)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    if len(shape) == 1:  # BN weight / bias / running_mean
        base = 1.0 if key.endswith(".weight") else 0.0
        return base + 0.1 * torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen).mul_(math.sqrt(1.0 / math.prod(shape[1:])))


def _fake_state(entries, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: _fake_tensor(k, s, gen) for k, s in entries}


def _shapes(state) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items()]


# --------------------------------------------------------------------------------------------------
# Fixtures (built once per module)

@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(0)
    return DeepWV3Plus(20).eval()


@pytest.fixture(scope="module")
def wrn_source():
    """Random tensors for the 19-class (NVIDIA) list, plus a 20-row final.6 for PEBAL checkpoints."""
    state = _fake_state(spec_wrn38_entries(19), seed=1)
    gen = torch.Generator().manual_seed(2)
    return state, torch.randn((20, 256, 1, 1), generator=gen) * 0.05


@pytest.fixture(scope="module")
def nvidia_ckpt(wrn_source):
    state, _ = wrn_source
    inner = OrderedDict(("module." + k, v) for k, v in state.items())
    inner["module.criterion.nll_loss.weight"] = torch.ones(19)
    return {"state_dict": inner, "epoch": 3, "optimizer": {}, "mean_iu": 0.8}


@pytest.fixture(scope="module")
def pebal_state(wrn_source):
    state, final20 = wrn_source
    return OrderedDict((k, final20 if k == "final.6.weight" else v) for k, v in state.items())


@pytest.fixture(scope="module")
def pebal_ckpt(pebal_state):
    model = OrderedDict(("branch1." + k, v) for k, v in pebal_state.items())
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 40, "iteration": 1234}


@pytest.fixture(scope="module")
def r101():
    torch.manual_seed(0)
    return DeepR101V3Plus(20).eval()


@pytest.fixture(scope="module")
def r101_source():
    """A random 19-class state dict of DeepR101V3Plus (shapes from a meta-device model)."""
    with torch.device("meta"):
        shapes = _shapes(DeepR101V3Plus(19).state_dict())
    return _fake_state(shapes, seed=3)


# --------------------------------------------------------------------------------------------------
# WRN38: layout

def test_spec_list_counts():
    entries = spec_wrn38_entries(20)
    assert len(entries) == 268 == len({k for k, _ in entries})
    params = [(k, s) for k, s in entries if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) == 139
    # 137,104,192 is the parameter count of the 20-output model (final.6 [20,256,1,1]); the
    # 19-class NVIDIA layout has 256 fewer (137,103,936). Buffers are not counted.
    assert sum(math.prod(s) for _, s in params) == 137_104_192
    assert sum(math.prod(s) for k, s in spec_wrn38_entries(19)
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 137_103_936


def test_wrn38_state_dict_matches_spec(wrn):
    got = _shapes(wrn.state_dict())
    expected = spec_wrn38_entries(20)
    assert [e for e in expected if e not in got] == []  # list -> model
    assert [g for g in got if g not in expected] == []  # model -> list
    assert got == expected  # same order as the checkpoints, too
    assert len(got) == 268
    assert sum(p.numel() for p in wrn.parameters()) == 137_104_192
    assert len(list(wrn.parameters())) == 139 and len(list(wrn.buffers())) == 129
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in wrn.modules()) == 43
    assert not any(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in wrn.modules())


def test_wrn38_19_classes_matches_nvidia_layout():
    with torch.device("meta"):
        model = DeepWV3Plus(19)
    assert _shapes(model.state_dict()) == spec_wrn38_entries(19)
    assert sum(p.numel() for p in model.parameters()) == 137_103_936


def test_wrn38_architecture_details(wrn):
    assert wrn.mod6.block1.convs.dropout.p == pytest.approx(0.3)
    assert wrn.mod7.block1.convs.dropout.p == pytest.approx(0.5)
    assert list(wrn.mod6.block1.convs._modules)[-2:] == ["dropout", "conv3"]  # dropout right before conv3
    assert wrn.mod4.block1.convs.conv1.stride == (2, 2) and wrn.mod4.block1.proj_conv.stride == (2, 2)
    assert wrn.mod5.block2.convs.conv1.dilation == (2, 2) and wrn.mod5.block2.convs.conv2.padding == (2, 2)
    assert wrn.mod7.block1.convs.conv2.dilation == (4, 4)
    assert [b[0].dilation for b in wrn.aspp.features[1:]] == [(12, 12), (24, 24), (36, 36)]
    assert isinstance(wrn.mod2.block1.bn1[1], torch.nn.ReLU)


def test_wrn38_head_parameters():
    spec = get_model_spec("wrn38_deeplabv3plus")
    assert spec.builder is DeepWV3Plus and spec.adapt_state_dict is adapt_wrn
    assert spec.input_size == (1024, 2048) and spec.size_divisor == 8 and spec.head_prefixes == ("final.",)
    with torch.device("meta"):
        model = DeepWV3Plus(20)
    head = [(n, p) for n, p in model.named_parameters() if n.startswith(spec.head_prefixes)]
    assert [n for n, _ in head] == ["final.0.weight", "final.1.weight", "final.1.bias", "final.3.weight",
                                    "final.4.weight", "final.4.bias", "final.6.weight"]
    assert sum(p.numel() for _, p in head) == 1_296_384  # the block the reference fine-tunes


def _record(module, feats, name, what="out"):
    def hook(m, inputs, output):
        feats[name] = inputs[0] if what == "in" else output
    return module.register_forward_hook(hook)


def _check_decoder_order(feats, low_channels):
    # ASPP concatenation [image pool, 1x1, d12, d24, d36]: only the first 256 channels are constant in space
    aspp = feats["aspp"]
    flat = aspp.flatten(2)
    constant = (flat.amax(-1) - flat.amin(-1)).abs() < 1e-6
    assert constant[0, :256].all() and not constant[0, 256:].all()
    # decoder concatenation [fine, aspp]: the first channels are the (unresized) low-level projection
    assert torch.equal(feats["final_in"][:, :low_channels], feats["fine"])
    # logits = bilinear(align_corners=True) upsampling of the head output to the input size
    expected = torch.nn.functional.interpolate(feats["head"], size=feats["out"].shape[2:], mode="bilinear",
                                               align_corners=True)
    assert torch.allclose(feats["out"], expected, atol=1e-6)


def test_wrn38_forward_small(wrn):
    feats = {}
    hooks = [_record(wrn.mod2, feats, "m2"), _record(wrn.aspp, feats, "aspp_in", "in"),
             _record(wrn.aspp, feats, "aspp"), _record(wrn.bot_fine, feats, "fine"),
             _record(wrn.final, feats, "final_in", "in"), _record(wrn.final, feats, "head")]
    try:
        with torch.no_grad():
            out = wrn(torch.randn(1, 3, 64, 64))
            feats["out"] = out2 = wrn(torch.randn(1, 3, 40, 56))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (1, 20, 64, 64) and torch.isfinite(out).all()
    assert out2.shape == (1, 20, 40, 56) and torch.isfinite(out2).all()
    assert feats["m2"].shape == (1, 128, 20, 28)  # low-level features at 1/2 resolution
    assert feats["aspp_in"].shape == (1, 4096, 5, 7)  # output stride 8
    assert feats["head"].shape == (1, 20, 20, 28)  # decoder at 1/2 resolution
    _check_decoder_order(feats, 48)


# --------------------------------------------------------------------------------------------------
# WRN38: checkpoints

def test_nvidia_checkpoint_adapts_and_loads(wrn, wrn_source, nvidia_ckpt):
    state, _ = wrn_source
    adapted = adapt_wrn(nvidia_ckpt)
    assert _shapes(adapted) == spec_wrn38_entries(20)
    assert tuple(nvidia_ckpt["state_dict"]["module.final.6.weight"].shape) == (19, 256, 1, 1)  # input untouched
    final = adapted["final.6.weight"]
    assert torch.equal(final[:19], state["final.6.weight"])
    row = final[19]
    assert torch.isfinite(row).all() and (row != 0).any()
    assert row.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.3)
    load_state_dict_strict(wrn, adapted)
    loaded = wrn.state_dict()
    for key, value in state.items():
        if key != "final.6.weight":
            assert torch.equal(loaded[key], value), key
    assert torch.equal(loaded["final.6.weight"], final)


def test_widening_generator_is_reproducible(nvidia_ckpt):
    a = adapt_wrn(nvidia_ckpt, generator=torch.Generator().manual_seed(7))["final.6.weight"]
    b = adapt_wrn(nvidia_ckpt, generator=torch.Generator().manual_seed(7))["final.6.weight"]
    assert torch.equal(a, b)


def test_pebal_checkpoint_loads_bit_exactly(wrn, pebal_state, pebal_ckpt):
    adapted = adapt_wrn(pebal_ckpt)
    load_state_dict_strict(wrn, adapted)
    loaded = wrn.state_dict()
    assert list(loaded) == list(pebal_state)
    for key, value in pebal_state.items():
        assert torch.equal(loaded[key], value), key
    with torch.no_grad():
        out = wrn(torch.randn(1, 3, 32, 48))
    assert out.shape == (1, 20, 32, 48) and torch.isfinite(out).all()


def test_other_wrn38_layouts(pebal_state, wrn_source):
    state19, _ = wrn_source
    variants = {
        "module.branch1.": {"model": OrderedDict(("module.branch1." + k, v) for k, v in pebal_state.items())},
        "bare": dict(pebal_state),
        "bare module.": {"module." + k: v for k, v in pebal_state.items()},
    }
    for name, ckpt in variants.items():
        adapted = adapt_wrn(ckpt)
        assert list(adapted) == list(pebal_state), name
        assert all(adapted[k] is v for k, v in pebal_state.items()), name
    # a bare 19-class state dict (DeepWV3Plus(19)) is widened, and may lack num_batches_tracked
    bare19 = {k: v for k, v in state19.items() if not k.endswith("num_batches_tracked")}
    adapted = adapt_wrn(bare19)
    assert adapted["final.6.weight"].shape == (20, 256, 1, 1)
    assert torch.equal(adapted["final.6.weight"][:19], state19["final.6.weight"])
    assert _shapes(adapted) == spec_wrn38_entries(20)


@pytest.mark.parametrize("key", ["mod3.block2.convs.conv1.weight", "final.4.running_var", "aspp.img_conv.0.weight"])
def test_missing_key_is_named(pebal_state, key):
    ckpt = {"model": OrderedDict(("branch1." + k, v) for k, v in pebal_state.items() if k != key)}
    with pytest.raises(CheckpointError, match=re.escape(key)):
        adapt_wrn(ckpt)


def test_wrong_shape_is_named(wrn, pebal_state):
    key = "aspp.features.2.0.weight"
    bad = dict(pebal_state)
    bad[key] = torch.zeros(256, 4096, 1, 1)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        adapt_wrn({"model": bad})
    with pytest.raises(CheckpointError, match=re.escape(key)):  # the strict loader says the same
        load_state_dict_strict(wrn, bad)
    wide = dict(pebal_state)
    wide["final.6.weight"] = torch.zeros(21, 256, 1, 1)  # neither 19 nor 20 rows: not widened, rejected
    with pytest.raises(CheckpointError, match=re.escape("final.6.weight")):
        adapt_wrn(wide)


def test_unexpected_key_is_named(pebal_state):
    extra = dict(pebal_state)
    extra["bn_out.weight"] = torch.ones(4096)
    with pytest.raises(CheckpointError, match=re.escape("bn_out.weight")):
        adapt_wrn(extra)


@pytest.mark.parametrize("obj", [
    [1, 2, 3],
    {},
    {"epoch": 3, "optimizer": {}},
    {"state_dict": {"layer1.0.conv1.weight": torch.zeros(1)}},  # not a WRN (a ResNet) checkpoint
    {"model": {"branch1.mod1.conv1.weight": "not a tensor"}},
])
def test_unknown_wrn38_layouts(obj):
    with pytest.raises(CheckpointError, match="checkpoint"):
        adapt_wrn(obj)


# --------------------------------------------------------------------------------------------------
# ResNet101 variant

def test_r101_layout_and_registry(r101):
    state = r101.state_dict()
    head = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(("layer", "aspp."))}
    weights = {k: s for k, s in head.items() if k.endswith("weight") and len(s) == 4}
    assert weights == {
        "bot_fine.0.weight": (48, 256, 1, 1), "bot_aspp.0.weight": (256, 1280, 1, 1),
        "final1.0.weight": (256, 304, 3, 3), "final1.3.weight": (256, 256, 3, 3),
        "final2.0.weight": (20, 256, 1, 1)}
    assert "final2.0.bias" not in state and not any(k.startswith("dsn.") for k in state)
    assert tuple(state["aspp.features.0.0.weight"].shape) == (256, 2048, 1, 1)
    assert [tuple(state[f"aspp.features.{i}.0.weight"].shape) for i in (1, 2, 3)] == [(256, 2048, 3, 3)] * 3
    assert tuple(state["aspp.img_conv.0.weight"].shape) == (256, 2048, 1, 1)
    assert tuple(state["layer0.conv1.weight"].shape) == (64, 3, 7, 7)
    spec = get_model_spec("resnet101_deeplabv3plus")
    assert spec.builder is DeepR101V3Plus and spec.adapt_state_dict is adapt_r101
    assert spec.input_size == (512, 1024) and spec.size_divisor == 8
    assert spec.head_prefixes == ("final1.", "final2.")
    head_params = [n for n, _ in r101.named_parameters() if n.startswith(spec.head_prefixes)]
    assert head_params == ["final1.0.weight", "final1.1.weight", "final1.1.bias", "final1.3.weight",
                           "final1.4.weight", "final1.4.bias", "final2.0.weight"]


def test_r101_forward_small(r101):
    feats = {}
    hooks = [_record(r101.layer1, feats, "low"), _record(r101.layer4, feats, "deep"),
             _record(r101.aspp, feats, "aspp"), _record(r101.bot_fine, feats, "fine"),
             _record(r101.final1, feats, "final_in", "in"), _record(r101.final2, feats, "head")]
    try:
        with torch.no_grad():
            feats["out"] = out = r101(torch.randn(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (1, 20, 64, 64) and torch.isfinite(out).all()
    assert feats["low"].shape == (1, 256, 16, 16) and feats["deep"].shape == (1, 2048, 8, 8)
    assert feats["head"].shape == (1, 20, 16, 16)  # decoder at 1/4 resolution
    _check_decoder_order(feats, 48)


def _sml_head_extras(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"final2.0.bias": torch.randn(19, generator=gen), "dsn.0.weight": torch.zeros(512, 1024, 3, 3),
            "dsn.0.bias": torch.zeros(512), "dsn.1.weight": torch.ones(512), "dsn.1.bias": torch.zeros(512),
            "dsn.1.running_mean": torch.zeros(512), "dsn.1.running_var": torch.ones(512),
            "dsn.1.num_batches_tracked": torch.zeros((), dtype=torch.long),
            "dsn.4.weight": torch.randn(19, 512, 1, 1, generator=gen), "dsn.4.bias": torch.zeros(19)}


def test_r101_adapt_widens_19_class_dict(r101, r101_source):
    gen = torch.Generator().manual_seed(4)
    ckpt = {"state_dict": {"module." + k: v for k, v in {**r101_source, **_sml_head_extras(gen)}.items()},
            "epoch": 10}
    adapted = adapt_r101(ckpt)
    assert set(adapted) == set(r101.state_dict())
    final = adapted["final2.0.weight"]
    assert final.shape == (20, 256, 1, 1)
    assert torch.equal(final[:19], r101_source["final2.0.weight"])
    assert torch.isfinite(final[19]).all() and (final[19] != 0).any()
    assert final[19].std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.3)
    load_state_dict_strict(r101, adapted)
    loaded = r101.state_dict()
    for key, value in r101_source.items():
        if key != "final2.0.weight":
            assert torch.equal(loaded[key], value), key
    with torch.no_grad():
        out = r101(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 20, 32, 32) and torch.isfinite(out).all()
    # the same weights saved by a PEBAL-style trainer ('model' + 'branch1.') or bare load the same way
    for wrapped in ({"model": {"branch1." + k: v for k, v in adapted.items()}, "epoch": 1}, dict(adapted)):
        again = adapt_r101(wrapped)
        assert all(again[k] is v for k, v in adapted.items())


def test_r101_rejects_sml_deep_stem_checkpoint(r101_source):
    state = {k: v for k, v in r101_source.items() if not k.startswith("layer0.")}
    for i, c in ((0, 64), (3, 64), (6, 128)):  # deep stem: three 3x3 convs 3->64->64->128, BN after each
        state[f"layer0.{i}.weight"] = torch.zeros(c, 3 if i == 0 else 64, 3, 3)
        for p in ("weight", "bias", "running_mean", "running_var"):
            state[f"layer0.{i + 1}.{p}"] = torch.zeros(c)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 128, 1, 1)
    state["layer1.0.downsample.0.weight"] = torch.zeros(256, 128, 1, 1)
    state.update(_sml_head_extras(torch.Generator().manual_seed(5)))
    with pytest.raises(CheckpointError) as info:
        adapt_r101({"state_dict": {"module." + k: v for k, v in state.items()}})
    message = str(info.value)
    for key in ("layer0.conv1.weight", "layer0.0.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight"):
        assert key in message
    assert "missing keys" in message and "unexpected keys" in message and "shape clashes" in message


@pytest.mark.parametrize("obj", [
    "not a checkpoint",
    {"optimizer": {}, "epoch": 1},
    {"model": {"branch1.mod1.conv1.weight": torch.zeros(1)}},  # a WRN38 checkpoint
])
def test_r101_unknown_layouts(obj):
    with pytest.raises(CheckpointError, match="checkpoint"):
        adapt_r101(obj)
