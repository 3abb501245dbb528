"""Fine-tuning configuration: nested dataclasses, YAML loading and ``key=value`` dotted overrides.

The defaults are the values of the reference code (tianyu0207/PEBAL); ``config/finetune.yaml`` documents
every key. Loading is strict: an unknown key (in the YAML file or in an override) or a value of the
wrong type raises :class:`ConfigError` with one line naming the key, so a typo never silently falls
back to a default.

    cfg = load_config("config/finetune.yaml", ["optim.lr=2e-5", "train.epochs=5"])
    cfg.to_dict()      # plain, YAML/JSON-able dict (what the run folder's config.yaml holds)

Nothing here imports ROS or torch.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid (one line, naming the key)."""


# --------------------------------------------------------------------------------------------------
# sections


@dataclass
class ModelConfig:
    #: Registered architecture (``pebal_perception.core.models``): espnetv2, wrn38_deeplabv3plus, ...
    name: str = "espnetv2"
    #: Keyword arguments of the architecture's builder.
    kwargs: dict = field(default_factory=dict)
    #: Initial weights: our checkpoint format or any third-party file ``load_checkpoint`` knows
    #: (a bare state dict is read as ``name``). ``null``: random initialisation.
    init_checkpoint: Optional[str] = None
    #: Re-initialise the abstention row (channel 19) of the head's final conv with Kaiming-normal
    #: values (fan_in, gain sqrt 2; bias 0). ``null`` = true for third-party inits (whose channel 19 is
    #: an untrained void class, e.g. ESPNetv2's), false for our own checkpoints and random init.
    reinit_abstention: Optional[bool] = None
    #: Parameter-name prefixes that are trained; ``null`` = the architecture's ``head_prefixes``.
    trainable_prefixes: Optional[list] = None


@dataclass
class SyntheticDataConfig:
    #: Number of procedural scenes (scene i is generated from (seed, i): deterministic, no files).
    num_scenes: int = 64
    height: int = 256
    width: int = 512
    seed: int = 0
    #: Synthetic outlier objects (random textured blobs) used when ``data.outliers.kind: synthetic``.
    num_outliers: int = 32


@dataclass
class OutlierConfig:
    #: none | synthetic | coco_json | yolo | ood_seg
    kind: str = "synthetic"
    root: Optional[str] = None
    split: str = "train2017"
    #: Drop outlier images smaller than this (Meta-OoD/PEBAL: 480); 0 keeps every image.
    min_size: int = 480
    #: Outlier-exposure samples per epoch = int(fraction x #inlier images) (reference ``CityscapesCocoMix``).
    fraction: float = 0.1
    #: Use only these outlier images (names = file stems); null = all. E.g. to hold objects back.
    include: Optional[list] = None
    #: Resize outlier objects by this factor before pasting (0.5 keeps COCO's relative object size
    #: on half-resolution 1024x512 scenes); 1.0 = native size, as the reference.
    scale: float = 1.0


@dataclass
class DataConfig:
    #: cityscapes | synthetic
    kind: str = "synthetic"
    #: Cityscapes root (official leftImg8bit/gtFine tree or PEBAL's flat layout).
    root: Optional[str] = None
    split: str = "train"
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    #: Training crop (reference ``TrainPre``: 900); an int or [height, width].
    crop_size: Any = 900
    scales: list = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 1.75, 2.0])
    flip_prob: float = 0.8
    num_workers: int = 0
    #: A broken Cityscapes sample (unreadable file, image/label size mismatch, unexpected label id):
    #: raise = stop naming the file; skip = log it, count it and train on the next sample instead.
    on_error: str = "raise"
    #: Accept 254 (OUTLIER_LABEL) in Cityscapes labelTrainIds: inlier frames that carry outlier pixels
    #: (e.g. objects pasted on the road beforehand); those images count as is_ood and their 254 pixels
    #: are outliers in the losses, exactly as pasted OE pixels. false: a 254 is a DatasetError (faithful).
    inlier_outlier_label: bool = False


@dataclass
class OptimConfig:
    #: Adam as in the reference: lr 1e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.
    lr: float = 1e-5
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class LRScheduleConfig:
    #: lr(t) = lr * (1 - t / T_tot) ** power, clipped to [min_lr, lr]; step t uses lr(t - 1) (step 0: lr).
    power: float = 0.9
    min_lr: float = 1e-8
    #: exact: T_tot = epochs x iterations per epoch actually run.
    #: code:  T_tot = epochs x (#inlier images // batch_size), the reference's quirk (371 instead of
    #:        409 on Cityscapes), so the lr hits min_lr about 10 % before the end.
    total_iters_mode: str = "exact"


@dataclass
class LossConfig:
    #: pebal (the PEBAL objective) | cross_entropy (closed-set training of the 19 inlier classes,
    #: e.g. to pre-train a backbone from scratch before PEBAL fine-tuning; 254/255 pixels ignored)
    objective: str = "pebal"
    energy_weight: float = 0.1
    m_in: float = -12.0
    m_out: float = -6.0
    #: code (the reference's ``Gambler``) | paper (Eq. (3) of Tian et al., ECCV 2022)
    pal_variant: str = "code"
    outlier_weight: float = 0.1
    smooth_weight: float = 3e-6
    sparse_weight: float = 5e-4


