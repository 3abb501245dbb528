"""DeepLabv3+ building blocks shared by the WRN38 and ResNet-101 variants."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with align_corners=True (the convention of every resize in these networks)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


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
