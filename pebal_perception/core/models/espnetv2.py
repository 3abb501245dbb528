"""ESPNetv2 (width scale s = 2.0) Cityscapes semantic segmentation network.

Clean-room implementation of ESPNetv2 (Mehta et al., "ESPNetv2", CVPR 2019; reference code
sacmehta/EdgeNets, MIT licence). Module and
attribute names reproduce the origin checkpoint's key spelling exactly, so the published
``espnetv2_s_2.0_city_1024x512.pth`` loads with ``strict=True`` (526 keys, 789,242 parameters).

Input: ImageNet-normalised RGB, ``N x 3 x H x W`` with H and W multiples of 16.
Output: ``N x 20 x H x W`` raw logits (channels 0..18 Cityscapes trainIds, channel 19 abstention).

Two helper-layer families exist with *different* key spellings: the encoder's (``.conv/.bn/.act``
attributes) and the decoder's (``.cbr.0/1/2`` and ``.br.0/1`` sequential indices). Mixing them up
still builds a model but cannot load the checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import NUM_OUTPUTS, ModelSpec, register_model
from .common import unwrap_checkpoint, widen_head

__all__ = ["ESPNetv2Segmentation", "adapt_state_dict"]

# Channel configuration for s = 2.0 (the only width built here: that of the Cityscapes checkpoint).
_SUPPORTED_SCALE = 2.0
_LEVEL_WIDTHS = (32, 128, 256, 512)  # encoder output widths of levels 1..4
_BRANCHES = 4  # K: parallel dilated branches per EESP block
_R_LIMITS = (13, 11, 9, 7, 5)  # receptive-field limits per level, pick the dilation rates
_LEVEL3_BLOCKS = 3
_LEVEL4_BLOCKS = 7
_DECODER_BASE = 16  # Cityscapes decoder base width -> stage widths 64, 48, 32, classes
_PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)  # order matters: it fixes the channel layout of the merge
_PYRAMID_MIN_SIZE = 5
SIZE_DIVISOR = 16  # four stride-2 stages; the decoder's exact x2 upsamplings must hit the skip sizes
_CLASSIFIER_KEY = "bu_dec_l4.merge_layer.3"


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # Every bilinear resampling of the origin uses align_corners=True (False changes logits by O(1)).
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _avg_pool_half(x: torch.Tensor) -> torch.Tensor:
    # 3x3 / stride 2 / pad 1 with zero padding counted: the origin's down-sampling average pool.
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)


# --------------------------------------------------------------------------------------------------
# Encoder helper layers (keys: .conv / .bn / .act)
# --------------------------------------------------------------------------------------------------
class ConvBNAct(nn.Module):
    """conv -> BN -> per-channel PReLU (padding keeps the size for odd kernels)."""

    conv_bn_pairs = (("conv", "bn"),)  # computes bn(conv(x)): foldable for inference

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """conv -> BN, no activation (used where an addition follows)."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BNAct(nn.Module):
    """BN -> per-channel PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedDepthwiseConv(nn.Module):
    """Depth-wise 3x3 conv with padding = dilation (size-preserving at stride 1); nothing after it."""

    def __init__(self, channels: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, dilation, dilation=dilation,
                              groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def eesp_dilations(r_lim: int, branches: int = _BRANCHES) -> list[int]:
    """Dilation per EESP branch: nominal kernels 3, 5, 7, ...; those above ``r_lim`` fall back to 3;
    sorted ascending (so R = 7 gives 1, 1, 2, 3 rather than 1, 2, 3, 1)."""
    sizes = sorted(k if k <= r_lim else 3 for k in (3 + 2 * i for i in range(branches)))
    return [(k - 1) // 2 for k in sizes]


class EESP(nn.Module):
    """Efficient extremely-efficient spatial pyramid unit.

    Grouped 1x1 reduce -> K dilated depth-wise branches fused hierarchically (running sum) -> concat
    -> BN + PReLU -> grouped 1x1 expand + BN -> (+ input) -> PReLU.

    The strided variant (inside a down-sampler) returns the expand-BN output directly: no residual
    (the shapes differ) and no ``module_act``, because the down-sampler adds the image shortcut first
    and applies its own PReLU. Its ``module_act`` still exists so the checkpoint loads strictly.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, branches: int = _BRANCHES, r_lim: int = 7):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"EESP stride must be 1 or 2, got {stride}")
        if cout % branches:
            raise ValueError(f"EESP output width {cout} is not divisible by {branches} branches")
        width = cout // branches
        self.stride = stride
        self.proj_1x1 = ConvBNAct(cin, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(DilatedDepthwiseConv(width, stride, d) for d in eesp_dilations(r_lim, branches))
        self.conv_1x1_exp = ConvBN(cout, cout, 1, groups=branches)
        self.br_after_cat = BNAct(cout)
        self.module_act = nn.PReLU(cout)  # applied by stride-1 blocks only (see class docstring)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for branch in self.spp_dw:  # every branch reads the same reduced tensor
            out = branch(reduced)
            if previous is not None:
                out = out + previous  # hierarchical feature fusion removes gridding artefacts
            fused.append(out)
            previous = out
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1)))
        if self.stride == 2:
            return expanded
        if self.residual:
            expanded = expanded + x
        return self.module_act(expanded)


