"""PEBAL's network: DeepLabv3+ on a dilated WideResNet38 (NVIDIA "sdcnet" ``DeepWV3Plus``).

The module tree is laid out so that ``state_dict()`` has exactly the key names and shapes of the
checkpoints in circulation: NVIDIA's ``cityscapes_best.pth`` (19 classes, keys
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
from typing import Any

import torch
from torch import nn

from . import NUM_OUTPUTS, ModelSpec, register_model
from .common import CheckpointError, check_against, expected_state_shapes, unwrap_checkpoint, widen_head
from .deeplab import AtrousSpatialPyramidPooling, upsample_bilinear

__all__ = ["DeepWV3Plus", "IdentityResidualBlock", "adapt_state_dict"]


def _bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm2d + ReLU as one Sequential, so the BN's keys read ``<name>.0.*`` as in the checkpoints."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


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
), aliases=("wrn38",))
