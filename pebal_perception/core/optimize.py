"""Inference-only rewrites of a model that keep its outputs (to float rounding) and make it faster.

* ``fold_batchnorm``: folds eval-mode BatchNorm into the convolution that feeds it (conv weights are
  rescaled and a bias added; the BN becomes Identity), removing one full pass over each feature map.
  Only pairs known to compute ``bn(conv(x))`` are folded: consecutive ``Conv2d`` -> ``BatchNorm2d``
  entries of an ``nn.Sequential`` (also when the BN opens a nested Sequential such as BN+ReLU), and
  modules that declare ``conv_bn_pairs = (("conv", "bn"), ...)``.
The result is a new model; the original is untouched (training keeps its BatchNorms).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
        return False
    if conv.out_channels != bn.num_features:
        return False
    with torch.no_grad():
        inv_std = 1.0 / torch.sqrt(bn.running_var + bn.eps)
        scale = bn.weight * inv_std if bn.affine else inv_std
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
    return True


def _fold_in_place(module: nn.Module) -> int:
    folded = 0
    for name_conv, name_bn in getattr(module, "conv_bn_pairs", ()):
        if _fold_pair(getattr(module, name_conv), getattr(module, name_bn)):
            setattr(module, name_bn, nn.Identity())
            folded += 1
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, nxt = module._modules[first], module._modules[second]
            if isinstance(nxt, nn.Sequential) and len(nxt) and isinstance(nxt[0], nn.BatchNorm2d):
                owner, key, bn = nxt, next(iter(nxt._modules)), nxt[0]
            else:
                owner, key, bn = module, second, nxt
            if isinstance(conv, nn.Conv2d) and _fold_pair(conv, bn):
                owner._modules[key] = nn.Identity()
                folded += 1
    for child in module.children():
        folded += _fold_in_place(child)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every recognised conv -> BN pair folded."""
    folded_model = copy.deepcopy(model).eval()
    _fold_in_place(folded_model)
    return folded_model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
