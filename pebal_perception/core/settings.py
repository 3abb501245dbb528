"""The detector's settings, ROS-free: the node's parameter table, and the run-time settings they make up.

:data:`PARAMETERS` lists every parameter the node declares (name, type, default, range, read-only,
description). The node builds its ``ParameterDescriptor``\\ s from it (rclpy then refuses wrong types,
values out of range and changes of read-only parameters); ``pebal-bag process`` takes its defaults and
the same checks from it (:func:`resolve_parameters`); ``config/detector.yaml`` documents every entry
with the same default (test/test_node_params.py compares them).

:class:`RuntimeSettings` is everything a run-time change may alter (post-processing, threshold,
smoothing, camera mounting); the node replaces the whole immutable object in one reference swap, and
its worker takes one snapshot per frame.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from pebal_perception.core.backends import BACKENDS
from pebal_perception.core.backends import help_text as backends_help_text
from pebal_perception.core.fields import declared, parameters_of, product_value
from pebal_perception.core.limits import check_threshold
from pebal_perception.core.postprocess_config import (MAX_CAMERA_HEIGHT_M, PostProcessConfig, check_mounting,
                                                      fill_from_calibration, validate_roi)
from pebal_perception.core.tracking import TrackingConfig

NODE_NAME = "pebal_detector"
DEVICES = ("auto", "cpu", "cuda")  # device is one of these, or cuda:N
AUTO_THRESHOLD_STRINGS = ("", "nan", "auto", "checkpoint", "calibrated", "default")
TYPES = ("string", "integer", "double", "bool", "double_array")
NAN = float("nan")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter. ``type`` is one of :data:`TYPES`; ``value_range`` is an inclusive
    ``(lowest, highest)`` for an integer or double; ``choices`` the only values a string may take;
    ``dynamic_typing`` lets a value of another type through (checked by whoever reads it)."""

    name: str
    type: str
    default: Any
    description: str
    read_only: bool = False
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    dynamic_typing: bool = False
    deprecated: str = ""  # what replaces a deprecated parameter (still honoured, warned about when given)

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name}: unknown type {self.type!r}")

    def check(self, value: Any) -> Any:
        """``value`` as this parameter holds it (an integer passes as a double), or ValueError naming
        the parameter: wrong type, out of range, not one of the choices."""
        if self.dynamic_typing:
            return value
        kind = self.type
        if kind == "double" and _is_int(value):
            value = float(value)
        elif kind == "double_array" and isinstance(value, (list, tuple)) and all(
                _is_int(v) or isinstance(v, float) for v in value):
            value = [float(v) for v in value]
        ok = {"string": isinstance(value, str), "integer": _is_int(value), "double": isinstance(value, float),
              "bool": isinstance(value, bool), "double_array": isinstance(value, list)}[kind]
        if not ok:
            raise ValueError(f"parameter {self.name} must be of type {kind}, got {type(value).__name__} {value!r}")
        if self.value_range is not None and kind in ("integer", "double"):
            low, high = self.value_range
            if not low <= value <= high:
                raise ValueError(f"parameter {self.name}={value!r} is outside [{low:g}, {high:g}]")
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter {self.name}={value!r}: expected one of {', '.join(self.choices)}")
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The standard QoS override of an input subscription (rclpy declares these parameters, read-only).
QOS_OVERRIDE_TEXT = "qos_overrides.<input topic>.subscription.{policy} (e.g. qos_overrides./camera/image_raw." \
                    "subscription.{policy})"
RUN_TIME = "Changeable at run time."
READ_ONLY_TEXT = "Read-only."

def _parameter_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, tuple):
        return "double_array"
    raise TypeError(f"no parameter type for {value!r}")


def _declared_parameters(cls: Any, after: Mapping[str, ParamSpec] | None = None) -> list[ParamSpec]:
    """The parameters a config dataclass declares on its fields (:mod:`pebal_perception.core.fields`),
    each followed by ``after``'s entry for it, if any."""
    specs = []
    for f, s in declared(cls):
        if not s.param:
            continue
        default = product_value(f, s)
        kind = _parameter_type(default)
        specs.append(ParamSpec(s.param, kind, list(default) if kind == "double_array" else default,
                               f"{s.description} {RUN_TIME if s.run_time else READ_ONLY_TEXT}",
                               read_only=not s.run_time, value_range=s.value_range))
        if after and s.param in after:
            specs.append(after[s.param])
    return specs