class DownSampler(nn.Module):
    """Strided stage: [avg-pooled input, strided EESP] concatenated, plus an input-reinforcement
    shortcut from the original image at the output resolution, then PReLU."""

    def __init__(self, cin: int, cout: int, r_lim: int, branches: int = _BRANCHES):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, branches=branches, r_lim=r_lim)
        # Image shortcut: full 3x3 conv 3->3 (+BN+PReLU), then 1x1 3->cout (+BN), added before `act`.
        self.inp_reinf = nn.Sequential(ConvBNAct(3, 3, 3), ConvBN(3, cout, 1))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, image_at_out_res: torch.Tensor) -> torch.Tensor:
        """``image_at_out_res``: the normalised input image, pooled with ``_avg_pool_half`` until it has
        this stage's output size (the encoder passes the right level of its cached pyramid)."""
        y = torch.cat([_avg_pool_half(x), self.eesp(x)], 1)
        return self.act(y + self.inp_reinf(image_at_out_res))


class ESPNetv2Encoder(nn.Module):
    """The classification backbone's levels 1-4 (level 5 and the classifier are not used)."""

    def __init__(self) -> None:
        super().__init__()
        w1, w2, w3, w4 = _LEVEL_WIDTHS
        self.level1 = ConvBNAct(3, w1, 3, stride=2)
        self.level2_0 = DownSampler(w1, w2, r_lim=_R_LIMITS[0])
        self.level3_0 = DownSampler(w2, w3, r_lim=_R_LIMITS[1])
        self.level3 = nn.ModuleList(EESP(w3, w3, 1, _BRANCHES, _R_LIMITS[2]) for _ in range(_LEVEL3_BLOCKS))
        # The level-4 down-sampler uses level 3's limit (R = 9); level 4's own blocks use R = 7.
        self.level4_0 = DownSampler(w3, w4, r_lim=_R_LIMITS[2])
        self.level4 = nn.ModuleList(EESP(w4, w4, 1, _BRANCHES, _R_LIMITS[3]) for _ in range(_LEVEL4_BLOCKS))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # Image pyramid for the input reinforcement, pooled once per level and reused: repeated
        # 3x3/s2 pooling is what the origin does per stage, so caching is bit-identical (a single
        # larger pool is not). With H, W multiples of 16 level k has exactly size H/2^k.
        img4 = _avg_pool_half(_avg_pool_half(image))  # the 1/2 level feeds no down-sampler
        img8 = _avg_pool_half(img4)
        img16 = _avg_pool_half(img8)
        enc1 = self.level1(image)
        enc2 = self.level2_0(enc1, img4)
        enc3 = self.level3_0(enc2, img8)
        for block in self.level3:
            enc3 = block(enc3)
        enc4 = self.level4_0(enc3, img16)
        for block in self.level4:
            enc4 = block(enc4)
        return enc1, enc2, enc3, enc4


