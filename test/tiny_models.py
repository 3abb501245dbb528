"""A tiny registered architecture so core tests run in milliseconds without the real networks, and the
seeded checkpoint the command-line tests run on."""
from pathlib import Path

import torch
from torch import nn

from pebal_perception.core.checkpoint import ModelMeta, save_checkpoint
from pebal_perception.core.models import ModelSpec, get_model_spec, register_model
from pebal_perception.core.models.common import CheckpointError, strip_prefix

TINY = "tiny_test_net"


class TinySegNet(nn.Module):
    """conv -> BN -> ReLU -> 1x1 classifier with 20 outputs, at input resolution."""

    def __init__(self, num_classes: int = 20, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.body(x))


def _adapt(obj):
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("not a tiny_test_net state dict")
    return strip_prefix(obj, "module.")


def ensure_registered():
    try:
        return get_model_spec(TINY)
    except KeyError:
        return register_model(ModelSpec(name=TINY, builder=TinySegNet, adapt_state_dict=_adapt,
                                        description="test-only network", input_size=(32, 64), size_divisor=4,
                                        head_prefixes=("classifier.",)))


def write_tiny_checkpoint(path: Path, *, seed: int = 0, architecture: str = TINY, **meta) -> Path:
    """Saves freshly initialised weights of ``architecture`` (the tiny test net unless named) with
    ``ModelMeta.for_architecture(architecture, **meta)`` at ``path`` and returns ``path``.

    The global torch seed is set first, so the same arguments always give the same weights: tests that
    compare outputs across runs or processes rely on that."""
    torch.manual_seed(seed)
    model = get_model_spec(architecture).builder()
    return save_checkpoint(path, model, ModelMeta.for_architecture(architecture, **meta))


ensure_registered()
