"""DeepLabv3+ on a dilated ResNet101 (output stride 8): the paper's ResNet101 variant of PEBAL.

PEBAL's code has no ResNet101 model, only loader hooks (``final2.0.*``, ``dsn.4.*``) that match the
head of the Standardized-Max-Logits / RobustNet ``DeepR101V3PlusD_OS8`` Cityscapes checkpoint.
This model reproduces that *head* key for key (``aspp``, ``bot_fine``, ``bot_aspp``,
``final1``, ``final2``), but its backbone is torchvision's ``resnet101`` (random init, nothing is
downloaded) with ``replace_stride_with_dilation=[False, True, True]``:

* **Stem.** torchvision's stem is a single 7x7 conv (``layer0.conv1``, 64 ch) + BN + ReLU + maxpool.
  The SML/RobustNet checkpoint uses a *deep stem* (three 3x3 convs, 64-64-128 ch, keys ``layer0.0``,
  ``layer0.3``, ``layer0.6`` ...) whose 128 output channels also change ``layer1.0.conv1`` and
  ``layer1.0.downsample.0``. Such a checkpoint therefore does **not** load into this model: it is
  rejected with the CheckpointError listing of missing/unexpected keys and shape clashes. That is
  intended (and tested); checkpoints trained with this model (or converted to it) load normally.
* **Dilation.** torchvision gives the first block of layer3/layer4 the previous dilation (1/2) and the
  other blocks 2/4; RobustNet's "D" variant dilates every block of layer3/layer4 by 2/4. This changes
  no parameter shape.

Head (all convolutions bias-free, BN eps 1e-5)::

    aspp      2048 -> 5 x 256 (image pool, 1x1, 3x3 d12/d24/d36) = 1280 ch        at 1/8
    bot_aspp  conv1x1 1280->256 + BN + ReLU, upsampled to layer1's size
    bot_fine  conv1x1 256->48 + BN + ReLU on the layer1 output                     at 1/4
    final1    conv3x3 304->256, BN, ReLU, conv3x3 256->256, BN, ReLU
    final2    conv1x1 256->C, no bias (PEBAL's loader drops the pretrained bias)
    logits upsampled bilinearly (align_corners=True) to the input size

The auxiliary ``dsn`` head of the SML model (deep supervision on layer3, training only) is not built.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from . import NUM_OUTPUTS, ModelSpec, register_model
from .common import CheckpointError, check_against, expected_state_shapes, unwrap_checkpoint, widen_head
from .deeplab import AtrousSpatialPyramidPooling, upsample_bilinear

__all__ = ["DeepR101V3Plus", "adapt_state_dict"]


class DeepR101V3Plus(nn.Module):
    """DeepLabv3+ (OS8) on torchvision's ResNet101; ``N x 3 x H x W`` -> ``N x C x H x W`` logits."""

    def __init__(self, num_classes: int = NUM_OUTPUTS):
        super().__init__()
        from torchvision.models import resnet101  # imported lazily: torchvision is only needed here

        self.num_classes = num_classes
        resnet = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        self.layer0 = nn.Sequential(OrderedDict([
            ("conv1", resnet.conv1), ("bn1", resnet.bn1), ("relu", resnet.relu), ("maxpool", resnet.maxpool)]))
        self.layer1 = resnet.layer1  # 256 ch, 1/4
        self.layer2 = resnet.layer2  # 512 ch, 1/8
        self.layer3 = resnet.layer3  # 1024 ch, 1/8, dilation 2
        self.layer4 = resnet.layer4  # 2048 ch, 1/8, dilation 4
        del resnet  # its avgpool/fc are not used
        self.aspp = AtrousSpatialPyramidPooling(2048, 256, rates=(12, 24, 36))
        self.bot_fine = nn.Sequential(nn.Conv2d(256, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
        self.bot_aspp = nn.Sequential(nn.Conv2d(self.aspp.out_channels, 256, 1, bias=False),
                                      nn.BatchNorm2d(256), nn.ReLU(inplace=True))
        self.final1 = nn.Sequential(
            nn.Conv2d(48 + 256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
        )
        self.final2 = nn.Sequential(nn.Conv2d(256, num_classes, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an N x 3 x H x W batch, got shape {tuple(x.shape)}")
        size = x.shape[2:]
        low = self.layer1(self.layer0(x))
        x = self.layer4(self.layer3(self.layer2(low)))
        x = self.bot_aspp(self.aspp(x))
        x = torch.cat([self.bot_fine(low), upsample_bilinear(x, low.shape[2:])], dim=1)
        return upsample_bilinear(self.final2(self.final1(x)), size)


_R101_SHAPES: dict[str, torch.Size] | None = None


def _dropped(key: str) -> bool:
    # final2.0.bias: the 20-channel output conv has no bias (PEBAL's loader drops it, so a PEBAL-R101 model
    #   cannot have had one); dsn.*: the auxiliary deep-supervision head only adds a training loss and is
    #   not built here (inference never uses it); criterion.*: the loss module NVIDIA-style models carry.
    return key == "final2.0.bias" or key.startswith("dsn.") or key.startswith("criterion.")


def adapt_state_dict(obj: Any, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """State dict for ``DeepR101V3Plus(20)`` from a loaded checkpoint (never loads files itself).

    Accepts a bare state dict of this model or one under ``state_dict`` / ``model``, with keys optionally
    prefixed ``module.`` and/or ``branch1.``. A 19-row ``final2.0.weight`` gets a Kaiming-normal
    abstention row 19 (rows 0-18 copied); ``final2.0.bias``, ``dsn.*`` and ``criterion.*`` are dropped.
    Raises CheckpointError for unknown layouts and for any missing/unexpected key or shape clash (e.g. an
    SML/RobustNet deep-stem checkpoint).
    """
    global _R101_SHAPES
    state, layout = unwrap_checkpoint(obj, "ResNet101 DeepLabv3+")
    if not any(k.startswith(f"layer{i}.") for k in state for i in range(5)):
        shown = ", ".join(list(state)[:6])
        raise CheckpointError(f"unrecognised ResNet101 DeepLabv3+ checkpoint ({layout}): no ResNet "
                              f"'layer0.'..'layer4.' keys; first keys: {shown}")
    state = {k: v for k, v in state.items() if not _dropped(k)}
    widen_head(state, "final2.0.weight", generator)
    if _R101_SHAPES is None:
        _R101_SHAPES = expected_state_shapes(DeepR101V3Plus)
    return check_against(_R101_SHAPES, state, f"checkpoint ({layout})", "DeepR101V3Plus(20)")


register_model(ModelSpec(
    name="resnet101_deeplabv3plus",
    builder=DeepR101V3Plus,
    adapt_state_dict=adapt_state_dict,
    description="PEBAL's ResNet101 variant: DeepLabv3+ (ASPP 12/24/36, decoder at 1/4 res, SML-style head) "
                "on torchvision's dilated ResNet101 (output stride 8, 7x7 stem); 19 classes + abstention",
    input_size=(512, 1024),
    size_divisor=8,
    head_prefixes=("final1.", "final2."),
), aliases=("resnet101",))