EGO_MASK_IMAGE = ParamSpec("ego_mask.image", "string", "",
              "Ego vehicle as a mask image (PNG/JPEG of any size, stretched to the frame; non-black pixels = ego), "
              f"used when ego_mask.polygon is empty; '' = none. {READ_ONLY_TEXT}", read_only=True)

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("checkpoint", "string", "",
              "Model checkpoint file (pebal format or a supported third-party file); '' = the embedded default "
              f"model. {READ_ONLY_TEXT}", read_only=True),
    ParamSpec("model", "string", "",
              "Architecture of a bare third-party state dict (espnetv2, wrn38 = wrn38_deeplabv3plus, resnet101 = "
              f"resnet101_deeplabv3plus); '' = from the checkpoint. {READ_ONLY_TEXT}", read_only=True),
    ParamSpec("device", "string", "auto",
              f"Inference device: auto (CUDA when available), cuda, cuda:N or cpu. {READ_ONLY_TEXT}", read_only=True),
    ParamSpec("backend", "string", "auto",
              f"Inference runtime: {backends_help_text()}. "
              f"Compiled graphs are cached in $PEBAL_CACHE_DIR or ~/.cache/pebal, signed with a per-user key "
              f"($PEBAL_CACHE_KEY or ~/.config/pebal/cache-key). {READ_ONLY_TEXT}",
              read_only=True, choices=BACKENDS),
    ParamSpec("precision", "string", "fp32",
              f"fp32 or fp16 (autocast, CUDA only; CPU always runs fp32). {READ_ONLY_TEXT}", read_only=True,
              choices=("fp32", "fp16")),
    ParamSpec("oom_fallback", "string", "fp16",
              "What to do when the device runs out of memory on a frame (after releasing cached memory and one "
              "retry): 'none' (drop the frame), or a comma-separated list of 'fp16' (switch to half precision) "
              "and 'cpu' (move the model to the CPU), applied in order and kept. Every case is counted in "
              f"/diagnostics. {READ_ONLY_TEXT}", read_only=True),
    ParamSpec("cpu_threads", "integer", 0,
              "Intra-op threads PyTorch may use on the CPU (torch.set_num_threads); 0 = PyTorch's default (one "
              "per core). 1 avoids OpenMP stalls when other processes share the cores. "
              f"{READ_ONLY_TEXT}", read_only=True, value_range=(0, 1024)),
    ParamSpec("input_width", "integer", 0,
              "Network input width in pixels (multiple of the architecture's divisor); 0 = the checkpoint's. "
              f"Set together with input_height. {READ_ONLY_TEXT}", read_only=True, value_range=(0, 8192)),
    ParamSpec("input_height", "integer", 0,
              f"Network input height in pixels; 0 = the checkpoint's. {READ_ONLY_TEXT}", read_only=True,
              value_range=(0, 8192)),
    ParamSpec("anomaly_score", "string", "",
              "The per-pixel anomaly score: '' = the checkpoint's (the one its threshold was calibrated on); "
              "'energy' = PEBAL's free energy alone (the faithful score); 'road_relative' = free energy plus how "
              "unlike the frame's own road each pixel's features are, where road surrounds it (core/road_score.py; "
              "the checkpoint's settings, else the defaults). A score other than the checkpoint's needs an "
              f"explicit threshold. {READ_ONLY_TEXT}", read_only=True, choices=("", "energy", "road_relative")),
    ParamSpec("threshold", "double", NAN,
              "Obstacle threshold on the anomaly score (smoothed; pixels with score > threshold are "
              f"anomalous). NaN, '' or 'auto' = the checkpoint's calibrated threshold. {RUN_TIME}",
              dynamic_typing=True),
    ParamSpec("smoothing", "bool", True,
              f"Apply PEBAL's 7x7 Gaussian (sigma 1) to the energy map. {RUN_TIME}"),
    *_declared_parameters(PostProcessConfig, after={"ego_mask.polygon": EGO_MASK_IMAGE}),
    *_declared_parameters(TrackingConfig),
    ParamSpec("adaptation", "bool", False,
              "Test-time adaptation to the camera: the model's batch-norm statistics are re-estimated from this "
              "camera's own recent frames (a moving average, adaptation_momentum), so that its colours and "
              "exposure stop looking anomalous. Paused while obstacles are detected or reported (those frames "
              "are not used); off = the checkpoint's statistics (switching off restores them). Needs backend "
              "torch (a compiled backend runs a fixed graph: /diagnostics then says unavailable) and runs the "
              f"model with unfolded batch norm (slower). /diagnostics reports it (adaptation_*). {RUN_TIME}"),
    ParamSpec("adaptation_momentum", "double", 0.01,
              "Weight of each adapted frame in the batch-norm statistics, 0 < momentum <= 1 (0.01: about the "
              f"last 100 frames without obstacles). {RUN_TIME}", value_range=(0.0, 1.0)),
    ParamSpec("qos.depth", "integer", 5,
              "Deprecated: the base history depth of the input subscriptions, which "
              f"qos_overrides.<topic>.subscription.depth overrides. {READ_ONLY_TEXT}",
              read_only=True, value_range=(1, 1000), deprecated=f"use {QOS_OVERRIDE_TEXT.format(policy='depth')}"),
    ParamSpec("qos.reliability", "string", "best_effort",
              "Deprecated: the base reliability of the input subscriptions (best_effort or reliable), which "
              f"qos_overrides.<topic>.subscription.reliability overrides. {READ_ONLY_TEXT}", read_only=True,
              choices=("best_effort", "reliable"), deprecated=f"use {QOS_OVERRIDE_TEXT.format(policy='reliability')}"),
    ParamSpec("subscribe_compressed", "bool", False,
              f"Also subscribe to image/compressed (sensor_msgs/CompressedImage). {READ_ONLY_TEXT}", read_only=True),
    ParamSpec("lazy_input", "bool", False,
              "Subscribe to the image inputs only while some output (result, images, markers, processing "
              "time; not /diagnostics) has a subscriber, checked every 0.5 s: nothing is received, converted "
              f"or decoded while nobody listens. {READ_ONLY_TEXT}", read_only=True),
    ParamSpec("camera.height_m", "double", NAN,
              f"Camera mounting height above the flat ground [m], 0 < height <= {MAX_CAMERA_HEIGHT_M:g}; NaN = "
              f"unknown (no ground positions). {RUN_TIME}"),
    ParamSpec("camera.pitch_rad", "double", NAN,
              "Camera pitch [rad], positive = looking down, |pitch| < pi/2; NaN = unknown (no ground positions). "
              f"{RUN_TIME}"),
    ParamSpec("diagnostics.window_s", "double", 10.0,
              "The /diagnostics level reflects what happened within the last this many seconds (processing "
              "failures, out-of-memory drops, rejected images); counters stay cumulative. "
              f"{READ_ONLY_TEXT}", read_only=True, value_range=(0.1, 3600.0)),
)
PARAMETERS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
READ_ONLY = tuple(p.name for p in PARAMETERS if p.read_only)


