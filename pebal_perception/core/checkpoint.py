"""Checkpoints: our self-describing format and the third-party files, through one entry point.

Our format is a plain dict that ``torch.load(..., weights_only=True)`` accepts (tensors, str, numbers,
lists, dicts only), so loading never unpickles arbitrary objects::

    {"format": "pebal-checkpoint", "format_version": 1,
     "meta": {architecture, model_kwargs, classes, mean, std, input_size, threshold, threshold_info,
              training_config, metrics, ...},
     "state_dict": {...}}

Third-party files (EdgeNets ESPNetv2, NVIDIA WRN38 ``cityscapes_best.pth``, the PEBAL release
``best_ad_ckpt.pth``, bare state dicts) are recognised by the architecture's ``adapt_state_dict``;
``--model NAME`` picks the architecture when the file does not say.

Nothing in a file is trusted blindly: :func:`load_checkpoint` (the one loader every entry point uses:
the node and pebal-bag through ``InferenceEngine.from_checkpoint``, pebal-detect, pebal-eval,
pebal-calibrate, pebal-export, fine-tuning) checks the metadata before building anything, builds the
model on the meta device first so that ``model_kwargs`` cannot allocate more than the stored weights,
refuses non-finite weights and runs one small forward (:data:`PROBE_SIZE`, real pre-processing) that
must give finite logits and energies (:func:`validate_model`). Every problem is a one-line
:class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import scoring
from .constants import CITYSCAPES_CLASSES, IMAGENET_MEAN, IMAGENET_STD
from .errors import first_line
from .io import atomic_write_bytes
from .limits import check_threshold
from .models import NUM_INLIER_CLASSES, NUM_OUTPUTS, ModelSpec, canonical_model_name, get_model_spec, list_models
from .models.common import (CheckpointError, check_against, describe_mismatch, expected_state_shapes,
                            load_state_dict_strict)
from .preprocess import check_network_size, normalize

FORMAT_TAG = "pebal-checkpoint"
FORMAT_VERSION = 1

# Used when no calibrated threshold is stored: the midpoint of PEBAL's energy margins
# (m_in = -12 pushes inliers below, m_out = -6 pushes outliers above). Calibrate for real use.
DEFAULT_THRESHOLD = -9.0


@dataclass
class ModelMeta:
    """Everything needed to rebuild and run a model, stored beside its weights."""

    architecture: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: list(CITYSCAPES_CLASSES))
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    input_size: list[int] = field(default_factory=lambda: [512, 1024])  # height, width
    threshold: float | None = None  # calibrated obstacle threshold on the smoothed energy
    threshold_info: dict[str, Any] = field(default_factory=dict)
    # the anomaly score the threshold belongs to: {} = PEBAL's free energy; else core/road_score.py's config
    score: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the weights came from (file name or description)
    model_id: str = ""  # short name reported by the node and in summaries

    @classmethod
    def for_architecture(cls, name: str, **overrides: Any) -> "ModelMeta":
        spec = get_model_spec(name)
        meta = cls(architecture=spec.name, mean=list(spec.mean), std=list(spec.std), input_size=list(spec.input_size))
        for key, value in overrides.items():
            setattr(meta, key, value)
        return meta

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"checkpoint metadata has unknown fields {sorted(unknown)} (newer format?)")
        if "architecture" not in data:
            raise CheckpointError("checkpoint metadata has no 'architecture'")
        unnamed = [k for k in data if not isinstance(k, str)]
        if unnamed:
            raise CheckpointError(f"checkpoint metadata has fields that are not names: {unnamed[:5]!r}")
        return cls(**data)

    @property
    def effective_threshold(self) -> float:
        return DEFAULT_THRESHOLD if self.threshold is None else float(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numpy_scalar_globals() -> list:
    """Numpy numeric scalars that training scripts store beside weights (e.g. NVIDIA's ``mean_iu``).

    Only plain numeric dtypes are allowed; object arrays and everything else stay refused.
    """
    import numpy as np

    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)]
    return [np._core.multiarray.scalar, np.dtype, *dtypes]  # noqa: SLF001 - the class pickles name


def _torch_load(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # weights_only=True: a checkpoint is data; never run code from a file we did not write.
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused to load (not plain weights; weights_only=True): {first}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated/garbage archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta,
                    extra: dict[str, Any] | None = None) -> Path:
    """Writes our format atomically (temp file + rename). ``extra`` holds e.g. optimizer state."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION,
                               "meta": meta.to_dict(), "state_dict": state}
    if extra:
        payload.update(extra)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def update_checkpoint_meta(path: str | os.PathLike, **changes: Any) -> ModelMeta:
    """Rewrites one of our checkpoints with changed metadata (e.g. a calibrated threshold), atomically."""
    obj = _torch_load(path)
    if not is_pebal_checkpoint(obj):
        raise CheckpointError(f"{path}: only pebal checkpoints carry metadata; convert it with pebal-export first")
    meta = ModelMeta.from_dict(obj["meta"])
    for key, value in changes.items():
        if not hasattr(meta, key):
            raise CheckpointError(f"unknown metadata field {key!r}")
        setattr(meta, key, value)
    obj["meta"] = meta.to_dict()
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return meta


