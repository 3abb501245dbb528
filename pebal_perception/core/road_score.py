"""The road-relative anomaly score: free energy plus how unlike the frame's own road a pixel looks.

PEBAL's free energy asks "is this pixel any class the network knows?". On real roads the network calls a
lost crate *road* with confidence, and a camera unlike Cityscapes raises the energy of everything it sees.
This score adds a second, per-frame question that needs no training and follows the camera: how far the
pixel's encoder features lie from the features of the confidently predicted road *of the same frame*.

Per frame, at the feature map's resolution (ESPNetv2: encoder level 3, 1/8 of the network size):

1. features projected to ``dims`` dimensions by a fixed Gaussian matrix (seeded; a 1x1 convolution);
2. reference pixels: softmax probability of *road* above ``reference_confidence``;
3. their mean and covariance (plus ``ridge`` times the mean variance on the diagonal), inverted by
   Newton-Schulz iterations (matrix products only: every runtime's graph can hold it);
4. squared Mahalanobis distance per pixel divided by ``dims`` (about 1 on the reference road), taken as
   ``relu(log(distance))``: only pixels farther from the road than the road's own spread count;
5. gated by the share of road around the pixel (road probability averaged over ``gate_cells`` x
   ``gate_cells`` feature cells): the distance means "unlike the road" only where road surrounds the
   pixel -- a building is unlike the road too, but is not an obstacle on it;
6. ``score = energy + weight * gate * term``, the term bilinearly upsampled to the energy's size. With fewer
   than ``min_reference`` reference pixels (no road in view) the term is 0 and the score is the energy.

Written with operations the ONNX exporter, ONNX Runtime, OpenVINO and TensorRT all run (1x1 convolution,
average pooling, batched matrix products), so :class:`~pebal_perception.core.frame_graph.FrameGraph` holds
the same computation as the torch path. The checkpoint names the score it was calibrated with
(``ModelMeta.score``); ``{}`` is PEBAL's free energy alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .obstacles import ROAD_TRAIN_ID

KIND = "road_relative"
NEWTON_SCHULZ_STEPS = 24  # the ridge bounds the condition by dims / ridge = 6400: 13 doublings + quadratic end


@dataclass(frozen=True)
class RoadScoreConfig:
    """How the road-relative term is computed and weighted (module docstring)."""

    weight: float = 3.0
    dims: int = 64
    reference_confidence: float = 0.9
    gate_cells: int = 9
    ridge: float = 0.01
    min_reference: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and self.dims >= 1 and 0 < self.reference_confidence < 1
                and self.gate_cells >= 1 and self.gate_cells % 2 == 1 and self.ridge > 0 and self.min_reference >= 1):
            raise ValueError(f"road-relative score settings out of range: {self}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoadScoreConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"kind"}
        if data.get("kind", KIND) != KIND or unknown:
            raise ValueError(f"unknown anomaly score {dict(data)!r}: expected {{}} (free energy) or kind "
                             f"{KIND!r} with fields {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k != "kind"})


def parse_score(score: Mapping[str, Any] | None) -> RoadScoreConfig | None:
    """``ModelMeta.score`` -> the road-relative config, or None for PEBAL's free energy (``{}`` or
    ``{"kind": "energy"}``); ValueError for anything else."""
    if not score or dict(score) == {"kind": "energy"}:
        return None
    return RoadScoreConfig.from_dict(score)


def road_score_module(score: Mapping[str, Any] | None, road_features: tuple[str, int] | None,
                      architecture: str = "the architecture") -> "RoadRelativeScore | None":
    """The module that adds ``score``'s road-relative term (``ModelMeta.score`` form) to the free energy, from
    the architecture's ``road_features`` (submodule name, channels); None for the free energy alone.
    ValueError when the score needs road features that ``architecture`` does not name."""
    config = parse_score(score)
    if config is None:
        return None
    if road_features is None:
        raise ValueError(f"the road-relative score needs road features, which {architecture} does not name "
                         "(models registry)")
    return RoadRelativeScore(road_features[1], config)


def newton_schulz_inverse(a: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS,
                          eye: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of a batch of symmetric positive-definite ``N x D x D`` matrices from matrix products only:
    ``X <- X (2I - A X)`` from ``X0 = I / trace(A)`` (every eigenvalue of ``A X0`` in (0, 1], so it converges;
    the smallest starts at >= 1 / condition and doubles each step until it is near 1)."""
    eye = torch.eye(int(a.shape[-1]), dtype=a.dtype, device=a.device) if eye is None else eye.to(a.dtype)
    trace = (a * eye).sum(dim=(-2, -1), keepdim=True)
    x = eye / trace
    eye2 = 2.0 * eye
    for _ in range(steps):
        x = torch.matmul(x, eye2 - torch.matmul(a, x))
    return x


