"""ROS 2 node ``pebal_detector``: PEBAL road-anomaly segmentation of a camera stream.

Topics (relative names, remappable)
-----------------------------------
Inputs (sensor-data QoS: ``qos.reliability`` best_effort by default, keep-last ``qos.depth``):
  ``image`` (sensor_msgs/Image), ``image/compressed`` (sensor_msgs/CompressedImage, only with
  ``subscribe_compressed``), ``camera_info`` (sensor_msgs/CameraInfo, for ground positions).
Outputs (reliable, keep-last 5), stamped with the input image's header, at the input resolution:
  ``~/semantic`` mono8 trainIds, ``~/energy`` 32FC1 anomaly score, ``~/obstacle_mask`` mono8 0/255,
  ``~/result`` pebal_perception/AnomalyResult, ``~/overlay`` rgb8 (only computed while subscribed),
  ``~/processing_time_ms`` std_msgs/Float32, and ``/diagnostics`` (~1 Hz).

Diagnostics
-----------
The counters in ``/diagnostics`` are cumulative since start-up. The status *level* reflects the last
``diagnostics.window_s`` seconds (default 10): ERROR while a frame failed to process within the window,
WARN while a frame was dropped for lack of device memory or an input image was rejected within it, and
also WARN while the model runs degraded after running out of memory, before the first image, and while
the latest camera_info is unusable although ground positions are configured; OK otherwise. Once
failures stop, the level returns to OK after one window.

camera_info
-----------
A camera_info whose K and size cannot describe a real pinhole camera (processing.check_camera_info:
sizes 0 or above 100000 pixels, a principal point outside that size, focal lengths not positive or
not finite, K all zeros = uncalibrated) makes the camera unknown: ground positions are NaN until a
usable one arrives; each is counted (``camera_info_rejected``). Images of another size than the
camera_info's get rescaled intrinsics; different x and y factors are warned about once per size pair.

Threading
---------
The executor thread only converts incoming messages to RGB and drops them into a one-slot mailbox
(the newest frame wins; replacing a frame that was never processed counts as a drop). A dedicated
worker thread runs inference + post-processing on the newest frame and publishes. Nothing queues.

Parameters: see ``config/detector.yaml`` (every one is documented there and in its descriptor).
``threshold`` is a double; NaN (YAML ``.nan``) means "the checkpoint's calibrated threshold". The
parameter is dynamically typed so that a set-parameters request may also pass a string: '' / 'nan' /
'auto' (= calibrated) or a number. Start-up overrides should stay doubles: rcl silently drops a
``-p`` / params-file override whose type differs from an earlier params file's value.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from pebal_perception.core.limits import check_threshold

NODE_NAME = "pebal_detector"
PROG = "detector_node"
RELIABILITIES = ("best_effort", "reliable")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16")
# Parameters fixed once the node runs (model, device, subscriptions): changes are refused.
READ_ONLY = ("checkpoint", "model", "device", "precision", "input_width", "input_height", "oom_fallback",
             "cpu_threads", "qos.depth", "qos.reliability", "subscribe_compressed", "diagnostics.window_s")
AUTO_THRESHOLD_STRINGS = ("", "nan", "auto", "checkpoint", "calibrated", "default")


class StartupError(Exception):
    """Configuration or model problem at start-up: reported as one line, exit status 1."""


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


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything a run-time parameter change may alter; the node swaps the whole object at once."""

    config: Any  # processing.PostProcessConfig, its threshold resolved (calibrated when threshold_param is None)
    threshold_param: float | None  # the threshold parameter; None = the checkpoint's calibrated threshold
    height_m: float  # camera.height_m (NaN = unknown)
    pitch_rad: float  # camera.pitch_rad (NaN = unknown)
    smoothing: bool


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` when it is a ``kind`` (an integer also passes as a float); ValueError naming ``name`` else."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} must be of type {kind.__name__}, got {type(value).__name__}")
    return value


def plan_parameter_batch(current: RuntimeSettings, changes: Sequence[tuple[str, Any]], calibrated_threshold: float,
                         declared: Callable[[str], bool]) -> RuntimeSettings:
    """The settings after applying a whole batch of ``(name, value)`` changes (later duplicates win).

    Every change is validated before anything is decided: when any one is refused (an empty or
    undeclared name, a read-only parameter, a wrong type, a value out of range), ValueError is raised
    with a reason that names it, and the caller keeps ``current``: a batch applies whole or not at all.
    ``declared(name)`` says whether the node declares the parameter.
    """
    from pebal_perception.node.processing import check_mounting, validate_roi

    config_changes: dict[str, Any] = {}
    threshold_param = current.threshold_param
    height_m, pitch_rad, smoothing = current.height_m, current.pitch_rad, current.smoothing
    for name, value in changes:
        if not isinstance(name, str) or not name.strip() or not declared(name):
            raise ValueError(f"parameter name {name!r} is not a parameter of {NODE_NAME}")
        if name in READ_ONLY:
            raise ValueError(f"{name} is read-only after start-up (restart the node)")
        if name == "threshold":
            threshold_param = parse_threshold(value)
        elif name == "restrict_to_drivable":
            config_changes["restrict_to_drivable"] = _typed(name, value, bool)
        elif name == "smoothing":
            smoothing = _typed(name, value, bool)
        elif name == "roi":
            try:
                config_changes["roi"] = validate_roi(list(value) if value is not None else [])
            except TypeError:
                raise ValueError(f"roi must be 4 numbers [x0, y0, x1, y1], got {value!r}") from None
        elif name == "min_obstacle_area":
            config_changes["min_obstacle_area"] = _typed(name, value, int)
        elif name == "camera.height_m":
            height_m = float(_typed(name, value, float))
        elif name == "camera.pitch_rad":
            pitch_rad = float(_typed(name, value, float))
        else:
            raise ValueError(f"{name} cannot be changed at run time")
    height_m, pitch_rad = check_mounting(height_m, pitch_rad)
    config_changes["threshold"] = calibrated_threshold if threshold_param is None else threshold_param
    config = current.config.with_changes(**config_changes)  # validates threshold, roi and min_obstacle_area
    return RuntimeSettings(config=config, threshold_param=threshold_param, height_m=height_m, pitch_rad=pitch_rad,
                           smoothing=bool(smoothing))


class LatestFrameMailbox:
    """One slot holding the newest unprocessed frame; ``put`` over an unprocessed frame drops it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Stores ``item``; returns True when it replaced (dropped) an unprocessed frame."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """Waits for a frame (or close); returns it, or None on timeout / close."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _node_class():
    """Builds the Node subclass (rclpy imported here, after the signal handlers are installed)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import Point
    from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                    SetParametersResult)
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.exceptions import ParameterNotDeclaredException
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.parameter_service import ParameterService
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from std_msgs.msg import Float32

    from pebal_perception.msg import AnomalyResult
    from pebal_perception.msg import Obstacle as ObstacleMsg

    from pebal_perception.image_conversion import REJECT_REASONS, ImageConverter, ImageRejected
    from pebal_perception.node.processing import (FrameOutOfMemory, GroundModel, OomGuardedInference,
                                                  PostProcessConfig, RecentEvents, check_camera_info, check_mounting,
                                                  make_ground_model, obstacle_fields, parse_oom_fallback, process_frame,
                                                  rescale_warning, validate_roi)

    def descriptor(description: str, type_: int, read_only: bool = False, int_range=None, float_range=None,
                   dynamic: bool = False) -> ParameterDescriptor:
        d = ParameterDescriptor(description=description, type=type_, read_only=read_only,
                                dynamic_typing=dynamic)
        if int_range is not None:
            d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
        if float_range is not None:
            d.floating_point_range = [FloatingPointRange(from_value=float(float_range[0]),
                                                         to_value=float(float_range[1]), step=0.0)]
        return d

    P = ParameterType

    class AllOrNoneParameterService(ParameterService):
        """rclpy's parameter services, except that a SetParameters request is checked and applied as a
        whole: rclpy sets its parameters one by one (a valid threshold would be applied next to a refused
        roi); here the whole list goes through set_parameters_atomically, and every result in the reply
        is the request's."""

        def _set_parameters_callback(self, request, response):
            node = self._get_node()
            try:
                params = [Parameter.from_parameter_msg(p) for p in request.parameters]
                result = node.set_parameters_atomically(params) if params else SetParametersResult(successful=True)
            except ParameterNotDeclaredException as exc:
                result = SetParametersResult(successful=False, reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - a malformed request gets a reason, not a dead service
                result = SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")
            reason = result.reason
            if not result.successful and len(request.parameters) > 1:
                reason = f"{reason} (a request applies whole or not at all: none of its parameters was changed)"
            response.results = [SetParametersResult(successful=result.successful, reason=reason)
                                for _ in request.parameters]
            return response

    class DetectorNode(Node):
        def __init__(self, stop_event: threading.Event, **kwargs):
            parameter_services = kwargs.pop("start_parameter_services", True)
            super().__init__(NODE_NAME, start_parameter_services=False, **kwargs)
            self._stop = stop_event
            self._declare_parameters()
            self._lock = threading.Lock()  # guards counters + config swaps
            self._rejected = {reason: 0 for reason in sorted(REJECT_REASONS)}
            self._rejected["internal_error"] = 0
            self._received = 0
            self._processed = 0
            self._failed = 0  # taken from the mailbox but not published (processing error, out of memory)
            self._lost_in_transport = 0  # reported lost by the middleware: never reached _on_image
            self._proc_times: deque[float] = deque(maxlen=200)  # (receive -> publish) ms, last window
            self._infer_times: deque[float] = deque(maxlen=200)
            self._last_diag = (time.monotonic(), 0, 0)
            try:
                # What happened within the last window sets the diagnostics level (the counters stay cumulative).
                self._events = RecentEvents(float(self.get_parameter("diagnostics.window_s").value))
            except ValueError as exc:
                raise StartupError(f"parameter diagnostics.window_s: {exc}") from None
            # sequence, K (None when refused), width, height of the latest camera_info
            self._camera_info: tuple[int, np.ndarray | None, int, int] | None = None
            self._ground_cache: tuple[Any, GroundModel | None] = (None, None)
            self._camera_info_rejected = 0  # camera_info messages refused by check_camera_info
            self._camera_info_problem: str | None = None  # why the latest camera_info was refused
            self._rescale_warned: set[tuple[tuple[int, int], tuple[int, int]]] = set()
            self.mailbox = LatestFrameMailbox()
            self.converter = ImageConverter()

            self._load_engine()  # raises StartupError
            self._config = self._initial_config()
            self.add_on_set_parameters_callback(self._on_set_parameters)
            if parameter_services:
                self._parameter_service = AllOrNoneParameterService(self)

            depth = int(self.get_parameter("qos.depth").value)
            reliability = str(self.get_parameter("qos.reliability").value)
            sensor_qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                             else ReliabilityPolicy.BEST_EFFORT))
            lost = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
            self.create_subscription(Image, "image", self._on_image, sensor_qos, event_callbacks=lost)
            if bool(self.get_parameter("subscribe_compressed").value):
                self.create_subscription(CompressedImage, "image/compressed", self._on_compressed, sensor_qos,
                                         event_callbacks=lost)
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, sensor_qos)

            out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
            self.pub_semantic = self.create_publisher(Image, "~/semantic", out_qos)
            self.pub_energy = self.create_publisher(Image, "~/energy", out_qos)
            self.pub_mask = self.create_publisher(Image, "~/obstacle_mask", out_qos)
            self.pub_overlay = self.create_publisher(Image, "~/overlay", out_qos)
            self.pub_result = self.create_publisher(AnomalyResult, "~/result", out_qos)
            self.pub_time = self.create_publisher(Float32, "~/processing_time_ms", out_qos)
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(1.0, self._publish_diagnostics)

            self._worker = threading.Thread(target=self._work, name="pebal-inference", daemon=True)
            self._worker.start()
            self.get_logger().info(
                f"ready: model {self.model_id} on {self.engine.device} ({self.engine.precision}), network input "
                f"{self._input_size_text()}, threshold {self._config.threshold:g}"
                f"{' (calibrated)' if self._threshold_param is None else ''}; subscribed to "
                f"{self.resolve_topic_name('image')} ({reliability}, depth {depth})")

        # ------------------------------------------------------------------------------ parameters
        def _declare_parameters(self) -> None:
            nan = float("nan")
            decl = [
                ("checkpoint", "", descriptor(
                    "Model checkpoint file (pebal format or a supported third-party file); '' = the embedded "
                    "default model. Read-only.", P.PARAMETER_STRING, read_only=True)),
                ("model", "", descriptor(
                    "Architecture of a bare third-party state dict (espnetv2, wrn38, resnet101); '' = from the "
                    "checkpoint. Read-only.", P.PARAMETER_STRING, read_only=True)),
                ("device", "auto", descriptor(
                    "Inference device: auto (CUDA when available), cuda, cuda:N or cpu. Read-only.",
                    P.PARAMETER_STRING, read_only=True)),
                ("precision", "fp32", descriptor(
                    "fp32 or fp16 (autocast, CUDA only; CPU always runs fp32). Read-only.",
                    P.PARAMETER_STRING, read_only=True)),
                ("oom_fallback", "fp16", descriptor(
                    "What to do when the device runs out of memory on a frame (after releasing cached memory "
                    "and one retry): 'none' (drop the frame), or a comma-separated list of 'fp16' (switch to "
                    "half precision) and 'cpu' (move the model to the CPU), applied in order and kept. Every "
                    "case is counted in /diagnostics. Read-only.", P.PARAMETER_STRING, read_only=True)),
                ("cpu_threads", 0, descriptor(
                    "Intra-op threads PyTorch may use on the CPU (torch.set_num_threads); 0 = PyTorch's "
                    "default (one per core). 1 avoids OpenMP stalls when other processes share the cores. "
                    "Read-only.", P.PARAMETER_INTEGER, read_only=True, int_range=(0, 1024))),
                ("input_width", 0, descriptor(
                    "Network input width in pixels (multiple of the architecture's divisor); 0 = the "
                    "checkpoint's. Set together with input_height. Read-only.", P.PARAMETER_INTEGER,
                    read_only=True, int_range=(0, 8192))),
                ("input_height", 0, descriptor(
                    "Network input height in pixels; 0 = the checkpoint's. Read-only.", P.PARAMETER_INTEGER,
                    read_only=True, int_range=(0, 8192))),
                ("threshold", nan, descriptor(
                    "Obstacle threshold on the anomaly score (smoothed free energy; pixels with score > "
                    "threshold are anomalous). NaN, '' or 'auto' = the checkpoint's calibrated threshold. "
                    "Changeable at run time.", P.PARAMETER_DOUBLE, dynamic=True)),
                ("smoothing", True, descriptor(
                    "Apply PEBAL's 7x7 Gaussian (sigma 1) to the energy map. Changeable at run time.",
                    P.PARAMETER_BOOL)),
                ("restrict_to_drivable", True, descriptor(
                    "Keep only obstacle pixels inside the drivable area (predicted road plus the holes it "
                    "encloses). Changeable at run time.", P.PARAMETER_BOOL)),
                ("roi", [0.0, 0.0, 1.0, 1.0], descriptor(
                    "Region of interest [x0, y0, x1, y1], normalised 0..1 image coordinates (x0 < x1, "
                    "y0 < y1); obstacle pixels outside are ignored. Changeable at run time.",
                    P.PARAMETER_DOUBLE_ARRAY)),
                ("min_obstacle_area", 50, descriptor(
                    "Smallest obstacle region in pixels of the input image; smaller blobs are removed from "
                    "the mask and not reported. Changeable at run time.", P.PARAMETER_INTEGER,
                    int_range=(0, 100_000_000))),
                ("qos.depth", 5, descriptor(
                    "History depth of the input subscriptions (only the newest frame is processed). "
                    "Read-only.", P.PARAMETER_INTEGER, read_only=True, int_range=(1, 1000))),
                ("qos.reliability", "best_effort", descriptor(
                    "Reliability of the input subscriptions: best_effort (sensor data; matches reliable and "
                    "best-effort publishers) or reliable. Read-only.", P.PARAMETER_STRING, read_only=True)),
                ("subscribe_compressed", False, descriptor(
                    "Also subscribe to image/compressed (sensor_msgs/CompressedImage). Read-only.",
                    P.PARAMETER_BOOL, read_only=True)),
                ("camera.height_m", nan, descriptor(
                    "Camera mounting height above the flat ground [m]; NaN = unknown (no ground positions). "
                    "Changeable at run time.", P.PARAMETER_DOUBLE)),
                ("camera.pitch_rad", nan, descriptor(
                    "Camera pitch [rad], positive = looking down; NaN = unknown (no ground positions). "
                    "Changeable at run time.", P.PARAMETER_DOUBLE)),
                ("diagnostics.window_s", 10.0, descriptor(
                    "The /diagnostics level reflects what happened within the last this many seconds "
                    "(processing failures, out-of-memory drops, rejected images); counters stay cumulative. "
                    "Read-only.", P.PARAMETER_DOUBLE, read_only=True, float_range=(0.1, 3600.0))),
            ]
            for name, default, desc in decl:
                self.declare_parameter(name, default, desc)

        def _input_size_text(self) -> str:
            size = self.engine.input_size
            return "native" if size is None else f"{size[1]}x{size[0]}"

        def _load_engine(self) -> None:
            from pebal_perception.core.checkpoint import CheckpointError
            from pebal_perception.core.default_model import default_checkpoint
            from pebal_perception.core.engine import InferenceEngine

            get = lambda name: self.get_parameter(name).value  # noqa: E731
            device = str(get("device")).strip() or "auto"
            if device.split(":")[0] not in DEVICES:
                raise StartupError(f"parameter device={device!r}: expected auto, cpu, cuda or cuda:N")
            precision = str(get("precision"))
            if precision not in PRECISIONS:
                raise StartupError(f"parameter precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
            width, height = int(get("input_width")), int(get("input_height"))
            if (width == 0) != (height == 0):
                raise StartupError(f"parameters input_width={width} and input_height={height}: set both or neither")
            try:
                oom_fallback = parse_oom_fallback(str(get("oom_fallback")))
            except ValueError as exc:
                raise StartupError(f"parameter {exc}") from None
            reliability = str(get("qos.reliability"))
            if reliability not in RELIABILITIES:
                raise StartupError(f"parameter qos.reliability={reliability!r}: expected best_effort or reliable")
            try:
                self._threshold_param = parse_threshold(get("threshold"))
            except ValueError as exc:
                raise StartupError(f"parameter threshold: {exc}") from None
            threads = int(get("cpu_threads"))
            if threads > 0:
                import torch

                torch.set_num_threads(threads)  # the whole process: this node owns it
            checkpoint = str(get("checkpoint")).strip()
            model = str(get("model")).strip() or None
            if not checkpoint:
                try:
                    default_checkpoint()
                except FileNotFoundError as exc:
                    raise StartupError(f"parameter checkpoint is '' and {exc}") from None
            try:
                path = checkpoint or default_checkpoint()
                self.engine = InferenceEngine.from_checkpoint(
                    path, model, device=device, precision=precision,
                    input_size=(height, width) if width else None, threshold=self._threshold_param,
                    smoothing=bool(get("smoothing")))
            except Exception as exc:  # noqa: BLE001 - any loading problem: one line, exit status 1
                text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                first = str(text).strip().splitlines()[0] if str(text).strip() else ""
                if not isinstance(exc, (CheckpointError, FileNotFoundError, KeyError, ValueError)):
                    first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
                where = "" if checkpoint and checkpoint in first else f" from {checkpoint or 'the default model'}"
                raise StartupError(f"cannot load model{where}: {first}") from None
            self.inference = OomGuardedInference(self.engine, oom_fallback)
            self.model_id = self.engine.meta.model_id or self.engine.meta.architecture
            self.calibrated_threshold = self.engine.meta.effective_threshold

        def _initial_config(self) -> PostProcessConfig:
            get = lambda name: self.get_parameter(name).value  # noqa: E731
            try:
                config = PostProcessConfig(
                    threshold=self.engine.threshold, restrict_to_drivable=bool(get("restrict_to_drivable")),
                    roi=validate_roi(get("roi")), min_obstacle_area=int(get("min_obstacle_area")))
                self._height_m, self._pitch_rad = check_mounting(get("camera.height_m"), get("camera.pitch_rad"))
            except ValueError as exc:
                raise StartupError(f"invalid parameter: {exc}") from None
            return config

        def _on_set_parameters(self, params) -> SetParametersResult:
            """Validates a batch of changes as a whole (plan_parameter_batch); applies all of them or none.

            A SetParameters request reaches this callback with all its parameters at once
            (AllOrNoneParameterService), as SetParametersAtomically does."""
            try:
                with self._lock:
                    current = RuntimeSettings(config=self._config, threshold_param=self._threshold_param,
                                              height_m=self._height_m, pitch_rad=self._pitch_rad,
                                              smoothing=bool(self.engine.smoothing))
                new = plan_parameter_batch(current, [(p.name, p.value) for p in params], self.calibrated_threshold,
                                           self.has_parameter)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - never let a parameter request kill the node
                return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._config = new.config
                self._threshold_param = new.threshold_param
                self._height_m, self._pitch_rad = new.height_m, new.pitch_rad
                self.engine.smoothing = new.smoothing
            return SetParametersResult(successful=True)

        # ---------------------------------------------------------------------------------- inputs
        def _reject(self, reason: str, text: str) -> None:
            with self._lock:
                self._rejected[reason] = self._rejected.get(reason, 0) + 1
            self._events.note("rejected", reason)
            self.get_logger().error(f"rejected input image ({reason}): {text}", throttle_duration_sec=5.0)

        def _accept(self, msg: Any, convert) -> None:
            received = time.perf_counter()
            try:
                with self._lock:
                    self._received += 1
                try:
                    rgb = convert(msg)
                except ImageRejected as exc:
                    self._reject(exc.reason, exc.message)
                    return
                self.mailbox.put((rgb, msg.header, received))
            except Exception as exc:  # noqa: BLE001 - the node never dies on input
                self._reject("internal_error", f"{type(exc).__name__}: {exc}")

        def _on_image(self, msg: Image) -> None:
            self._accept(msg, self.converter.to_rgb)

        def _on_compressed(self, msg: CompressedImage) -> None:
            self._accept(msg, self.converter.compressed_to_rgb)

        def _on_message_lost(self, info) -> None:
            with self._lock:
                self._lost_in_transport += int(info.total_count_change)

        def _on_camera_info(self, msg: CameraInfo) -> None:
            """Keeps the latest camera_info; an unusable one (check_camera_info) makes the camera unknown
            (NaN ground positions) until a usable one arrives, and is counted."""
            try:
                width, height = int(msg.width), int(msg.height)
                try:
                    k, problem = check_camera_info(msg.k, width, height), None
                except ValueError as exc:
                    k, problem = None, str(exc)
                seq = self._camera_info[0] + 1 if self._camera_info is not None else 0
                self._camera_info = (seq, k, width, height)
                with self._lock:
                    self._camera_info_problem = problem
                    if problem is not None:
                        self._camera_info_rejected += 1
                if problem is not None:
                    self.get_logger().warning(f"camera_info ignored, no ground positions: {problem}",
                                              throttle_duration_sec=10.0)
            except Exception as exc:  # noqa: BLE001
                self.get_logger().error(f"ignoring camera_info: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=5.0)

        def _ground_model(self, width: int, height: int) -> GroundModel | None:
            info = self._camera_info
            height_m, pitch_rad = self._height_m, self._pitch_rad
            if info is None or info[1] is None or math.isnan(height_m) or math.isnan(pitch_rad):
                return None
            key = (info[0], width, height, height_m, pitch_rad)
            if self._ground_cache[0] == key:
                return self._ground_cache[1]
            _, k, info_w, info_h = info
            sizes = ((info_w, info_h), (width, height))
            warning = rescale_warning(*sizes)
            if warning and sizes not in self._rescale_warned and len(self._rescale_warned) < 64:
                self._rescale_warned.add(sizes)  # once per pair of sizes
                self.get_logger().warning(warning)
            model = make_ground_model(k, (info_w, info_h), (width, height), height_m, pitch_rad)
            self._ground_cache = (key, model)
            return model

        # ---------------------------------------------------------------------------------- worker
        def _work(self) -> None:
            import torch

            from pebal_perception.core.preprocess import to_uint8_batch

            torch.set_grad_enabled(False)
            while not self._stop.is_set():
                item = self.mailbox.take(timeout=0.2)
                if item is None:
                    continue
                try:
                    self._process(item, torch, to_uint8_batch)
                except FrameOutOfMemory as exc:  # also counted by self.inference; the next frame may fit
                    with self._lock:
                        self._failed += 1
                    self._events.note("out_of_memory_dropped", str(exc))
                    self.get_logger().error(f"frame dropped: {exc}", throttle_duration_sec=5.0)
                except Exception as exc:  # noqa: BLE001 - keep serving frames
                    with self._lock:
                        self._failed += 1
                    self._events.note("processing_failed", f"{type(exc).__name__}: {exc}")
                    self.get_logger().error(f"processing failed: {type(exc).__name__}: {exc}",
                                            throttle_duration_sec=5.0)

        def _process(self, item, torch, to_uint8_batch) -> None:
            rgb, header, received = item
            # Shared with `pebal-bag process`: network + scoring, one host synchronisation per frame.
            # Out-of-memory errors are retried / degraded by self.inference (see oom_fallback).
            semantic, score, infer_ms = self.inference(rgb)
            with self._lock:
                config = self._config
            h, w = score.shape
            frame = process_frame(semantic, score, config, self._ground_model(w, h))
            if self._stop.is_set():
                return

            def image(array, encoding):
                return Image(header=header, **_rgb_fields(array, encoding))

            self.pub_semantic.publish(image(semantic, "mono8"))
            self.pub_energy.publish(image(score, "32FC1"))
            self.pub_mask.publish(image(frame.mask.astype(np.uint8) * 255, "mono8"))
            if self.pub_overlay.get_subscription_count() > 0:
                from pebal_perception.core.visualize import overlay
                self.pub_overlay.publish(image(overlay(rgb, semantic, frame.mask), "rgb8"))
            result = AnomalyResult(header=header, model_id=str(self.model_id), threshold=float(config.threshold),
                                   anomalous_fraction=float(frame.anomalous_fraction),
                                   max_score=float(frame.max_score))
            result.obstacles = [_obstacle_msg(o) for o in frame.obstacles]
            elapsed_ms = (time.perf_counter() - received) * 1000.0
            result.processing_time_ms = float(elapsed_ms)
            self.pub_result.publish(result)
            self.pub_time.publish(Float32(data=float(elapsed_ms)))
            with self._lock:
                self._processed += 1
                self._proc_times.append(elapsed_ms)
                self._infer_times.append(infer_ms)

        # ----------------------------------------------------------------------------- diagnostics
        def _publish_diagnostics(self) -> None:
            import torch

            try:
                now = time.monotonic()
                with self._lock:
                    t0, received0, processed0 = self._last_diag
                    received, processed, failed = self._received, self._processed, self._failed
                    lost = self._lost_in_transport
                    self._last_diag = (now, received, processed)
                    proc = list(self._proc_times)
                    infer = list(self._infer_times)
                    self._proc_times.clear()
                    self._infer_times.clear()
                    rejected = dict(self._rejected)
                    camera_info_rejected, camera_info_problem = self._camera_info_rejected, self._camera_info_problem
                    positions_wanted = not (math.isnan(self._height_m) or math.isnan(self._pitch_rad))
                    threshold = self._config.threshold
                oom = self.inference
                dt = max(now - t0, 1e-6)
                dropped = self.mailbox.dropped
                status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: anomaly detection",
                                          hardware_id=str(self.engine.device))
                # The level reflects the last diagnostics.window_s seconds (module docstring).
                events = self._events
                failure = events.recent("processing_failed")
                oom_dropped = events.recent("out_of_memory_dropped")
                rejection = events.recent("rejected")
                status.level, status.message = DiagnosticStatus.OK, "running"
                if failure:
                    status.level = DiagnosticStatus.ERROR
                    status.message = f"processing failed {failure[0]:.0f} s ago: {failure[1]}"
                elif oom.degraded:
                    status.level = DiagnosticStatus.WARN
                    status.message = f"out of device memory: now {self.engine.precision} on {self.engine.device}"
                elif oom_dropped:
                    status.level = DiagnosticStatus.WARN
                    status.message = f"out of device memory: frames dropped (last {oom_dropped[0]:.0f} s ago)"
                elif received == 0:
                    status.level, status.message = DiagnosticStatus.WARN, "no input images yet"
                elif rejection:
                    status.level = DiagnosticStatus.WARN
                    status.message = f"input images rejected (last {rejection[0]:.0f} s ago: {rejection[1]})"
                elif camera_info_problem and positions_wanted:
                    status.level = DiagnosticStatus.WARN
                    status.message = f"no ground positions: camera_info ignored ({camera_info_problem})"

                def fmt(values):
                    return f"{sum(values) / len(values):.2f}" if values else "nan"

                pairs = [
                    ("input_rate_hz", f"{(received - received0) / dt:.2f}"),
                    ("output_rate_hz", f"{(processed - processed0) / dt:.2f}"),
                    ("processing_time_ms", fmt(proc)),
                    ("processing_time_max_ms", f"{max(proc):.2f}" if proc else "nan"),
                    ("inference_time_ms", fmt(infer)),
                    ("frames_received", str(received)),
                    ("frames_processed", str(processed)),
                    ("dropped_frames", str(dropped)),
                    ("frames_failed", str(failed)),
                    ("frames_lost_in_transport", str(lost)),
                    ("rejected_total", str(sum(rejected.values()))),
                    ("camera_info_rejected", str(camera_info_rejected)),
                    *((f"rejected.{reason}", str(count)) for reason, count in sorted(rejected.items())),
                    ("out_of_memory_frames", str(oom.out_of_memory)),
                    ("out_of_memory_dropped", str(oom.dropped)),
                    ("degraded", ",".join(oom.degraded) or "no"),
                    ("device", str(self.engine.device)),
                    ("precision", str(self.engine.precision)),
                    ("cpu_threads", str(torch.get_num_threads())),
                    ("model_id", str(self.model_id)),
                    ("network_input", self._input_size_text()),
                    ("threshold", f"{threshold:g}"),
                    ("status_window_s", f"{events.window_s:g}"),
                ]
                status.values = [KeyValue(key=k, value=v) for k, v in pairs]
                self.pub_diag.publish(DiagnosticArray(header=_header_now(self), status=[status]))
            except Exception as exc:  # noqa: BLE001
                self.get_logger().error(f"diagnostics failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=10.0)

        def stop(self, timeout: float = 1.5) -> None:
            self._stop.set()
            self.mailbox.close()
            if self._worker.is_alive():
                self._worker.join(timeout)

    def _rgb_fields(array, encoding):
        from pebal_perception.image_conversion import rgb_to_image_fields
        return rgb_to_image_fields(array, encoding)

    def _obstacle_msg(o) -> ObstacleMsg:
        fields = obstacle_fields(o)  # shared with `pebal-bag process`
        return ObstacleMsg(ground_position=Point(**fields.pop("ground_position")), **fields)

    def _header_now(node):
        from std_msgs.msg import Header
        return Header(stamp=node.get_clock().now().to_msg())

    return DetectorNode


def main(args: list[str] | None = None, *, fast_exit: bool | None = None) -> int:
    """Runs the node until SIGINT/SIGTERM; returns the exit status (0, or 1 after a start-up error).

    As a program (``args`` None, e.g. the ``detector_node`` launcher) the process ends with
    ``os._exit`` once the node, its worker and ROS are shut down: the interpreter's own teardown
    (PyTorch's alone takes over a second) would break the 2 s shutdown budget. ``fast_exit`` forces
    either behaviour.
    """
    if fast_exit is None:
        fast_exit = args is None
    status = _run(args)
    if fast_exit:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    return status


def _run(args: list[str] | None) -> int:
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    try:
        rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # noqa: BLE001 - e.g. malformed --ros-args: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        sys.stderr.write(f"{PROG}: error: cannot initialise ROS ({type(exc).__name__}: {first})\n")
        return 1
    node = None
    status = 0
    try:
        try:
            node = _node_class()(stop)
        except StartupError as exc:
            sys.stderr.write(f"{PROG}: error: {exc}\n")
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        executor.remove_node(node)
    except Exception as exc:  # noqa: BLE001 - one line, no traceback
        sys.stderr.write(f"{PROG}: error: {type(exc).__name__}: {exc}\n")
        status = 1
    finally:
        if node is not None:
            try:
                node.stop()
                node.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        try:
            rclpy.try_shutdown()
        except Exception:  # noqa: BLE001
            pass
    return status


if __name__ == "__main__":
    sys.exit(main())