def resolve_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of the table: its value from ``values`` (checked with :meth:`ParamSpec.check`)
    or its default. Names the table does not know are ignored, as the node ignores undeclared
    overrides. ValueError names the first refused parameter."""
    return {p.name: p.check(values[p.name]) if p.name in values else p.check(p.default) for p in PARAMETERS}


def parse_threshold(value: Any) -> float | None:
    """Parameter value -> float threshold, or None for "the checkpoint's calibrated one".

    Accepts a double/integer (NaN = calibrated), or a string: '' / 'nan' / 'auto' = calibrated, else
    a number. Numbers must pass ``core.limits.check_threshold`` (finite, magnitude at most 1e6: the
    float32 outputs must carry it); those and other strings raise ValueError with the reason.
    """
    if isinstance(value, bool):
        raise ValueError("threshold must be a number (or NaN / '' for the checkpoint's calibrated one)")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in AUTO_THRESHOLD_STRINGS:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"threshold {value!r} is not a number (use NaN or '' for the checkpoint's "
                             "calibrated threshold)") from None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise ValueError(f"threshold {value} is not a usable number") from None
        if math.isnan(number):
            return None
        return check_threshold(number)
    raise ValueError(f"threshold must be a number, got {type(value).__name__}")


#: Node parameter -> PostProcessConfig field (the parameters that shape what a planner receives).
CONFIG_PARAMETERS = parameters_of(PostProcessConfig)
#: Node parameter -> TrackingConfig field.
TRACKING_PARAMETERS = parameters_of(TrackingConfig)


def ego_mask_from_image(path: str) -> tuple[float, ...]:
    """The ego mask image at ``path`` (non-black pixels = ego vehicle) as a normalised polygon (its largest
    region); ValueError naming the file when it cannot be read or holds no ego pixel."""
    from pebal_perception.core.postprocess import mask_to_polygon
    from pebal_perception.core.compressed_images import read_image_file
    from pebal_perception.core.image_conversion import ImageRejected

    try:
        rgb = read_image_file(path)
    except (ImageRejected, OSError) as exc:
        raise ValueError(f"ego_mask.image {path}: {exc}") from None
    polygon = mask_to_polygon(rgb.max(axis=2) > 0)
    if not polygon:
        raise ValueError(f"ego_mask.image {path}: no ego pixel (non-black) in the image")
    return polygon


def _config_value(name: str, value: Any) -> Any:
    if name == "roi":
        return validate_roi(value)
    if name == "ego_mask.polygon":
        return tuple(value or ())  # an unset array parameter (None) = no polygon
    return value


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything a run-time parameter change may alter; the node swaps the whole object at once."""

    config: PostProcessConfig  # its threshold resolved (the calibrated one when threshold_param is None)
    threshold_param: float | None  # the threshold parameter; None = the checkpoint's calibrated threshold
    height_m: float  # camera.height_m (NaN = unknown)
    pitch_rad: float  # camera.pitch_rad (NaN = unknown)
    smoothing: bool
    tracking: TrackingConfig = TrackingConfig()
    adaptation: bool = False  # batch-norm statistics adapted to the camera (core/adaptation.py)
    adaptation_momentum: float = 0.01

    @property
    def positions_wanted(self) -> bool:
        """Both mounting values are known (ground positions are configured)."""
        return not (math.isnan(self.height_m) or math.isnan(self.pitch_rad))


