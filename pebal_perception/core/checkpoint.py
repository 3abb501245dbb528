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
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_write_bytes
from .models import NUM_INLIER_CLASSES, get_model_spec, list_models
from .models.common import CheckpointError, check_against, expected_state_shapes, load_state_dict_strict

FORMAT_TAG = "pebal-checkpoint"
FORMAT_VERSION = 1

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
# Used when no calibrated threshold is stored: the midpoint of PEBAL's energy margins
# (m_in = -12 pushes inliers below, m_out = -6 pushes outliers above). Calibrate for real use.
DEFAULT_THRESHOLD = -9.0


@dataclass
class ModelMeta:
    """Everything needed to rebuild and run a model, stored beside its weights."""

    architecture: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: list(CITYSCAPES_CLASSES))
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    input_size: list[int] = field(default_factory=lambda: [512, 1024])  # height, width
    threshold: float | None = None  # calibrated obstacle threshold on the smoothed energy
    threshold_info: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the weights came from (file name or description)
    model_id: str = ""  # short name reported by the node and in summaries

    @classmethod
    def for_architecture(cls, name: str, **overrides: Any) -> "ModelMeta":
        spec = get_model_spec(name)
        meta = cls(architecture=name, mean=list(spec.mean), std=list(spec.std), input_size=list(spec.input_size))
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
    return [np._core.multiarray.scalar, np.dtype, *dtypes]


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
    except Exception as exc:  # torch raises many types for truncated/garbage archives (IndexError, ...)
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

    Raises CheckpointError (one clear message: what and where) for unreadable files, unknown layouts
    and any key/shape mismatch.
    """
    obj = _torch_load(path)
    source = Path(path).name
    if is_pebal_checkpoint(obj):
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this "
                                  f"software understands ({FORMAT_VERSION})")
        meta = ModelMeta.from_dict(dict(obj["meta"]))
        if model_name is not None and model_name != meta.architecture:
            raise CheckpointError(f"{path}: holds a {meta.architecture!r} model, not {model_name!r}")
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
    if len(meta.classes) != NUM_INLIER_CLASSES:
        raise CheckpointError(f"{path}: {len(meta.classes)} classes in metadata; PEBAL models have {NUM_INLIER_CLASSES}")
    model.eval()
    return model, meta