@dataclass
class TrainConfig:
    epochs: int = 40
    #: Global batch; under DDP each of the W processes gets batch_size / W.
    batch_size: int = 8
    #: Stop each epoch after this many iterations (null: the whole epoch). For smoke runs.
    iters_per_epoch: Optional[int] = None
    seed: int = 666
    #: train: model.train() everywhere, as the reference (frozen layers' BN use batch statistics and
    #:        update their running stats); frozen: BN layers without trainable parameters stay in eval;
    #:        eval: every BN layer stays in eval (running stats kept, affine parameters still trained).
    bn_mode: str = "train"
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: off | fp16 | bf16 (autocast + GradScaler for fp16); CUDA only, ignored on CPU.
    amp: str = "off"
    #: Extra checkpoint every N iterations (0: only at the end of every epoch).
    checkpoint_every: int = 0
    #: Keep the newest N checkpoints in <output>/checkpoints (0: keep all).
    keep_checkpoints: int = 3
    log_every: int = 10
    #: TensorBoard image panels (input, label, energy) every N steps (0: never).
    image_every: int = 200
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ValidationConfig:
    #: none | synthetic | fishyscapes_laf | fishyscapes_static | road_anomaly | lostandfound | smiyc_anomaly | ...
    kind: str = "none"
    root: Optional[str] = None
    #: Synthetic validation scenes (with anomalies), generated from (seed, i).
    num_scenes: int = 8
    seed: int = 12345
    #: Evaluate at this [height, width] (null: native size rounded to the model's size divisor).
    size: Optional[list] = None
    smoothing: bool = True


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    #: Run folder (checkpoints, config.yaml, TensorBoard, metrics.json, model_final.pt).
    output: str = "runs/finetune"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "FinetuneConfig":
        _choice("data.kind", self.data.kind, ("cityscapes", "synthetic"))
        _choice("data.on_error", self.data.on_error, ("raise", "skip"))
        _choice("data.outliers.kind", self.data.outliers.kind, ("none", "synthetic", "coco_json", "yolo", "ood_seg"))
        _choice("lr_schedule.total_iters_mode", self.lr_schedule.total_iters_mode, ("exact", "code"))
        _choice("loss.pal_variant", self.loss.pal_variant, ("code", "paper"))
        _choice("loss.objective", self.loss.objective, ("pebal", "cross_entropy"))
        _choice("train.bn_mode", self.train.bn_mode, ("train", "frozen", "eval"))
        _choice("train.amp", self.train.amp, ("off", "fp16", "bf16"))
        if self.data.kind == "cityscapes" and not self.data.root:
            raise ConfigError("data.root: required for data.kind=cityscapes")
        if self.data.outliers.kind in ("coco_json", "yolo", "ood_seg") and not self.data.outliers.root:
            raise ConfigError(f"data.outliers.root: required for data.outliers.kind={self.data.outliers.kind}")
        for key, value in (("train.epochs", self.train.epochs), ("train.batch_size", self.train.batch_size)):
            if value < 1:
                raise ConfigError(f"{key}: must be >= 1, got {value}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.optim.lr}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas: expected two numbers, got {self.optim.betas}")
        if self.train.iters_per_epoch is not None and self.train.iters_per_epoch < 1:
            raise ConfigError(f"train.iters_per_epoch: must be >= 1 or null, got {self.train.iters_per_epoch}")
        return self


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


# --------------------------------------------------------------------------------------------------
# typed assignment


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks (and minimally converts: int -> float, tuple -> list) ``value`` against ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a path that YAML read as a number
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover


def _apply_mapping(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = _hints(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            known = ", ".join(sorted(hints))
            under = f" under {prefix.rstrip('.')}" if prefix else ""
            raise ConfigError(f"{dotted}: unknown key (known keys{under}: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply_mapping(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(dotted, value, hints[key]))


def set_dotted(cfg: FinetuneConfig, key: str, value: Any) -> None:
    """Sets ``a.b.c`` to ``value`` (type-checked; sub-sections accept a mapping)."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts[:-1]):
        child = getattr(obj, part, None) if part in _hints(type(obj)) else None
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: unknown section in override {key!r}")
        obj = child
    _apply_mapping(obj, {parts[-1]: value}, ".".join(parts[:-1]) + "." if len(parts) > 1 else "")


_YAML11_BOOL_WORDS = ("on", "off", "yes", "no", "y", "n")


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", value)``; VALUE is read as YAML (``1e-5``, ``true``, ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    if raw.strip().lower() in _YAML11_BOOL_WORDS:
        return key, raw.strip()  # "train.amp=off" means the string, not YAML 1.1's false
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-5" as a string; accept the usual float spellings.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        except ValueError:
            pass
    return key, value


def config_from_dict(data: dict | None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    cfg = FinetuneConfig()
    if data:
        _apply_mapping(cfg, data)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(cfg, key, value)
    return cfg.validate()


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Defaults, then the YAML file (if any), then the ``key=value`` overrides; validated."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML ({first})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(data, overrides)
