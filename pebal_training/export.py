"""Deployment exports: a self-contained scoring module as TorchScript and ONNX, plus a JSON sidecar.

:class:`ScoringModel` wraps a registry model: *normalised* image ``N x 3 x H x W`` float32 (RGB,
``(x / 255 - mean) / std``, mean/std in the sidecar) -> ``(semantic N x H x W int64, energy
N x H x W float32)``, where ``semantic`` is the argmax over the 19 inlier classes and ``energy`` the
free energy ``-logsumexp`` of the inlier logits (plus the road-relative term of ``core/road_score.py``
when the checkpoint's score is that one: the sidecar's ``score``), optionally with PEBAL's 7x7 sigma-1
Gaussian (reflect padding). Higher energy = more anomalous; obstacle = ``energy > threshold``.

Both exports are for one fixed input size (the network's ``H x W``; images must be resized to it
first, as the engine does), batch 1 by default (``dynamic_batch=True`` keeps the ONNX batch axis
symbolic, which only works for models without size-dependent ops such as ESPNetv2's adaptive
pooling). ONNX uses PyTorch's classic TorchScript-based exporter (``dynamo=False``): the new exporter
needs ``onnxscript``, which is not installed / not a dependency. ESPNetv2's pyramid pooling uses
``adaptive_avg_pool2d`` with output sizes that do not divide the input; the classic exporter refuses
that, so during the ONNX export it is rewritten as an exact matrix-product pooling
(``core.frame_graph.onnx_friendly_adaptive_pool``); the energy and the smoothing's reflect padding
are written in the portable forms of ``core/frame_graph.py``, so the file also runs in OpenVINO.
Files are written atomically, and :func:`export_model` writes none until every export has succeeded
(a failed ONNX export leaves no lone ``NAME.pt`` behind).
:data:`OUTPUT_LAYOUT` says what an export folder holds (files of names ``X.pt`` / ``X.onnx`` /
``X.json`` that go with an export sidecar ``X.json``), so that a folder of other files is refused.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pebal_perception.core import scoring
from pebal_perception.core.checkpoint import ModelMeta
from pebal_perception.core.frame_graph import onnx_friendly_adaptive_pool, portable_free_energy, portable_smooth
from pebal_perception.core.io import FolderLayout, atomic_write_bytes, atomic_write_json
from pebal_perception.core.road_score import FeatureTap, road_score_module

DEFAULT_OPSET = 17
SIDECAR_FORMAT = "pebal-export"


def _not_exports(folder: Path) -> list[str]:
    """Files of an export folder that are not an export: ``X.pt`` / ``X.onnx`` without a sidecar
    ``X.json``, and ``.json`` files that are not sidecars."""
    sidecars = set()
    for path in folder.glob("*.json"):
        try:
            if json.loads(path.read_text()).get("format") == SIDECAR_FORMAT:
                sidecars.add(path.stem)
        except (OSError, ValueError, AttributeError):
            pass
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix in (".pt", ".onnx", ".json") and p.is_file() and p.stem not in sidecars)


# What pebal-export writes into an output folder: a folder holding only these is one it wrote before.
OUTPUT_LAYOUT = FolderLayout("pebal-export", files=(r".+\.pt", r".+\.onnx", r".+\.json"), own=_not_exports)


class ScoringModel(nn.Module):
    """Normalised image -> (semantic int64, energy float32); see the module docstring."""

    def __init__(self, model: nn.Module, smoothing: bool = True,
                 kernel_size: int = scoring.DEFAULT_KERNEL_SIZE, sigma: float = scoring.DEFAULT_SIGMA,
                 num_classes: int = scoring.NUM_INLIER_CLASSES, score: dict[str, Any] | None = None,
                 road_features: tuple[str, int] | None = None):
        super().__init__()
        self.model = model
        # the checkpoint's anomaly score: the free energy, or the road-relative one
        self.road = road_score_module(score, road_features)
        self.road_module = None if self.road is None else road_features[0]
        self.smoothing = bool(smoothing)
        self.num_classes = int(num_classes)
        self.kernel_size = int(kernel_size)
        self.register_buffer("kernel", scoring.gaussian_kernel_1d(kernel_size, sigma).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.road is None:
            logits = self.model(x)[:, : self.num_classes].float()
        else:
            with FeatureTap(self.model, self.road_module) as tap:
                logits = self.model(x)[:, : self.num_classes].float()
        semantic = logits.argmax(dim=1)
        # The portable forms of core/frame_graph.py: OpenVINO reads them (it refused the exporter's
        # reflect Pad and ran its ReduceLogSumExp wrongly); equal to logsumexp / reflect padding.
        energy = portable_free_energy(logits)
        if self.road is not None:
            energy = self.road(logits, energy, tap.take())
        if self.smoothing and self.kernel_size > 1:
            energy = portable_smooth(energy, self.kernel)
        return semantic, energy.squeeze(1)


def scoring_model(model: nn.Module, smoothing: bool = True, meta: ModelMeta | None = None) -> ScoringModel:
    """The export module of ``model`` with ``meta``'s anomaly score (None: the free energy)."""
    from pebal_perception.core.models import get_model_spec

    score = meta.score if meta is not None else {}
    features = get_model_spec(meta.architecture).road_features if meta is not None else None
    return ScoringModel(model.eval().cpu(), smoothing=smoothing, score=score, road_features=features).eval()


def example_input(size_hw: tuple[int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3, int(size_hw[0]), int(size_hw[1])), generator=g)


