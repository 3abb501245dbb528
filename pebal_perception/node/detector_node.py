"""ROS 2 node ``pebal_detector``: PEBAL road-anomaly segmentation of a camera stream.

Topics (relative names, remappable)
-----------------------------------
Inputs (sensor-data QoS, best effort, keep last 5; the standard overrides
``qos_overrides.<topic>.subscription.{reliability,depth,history}`` change it per subscription):
  ``image`` (sensor_msgs/Image), ``image/compressed`` (sensor_msgs/CompressedImage, only with
  ``subscribe_compressed``), ``camera_info`` (sensor_msgs/CameraInfo, for ground positions). With
  ``lazy_input`` the image inputs are subscribed to only while some output has a subscriber.
Outputs (reliable, keep-last 5), stamped with the input image's header, at the input resolution:
  ``~/semantic`` mono8 trainIds, ``~/semantic/color`` rgb8 (Cityscapes colours), ``~/energy`` 32FC1
  anomaly score, ``~/obstacle_mask`` mono8 0/255, ``~/overlay`` and ``~/debug`` rgb8: each image is
  computed only while someone subscribes to it (``images_built`` in /diagnostics counts them);
  ``~/obstacles/markers`` visualization_msgs/MarkerArray (RViz: a box and a text per obstacle with a ground
  position, in the camera optical frame; only while subscribed); ``~/result``
  pebal_perception/AnomalyResult (always), ``~/processing_time_ms`` std_msgs/Float32, and ``/diagnostics``
  (~1 Hz).

Diagnostics
-----------
The counters in ``/diagnostics`` are cumulative since start-up. The status *level* reflects the last
``diagnostics.window_s`` seconds (default 10): ERROR while a frame failed to process within the window, WARN
while a frame was dropped for lack of device memory, an input image was rejected or input frames were lost in
transport within it (lost frames are also logged, rate-limited, with the remedy: the large-image Fast DDS
profile on the publisher too), and also WARN while the model runs degraded after running out of memory, before
the first image, after a frame had more candidate regions than are examined (``regions_over_cap``: the largest
``MAX_REGIONS_PER_FRAME`` are), after tracking had to forget reported obstacles (a stamp jumped back by more
than a second, e.g. a bag replayed in a loop, or more camera streams than it tracks at once; each camera
stream is a frame_id and image size with tracks of its own: ``tracking_*`` keys), and while the latest
camera_info is unusable although ground positions are configured; OK otherwise.
Once failures stop, the level returns to OK after one window.

camera_info
-----------
A camera_info whose K and size cannot describe a real pinhole camera (core.camera.check_camera_info:
sizes 0 or above 100000 pixels, a principal point outside that size, focal lengths not positive or
not finite, K all zeros = uncalibrated) makes the camera unknown: ground positions are NaN until a
usable one arrives; each is counted (``camera_info_rejected``). Images of another size than the
camera_info's get rescaled intrinsics; different x and y factors are warned about once per size pair.

Threading: the executor thread only converts incoming messages to RGB and drops them into a one-slot
mailbox (the newest frame wins; replacing a frame never processed counts as a drop); a worker thread
steps the detector (:class:`pebal_perception.core.detector.Detector`) on the newest frame and publishes.
``detector_lifecycle_node`` (:class:`LifecycleDetectorNode`) is the same node as a managed node.

Parameters: one table, ``core/settings.py``, from which the node builds its descriptors and
``config/detector.yaml`` is made. Camera mounting, smoothing, threshold and post-processing form one
immutable ``RuntimeSettings``: a parameter change replaces it whole; each frame reads it once.
``threshold`` is a double; NaN (YAML ``.nan``) means "the checkpoint's calibrated threshold". The
parameter is dynamically typed so that a set-parameters request may also pass a string: '' / 'nan' /
'auto' (= calibrated) or a number. Start-up overrides should stay doubles: rcl silently drops a
``-p`` / params-file override whose type differs from an earlier params file's value.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import (InvalidParameterTypeException, ParameterUninitializedException)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float32, Header
from visualization_msgs.msg import Marker, MarkerArray

from pebal_perception.dds import PROFILE_NAME, PROFILE_VARIABLE, find_profile
from pebal_perception.core.image_conversion import REJECT_REASONS, ImageConverter, ImageRejected
from pebal_perception.msg import AnomalyResult, Obstacle
from pebal_perception.node.outputs import OUTPUTS, MessageClasses, build_output_messages, message_class
from pebal_perception.core.detector import CameraInfo as CameraModel
from pebal_perception.core.detector import Detector, DetectorError
from pebal_perception.core.inference import FrameOutOfMemory
from pebal_perception.core.settings import (NODE_NAME, PARAMETERS, PARAMETERS_BY_NAME, plan_parameter_batch,
                                            type_mismatch)
from pebal_perception.node import diagnostics
from pebal_perception.node.parameters import (TYPE_NAMES, AllOrNoneParameterService, parameter_descriptor,
                                              qos_override_problem)
from pebal_perception.node.processing import LatestFrameMailbox, RecentEvents

PROG = "detector_node"
LIFECYCLE_PROG = "detector_lifecycle_node"
LAZY_INPUT_CHECK_S = 0.5  # how often lazy_input looks at the outputs' subscriber counts
DEACTIVATE_WAIT_S = 10.0  # a deactivation waits this long for the frame in progress
EVENT_LOG_INTERVAL_S = 5.0  # each kind of detector event is logged at most this often
ROS_MESSAGES = MessageClasses(Image=Image, AnomalyResult=AnomalyResult, Obstacle=Obstacle, Point=Point, Time=Time,
                              Float32=Float32, Marker=Marker, MarkerArray=MarkerArray)
class StartupError(Exception):
    """Configuration or model problem at start-up: reported as one line, exit status 1."""


def lost_frames_profile() -> str:
    """The large-image Fast DDS profile named in the lost-frames warning: its path, else its file name."""
    return str(find_profile() or PROFILE_NAME)


class DetectorBehaviour:
    """What the plain node (:class:`DetectorNode`) and the managed one (:class:`LifecycleDetectorNode`)
    share, in the steps of a managed node's life: :meth:`_begin` (parameters, counters), :meth:`_configure`
    (the model and the settings), :meth:`_open` (subscriptions, publishers, timers, the worker),
    :meth:`_close` (all of those released) and :meth:`_release` (the model). Mixed in before an
    ``rclpy`` Node class."""

    def _begin(self, stop_event: threading.Event) -> None:
        """Declares the parameters (raises StartupError for a start-up value of the wrong type) and
        starts the parameter services; counters start at zero and stay cumulative for the node's life."""
        self._stop = stop_event
        for spec in PARAMETERS:
            default = spec.default
            if spec.type == "double_array" and not default:
                # rclpy would infer BYTE_ARRAY from [], and a YAML [] leaves a parameter unset: declare the
                # type itself; _value reads an unset one as the table's default.
                default = Parameter.Type.DOUBLE_ARRAY
            try:
                self.declare_parameter(spec.name, default, parameter_descriptor(spec))
            except InvalidParameterTypeException:
                given = self._parameter_overrides.get(spec.name)
                raise StartupError(type_mismatch(
                    spec.name, spec.type, TYPE_NAMES.get(given.type_.value, "?") if given else "?",
                    given.value if given else None) + " (-p override or params file)") from None
        for spec in PARAMETERS:
            if spec.deprecated and spec.name in self._parameter_overrides:
                self.get_logger().warning(f"parameter {spec.name} is deprecated (still honoured in this release): "
                                          f"{spec.deprecated}")
        self._lock = threading.Lock()  # guards the counters
        self._rejected = {reason: 0 for reason in sorted(REJECT_REASONS)}
        self._rejected["internal_error"] = 0
        self._received = 0
        self._processed = 0
        self._images_built = 0  # output images computed (each only while subscribed)
        self._failed = 0  # taken from the mailbox but not published (processing error, out of memory)
        self._discarded = 0  # processed but not published: the node was deactivated during the frame
        self._lost_in_transport = 0  # reported lost by the middleware: never reached _on_image
        self._proc_times: deque[float] = deque(maxlen=200)  # (receive -> publish) ms, last window
        self._infer_times: deque[float] = deque(maxlen=200)
        self._last_diag = (time.monotonic(), 0, 0)
        # What happened within the last window sets the diagnostics level (the counters stay cumulative).
        self._events = RecentEvents(self._value("diagnostics.window_s"))
        self._event_logged: dict[str, float] = {}  # detector event kind -> when it was last logged (monotonic)
        self.mailbox = LatestFrameMailbox()
        self.converter = ImageConverter()
        # The frame step (model, settings, tracks, camera), from configure to cleanup; stepped by the worker only.
        self.detector: Detector | None = None
        self._entities: list[tuple[Any, Any]] = []  # (destroy method, entity) for what _open created
        self._input_subscriptions: list[Any] = []
        # One worker at a time runs the engine. A deactivation that outlasts DEACTIVATE_WAIT_S leaves the
        # worker to finish its frame (then discarded); the next worker waits for it before it starts.
        self._worker: threading.Thread | None = None
        self._worker_stop = threading.Event()  # the current worker's own: a new one per activation
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._parameter_service = AllOrNoneParameterService(self)

    def _configure(self) -> None:
        """Loads the model and builds the settings from the parameters; StartupError says why not."""
        self._check_qos_overrides()  # the subscriptions apply them later (lazy_input: much later)
        try:
            PARAMETERS_BY_NAME["qos.reliability"].check(self._value("qos.reliability"))
            self.detector = Detector.from_values({spec.name: self._value(spec.name) for spec in PARAMETERS},
                                                 on_event=self._on_detector_event)
        except (DetectorError, ValueError) as exc:
            raise StartupError(str(exc)) from None

    def _open(self) -> None:
        """Publishers, timers, the worker and (unless lazy_input waits for a subscriber) the input
        subscriptions."""
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers_by_topic = {t.name: self.create_publisher(message_class(t.msgtype), f"~/{t.name}", out_qos)
                                    for t in OUTPUTS}
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities = [(self.destroy_publisher, pub) for pub in (*self.publishers_by_topic.values(),
                                                                    self.pub_diag)]
        # The node's clock: with use_sim_time it runs on /clock (pebal-bag play --clock).
        self._entities.append((self.destroy_timer, self.create_timer(1.0, self._publish_diagnostics)))
        camera_info = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, self._input_qos(),
                                               qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._entities.append((self.destroy_subscription, camera_info))
        if self._value("lazy_input"):
            # Steady clock: the check must run with use_sim_time before any /clock arrives.
            check = self.create_timer(LAZY_INPUT_CHECK_S, self._update_input_subscriptions,
                                      clock=Clock(clock_type=ClockType.STEADY_TIME))
            self._entities.append((self.destroy_timer, check))
        else:
            self._subscribe_inputs()
        self.mailbox.open()
        previous, self._worker_stop = self._worker, threading.Event()
        self._worker = threading.Thread(target=self._work, args=(self._worker_stop, previous),
                                        name="pebal-inference", daemon=True)
        self._worker.start()
        image_qos = self._input_qos_text()
        engine, settings = self.detector.engine, self.detector.settings
        self.get_logger().info(
            f"ready: model {self.detector.model_id} on {engine.device} ({engine.precision}, "
            f"{engine.backend}{self._backend_note()}), network input "
            f"{self._input_size_text()}, threshold {settings.config.threshold:g}"
            f"{' (calibrated)' if settings.threshold_param is None else ''}; "
            + (f"subscribing to {self.resolve_topic_name('image')} while an output has a subscriber (lazy_input)"
               if self._value("lazy_input") else f"subscribed to {self.resolve_topic_name('image')} ({image_qos})"))

    def _stop_worker(self, timeout: float) -> None:
        """Ends the worker thread: it finishes its frame if that takes less than ``timeout`` s, else the
        frame's result is discarded when it is done (counted). A frame still waiting is dropped (counted)."""
        self._worker_stop.set()
        self.mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():  # kept: the next activation's worker waits for it
                self.get_logger().warning(
                    f"stopped while a frame has been processing for over {timeout:g} s: its result will be "
                    "discarded, and the next activation starts processing once it is done")
                return
        self._worker = None

    def _close(self, timeout: float = 1.5) -> None:
        """Stops the worker and destroys what :meth:`_open` created."""
        self._stop_worker(timeout)
        self._unsubscribe_inputs()
        for destroy, entity in reversed(self._entities):
            destroy(entity)
        self._entities = []

    def _release(self) -> None:
        """Drops the model (and its device memory), once a worker abandoned in a long frame is done with it
        (waiting at most DEACTIVATE_WAIT_S: a configure must not hold two models)."""
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(DEACTIVATE_WAIT_S)
        detector, self.detector = self.detector, None
        if detector is not None:
            del detector
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------ inputs (QoS, lazy)
    def _input_qos(self) -> QoSProfile:
        """A fresh base profile for one input subscription (rclpy applies qos_overrides.* to it in place):
        sensor data (best effort, keep last 5) unless the deprecated qos.* parameters say otherwise."""
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._value("qos.depth"),
                          durability=DurabilityPolicy.VOLATILE,
                          reliability=(ReliabilityPolicy.RELIABLE if self._value("qos.reliability") == "reliable"
                                       else ReliabilityPolicy.BEST_EFFORT))

    def _input_qos_text(self) -> str:
        topic = self.resolve_topic_name("image")
        get = self._value_or
        return (f"{get(f'qos_overrides.{topic}.subscription.reliability', self._value('qos.reliability'))}, "
                f"depth {get(f'qos_overrides.{topic}.subscription.depth', self._value('qos.depth'))}")

    def _value_or(self, name: str, default: Any) -> Any:
        return self.get_parameter(name).value if self.has_parameter(name) else default

    def _input_topics(self) -> list[str]:
        return [self.resolve_topic_name(name) for name in
                ("image", *(("image/compressed",) if self._value("subscribe_compressed") else ()), "camera_info")]

    def _check_qos_overrides(self) -> None:
        """The ``qos_overrides.<input>.subscription.*`` values rclpy will apply, checked now: rclpy only
        reads them when it subscribes, and a bad one then fails deep inside a timer or a transition."""
        for topic in self._input_topics():
            for policy, parameter in ((policy, f"qos_overrides.{topic}.subscription.{policy}")
                                      for policy in ("reliability", "history", "depth")):
                given = self._parameter_overrides.get(parameter)
                if given is not None:
                    problem = qos_override_problem(policy, given.value)
                    if problem:
                        raise StartupError(f"invalid parameter {parameter}: {problem}")

    def _subscribe_inputs(self) -> None:
        if self._input_subscriptions:
            return
        lost = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
        overrides = QoSOverridingOptions.with_default_policies()
        subs = [self.create_subscription(Image, "image", self._on_image, self._input_qos(), event_callbacks=lost,
                                         qos_overriding_options=overrides)]
        if self._value("subscribe_compressed"):
            subs.append(self.create_subscription(CompressedImage, "image/compressed", self._on_compressed,
                                                 self._input_qos(), event_callbacks=lost,
                                                 qos_overriding_options=overrides))
        self._input_subscriptions = subs

    def _unsubscribe_inputs(self) -> None:
        for sub in self._input_subscriptions:
            self.destroy_subscription(sub)
        self._input_subscriptions = []

    def _output_subscribers(self) -> int:
        return sum(pub.get_subscription_count() for pub in self.publishers_by_topic.values())

    def _update_input_subscriptions(self) -> None:
        """lazy_input: the image inputs are subscribed to only while some output (not /diagnostics) has a
        subscriber, so nothing is received, converted or decoded while nobody listens."""
        try:
            wanted = self._output_subscribers() > 0
            if wanted and not self._input_subscriptions:
                self._subscribe_inputs()
                self.get_logger().info("an output has a subscriber: subscribed to the image input (lazy_input)")
            elif not wanted and self._input_subscriptions:
                self._unsubscribe_inputs()
                self.get_logger().info("no output has a subscriber: unsubscribed from the image input (lazy_input)")
        except Exception as exc:  # noqa: BLE001 - a timer must not kill the node
            self.get_logger().error(f"lazy input check failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=10.0)

    # ------------------------------------------------------------------------------ parameters
    def _value(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # declared by type only (an empty array default)
            return PARAMETERS_BY_NAME[name].default

    def _backend_note(self) -> str:
        timings = self.detector.engine.backend_timings
        if not timings:
            return ""
        return " chosen by backend auto: " + ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items())

    def _input_size_text(self) -> str:
        size = self.detector.engine.input_size
        return "native" if size is None else f"{size[1]}x{size[0]}"

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validates a batch of changes as a whole (plan_parameter_batch); applies all of them or none.

        A SetParameters request reaches this callback with all its parameters at once
        (AllOrNoneParameterService), as SetParametersAtomically does; rclpy has already refused
        undeclared and read-only parameters, wrong types and values outside the descriptors' ranges.
        Parameters of rclpy's own (use_sim_time, qos_overrides.*) pass; before the managed node is
        configured, values are only type-checked here and are read when it is."""
        if any(not p.name for p in params):  # rclpy lets an empty name through (and declarations come here)
            return SetParametersResult(successful=False, reason="a parameter name must not be empty")
        ours = [(p.name, p.value) for p in params if p.name in PARAMETERS_BY_NAME]
        detector = self.detector
        if detector is None or not ours:
            return SetParametersResult(successful=True)
        try:
            new = plan_parameter_batch(detector.settings, ours, detector.calibrated_threshold)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - never let a parameter request kill the node
            return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")
        detector.update(new)  # one reference swap: the worker sees the old or the new settings, whole
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
        change = int(info.total_count_change)
        with self._lock:
            self._lost_in_transport += change
            total = self._lost_in_transport
        if change > 0:
            self._events.note("lost_in_transport", f"{total} in total")
            self.get_logger().warning(
                f"{total} input frames lost in transport (the middleware dropped them before they reached "
                f"the node). Remedy: load the large-image Fast DDS profile {lost_frames_profile()} in the "
                f"publisher too (camera driver, bag player: export {PROFILE_VARIABLE}=<that file>), or use "
                "a reliable publisher with input_reliability:=reliable, or subscribe to compressed images",
                throttle_duration_sec=10.0)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """The detector's camera; an unusable camera_info makes it unknown (NaN ground positions) until a
        usable one arrives, and is counted (Detector.set_camera)."""
        try:
            problem = self.detector.set_camera(CameraModel(k=tuple(msg.k), width=int(msg.width),
                                                           height=int(msg.height)))
            if problem is not None:
                self.get_logger().warning(f"camera_info ignored, no ground positions: {problem}",
                                          throttle_duration_sec=10.0)
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"ignoring camera_info: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=5.0)

    def _on_detector_event(self, kind: str, text: str) -> None:
        """What the detector says: recent WARN events (obstacles forgotten by tracking, regions over the
        cap) and log lines."""
        if kind == "tracking_note":
            self.get_logger().info(text, throttle_duration_sec=30.0)
            return
        if kind in ("tracking_forgot", "regions_over_cap"):
            self._events.note(kind, text)
        # rate-limited per kind (rclpy's throttle is per call site: one kind would silence the others)
        now = time.monotonic()
        if now - self._event_logged.get(kind, -math.inf) >= EVENT_LOG_INTERVAL_S:
            self._event_logged[kind] = now
            self.get_logger().warning(text)

    # ---------------------------------------------------------------------------------- worker
    def _work(self, stop: threading.Event, previous: threading.Thread | None) -> None:
        """The worker of one activation (until ``stop``); it starts once ``previous``, a worker abandoned
        in a long frame by a deactivation, has finished, so that one frame at a time uses the engine."""
        import torch

        torch.set_grad_enabled(False)
        while previous is not None and previous.is_alive() and not (self._stop.is_set() or stop.is_set()):
            previous.join(0.2)
        self.detector.reset()  # tracks do not survive a deactivation; no other worker steps it now
        while not (self._stop.is_set() or stop.is_set()):
            item = self.mailbox.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item, stop=stop)
            except FrameOutOfMemory as exc:  # also counted by the detector; the next frame may fit
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

    def _process(self, rgb: np.ndarray, header: Any, received: float, stop: threading.Event) -> None:
        detector = self.detector
        # Out-of-memory errors are retried / degraded inside the step (oom_fallback).
        stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        out = detector.step(rgb, stamp, stream=header.frame_id)
        if self._stop.is_set() or stop.is_set():  # shut down or deactivated during the frame
            with self._lock:
                self._discarded += 1
            return
        publishers = self.publishers_by_topic
        wanted = {topic for topic, pub in publishers.items() if pub.get_subscription_count() > 0}
        parts = dict(rgb=rgb, semantic=out.semantic, score=out.score, frame=out.frame, header=header,
                     classes=ROS_MESSAGES, model_id=detector.model_id, threshold=out.settings.config.threshold,
                     wanted=wanted)
        messages = build_output_messages(**parts, late=False)  # each only while someone subscribes to it
        for topic, msg in messages.items():
            publishers[topic].publish(msg)
        elapsed_ms = (time.perf_counter() - received) * 1000.0
        for topic, msg in build_output_messages(**parts, late=True, processing_time_ms=elapsed_ms).items():
            publishers[topic].publish(msg)  # the result and the processing time, whoever listens
        images = sum(isinstance(msg, Image) for msg in messages.values())
        with self._lock:
            self._processed += 1
            self._images_built += images
            self._proc_times.append(elapsed_ms)
            self._infer_times.append(out.inference_ms)

    # ----------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        import torch

        detector = self.detector
        try:
            engine, settings, detected = detector.engine, detector.settings, detector.status()
            now = time.monotonic()
            with self._lock:
                t0, received0, processed0 = self._last_diag
                counts = diagnostics.NodeCounters(
                    received=self._received, processed=self._processed, failed=self._failed,
                    discarded=self._discarded, images_built=self._images_built,
                    lost_in_transport=self._lost_in_transport, dropped=self.mailbox.dropped,
                    rejected=dict(self._rejected), input_subscribed=bool(self._input_subscriptions),
                    seconds=now - t0, received_before=received0, processed_before=processed0,
                    processing_ms=list(self._proc_times), inference_ms=list(self._infer_times))
                self._last_diag = (now, counts.received, counts.processed)
                self._proc_times.clear()
                self._infer_times.clear()
            # The level reflects the last diagnostics.window_s seconds (module docstring).
            level, message = diagnostics.status(self._events, counts, detected, engine, settings.positions_wanted)
            pairs = diagnostics.values(counts, detected, engine, model_id=detector.model_id,
                                       network_input=self._input_size_text(), threshold=settings.config.threshold,
                                       cpu_threads=torch.get_num_threads(), window_s=self._events.window_s)
            status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: anomaly detection",
                                      hardware_id=str(engine.device), level=getattr(DiagnosticStatus, level),
                                      message=message, values=[KeyValue(key=k, value=v) for k, v in pairs])
            self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                  status=[status]))
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"diagnostics failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=10.0)

    def stop(self, timeout: float = 1.5) -> None:
        """Ends the worker (within ``timeout`` s: shutdown does not wait for a long frame)."""
        self._stop.set()
        self._stop_worker(timeout)


class DetectorNode(DetectorBehaviour, Node):
    """The ``pebal_detector`` node (module docstring): configured and active from construction.
    ``stop_event`` is set to stop it (its worker thread ends); ``kwargs`` go to ``rclpy.node.Node``
    (context, namespace, cli_args, ...). Raises StartupError for a parameter or model problem."""

    def __init__(self, stop_event: threading.Event, **kwargs: Any):
        # The parameter services are started by _begin: AllOrNoneParameterService instead of rclpy's own.
        Node.__init__(self, NODE_NAME, start_parameter_services=False, **kwargs)
        self._begin(stop_event)
        self._configure()
        self._open()


class LifecycleDetectorNode(DetectorBehaviour, LifecycleNode):
    """The same node as a managed (lifecycle) node, for stacks that orchestrate start-up (Nav2-style
    lifecycle managers), driven through ``~/change_state``:

    - unconfigured: parameters declared and settable, nothing loaded;
    - configure: the model is loaded and the settings built (a checkpoint or parameter problem fails
      the transition, logged, and the node stays unconfigured);
    - activate: publishers, subscriptions, timers and the worker are created;
    - deactivate: all of those are destroyed; the frame in progress is waited for up to
      ``DEACTIVATE_WAIT_S``, a longer one is left to finish and its result discarded
      (``frames_discarded_at_deactivation``), and the next activation's worker starts once it is done
      (one frame at a time per model); a frame still waiting is dropped (``dropped_frames``);
    - cleanup: the model is released; shutdown: everything is.
    """

    def __init__(self, stop_event: threading.Event, **kwargs: Any):
        LifecycleNode.__init__(self, NODE_NAME, start_parameter_services=False, **kwargs)
        self._begin(stop_event)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured: model {self.detector.model_id} on {self.detector.engine.device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._open()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close(timeout=DEACTIVATE_WAIT_S)
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._entities:
            self._close(timeout=DEACTIVATE_WAIT_S)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        return self.on_shutdown(state)


def main(args: list[str] | None = None, *, fast_exit: bool | None = None) -> int:
    """Runs the node until SIGINT/SIGTERM (:func:`pebal_perception.node.run.run_node`)."""
    from pebal_perception.node.run import run_node

    return run_node(args, fast_exit=fast_exit)


def lifecycle_main(args: list[str] | None = None, *, fast_exit: bool | None = None) -> int:
    """The managed node (``detector_lifecycle_node``), driven through its lifecycle services."""
    from pebal_perception.node.run import run_node

    return run_node(args, lifecycle=True, fast_exit=fast_exit)


if __name__ == "__main__":
    sys.exit(main())
