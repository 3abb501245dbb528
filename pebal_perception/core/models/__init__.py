"""Model registry: every segmentation network PEBAL can run on, by name.

Each registered model maps a normalised ``N x 3 x H x W`` image batch to ``N x 20 x H x W`` logits at
the input resolution: channels 0..18 are the Cityscapes trainIds, channel 19 is PEBAL's abstention
channel (used by the training loss only, never for scoring).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..constants import NUM_INLIER_CLASSES, NUM_OUTPUTS  # noqa: F401  (19 classes + abstention channel)


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the stack needs to know about one architecture."""

    name: str
    builder: Callable[..., nn.Module]
    # Turns whatever a third-party checkpoint file holds (already torch.load-ed) into a state dict
    # for ``builder()`` with 20 output channels; raises CheckpointError on layouts it does not know.
    adapt_state_dict: Callable[[Any], dict[str, torch.Tensor]]
    description: str
    input_size: tuple[int, int]  # default (height, width) the network runs at
    size_divisor: int  # network input height/width must be multiples of this
    head_prefixes: tuple[str, ...]  # parameter-name prefixes PEBAL fine-tunes (the final block)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: Mapping[str, Any] = field(default_factory=dict)
    # (submodule name, output channels) whose output the road-relative score reads (core/road_score.py);
    # None: the architecture offers only the free energy
    road_features: tuple[str, int] | None = None


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}  # short name -> registered (canonical) name, e.g. wrn38 -> wrn38_deeplabv3plus
# Modules that register models on import; loaded lazily so that importing the registry stays cheap.
_BUILTIN_MODULES = (
    "pebal_perception.core.models.espnetv2",
    "pebal_perception.core.models.wrn38",
    "pebal_perception.core.models.resnet101",
)
_loaded_builtins = False


def register_model(spec: ModelSpec, aliases: tuple[str, ...] = ()) -> ModelSpec:
    """Registers ``spec`` under ``spec.name``; each of ``aliases`` is another name for it."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    for alias in aliases:
        if alias in _REGISTRY or _ALIASES.get(alias, spec.name) != spec.name:
            raise ValueError(f"model alias {alias!r} is already taken")
    _REGISTRY[spec.name] = spec
    _ALIASES.update((alias, spec.name) for alias in aliases)
    return spec


def _load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        _loaded_builtins = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def list_models() -> list[str]:
    """The registered (canonical) names; aliases are not listed (see :func:`model_aliases`)."""
    _load_builtins()
    return sorted(_REGISTRY)


def model_aliases() -> dict[str, str]:
    """Short name -> canonical name (``wrn38`` -> ``wrn38_deeplabv3plus``, ...)."""
    _load_builtins()
    return dict(_ALIASES)


def canonical_model_name(name: str) -> str:
    """The registered name ``name`` stands for (itself unless it is an alias; unknown names unchanged)."""
    _load_builtins()
    return _ALIASES.get(name, name)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered name or alias; KeyError naming the known models otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[canonical_model_name(name)]
    except KeyError:
        known = ", ".join([*sorted(_REGISTRY), *(f"{a} (= {n})" for a, n in sorted(_ALIASES.items()))])
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds an untrained (randomly initialised) model of the named architecture."""
    return get_model_spec(name).builder(**kwargs)