class RoadRelativeScore(nn.Module):
    """``(inlier logits N x C x h x w, their free energy N x 1 x h x w, features N x F x hf x wf) -> score
    N x 1 x h x w`` (module docstring). ``h, w`` must be multiples of ``hf, wf``."""

    def __init__(self, feature_channels: int, config: RoadScoreConfig):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(int(config.seed))
        dims = min(int(config.dims), int(feature_channels))
        projection = torch.randn(dims, int(feature_channels), generator=generator) / dims ** 0.5
        self.register_buffer("projection", projection.view(dims, -1, 1, 1), persistent=False)
        self.register_buffer("eye", torch.eye(dims), persistent=False)

    def term(self, logits: torch.Tensor, energy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``gate * relu(log(distance))`` at the feature resolution, ``N x 1 x hf x wf``."""
        cfg = self.config
        # plain ints: the sizes are fixed in a graph, and pooling kernels must be constants there
        n, hf, wf = int(features.shape[0]), int(features.shape[-2]), int(features.shape[-1])
        h, w = int(logits.shape[-2]), int(logits.shape[-1])
        # softmax probability of road: exp(logit - logsumexp) = exp(logit + free energy)
        road = torch.exp(logits[:, ROAD_TRAIN_ID:ROAD_TRAIN_ID + 1].float() + energy)
        road = F.avg_pool2d(road, (h // hf, w // wf)) if (h, w) != (hf, wf) else road
        x = F.conv2d(features.float(), self.projection).reshape(n, -1, hf * wf)  # N x D x P
        dims = int(self.projection.shape[0])
        reference = (road > cfg.reference_confidence).float().reshape(n, 1, hf * wf)
        count = reference.sum(dim=-1, keepdim=True)  # N x 1 x 1
        mean = (x * reference).sum(dim=-1, keepdim=True) / count.clamp(min=1.0)
        centred = x - mean
        weighted = centred * reference
        cov = torch.matmul(weighted, centred.transpose(1, 2)) / count.clamp(min=1.0)  # N x D x D
        spread = (cov * self.eye).sum(dim=(1, 2), keepdim=True) / dims
        cov = cov + (cfg.ridge * spread + 1e-6) * self.eye
        whitened = torch.matmul(newton_schulz_inverse(cov, eye=self.eye), centred)
        distance = (whitened * centred).sum(dim=1, keepdim=True) / dims
        term = torch.relu(torch.log(distance.clamp(min=0.0) + 1e-3))
        term = term * (count >= cfg.min_reference).float()
        pad = cfg.gate_cells // 2
        gate = F.avg_pool2d(road, cfg.gate_cells, stride=1, padding=pad, count_include_pad=False)
        return gate * term.reshape(n, 1, hf, wf)

    def forward(self, logits: torch.Tensor, energy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        term = self.term(logits, energy, features)
        size = (int(energy.shape[-2]), int(energy.shape[-1]))
        if (int(term.shape[-2]), int(term.shape[-1])) != size:
            term = F.interpolate(term, size=size, mode="bilinear", align_corners=False)
        return energy + self.config.weight * term


class FeatureTap:
    """The output of one named submodule of ``model`` during a ``with`` block (a forward hook that the
    block's end removes), for the road-relative score: ``with FeatureTap(model, name) as tap: model(x)``,
    then ``tap.take()``."""

    def __init__(self, model: nn.Module, module_name: str):
        try:
            self._module = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"the model has no module {module_name!r} to read road features from") from None
        self.value: torch.Tensor | None = None
        self._handle: Any = None

    def __enter__(self) -> "FeatureTap":
        self._handle = self._module.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.value = output

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("the road feature module did not run in this forward pass")
        return self.value
