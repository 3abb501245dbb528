"""The whole frame as one graph: uint8 camera image in, class map and anomaly score out.

:class:`FrameGraph` is what :meth:`InferenceEngine.score_tensors` computes, written with operations
that every runtime we export to can run (ONNX through PyTorch's classic exporter, then ONNX Runtime,
OpenVINO's ONNX reader, TensorRT's ONNX parser):

    uint8 N x H x W x 3 RGB -> resize to the network size (bilinear, antialiased when shrinking)
    -> (x - 255 mean) / (255 std) -> network -> 19 inlier logits -> argmax (uint8) and free energy
    -> both back to H x W (energy bilinear, classes nearest-exact) -> 7x7 Gaussian (reflect padding)

Three operations of the eager path have no portable ONNX form and are rewritten here as exact
equivalents for the fixed sizes of one graph:

- the antialiased resize (``aten::_upsample_bilinear2d_aa`` has no ONNX symbolic): per axis a gather of
  the few input pixels each output pixel reads and a weighted sum, with the weights taken from
  PyTorch's own kernel (:func:`resize_taps`); likewise the nearest-exact resize of the class map
  (:func:`nearest_exact_indices`), and the bilinear resize of the energy back to the image size
  (OpenVINO 2026.4 computes the exporter's ``Resize`` of that map wrongly);
- ``adaptive_avg_pool2d`` with sizes that do not divide (ESPNetv2's pyramid pooling): two matrix
  products (:func:`onnx_friendly_adaptive_pool`);
- reflect padding (OpenVINO's ONNX reader refuses the ``Pad`` mode ``reflect`` that the exporter
  writes): slices and flips (:func:`reflect_pad`);
- ``logsumexp`` (OpenVINO runs the exporter's ``ReduceLogSumExp`` wrongly behind the resize): the
  maximum-shifted sum written out (:func:`portable_free_energy`).

Each runtime gets the form of the graph that it runs fastest (its ``graph_form`` in the registry of
``core/backends.py``, measured; the exported ONNX of ``pebal-export`` is the portable form): OpenVINO's
CPU plugin runs ESPNetv2's ``PRelu`` between layout conversions (a third of the frame in reorders) and
the class map's ``ArgMax`` as a slow ``TopK``, so its graph writes PReLU as ``relu(x) (1 - a) + a x``
(:class:`AffinePReLU`) and the argmax as the first class equal to the maximum; ONNX Runtime runs the
native operations faster.

The torch path stays the reference (``backend: torch``); the graph equals it to float rounding, except
where the frame is resized: PyTorch resizes a CPU uint8 frame with a fixed-point uint8 kernel (whole
grey levels, within one level of the float resize the graph does; rounding the graph's resize too
made the runtimes disagree with each other at rounding boundaries). Measured on a real 1920x1080
frame to 320x160: class agreement 99.9 %, energy within 0.04 (p99 0.02).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import scoring
from .constants import NUM_INLIER_CLASSES
from .road_score import FeatureTap, road_score_module

ONNX_OPSET = 17
INPUT_NAME = "rgb"
OUTPUT_NAMES = ("semantic", "score")


def resize_taps(n_in: int, n_out: int, antialias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), both ``n_out x T``: output pixel ``i`` of a bilinear resize along one axis is
    ``sum_t weights[i, t] * input[indices[i, t]]``. Taken from ``F.interpolate`` itself (the response to
    each unit impulse), so the taps are PyTorch's to float rounding; unused taps have weight 0."""
    impulses = torch.eye(n_in, dtype=torch.float64).view(1, n_in, 1, n_in)
    response = F.interpolate(impulses.float(), size=(1, n_out), mode="bilinear", align_corners=False,
                             antialias=antialias)[0, :, 0, :].t().double()  # n_out x n_in
    nonzero = response != 0
    first = torch.where(nonzero.any(1), nonzero.float().argmax(1), torch.zeros(n_out, dtype=torch.long))
    count = int((nonzero.sum(1)).max().item()) if n_out else 1
    taps = max(1, count)
    indices = (first.view(-1, 1) + torch.arange(taps).view(1, -1)).clamp(max=n_in - 1)
    weights = response.gather(1, indices)
    # A clamped duplicate index at the end must not count twice.
    duplicate = torch.zeros_like(indices, dtype=torch.bool)
    duplicate[:, 1:] = indices[:, 1:] == indices[:, :-1]
    weights = weights.masked_fill(duplicate, 0.0)
    return indices, weights.float()