def check_adaptation_momentum(value: Any) -> float:
    """adaptation_momentum as a float in (0, 1] (the table's range is [0, 1]: 0 is refused here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"adaptation_momentum must be a number, got {value!r}")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"adaptation_momentum must lie in (0, 1], got {value:g}")
    return float(value)


def initial_settings(values: Mapping[str, Any], calibrated_threshold: float,
                     calibrated: Mapping[str, Any] | None = None) -> RuntimeSettings:
    """The settings at start-up from the parameter values (names of :data:`PARAMETERS`); ValueError
    with the reason for a threshold, roi, area, mounting or post-processing value that cannot be used.
    ``calibrated`` (PostProcessConfig fields a normal-driving calibration stored in the checkpoint, e.g.
    its ego mask and horizon) fills the ego mask and the horizon row when those parameters are left at
    their defaults ([] and NaN)."""
    threshold_param = parse_threshold(values["threshold"])
    fields_ = {field: _config_value(name, values[name]) for name, field in CONFIG_PARAMETERS.items()}
    if not fields_["ego_mask_polygon"] and values.get("ego_mask.image"):
        fields_["ego_mask_polygon"] = ego_mask_from_image(values["ego_mask.image"])
    fields_ = fill_from_calibration(fields_, calibrated)
    config = PostProcessConfig(threshold=calibrated_threshold if threshold_param is None else threshold_param,
                               **fields_)
    tracking = TrackingConfig(**{field: values[name] for name, field in TRACKING_PARAMETERS.items()})
    height_m, pitch_rad = check_mounting(values["camera.height_m"], values["camera.pitch_rad"])
    return RuntimeSettings(config=config, threshold_param=threshold_param, height_m=height_m, pitch_rad=pitch_rad,
                           smoothing=bool(values["smoothing"]), tracking=tracking,
                           adaptation=bool(values.get("adaptation", False)),
                           adaptation_momentum=check_adaptation_momentum(values.get("adaptation_momentum", 0.01)))


def plan_parameter_batch(current: RuntimeSettings, changes: Sequence[tuple[str, Any]],
                         calibrated_threshold: float) -> RuntimeSettings:
    """The settings after applying a whole batch of ``(name, value)`` changes (later duplicates win).

    The values have the parameters' types and ranges (rclpy checks them against the descriptors built
    from :data:`PARAMETERS` before the node sees a batch, and refuses read-only ones). Every change is
    validated before anything is decided: when any one is refused (threshold, roi, mounting, area,
    post-processing, tracking), ValueError is raised with a reason that names it, and the caller keeps
    ``current``: a batch applies whole or not at all.
    """
    config_changes: dict[str, Any] = {}
    tracking_changes: dict[str, Any] = {}
    threshold_param = current.threshold_param
    height_m, pitch_rad, smoothing = current.height_m, current.pitch_rad, current.smoothing
    adaptation, momentum = current.adaptation, current.adaptation_momentum
    for name, value in changes:
        if name == "threshold":
            threshold_param = parse_threshold(value)
        elif name in CONFIG_PARAMETERS:
            config_changes[CONFIG_PARAMETERS[name]] = _config_value(name, value)
        elif name in TRACKING_PARAMETERS:
            tracking_changes[TRACKING_PARAMETERS[name]] = value
        elif name == "smoothing":
            smoothing = bool(value)
        elif name == "camera.height_m":
            height_m = value
        elif name == "camera.pitch_rad":
            pitch_rad = value
        elif name == "adaptation":
            adaptation = bool(value)
        elif name == "adaptation_momentum":
            momentum = check_adaptation_momentum(value)
        else:
            raise ValueError(f"{name} cannot be changed at run time")
    height_m, pitch_rad = check_mounting(height_m, pitch_rad)
    config_changes["threshold"] = calibrated_threshold if threshold_param is None else threshold_param
    config = current.config.with_changes(**config_changes)  # validates every field
    tracking = replace(current.tracking, **tracking_changes)  # validates k <= n and the ranges
    return RuntimeSettings(config=config, threshold_param=threshold_param, height_m=height_m, pitch_rad=pitch_rad,
                           smoothing=bool(smoothing), tracking=tracking, adaptation=adaptation,
                           adaptation_momentum=momentum)


# ------------------------------------------------------------------------------------------------ --help

def _format_default(spec: ParamSpec) -> str:
    """The default as a user writes it in YAML / on the command line."""
    value = spec.default
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    return str(list(value) if isinstance(value, tuple) else value)


def help_text(prog: str, summary: str, topics: str = "") -> str:
    """``--help`` of a node executable: usage, ``summary``, ``topics`` and every parameter of the one table
    (type, default, range / choices, description; read-only ones say so in it)."""
    import textwrap

    lines = [f"usage: {prog} [-h] [--ros-args [-p NAME:=VALUE]... [--params-file FILE] [-r FROM:=TO]...]", "",
             summary.strip(), ""]
    if topics:
        lines += [topics.strip(), ""]
    lines += ["parameters (defaults as in config/detector.yaml; -p NAME:=VALUE or --params-file):"]
    for spec in PARAMETERS:
        facts = [spec.type, f"default {_format_default(spec)}"]
        if spec.value_range is not None:
            facts.append(f"range [{spec.value_range[0]:g}, {spec.value_range[1]:g}]")
        if spec.choices:
            facts.append("one of " + ", ".join(spec.choices))
        if spec.deprecated:
            facts.append("deprecated: " + spec.deprecated)
        lines.append(f"  {spec.name} ({'; '.join(facts)})")
        lines += textwrap.wrap(spec.description, width=96, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "input QoS (the standard ROS 2 overrides, read-only, one set per input subscription):",
              "  qos_overrides.<input topic>.subscription.{reliability,depth,history}",
              "      e.g. -p qos_overrides./camera/image_raw.subscription.reliability:=reliable (the topic as",
              "      resolved after remapping); default best_effort, keep_last, depth 5 (sensor data)."]
    return "\n".join(lines) + "\n"


def type_mismatch(name: str, expected: str, given: str, value: Any) -> str:
    """The error for a value of the wrong type, naming both types, with the fix for the usual slips
    (``1`` for a double, ``1.0`` for an integer, ``yes`` for a bool)."""
    hint = ""
    if expected == "double" and given == "integer":
        hint = f" (write {value}.0)"
    elif expected == "integer" and given == "double":
        hint = " (write a whole number, without a decimal point)"
    elif expected == "bool":
        hint = " (write true or false)"
    elif expected == "double_array" and given == "integer_array":
        hint = " (write every element with a decimal point, e.g. [0.0, 1.0])"
    def article(word: str) -> str:
        return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"

    return f"parameter {name} expects {article(expected)}, got {article(given)} {value!r}{hint}"


def wants_help(argv: Sequence[str]) -> bool:
    """``-h`` / ``--help`` among the program's own arguments (those before ``--ros-args``)."""
    own = list(argv)
    if "--ros-args" in own:
        own = own[:own.index("--ros-args")]
    return any(a in ("-h", "--help") for a in own)


