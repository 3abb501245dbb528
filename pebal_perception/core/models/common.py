"""Pieces shared by the architectures: checkpoint key helpers and the abstention-channel widening."""
from __future__ import annotations

import math
from typing import Mapping

import torch


class CheckpointError(ValueError):
    """A checkpoint file does not fit the model it is loaded into (the message says how)."""


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Removes ``prefix`` from every key that has it; other keys are kept unchanged."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def widen_classifier(weight: torch.Tensor, out_channels: int = 20,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Adds abstention rows to a classifier weight as PEBAL's loader does.

    The new tensor is filled with Kaiming-normal values (fan_in, gain sqrt(2)) and the pretrained rows
    are copied over the first ones, so row 19 (the abstention filter) keeps its random initialisation.
    """
    if weight.shape[0] >= out_channels:
        return weight
    fan_in = math.prod(weight.shape[1:])
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    wide = torch.randn((out_channels, *weight.shape[1:]), generator=generator, dtype=torch.float32) * std
    wide = wide.to(weight.dtype)
    wide[: weight.shape[0]] = weight
    return wide


def describe_mismatch(model_state: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                      limit: int = 12) -> str:
    """One readable paragraph of missing keys, unexpected keys and shape clashes ('' if it all fits)."""
    missing = [k for k in model_state if k not in given]
    unexpected = [k for k in given if k not in model_state]
    clashes = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(model_state[k].shape)}"
               for k in model_state if k in given and tuple(given[k].shape) != tuple(model_state[k].shape)]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape clashes", clashes)):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            parts.append(f"{len(items)} {title}: {shown}")
    return "; ".join(parts)


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with one clear CheckpointError listing every kind of mismatch.

    BatchNorm ``num_batches_tracked`` buffers are not needed at inference and are filled in when a
    checkpoint lacks them (as PyTorch's own BN loader tolerates for old checkpoints).
    """
    target = model.state_dict()
    state = dict(state)
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    problem = describe_mismatch(target, state)
    if problem:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)