def nearest_exact_indices(n_in: int, n_out: int) -> torch.Tensor:
    """The input index each of ``n_out`` outputs takes in a ``nearest-exact`` resize along one axis
    (PyTorch's own, read off ``F.interpolate`` of the index ramp)."""
    ramp = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in)
    return F.interpolate(ramp, size=(1, n_out), mode="nearest-exact")[0, 0, 0].round().long()


def _resize_axis(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """One axis (-2 rows, -1 columns) of a separable resize of ``N x C x H x W`` by gather + weighted sum."""
    n_out, taps = indices.shape
    picked = x.index_select(axis, indices.reshape(-1))
    if axis == -1:
        picked = picked.reshape(*x.shape[:-1], n_out, taps)
        return (picked * weights).sum(-1)
    picked = picked.reshape(*x.shape[:-2], n_out, taps, x.shape[-1])
    return (picked * weights.unsqueeze(-1)).sum(-2)


def portable_free_energy(logits: torch.Tensor) -> torch.Tensor:
    """``-logsumexp`` over the channels of ``N x C x H x W`` float logits, kept as ``N x 1 x H x W``, written
    out with the maximum shifted off: behind the graph's resize, OpenVINO 2026.4 computes the exporter's
    ``ReduceLogSumExp`` wrongly (most pixels 0) while the class map is right."""
    peak = logits.amax(dim=1, keepdim=True)
    return -(peak + (logits - peak).exp().sum(dim=1, keepdim=True).log())


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode="reflect")`` of the last two axes, from slices and flips."""
    if pad == 0:
        return x
    x = torch.cat([x[..., 1:pad + 1].flip(-1), x, x[..., -pad - 1:-1].flip(-1)], dim=-1)
    return torch.cat([x[..., 1:pad + 1, :].flip(-2), x, x[..., -pad - 1:-1, :].flip(-2)], dim=-2)


def portable_smooth(energy: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``scoring.gaussian_smooth`` of ``N x 1 x H x W`` maps with the 1-D ``kernel`` (odd length), in
    exportable operations: :func:`reflect_pad`, then the separable convolutions."""
    energy = reflect_pad(energy, kernel.numel() // 2)
    energy = F.conv2d(energy, kernel.view(1, 1, 1, -1))
    return F.conv2d(energy, kernel.view(1, 1, -1, 1))


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``n_out x n_in`` matrix of adaptive average pooling along one axis (PyTorch's bins:
    ``[floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))``)."""
    # Built in numpy so that tracing records one constant, not one op per bin.
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return torch.from_numpy(m)


def pool_by_matrices(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` of ``... x H x W`` at fixed sizes, exactly: ``AveragePool``
    where the bins are even (the size divides), else one matrix product per axis, each a single tall
    GEMM over all rows (a batched ``P_h @ x`` of small matrices per channel ran 2.5x slower in ONNX
    Runtime)."""
    lead, (ih, iw) = tuple(x.shape[:-2]), (int(x.shape[-2]), int(x.shape[-1]))
    oh, ow = output_size
    if ih % oh == 0 and iw % ow == 0:
        return F.avg_pool2d(x, (ih // oh, iw // ow))
    rows = int(np.prod(lead))  # 1 for a plain H x W
    pw = _pool_matrix(iw, ow).to(x.dtype).t()  # iw x ow
    ph = _pool_matrix(ih, oh).to(x.dtype).t()  # ih x oh
    x = torch.matmul(x.reshape(rows * ih, iw), pw).reshape(rows, ih, ow)
    x = torch.matmul(x.transpose(1, 2).reshape(rows * ow, ih), ph).reshape(rows, ow, oh)
    return x.transpose(1, 2).reshape(*lead, oh, ow)


@contextlib.contextmanager
def onnx_friendly_adaptive_pool():
    """Temporarily routes ``F.adaptive_avg_pool2d`` (other than global pooling) through
    :func:`pool_by_matrices` (the same bins and weights, float rounding aside).

    The classic ONNX exporter only maps adaptive pooling to ``AveragePool`` when every output size
    divides the input size and the input size is known in the graph; ESPNetv2's pyramid pooling
    (sizes ``ceil(s * scale)``, after resizes whose output shape the exporter leaves symbolic) is
    neither. For a fixed-size export the input sizes are constants, so pooling with a kernel (sizes
    that divide) or ``P_h x P_w^T`` (sizes that do not) is an exact equivalent that ONNX expresses
    with ``AveragePool`` and ``MatMul``.
    """
    original = nn.functional.adaptive_avg_pool2d

    def pooled(x: torch.Tensor, output_size: Any) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        oh, ow = ih if oh is None else int(oh), iw if ow is None else int(ow)
        if (oh, ow) == (1, 1):  # global pooling: GlobalAveragePool needs no sizes
            return original(x, (oh, ow))
        return pool_by_matrices(x, (oh, ow))

    nn.functional.adaptive_avg_pool2d = pooled
    try:
        yield
    finally:
        nn.functional.adaptive_avg_pool2d = original


def __getattr__(name: str) -> Any:
    """``RUNTIME_FORMS``: compiled runtime name -> the graph form it runs, read from the backend registry
    (each ``backends.Backend.graph_form``, where the measurements behind them are noted), for scripts
    that build a runtime's graph by hand."""
    if name == "RUNTIME_FORMS":
        from . import backends

        return {b.name: dict(b.graph_form) for b in backends.registered_backends() if b.compiled}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AffinePReLU(nn.Module):
    """``nn.PReLU`` as ``relu(x) (1 - a) + x a`` (per-channel ``a``): equal to float rounding, and made of
    operations a runtime fuses into its convolutions' layout (see the module docstring)."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        slope = prelu.weight.detach().reshape(1, -1, 1, 1).clone()
        self.register_buffer("slope", slope, persistent=False)
        self.register_buffer("relu_scale", 1.0 - slope, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * self.relu_scale + x * self.slope


def with_affine_prelu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.PReLU`` replaced by :class:`AffinePReLU` (``model`` untouched)."""
    import copy

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU):
                setattr(parent, name, AffinePReLU(child))
    return model


def argmax_by_reduce(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1, keepdim=True)`` as uint8 (the first class equal to the maximum, as argmax
    breaks ties) from a max and a min reduction; a pixel with a NaN logit gets 255 (the void id)."""
    peak = logits.amax(dim=1, keepdim=True)
    index = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device).view(1, -1, 1, 1)
    first = torch.where(logits == peak, index, torch.full_like(index, 255.0)).amin(dim=1, keepdim=True)
    return first.to(torch.uint8)


class FrameGraph(nn.Module):
    """uint8 ``N x H x W x 3`` RGB at one fixed image size -> (semantic ``N x H x W`` uint8 trainIds,
    score ``N x H x W`` float32); see the module docstring. ``network_hw`` is the size the network runs
    at; ``smoothing`` applies PEBAL's Gaussian; ``prelu`` (``native`` or ``affine``: :func:`with_affine_prelu`)
    and ``argmax`` (``native`` or ``reduce``: :func:`argmax_by_reduce`) pick the form
    (a runtime's ``backends.Backend.graph_form``); ``score`` (``ModelMeta.score``) and ``road_features`` (the
    architecture's) add the road-relative term of ``core/road_score.py`` to the energy."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], image_hw: Sequence[int],
                 network_hw: Sequence[int], smoothing: bool = True,
                 kernel_size: int = scoring.DEFAULT_KERNEL_SIZE, sigma: float = scoring.DEFAULT_SIGMA,
                 num_classes: int = NUM_INLIER_CLASSES, prelu: str = "native", argmax: str = "native",
                 score: dict[str, Any] | None = None, road_features: tuple[str, int] | None = None):
        super().__init__()
        if prelu not in ("native", "affine") or argmax not in ("native", "reduce"):
            raise ValueError(f"graph form prelu={prelu!r} argmax={argmax!r}: expected prelu native|affine, "
                             "argmax native|reduce")
        self.model = with_affine_prelu(model) if prelu == "affine" else model
        self.argmax_by_reduce = argmax == "reduce"
        self.road = road_score_module(score, road_features)
        self.road_module = None if self.road is None else road_features[0]
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.network_hw = (int(network_hw[0]), int(network_hw[1]))
        self.num_classes = int(num_classes)
        self.smoothing = bool(smoothing) and kernel_size > 1
        self.resizes = self.image_hw != self.network_hw
        if self.resizes:  # the taps of the resizes (none at the network size: the runtimes' graph)
            (h, w), (nh, nw) = self.image_hw, self.network_hw
            shrinking = h > nh or w > nw  # as preprocess.normalize decides
            row_idx, row_w = resize_taps(h, nh, shrinking)
            col_idx, col_w = resize_taps(w, nw, shrinking)
            taps = {"row_idx": row_idx, "row_w": row_w, "col_idx": col_idx, "col_w": col_w,
                    # the class map back to the image size (aten::_upsample_nearest_exact2d has no ONNX form)
                    "row_back": nearest_exact_indices(nh, h), "col_back": nearest_exact_indices(nw, w)}
            # the energy back to the image size (bilinear, as score_tensors), also by taps: OpenVINO 2026.4
            # computes the exporter's Resize of this map wrongly (all pixels off, the class map right)
            (taps["row_up"], taps["row_up_w"]), (taps["col_up"], taps["col_up_w"]) = (
                resize_taps(nh, h, False), resize_taps(nw, w, False))
            for name, value in taps.items():
                self.register_buffer(name, value, persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("kernel", scoring.gaussian_kernel_1d(max(1, kernel_size), sigma).clone(),
                             persistent=False)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = rgb.permute(0, 3, 1, 2).float()
        if self.resizes:
            x = _resize_axis(x, self.row_idx, self.row_w, -2)
            x = _resize_axis(x, self.col_idx, self.col_w, -1)
        x = (x - self.mean) / self.std
        if self.road is None:
            logits = self.model(x)[:, :self.num_classes].float()
        else:
            with FeatureTap(self.model, self.road_module) as tap:
                logits = self.model(x)[:, :self.num_classes].float()
        semantic = (argmax_by_reduce(logits) if self.argmax_by_reduce
                    else logits.argmax(dim=1, keepdim=True).to(torch.uint8))
        energy = portable_free_energy(logits)
        if self.road is not None:
            energy = self.road(logits, energy, tap.take())
        if self.resizes:
            energy = _resize_axis(energy, self.row_up, self.row_up_w, -2)
            energy = _resize_axis(energy, self.col_up, self.col_up_w, -1)
            semantic = semantic.index_select(2, self.row_back).index_select(3, self.col_back)
        if self.smoothing:
            energy = portable_smooth(energy, self.kernel)
        return semantic[:, 0], energy[:, 0]


def onnx_bytes(graph: FrameGraph, opset: int = ONNX_OPSET, input_dtype: torch.dtype = torch.uint8) -> bytes:
    """``graph`` as an ONNX model (classic exporter; input ``rgb`` 1 x H x W x 3 of ``input_dtype``, uint8
    or float32 pixel values 0..255; outputs ``semantic`` uint8 and ``score`` float32, 1 x H x W)."""
    h, w = graph.image_hw
    example = torch.zeros((1, h, w, 3), dtype=input_dtype)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), onnx_friendly_adaptive_pool():
        warnings.simplefilter("ignore")  # deprecation notice of the classic exporter, tracer warnings
        torch.onnx.export(graph.eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True)
    return buf.getvalue()