def is_pebal_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT_TAG


def _build(meta: ModelMeta) -> nn.Module:
    spec = get_model_spec(meta.architecture)
    return spec.builder(**meta.model_kwargs)


# ------------------------------------------------------------------------------------------- validation

#: (height, width) of the forward every load runs (rounded up to the architecture's size divisor): the
#: smallest input the registered architectures accept comfortably; a few milliseconds for ESPNetv2.
PROBE_SIZE = (64, 128)

_PLAIN_VALUES = (bool, int, float, str, type(None))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain_value(value: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain_value(v) for v in value if not isinstance(v, (list, tuple)))
    return isinstance(value, _PLAIN_VALUES)


def _metadata_problem(meta: ModelMeta, spec: ModelSpec) -> str | None:
    """What is wrong with ``meta`` for ``spec`` (one short sentence), or None."""
    for name in ("model_kwargs", "threshold_info", "training_config", "metrics", "score"):
        if not isinstance(getattr(meta, name), dict):
            return f"metadata {name} must be a dict, got {type(getattr(meta, name)).__name__}"
    from .road_score import parse_score

    try:
        if parse_score(meta.score) is not None and spec.road_features is None:
            return f"metadata score {meta.score.get('kind')!r}: architecture {spec.name} offers only the free energy"
    except (TypeError, ValueError) as exc:
        return f"metadata score: {exc}"
    for name in ("source", "model_id"):
        if not isinstance(getattr(meta, name), str):
            return f"metadata {name} must be a string, got {type(getattr(meta, name)).__name__}"
    for key, value in meta.model_kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            return f"model_kwargs key {key!r} is not a parameter name"
        if not _plain_value(value):
            return f"model_kwargs {key}={value!r} is not a plain finite number, string, bool or list of them"
    classes = meta.classes
    if (not isinstance(classes, (list, tuple)) or not classes
            or not all(isinstance(c, str) and c for c in classes)):
        return f"classes must be a non-empty list of names, got {classes!r:.80}"
    if len(classes) != NUM_INLIER_CLASSES:
        return f"{len(classes)} classes in metadata; PEBAL models have {NUM_INLIER_CLASSES}"
    for name in ("mean", "std"):
        values = getattr(meta, name)
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(_is_number(v) and math.isfinite(v) for v in values)):
            return f"{name} must be 3 finite numbers (one per RGB channel), got {values!r:.80}"
    if not all(v > 0 for v in meta.std):
        return f"std must be > 0 for every channel, got {list(meta.std)}"
    size = meta.input_size
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        return f"input_size must be [height, width] integers, got {size!r:.80}"
    try:
        check_network_size(size, spec.size_divisor, what="input_size")
    except ValueError as exc:
        return str(exc)
    if meta.threshold is not None:
        if not _is_number(meta.threshold):
            return f"threshold must be a number or None, got {meta.threshold!r:.40}"
        try:
            check_threshold(meta.threshold)
        except ValueError as exc:
            return str(exc)
    return None


