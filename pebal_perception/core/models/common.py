"""Pieces shared by the architectures: checkpoint key helpers and the abstention-channel widening."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..constants import NUM_INLIER_CLASSES, NUM_OUTPUTS


class CheckpointError(ValueError):
    """A checkpoint file does not fit the model it is loaded into (the message says how)."""


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Removes ``prefix`` from every key that has it; other keys are kept unchanged."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def widen_classifier(weight: torch.Tensor, out_channels: int = NUM_OUTPUTS,
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


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor],
                           source: str = "checkpoint") -> None:
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


def widen_head(state: dict[str, torch.Tensor], key: str, generator: torch.Generator | None = None,
               bias_key: str | None = None) -> None:
    """Widens a 19-row classifier to NUM_OUTPUTS rows in place, as PEBAL's loader does.

    The abstention weight row is Kaiming-initialised (``widen_classifier``); a bias, if the head has
    one, gets a zero abstention entry.
    """
    weight = state.get(key)
    if weight is not None and weight.dim() >= 1 and weight.shape[0] == NUM_INLIER_CLASSES:
        state[key] = widen_classifier(weight, NUM_OUTPUTS, generator=generator)
        bias = state.get(bias_key) if bias_key else None
        if bias is not None and bias.dim() == 1 and bias.shape[0] == NUM_INLIER_CLASSES:
            state[bias_key] = torch.cat([bias, bias.new_zeros(NUM_OUTPUTS - NUM_INLIER_CLASSES)])


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