# --------------------------------------------------------------------------------- config/detector.yaml

#: Headings of config/detector.yaml, at the first parameter of each group, with notes for the whole group.
PARAMS_FILE_SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "checkpoint": ("model (read-only: fixed once the node runs)", ()),
    "threshold": ("scoring (changeable at run time, e.g. `ros2 param set`)", ()),
    "restrict_to_drivable": ("what a planner receives (changeable at run time; core/postprocess.py)", ()),
    "tracking.enabled": ("tracking over frames (changeable at run time; core/tracking.py)", ()),
    "adaptation": ("test-time adaptation to the camera (changeable at run time; core/adaptation.py)", ()),
    "subscribe_compressed": ("inputs (read-only)", (
        "Input QoS: the standard ROS 2 overrides, one set per input subscription (rclpy declares them,",
        "read-only), named after the topic as resolved after remapping. Default: sensor data (best_effort,",
        "keep_last, depth 5; only the newest frame is ever processed, replaced frames count as dropped in",
        "/diagnostics). Large raw frames from a best-effort publisher need config/fastdds_large_images.xml",
        "loaded by the publisher and the node (FASTDDS_DEFAULT_PROFILES_FILE); a reliable publisher + reliable",
        "here also avoids losing them. For the launch file's topic:",
        "qos_overrides:",
        "  /camera/image_raw:",
        "    subscription:",
        "      reliability: best_effort",
        "      depth: 5",
        "(The older qos.depth / qos.reliability parameters still work in this release, with a warning.)")),
    "camera.height_m": ("flat-ground positions of obstacles (changeable at run time)", (
        "With camera_info received and both values set, each obstacle's ground_position is the bottom-centre",
        "pixel of its box back-projected onto a flat ground plane, in the camera's optical frame (x right,",
        "y down, z forward) [m]. A camera_info that cannot be a real camera (size 0 or > 100000 px, principal",
        "point outside that size, focal lengths <= 0 or not finite, K all zeros) is ignored: positions are",
        "NaN and /diagnostics counts it (camera_info_rejected).")),
    "diagnostics.window_s": ("/diagnostics (read-only)", ()),
}