def export_torchscript(module: ScoringModel, size_hw: tuple[int, int], path: str | Path) -> Path:
    """``torch.jit.trace`` at ``size_hw`` (height, width); returns the written path."""
    return atomic_write_bytes(path, torchscript_bytes(module, size_hw))


def torchscript_bytes(module: ScoringModel, size_hw: tuple[int, int]) -> bytes:
    """The TorchScript file of :func:`export_torchscript`, in memory."""
    import warnings

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript deprecation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes are constants: fixed-size export
        traced = torch.jit.trace(module, example_input(size_hw), check_trace=False)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def export_onnx(module: ScoringModel, size_hw: tuple[int, int], path: str | Path,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> Path:
    """ONNX (opset >= 17) through the classic exporter; input ``image``, outputs ``semantic``, ``energy``."""
    return atomic_write_bytes(path, onnx_bytes(module, size_hw, opset, dynamic_batch))


def onnx_bytes(module: ScoringModel, size_hw: tuple[int, int], opset: int = DEFAULT_OPSET,
               dynamic_batch: bool = False) -> bytes:
    """The ONNX file of :func:`export_onnx`, in memory."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    import warnings

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), onnx_friendly_adaptive_pool():
        warnings.simplefilter("ignore")  # deprecation notice of the classic exporter, tracer warnings
        torch.onnx.export(module, (example_input(size_hw),), buf, dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["semantic", "energy"],
                          dynamic_axes=({"image": {0: "batch"}, "semantic": {0: "batch"}, "energy": {0: "batch"}}
                                        if dynamic_batch else None),
                          do_constant_folding=True)
    return buf.getvalue()


def sidecar(meta: ModelMeta, size_hw: tuple[int, int], smoothing: bool, files: dict[str, str],
            opset: int | None = None, dynamic_batch: bool = False) -> dict[str, Any]:
    batch = None if dynamic_batch else 1
    return {
        "format": SIDECAR_FORMAT, "format_version": 1,
        "model_id": meta.model_id, "architecture": meta.architecture, "source": meta.source,
        "input": {"name": "image", "shape": [batch, 3, int(size_hw[0]), int(size_hw[1])], "dtype": "float32",
                  "batch": "TorchScript: any; ONNX: " + ("dynamic" if dynamic_batch else "fixed 1"),
                  "layout": "NCHW", "channels": "RGB",
                  "normalisation": "(pixel / 255 - mean) / std", "mean": list(meta.mean), "std": list(meta.std),
                  "resize": "bilinear (antialiased when shrinking) to height x width"},
        "input_size": [int(size_hw[0]), int(size_hw[1])],
        "outputs": {"semantic": {"dtype": "int64", "shape": [batch, int(size_hw[0]), int(size_hw[1])],
                                 "meaning": "argmax over the 19 Cityscapes trainIds"},
                    "energy": {"dtype": "float32", "shape": [batch, int(size_hw[0]), int(size_hw[1])],
                               "meaning": ("free energy -logsumexp(logits[:19]), higher = more anomalous"
                                           if not meta.score else "free energy -logsumexp(logits[:19]) plus the "
                                           "road-relative term (score), higher = more anomalous")}},
        "score": dict(meta.score),
        "smoothing": {"enabled": bool(smoothing), "kernel_size": scoring.DEFAULT_KERNEL_SIZE,
                      "sigma": scoring.DEFAULT_SIGMA, "padding": "reflect"},
        "threshold": meta.effective_threshold, "threshold_calibrated": meta.threshold is not None,
        "threshold_info": meta.threshold_info, "obstacle_rule": "energy > threshold",
        "classes": list(meta.classes), "onnx_opset": opset, "files": files,
    }


def export_model(model: nn.Module, meta: ModelMeta, out_dir: str | Path, name: str,
                 formats: tuple[str, ...] = ("torchscript", "onnx"), size_hw: tuple[int, int] | None = None,
                 smoothing: bool = True, opset: int = DEFAULT_OPSET,
                 dynamic_batch: bool = False) -> dict[str, Path]:
    """Writes ``name.pt`` (TorchScript), ``name.onnx`` and the sidecar ``name.json`` into ``out_dir``,
    once every export has succeeded (an exporter error writes nothing)."""
    from pebal_perception.core.models import get_model_spec

    size_hw = tuple(int(v) for v in (size_hw or meta.input_size))
    div = get_model_spec(meta.architecture).size_divisor
    if size_hw[0] <= 0 or size_hw[1] <= 0 or size_hw[0] % div or size_hw[1] % div:
        raise ValueError(f"input size {size_hw[1]}x{size_hw[0]} (WxH) must be positive multiples of {div} "
                         f"for {meta.architecture}")
    out = Path(out_dir)
    if dynamic_batch and meta.score:
        raise ValueError("a dynamic batch axis cannot hold the road-relative score (per-frame statistics of "
                         "fixed size): export with a fixed batch")
    module = scoring_model(model, smoothing, meta)
    data: dict[str, tuple[Path, bytes]] = {}
    if "torchscript" in formats:
        data["torchscript"] = out / f"{name}.pt", torchscript_bytes(module, size_hw)
    if "onnx" in formats:
        data["onnx"] = out / f"{name}.onnx", onnx_bytes(module, size_hw, opset, dynamic_batch)
    written = {kind: atomic_write_bytes(path, blob) for kind, (path, blob) in data.items()}
    info = sidecar(meta, size_hw, smoothing, {k: p.name for k, p in written.items()},
                   opset if "onnx" in formats else None, dynamic_batch)
    written["sidecar"] = atomic_write_json(out / f"{name}.json", info)
    return written
