"""PEBAL's network: DeepLabv3+ on a dilated WideResNet38 (NVIDIA "sdcnet" ``DeepWV3Plus``).

The module tree is laid out so that ``state_dict()`` has exactly the key names and shapes of the
checkpoints in circulation (spec section 1.1/1.3): NVIDIA's ``cityscapes_best.pth`` (19 classes, keys
prefixed ``module.``) and PEBAL's own checkpoints (20 outputs, keys prefixed ``branch1.``).

Layout (input H x W, output stride 8, decoder at 1/2 resolution)::

    mod1   conv3x3 3->64                                   1/1
    pool2  maxpool 3x3 s2 ; mod2  3 basic blocks 128,128   1/2   -> m2 (low-level features)
    pool3  maxpool 3x3 s2 ; mod3  3 basic blocks 256,256   1/4
    mod4   6 basic blocks 512,512 (first one strided)      1/8
    mod5   3 basic blocks 512,1024, dilation 2             1/8
    mod6   1 bottleneck 512,1024,2048, dilation 4, Dropout2d(0.3)
    mod7   1 bottleneck 1024,2048,4096, dilation 4, Dropout2d(0.5)
    aspp   [image pool, 1x1, 3x3 d12, 3x3 d24, 3x3 d36] -> 1280 ch
    bot_aspp 1x1 1280->256, upsampled to m2 ; bot_fine 1x1 128->48 on m2
    final  conv3x3 304->256, BN, ReLU, conv3x3 256->256, BN, ReLU, conv1x1 256->C (no bias)
    logits upsampled bilinearly (align_corners=True) to the input size

The WRN's own ``bn_out`` and classifier are not part of the model (PEBAL discards them), so the ASPP
sees the raw mod7 output.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import NUM_INLIER_CLASSES, NUM_OUTPUTS, ModelSpec, register_model
from .common import CheckpointError, describe_mismatch, widen_classifier

__all__ = ["DeepWV3Plus", "IdentityResidualBlock", "AtrousSpatialPyramidPooling", "adapt_state_dict",
           "upsample_bilinear"]


def _bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm2d + ReLU as one Sequential, so the BN's keys read ``<name>.0.*`` as in the checkpoints."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with align_corners=True (the convention of every resize in these networks)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block of WiderResNetA2.

    ``t = ReLU(BN(x))``; output = ``convs(t) + (proj_conv(t) if projected else x)``.
    ``channels`` of length 2 gives the basic block (3x3, 3x3), length 3 the bottleneck (1x1, 3x3, 1x1).
    The stride sits on the first convolution (and the projection); padding equals the dilation.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], stride: int = 1, dilation: int = 1,
                 dropout: float | None = None):
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError(f"channels must have 2 or 3 entries, got {channels!r}")
        self.bn1 = _bn_relu(in_channels)
        layers: list[tuple[str, nn.Module]]
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride=stride, padding=dilation,
                                    dilation=dilation, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, stride=1, padding=dilation,
                                    dilation=dilation, bias=False)),
            ]
        else:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride=stride, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, stride=1, padding=dilation,
                                    dilation=dilation, bias=False)),
                ("bn3", _bn_relu(channels[1])),
            ]
            if dropout:
                layers.append(("dropout", nn.Dropout2d(p=dropout)))
            layers.append(("conv3", nn.Conv2d(channels[1], channels[2], 1, stride=1, bias=False)))
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = nn.Conv2d(in_channels, channels[-1], 1, stride=stride, bias=False)
        else:
            self.proj_conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.bn1(x)  # BN makes a new tensor, so the in-place ReLU never touches x
        shortcut = self.proj_conv(t) if self.proj_conv is not None else x
        return self.convs(t) + shortcut


class AtrousSpatialPyramidPooling(nn.Module):
    """DeepLabv3 ASPP: outputs concatenated as [image pool, 1x1, 3x3 d=r1, d=r2, d=r3].

    Keys: ``features.0`` (1x1 branch), ``features.1..3`` (dilated branches), each (conv, BN, ReLU);
    ``img_conv`` (conv, BN, ReLU) after global average pooling. No convolution has a bias.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))]
        for rate in rates:
            branches.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
        self.features = nn.ModuleList(branches)
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.out_channels = out_channels * (len(rates) + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = upsample_bilinear(self.img_conv(self.img_pooling(x)), x.shape[2:])
        return torch.cat([pooled] + [branch(x) for branch in self.features], dim=1)


# (blocks, channels, first-block stride, dilation, dropout) for mod2..mod7 of WiderResNetA2 [3,3,6,3,1,1]
# with dilation=True (output stride 8).
_WRN38_STAGES = (
    (3, (128, 128), 1, 1, None),
    (3, (256, 256), 1, 1, None),
    (6, (512, 512), 2, 1, None),
    (3, (512, 1024), 1, 2, None),
    (1, (512, 1024, 2048), 1, 4, 0.3),
    (1, (1024, 2048, 4096), 1, 4, 0.5),
)


class DeepWV3Plus(nn.Module):
    """DeepLabv3+ with a dilated WideResNet38 backbone; ``N x 3 x H x W`` -> ``N x C x H x W`` logits."""

    def __init__(self, num_classes: int = NUM_OUTPUTS):
        super().__init__()
        self.num_classes = num_classes
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False))]))
        in_channels = 64
        for index, (blocks, channels, stride, dilation, dropout) in enumerate(_WRN38_STAGES, start=2):
            stage = []
            for block in range(blocks):
                stage.append((f"block{block + 1}", IdentityResidualBlock(
                    in_channels, channels, stride=stride if block == 0 else 1, dilation=dilation,
                    dropout=dropout)))
                in_channels = channels[-1]
            setattr(self, f"mod{index}", nn.Sequential(OrderedDict(stage)))
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)
        self.aspp = AtrousSpatialPyramidPooling(4096, 256, rates=(12, 24, 36))
        self.bot_fine = nn.Conv2d(128, 48, 1, bias=False)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, 256, 1, bias=False)
        self.final = nn.Sequential(
            nn.Conv2d(48 + 256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an N x 3 x H x W batch, got shape {tuple(x.shape)}")
        size = x.shape[2:]
        x = self.mod1(x)
        m2 = self.mod2(self.pool2(x))
        x = self.mod3(self.pool3(m2))
        x = self.mod4(x)
        x = self.mod5(x)
        x = self.mod6(x)
        x = self.mod7(x)
        x = self.bot_aspp(self.aspp(x))
        x = torch.cat([self.bot_fine(m2), upsample_bilinear(x, m2.shape[2:])], dim=1)
        return upsample_bilinear(self.final(x), size)


# ------------------------------------------------------------------------------------------------
# Checkpoint adaptation (shared helpers are also used by the ResNet101 variant)

def expected_state_shapes(builder, num_classes: int = NUM_OUTPUTS) -> dict[str, torch.Size]:
    """Key -> shape of ``builder(num_classes).state_dict()``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = builder(num_classes)
    return {k: v.shape for k, v in model.state_dict().items()}


def unwrap_checkpoint(obj: Any, model_name: str) -> tuple[dict[str, torch.Tensor], str]:
    """Finds the state dict in a loaded checkpoint: bare, or under ``state_dict`` / ``model``.

    Returns the state dict with a leading ``module.`` (DataParallel/DDP) and then ``branch1.`` (PEBAL's
    ``Network`` wrapper) removed when every key carries it, and a short description of the layout.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"unrecognised {model_name} checkpoint: expected a dict, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, layout = dict(obj), "bare state dict"
    elif isinstance(obj.get("state_dict"), Mapping):
        state, layout = dict(obj["state_dict"]), "'state_dict' checkpoint"
    elif isinstance(obj.get("model"), Mapping):
        state, layout = dict(obj["model"]), "'model' checkpoint"
    else:
        top = ", ".join(repr(k) for k in list(obj)[:8]) or "(empty)"
        raise CheckpointError(f"unrecognised {model_name} checkpoint layout: no state dict found (expected "
                              f"a bare state dict or one under 'state_dict' or 'model'); top-level keys: {top}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise CheckpointError(f"unrecognised {model_name} checkpoint layout ({layout}): "
                              + (f"entries that are not named tensors: {bad[:5]!r}" if bad else "it is empty"))
    prefixes = []
    for prefix in ("module.", "branch1."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            prefixes.append(prefix)
    if prefixes:
        layout += f", keys prefixed {''.join(prefixes)!r}"
    return state, layout


def widen_head(state: dict[str, torch.Tensor], key: str, generator: torch.Generator | None = None) -> None:
    """Widens a 19-row classifier weight to NUM_OUTPUTS rows in place (abstention row Kaiming-initialised)."""
    weight = state.get(key)
    if weight is not None and weight.dim() >= 1 and weight.shape[0] == NUM_INLIER_CLASSES:
        state[key] = widen_classifier(weight, NUM_OUTPUTS, generator=generator)


def check_against(expected: Mapping[str, torch.Size], state: dict[str, torch.Tensor], source: str,
                  model_name: str) -> dict[str, torch.Tensor]:
    """Fills missing BN ``num_batches_tracked`` counters and raises CheckpointError on any other mismatch."""
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    problem = describe_mismatch({k: torch.empty(s, device="meta") for k, s in expected.items()}, state)
    if problem:
        raise CheckpointError(f"{source} does not fit {model_name}: {problem}")
    return {k: state[k] for k in expected}  # model order


_WRN_SHAPES: dict[str, torch.Size] | None = None

# Entries NVIDIA checkpoints may carry that are not part of the network (PEBAL's loader skips them): the
# loss module NVIDIA models own and the biases of the R101 head, which PEBAL's 20-channel convs lack.
_WRN_SKIP = frozenset({"criterion.nll_loss.weight", "dsn.4.0.bias", "final2.0.bias", "dsn.4.bias"})


def adapt_state_dict(obj: Any, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """State dict for ``DeepWV3Plus(20)`` from a loaded checkpoint (never loads files itself).

    Recognised layouts:

    * NVIDIA ``cityscapes_best.pth``: ``{'state_dict': {'module.<key>': ...}, ...}`` with a 19-row
      ``final.6.weight``; the criterion/aux-head entries PEBAL's loader skips are dropped and
      ``final.6.weight`` gets a Kaiming-normal abstention row 19 (rows 0-18 copied);
    * PEBAL checkpoints: ``{'model': {'branch1.<key>': ...}, 'optimizer':, 'epoch':, 'iteration':}``
      (also ``module.branch1.`` keys);
    * a bare ``DeepWV3Plus`` state dict with 19 or 20 output rows (optionally ``module.``-prefixed).

    Other top-level entries are ignored. Tensors are returned as they are (not copied). Raises
    CheckpointError for unknown layouts and for any missing/unexpected key or shape clash.
    """
    global _WRN_SHAPES
    state, layout = unwrap_checkpoint(obj, "WRN38 DeepLabv3+")
    if not any(k.startswith(f"mod{i}.") for k in state for i in range(1, 8)):
        shown = ", ".join(list(state)[:6])
        raise CheckpointError(f"unrecognised WRN38 DeepLabv3+ checkpoint ({layout}): no WideResNet "
                              f"'mod1.'..'mod7.' keys; first keys: {shown}")
    state = {k: v for k, v in state.items() if k not in _WRN_SKIP and not k.startswith("criterion.")}
    widen_head(state, "final.6.weight", generator)
    if _WRN_SHAPES is None:
        _WRN_SHAPES = expected_state_shapes(DeepWV3Plus)
    return check_against(_WRN_SHAPES, state, f"checkpoint ({layout})", "DeepWV3Plus(20)")


register_model(ModelSpec(
    name="wrn38_deeplabv3plus",
    builder=DeepWV3Plus,
    adapt_state_dict=adapt_state_dict,
    description="PEBAL's network: DeepLabv3+ (ASPP 12/24/36, decoder at 1/2 res) on a dilated "
                "WideResNet38 (NVIDIA sdcnet DeepWV3Plus, output stride 8); 19 classes + abstention",
    input_size=(1024, 2048),
    size_divisor=8,
    head_prefixes=("final.",),
))