_PLAIN_YAML_WORD = re.compile(r"[a-z_][a-z0-9_]*")
_YAML_KEYWORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null"}


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):  # quoted unless YAML reads it back as the same plain string
        plain = _PLAIN_YAML_WORD.fullmatch(value) and value not in _YAML_KEYWORDS
        return value if plain else "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value)


def params_file_text() -> str:
    """config/detector.yaml as the table makes it: every parameter but the deprecated ones, at its
    default, under the description of the table (test/test_node_params.py checks the file is this).
    Written by ``python -m pebal_perception.core.settings > config/detector.yaml``."""
    import textwrap

    lines = ["# Parameters of the PEBAL road-anomaly detector node (pebal_perception/detector_node), made from the",
             "# node's parameter table (pebal_perception/core/settings.py; regenerate with",
             "# python -m pebal_perception.core.settings > config/detector.yaml).",
             "# Loaded by launch/detector.launch.py (params_file); launch arguments override some of them.",
             '# "/**" applies them to the node whatever its name and namespace.',
             "/**:", "  ros__parameters:"]
    indent = "    "
    for spec in PARAMETERS:
        if spec.deprecated:
            continue
        if spec.name in PARAMS_FILE_SECTIONS:
            title, notes = PARAMS_FILE_SECTIONS[spec.name]
            if lines[-1] != "  ros__parameters:":
                lines.append("")
            lines.append(f"{indent}# --- {title} ".ljust(104, "-"))
            lines += [f"{indent}# {note}".rstrip() for note in notes]
        lines += textwrap.wrap(spec.description, width=104, initial_indent=f"{indent}# ",
                               subsequent_indent=f"{indent}# ")
        lines.append(f"{indent}{spec.name}: {_yaml_value(spec.default)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(params_file_text())