def check_metadata(meta: ModelMeta, source: str | os.PathLike) -> ModelSpec:
    """The architecture's spec when ``meta`` is usable; CheckpointError ``"SOURCE: problem"`` otherwise.

    Checks: a registered architecture; ``input_size`` two positive integer multiples of the size divisor,
    at most 4096 per side, aspect ratio within 8:1 (``core/preprocess.py``); ``mean``/``std`` three
    finite numbers, std > 0; 19 class names; ``threshold`` None or usable (``core.limits.check_threshold``);
    ``model_kwargs`` a dict of plain finite values; the other fields of their declared types.
    """
    if not isinstance(meta.architecture, str):
        raise CheckpointError(f"{source}: metadata architecture must be a string, got {meta.architecture!r:.40}")
    try:
        spec = get_model_spec(meta.architecture)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}") from None
    problem = _metadata_problem(meta, spec)
    if problem:
        raise CheckpointError(f"{source}: {problem}")
    return spec


def _check_buildable(spec: ModelSpec, meta: ModelMeta, state: dict[str, torch.Tensor], source: str) -> None:
    """Builds the model on the meta device (no memory) and compares it with the stored weights, so that
    ``model_kwargs`` cannot make the real build allocate more than the file holds."""
    try:
        with torch.device("meta"):
            shapes = {k: v for k, v in spec.builder(**meta.model_kwargs).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - TypeError for unknown kwargs, ValueError from the builder, ...
        raise CheckpointError(f"{source}: model_kwargs {meta.model_kwargs!r:.80} do not build a "
                              f"{meta.architecture} ({type(exc).__name__}: {first_line(exc)})") from None
    given = dict(state)
    for key, value in shapes.items():
        if key.endswith("num_batches_tracked") and key not in given:
            given[key] = value
    problem = describe_mismatch(shapes, given)
    if problem:
        raise CheckpointError(f"{source}: the weights do not fit {meta.architecture} with model_kwargs "
                              f"{meta.model_kwargs!r:.80} ({problem})")


def _non_finite_weights(model: nn.Module) -> str | None:
    """``"KEY: N of M values are NaN/Inf"`` for the first non-finite floating-point weight or buffer, or None.

    Tensors are checked in chunks of about 4 M values (one reduction per chunk, not per tensor: ESPNetv2
    has 526 tensors); only a failing chunk is searched tensor by tensor.
    """
    groups: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point() or value.is_complex():
            groups.setdefault((value.dtype, value.device), []).append((key, value.detach().reshape(-1)))
    for items in groups.values():
        chunk: list[tuple[str, torch.Tensor]] = []
        size = 0
        for index, (key, flat) in enumerate(items):
            chunk.append((key, flat))
            size += flat.numel()
            if size < _FINITE_CHUNK and index + 1 < len(items):
                continue
            if not bool(torch.isfinite(torch.cat([t for _, t in chunk])).all()):
                for name, tensor in chunk:
                    bad = int(tensor.numel() - torch.isfinite(tensor).sum())
                    if bad:
                        return f"{name}: {bad} of {tensor.numel()} values are NaN/Inf"
            chunk, size = [], 0
    return None


_FINITE_CHUNK = 1 << 22


def validate_model(model: nn.Module, meta: ModelMeta, source: str | os.PathLike) -> None:
    """Raises CheckpointError ``"SOURCE: problem"`` unless ``model`` and ``meta`` are fit to run.

    :func:`check_metadata`; every floating-point weight and buffer finite; and one forward of a fixed
    ``PROBE_SIZE`` pattern (uint8, through the real pre-processing with the stored mean/std) giving
    ``1 x 20 x h x w`` finite logits and finite free energies. The forward runs without gradients with
    every module in eval mode (BatchNorm statistics are not updated), restores each module's own mode
    afterwards and uses no random numbers, so the model and the global RNG are left exactly as they were.
    Both checks run on one intra-op thread (the thread count is restored): for inputs this small,
    parallel overhead, and contention on a busy CPU, cost more than they gain.
    """
    spec = check_metadata(meta, source)
    d = spec.size_divisor
    h, w = -(-PROBE_SIZE[0] // d) * d, -(-PROBE_SIZE[1] // d) * d
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = [(module, module.training) for module in model.modules()]
    threads = torch.get_num_threads()
    problem = None
    try:
        if threads > 1:
            torch.set_num_threads(1)
        with torch.no_grad():
            bad_weights = _non_finite_weights(model)
            if bad_weights is not None:
                problem = f"weights are not finite ({bad_weights})"
            else:
                model.eval()
                pattern = (torch.arange(3 * h * w, device=device) * 7919 % 251).to(torch.uint8).view(1, 3, h, w)
                try:
                    logits = model(normalize(pattern, meta.mean, meta.std, (h, w)))
                except Exception as exc:  # noqa: BLE001 - any failure of the forward is a broken checkpoint
                    problem = f"the model fails on a {w}x{h} test input ({type(exc).__name__}: {first_line(exc)})"
                else:
                    problem = _output_problem(logits, f"a {w}x{h} test input")
    finally:
        for module, training in modes:
            module.training = training
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    if problem is not None:
        raise CheckpointError(f"{source}: {problem}")


def _output_problem(logits: Any, what: str) -> str | None:
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 4 and tuple(logits.shape[:2]) == (1, NUM_OUTPUTS)):
        return (f"the model returned {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))} on {what}, "
                f"expected (1, {NUM_OUTPUTS}, H, W) logits")
    if not bool(torch.isfinite(logits).all()):
        return f"logits are not finite on {what} (broken weights or normalisation)"
    if not bool(torch.isfinite(scoring.free_energy(logits.float())).all()):
        return f"free energies are not finite on {what} (logits too large)"
    return None


def _detect_architecture(obj: Any) -> str:
    """Finds the one registered architecture whose layout the third-party object fits exactly."""
    fits = []
    for name in list_models():
        spec = get_model_spec(name)
        try:
            check_against(expected_state_shapes(spec.builder), dict(spec.adapt_state_dict(obj)), "checkpoint", name)
        except CheckpointError:
            continue
        fits.append(name)
    if len(fits) != 1:
        raise CheckpointError("cannot tell which architecture this checkpoint is for; pass the model name "
                              f"(one of: {', '.join(list_models())})")
    return fits[0]


def load_checkpoint(path: str | os.PathLike, model_name: str | None = None) -> tuple[nn.Module, ModelMeta]:
    """Loads any supported checkpoint into a fresh CPU model in eval mode, plus its metadata.

    Raises CheckpointError (one clear message: what and where) for unreadable files, unknown layouts,
    any key/shape mismatch, and metadata or weights that :func:`validate_model` refuses (checked before
    and after building; see the module docstring).
    """
    obj = _torch_load(path)
    source = Path(path).name
    if is_pebal_checkpoint(obj):
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this "
                                  f"software understands ({FORMAT_VERSION})")
        if not isinstance(obj.get("meta"), dict) or not isinstance(obj.get("state_dict"), dict):
            raise CheckpointError(f"{path}: pebal checkpoint without a 'meta' and a 'state_dict' dict")
        odd = [k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if odd:
            raise CheckpointError(f"{path}: state_dict entries that are not named tensors: {odd[:5]!r}")
        try:
            meta = ModelMeta.from_dict(dict(obj["meta"]))
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if model_name is not None and canonical_model_name(model_name) != canonical_model_name(meta.architecture):
            raise CheckpointError(f"{path}: holds a {meta.architecture!r} model, not {model_name!r}")
        spec = check_metadata(meta, path)
        if meta.model_kwargs:  # the registered defaults are ours; only stored arguments can build huge models
            _check_buildable(spec, meta, obj["state_dict"], str(path))
        model = _build(meta)
        load_state_dict_strict(model, obj["state_dict"], source=str(path))
    else:
        name = model_name or _detect_architecture(obj)
        spec = get_model_spec(name)
        state = spec.adapt_state_dict(obj)
        meta = ModelMeta.for_architecture(name, source=source)
        model = _build(meta)
        load_state_dict_strict(model, state, source=str(path))
    if not meta.model_id:
        meta.model_id = f"{meta.architecture}:{Path(source).stem}"
    model.eval()
    validate_model(model, meta, path)
    return model, meta