# --------------------------------------------------------------------------------------------------
# Decoder helper layers (keys: .cbr.0/1/2 and .br.0/1)
# --------------------------------------------------------------------------------------------------
class SeqConvBNAct(nn.Module):
    """conv -> BN -> PReLU held in a Sequential named ``cbr`` (decoder key spelling)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBNAct(nn.Module):
    """BN -> PReLU held in a Sequential named ``br`` (decoder key spelling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleaves ``groups`` contiguous channel blocks: out[j * G + g] = in[g * (C / G) + j]."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def pyramid_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Working size of one pyramid branch: ceil of the scaled size, at least 5 per axis."""
    return (max(math.ceil(height * scale), _PYRAMID_MIN_SIZE), max(math.ceil(width * scale), _PYRAMID_MIN_SIZE))


class EfficientPyramidPool(nn.Module):
    """Decoder block: 1x1 projection to P channels, one depth-wise 3x3 per scale of a pyramid,
    concat -> BN+PReLU -> channel shuffle -> grouped 3x3 (P groups) -> 1x1 to ``cout`` [-> BN+PReLU]."""

    def __init__(self, cin: int, proj: int, cout: int, scales: tuple[float, ...] = _PYRAMID_SCALES,
                 last_br: bool = True):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        merged = proj * len(self.scales)
        # `stages` is registered before `projection_layer` (state-dict order of the origin).
        self.stages = nn.ModuleList(
            nn.Conv2d(proj, proj, 3, 1, 1, groups=proj, bias=False) for _ in self.scales)
        self.projection_layer = SeqConvBNAct(cin, proj, 1)
        self.merge_layer = nn.Sequential(
            SeqBNAct(merged),
            # Shuffle so that each of the P groups of the next conv sees channel j of every scale.
            ChannelShuffle(len(self.scales)),
            SeqConvBNAct(merged, proj, 3, groups=proj),
            # The final block ends in raw logits, so only it has a bias and no BN/act after it.
            nn.Conv2d(proj, cout, 1, bias=not last_br),
        )
        self.br = SeqBNAct(cout) if last_br else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        size = (height, width)
        branches: list[torch.Tensor] = []
        for scale, stage in zip(self.scales, self.stages):
            if scale > 1.0:  # up: resize -> conv -> pool back (adaptive pool: uneven, overlapping bins)
                h = F.adaptive_avg_pool2d(stage(_resize(x, pyramid_size(height, width, scale))), size)
            elif scale < 1.0:  # down: pool -> conv -> resize back
                h = _resize(stage(F.adaptive_avg_pool2d(x, pyramid_size(height, width, scale))), size)
            else:
                h = stage(x)
            branches.append(h)
        y = self.merge_layer(torch.cat(branches, 1))
        if self.br is not None:
            y = self.br(y)
        return y


class SkipProjection(nn.Module):
    """Encoder-to-decoder skip: grouped 3x3 expansion (+BN+PReLU) gated channel-wise by
    sigmoid(1x1 conv(global average of the input))."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = SeqConvBNAct(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)  # gate from the input, broadcast over H, W


def _bn_act(channels: int) -> nn.Sequential:
    # Post-add normalisation of the decoder (keys bu_br_lX.0.* / bu_br_lX.1.weight).
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 encoder + bottom-up pyramid decoder; ``N x 3 x H x W`` -> ``N x classes x H x W`` logits."""

    def __init__(self, num_classes: int = NUM_OUTPUTS, scale: float = 2.0):
        super().__init__()
        if float(scale) != _SUPPORTED_SCALE:
            raise ValueError(f"ESPNetv2Segmentation supports only scale={_SUPPORTED_SCALE} "
                             f"(the only published Cityscapes width), got scale={scale}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.base_net = ESPNetv2Encoder()
        w1, w2, w3, w4 = _LEVEL_WIDTHS
        d1, d2, d3 = 4 * _DECODER_BASE, 3 * _DECODER_BASE, 2 * _DECODER_BASE
        proj = min(num_classes // 2, _DECODER_BASE)  # 10 for 20 classes (also for 19)
        self.bu_dec_l1 = EfficientPyramidPool(w4, proj, d1)
        self.bu_dec_l2 = EfficientPyramidPool(d1, proj, d2)
        self.bu_dec_l3 = EfficientPyramidPool(d2, proj, d3)
        self.bu_dec_l4 = EfficientPyramidPool(d3, proj, num_classes, last_br=False)
        self.merge_enc_dec_l2 = SkipProjection(w3, d1)
        self.merge_enc_dec_l3 = SkipProjection(w2, d2)
        self.merge_enc_dec_l4 = SkipProjection(w1, d3)
        self.bu_br_l2 = _bn_act(d1)
        self.bu_br_l3 = _bn_act(d2)
        self.bu_br_l4 = _bn_act(d3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if height % SIZE_DIVISOR or width % SIZE_DIVISOR:
            raise ValueError(f"ESPNetv2 input height and width must be multiples of {SIZE_DIVISOR}, "
                             f"got {height}x{width} (HxW)")
        enc1, enc2, enc3, enc4 = self.base_net(x)
        d = self.bu_dec_l1(enc4)
        # Upsample x2 to the exact skip size (sizes match because H, W are multiples of 16); the skip
        # is added before the post-add BN + PReLU.
        d = self.bu_br_l2(self.merge_enc_dec_l2(enc3) + _resize(d, enc3.shape[-2:]))
        d = self.bu_dec_l2(d)
        d = self.bu_br_l3(self.merge_enc_dec_l3(enc2) + _resize(d, enc2.shape[-2:]))
        d = self.bu_dec_l3(d)
        d = self.bu_br_l4(self.merge_enc_dec_l4(enc1) + _resize(d, enc1.shape[-2:]))
        d = self.bu_dec_l4(d)
        return _resize(d, x.shape[-2:])


# --------------------------------------------------------------------------------------------------
# Checkpoint adaptation
# --------------------------------------------------------------------------------------------------
def adapt_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Turns a ``torch.load``-ed ESPNetv2 checkpoint into a state dict for ``ESPNetv2Segmentation(20)``.

    Accepts a plain mapping of tensors (optionally with DataParallel's ``module.`` prefix) or one
    wrapped under ``state_dict`` / ``model``. A 19-class classifier gets a 20th (abstention) row:
    Kaiming-initialised weight (fixed seed, so loading is reproducible) and a zero bias. Key/shape
    mismatches are reported later by ``load_state_dict_strict``.
    """
    state, _ = unwrap_checkpoint(obj, "ESPNetv2")
    widen_head(state, f"{_CLASSIFIER_KEY}.weight", torch.Generator().manual_seed(0),
               bias_key=f"{_CLASSIFIER_KEY}.bias")
    return state


register_model(ModelSpec(
    name="espnetv2",
    builder=ESPNetv2Segmentation,
    adapt_state_dict=adapt_state_dict,
    description=("ESPNetv2 (s=2.0) Cityscapes segmentation, ~0.79 M parameters (Mehta et al., CVPR 2019; "
                 "EdgeNets checkpoint espnetv2_s_2.0_city_1024x512). Channel 19 of the checkpoint is an "
                 "untrained void class; PEBAL fine-tunes it as the abstention channel."),
    input_size=(512, 1024),
    size_divisor=SIZE_DIVISOR,
    head_prefixes=("bu_dec_l4.",),
    road_features=(f"base_net.level3.{_LEVEL3_BLOCKS - 1}", _LEVEL_WIDTHS[2]),  # encoder level 3, 1/8 size
))
