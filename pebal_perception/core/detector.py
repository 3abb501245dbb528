"""The detector: one object that turns camera frames into what a planner receives, shared by the node,
``pebal-bag process``, ``pebal-detect`` and the calibration tools so that all of them compute the same
outputs for the same frame.

* :func:`load_engine` loads the model from the settings' values (checkpoint or the embedded default,
  device, precision, network size, backend), once, with every check and one-line errors
  (:class:`DetectorError`).
* :class:`Detector` holds the engine, the run-time settings (:class:`~pebal_perception.core.settings.RuntimeSettings`,
  replaced whole by :meth:`Detector.update`), inference with the out-of-memory fallback
  (:class:`~pebal_perception.core.inference.OomGuardedInference`), the stream memory (horizon, tracks per
  camera stream: :class:`~pebal_perception.core.pipeline.ObstaclePipeline`) and the camera model.
  :meth:`Detector.step` runs one frame: inference, post-processing, tracking, ground positions, counters.
  :meth:`Detector.status` reports the counters (the node turns them into ``/diagnostics``).
* With the ``adaptation`` setting on (and backend torch), the engine runs a
  :class:`~pebal_perception.core.adaptation.BatchNormAdapter`: each stepped frame's batch-norm statistics
  are committed after post-processing, or discarded while obstacles are detected or reported (paused).

Not thread-safe: one thread steps a detector (the node's worker).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pebal_perception.core.adaptation import AdaptationState, BatchNormAdapter, settle
from pebal_perception.core.camera import check_camera_info, make_ground_model, rescale_warning
from pebal_perception.core.inference import OomGuardedInference, parse_oom_fallback
from pebal_perception.core.limits import MAX_REGIONS_PER_FRAME
from pebal_perception.core.pipeline import ObstaclePipeline, StreamCounters
from pebal_perception.core.postprocess import GroundModel, ProcessedFrame, process_frame
from pebal_perception.core.postprocess_config import calibrated_postprocess
from pebal_perception.core.road_score import parse_score
from pebal_perception.core.settings import DEVICES, PARAMETERS, PARAMETERS_BY_NAME, RuntimeSettings, \
    initial_settings, parse_threshold


def default_values() -> dict[str, Any]:
    """Every parameter of the node's table at its default (what a tool without a params file runs)."""
    return {spec.name: spec.default for spec in PARAMETERS}


class DetectorError(ValueError):
    """The detector cannot be built from these settings (a parameter, the model): one line, naming it.
    ``loading``: the checkpoint or the model could not be loaded (rather than a setting refused)."""

    def __init__(self, message: str, loading: bool = False):
        super().__init__(message)
        self.loading = loading


def load_engine(values: Mapping[str, Any]) -> Any:
    """The inference engine the settings ``values`` (parameter names of the node's table) describe:
    ``checkpoint`` ('' = the embedded default model), ``model``, ``device``, ``precision``, ``backend``,
    ``input_width`` / ``input_height`` (0 / 0 = the checkpoint's size), ``smoothing``, ``cpu_threads``
    (> 0 sets torch's threads for the whole process). The threshold is not the engine's: the detector's
    settings own it (one value, changeable at run time). :class:`DetectorError` says what is wrong, in
    one line."""
    try:
        for name in ("precision", "backend", "anomaly_score"):
            PARAMETERS_BY_NAME[name].check(values[name])
    except ValueError as exc:
        raise DetectorError(str(exc)) from None
    width, height = values["input_width"], values["input_height"]
    if (width == 0) != (height == 0):
        raise DetectorError(f"parameters input_width={width} and input_height={height}: set both or neither")
    threads = values.get("cpu_threads", 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    checkpoint = str(values["checkpoint"]).strip()
    try:
        engine = open_engine(checkpoint, values["model"], device=values["device"], precision=values["precision"],
                             input_size=(height, width) if width else None, smoothing=values["smoothing"],
                             backend=values["backend"], score=score_setting(values["anomaly_score"]))
        try:
            explicit = parse_threshold(values["threshold"]) is not None
        except ValueError:
            explicit = True  # the detector's settings say what is wrong with it
        if parse_score(engine.score) != parse_score(engine.meta.score) and not explicit:
            raise DetectorError(f"parameter anomaly_score={values['anomaly_score']!r} is not the score the checkpoint "
                                f"was calibrated on ({engine.meta.score.get('kind', 'energy')}): set threshold too")
        return engine
    except DetectorError as exc:
        if exc.loading:  # said as the node's start-up error: which model could not be loaded
            where = "" if checkpoint and checkpoint in str(exc) else f" from {checkpoint or 'the default model'}"
            raise DetectorError(f"cannot load model{where}: {exc}") from None
        raise


def score_setting(name: str) -> dict[str, Any] | None:
    """The engine's ``score`` option for parameter ``anomaly_score``: None = the checkpoint's, ``{}`` = free
    energy, ``{"kind": "road_relative"}`` = the road-relative score with the checkpoint's settings for it when
    it has them, else the defaults (``InferenceEngine``)."""
    name = str(name).strip()
    if not name:
        return None
    return {} if name == "energy" else {"kind": name}


def open_engine(checkpoint: Any, model: str | None = None, *, device: str = "auto", **options: Any) -> Any:
    """:meth:`InferenceEngine.from_checkpoint <pebal_perception.core.engine.InferenceEngine.from_checkpoint>`
    of ``checkpoint`` ('' or None: the embedded default model) on ``device`` (auto, cpu, cuda, cuda:N)
    with ``options`` (precision, input_size, threshold, smoothing, backend), every problem one line
    (:class:`DetectorError`; ``loading`` set when the file or the model is the problem)."""
    from pebal_perception.core.checkpoint import CheckpointError
    from pebal_perception.core.default_model import default_checkpoint
    from pebal_perception.core.engine import InferenceEngine

    device = str(device).strip() or "auto"
    if device.split(":")[0] not in DEVICES:
        raise DetectorError(f"parameter device={device!r}: expected auto, cpu, cuda or cuda:N")
    checkpoint = str(checkpoint or "").strip()
    try:
        path = checkpoint or default_checkpoint()
    except FileNotFoundError as exc:
        raise DetectorError(f"parameter checkpoint is '' and {exc}") from None
    try:
        return InferenceEngine.from_checkpoint(path, str(model or "").strip() or None, device=device, **options)
    except Exception as exc:  # noqa: BLE001 - any loading problem: one line
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        first = str(text).strip().splitlines()[0] if str(text).strip() else ""
        if not isinstance(exc, (CheckpointError, FileNotFoundError, KeyError, ValueError)):
            first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise DetectorError(first, loading=True) from None


@dataclass
class FrameOutputs:
    """What one :meth:`Detector.step` gives: the maps at the frame's size and the processed frame (the
    reported obstacles, tracked, with ground positions)."""

    semantic: np.ndarray  # H x W uint8 trainIds
    score: np.ndarray  # H x W float32 anomaly score (free energy)
    frame: ProcessedFrame
    inference_ms: float
    settings: RuntimeSettings  # the snapshot the step ran under (threshold, post-processing, ...)


@dataclass
class DetectorStatus:
    """The detector's cumulative counters (the node adds its own: received, dropped, rejected, ...)."""

    frames: int  # frames stepped through to the end
    out_of_memory_frames: int  # frames that ran the device out of memory (retried or dropped)
    out_of_memory_dropped: int  # of those, frames that could not be processed at all
    degraded: tuple[str, ...]  # out-of-memory fallbacks applied for good (fp16, cpu)
    regions_over_cap: int  # candidate regions left out (MAX_REGIONS_PER_FRAME per frame)
    tracking: StreamCounters
    camera_info_rejected: int
    camera_info_problem: str | None  # why the latest camera_info was refused (None: usable or none yet)
    adaptation: AdaptationState = AdaptationState()  # batch-norm adaptation to the camera (core/adaptation.py)


@dataclass(frozen=True)
class CameraInfo:
    """A camera_info's intrinsics (row-major 3 x 3, any sequence of 9 numbers) and calibration size."""

    k: Sequence[float]
    width: int
    height: int


class Detector:
    """Frames in, planner outputs out (module docstring). ``on_event(kind, text)`` hears what the caller
    should log and count as recent: ``"tracking_forgot"`` (reported obstacles dropped by a tracking
    restart), ``"tracking_note"`` (a restart that dropped nothing reported), ``"regions_over_cap"``,
    ``"camera_rescaled"`` (once per size pair), ``"adaptation_unavailable"`` (adaptation on with a compiled
    backend: once per backend)."""

    def __init__(self, engine: Any, settings: RuntimeSettings, oom_fallback: Sequence[str] = (),
                 on_event: Callable[[str, str], None] | None = None):
        self.engine = engine
        self._settings = settings
        self._on_event = on_event
        self.inference = OomGuardedInference(engine, oom_fallback)
        self.pipeline = ObstaclePipeline(settings.tracking, on_forget=self._tracking_forgot)
        self._frames = 0
        self._regions_over_cap = 0
        self._camera: tuple[int, CameraInfo, np.ndarray | None] | None = None  # (sequence, latest, its usable K)
        self._camera_rejected = 0
        self._camera_problem: str | None = None
        self._ground_cache: tuple[Any, GroundModel | None] = (None, None)
        self._rescale_warned: set[tuple[tuple[int, int], tuple[int, int]]] = set()
        self._adapter: Any = None  # core/adaptation.BatchNormAdapter while adaptation is on and can run
        self._adaptation_unavailable: str | None = None  # why adaptation is on but cannot run

    @classmethod
    def from_values(cls, values: Mapping[str, Any], on_event: Callable[[str, str], None] | None = None
                    ) -> "Detector":
        """Engine and settings from parameter ``values`` (names of the node's table; missing ones take
        the table's defaults), once; :class:`DetectorError` in one line when either cannot be built."""
        values = {**default_values(), **values}
        try:
            oom_fallback = parse_oom_fallback(values["oom_fallback"])
        except ValueError as exc:
            raise DetectorError(f"parameter {exc}") from None
        return cls.for_engine(load_engine(values), values, oom_fallback, on_event)

    @classmethod
    def for_engine(cls, engine: Any, values: Mapping[str, Any], oom_fallback: Sequence[str] = (),
                   on_event: Callable[[str, str], None] | None = None) -> "Detector":
        """A detector of an engine already loaded, its settings from ``values`` (missing names: the table's
        defaults; the threshold NaN: the checkpoint's calibrated one)."""
        values = {**default_values(), **values}
        try:
            settings = initial_settings(values, engine.meta.effective_threshold, calibrated_postprocess(engine.meta))
        except ValueError as exc:
            raise DetectorError(f"invalid parameter: {exc}") from None
        return cls(engine, settings, oom_fallback, on_event)

    # ------------------------------------------------------------------------------------ settings
    @property
    def settings(self) -> RuntimeSettings:
        return self._settings

    def update(self, settings: RuntimeSettings) -> None:
        """New run-time settings, whole (one reference assignment: the next step reads them)."""
        self._settings = settings

    @property
    def model_id(self) -> str:
        return str(self.engine.meta.model_id or self.engine.meta.architecture)

    @property
    def calibrated_threshold(self) -> float:
        """The checkpoint's threshold (used while the threshold setting is NaN)."""
        return self.engine.meta.effective_threshold

    # ------------------------------------------------------------------------------------ camera
    def set_camera(self, info: CameraInfo) -> str | None:
        """The camera of the next frames; an unusable camera_info makes it unknown (no ground positions)
        until a usable one arrives, and is counted. Returns why it was refused, else None."""
        try:
            k, problem = check_camera_info(info.k, int(info.width), int(info.height)), None
        except ValueError as exc:
            k, problem = None, str(exc)
        self._camera = (self._camera[0] + 1 if self._camera else 0, info, k)
        self._camera_problem = problem
        if problem is not None:
            self._camera_rejected += 1
        return problem

    def _ground_model(self, width: int, height: int, settings: RuntimeSettings) -> GroundModel | None:
        camera = self._camera
        if camera is None or camera[2] is None or not settings.positions_wanted:
            return None
        sequence, info, k = camera
        key = (sequence, width, height, settings.height_m, settings.pitch_rad)
        if self._ground_cache[0] == key:
            return self._ground_cache[1]
        sizes = ((int(info.width), int(info.height)), (width, height))
        warning = rescale_warning(*sizes)
        if warning and sizes not in self._rescale_warned and len(self._rescale_warned) < 64:
            self._rescale_warned.add(sizes)  # once per pair of sizes
            self._say("camera_rescaled", warning)
        model = make_ground_model(k, sizes[0], sizes[1], settings.height_m, settings.pitch_rad)
        self._ground_cache = (key, model)
        return model

    # ------------------------------------------------------------------------------------ frames
    def infer(self, rgb: np.ndarray, settings: RuntimeSettings | None = None
              ) -> tuple[np.ndarray, np.ndarray, float]:
        """The maps of one H x W x 3 uint8 RGB frame and the inference milliseconds, through the
        out-of-memory guard (:class:`~pebal_perception.core.inference.FrameOutOfMemory` when nothing is
        left to try)."""
        settings = settings or self._settings
        self._prepare_adaptation(settings)
        return self.inference(rgb, smoothing=settings.smoothing)

    def step(self, rgb: np.ndarray, stamp_ns: int = 0, stream: str = "", track: bool = True) -> FrameOutputs:
        """One frame of camera ``stream`` (its frame_id) stamped ``stamp_ns``: inference, post-processing,
        tracking and ground positions under one snapshot of the settings. ``track=False``: a single image,
        no memory of other frames (no tracking, no horizon over frames; obstacles carry no track id)."""
        settings = self._settings
        semantic, score, infer_ms = self.infer(rgb, settings)
        return self.finish(semantic, score, infer_ms, stamp_ns, stream, settings, track)

    def finish(self, semantic: np.ndarray, score: np.ndarray, infer_ms: float, stamp_ns: int = 0, stream: str = "",
               settings: RuntimeSettings | None = None, track: bool = True) -> FrameOutputs:
        """The part of :meth:`step` after inference (for callers that infer frames in batches). With
        adaptation on, the statistics of the latest inference are committed or discarded here: such callers
        must then infer one frame at a time, each followed by its ``finish`` (pebal-detect does)."""
        settings = settings or self._settings
        h, w = score.shape
        ground = self._ground_model(w, h, settings)
        if track:
            if self.pipeline.tracking != settings.tracking:
                self.pipeline.set_tracking(settings.tracking)
            frame = self.pipeline.process(semantic, score, settings.config, int(stamp_ns), ground, stream=stream)
        else:
            frame = process_frame(semantic, score, settings.config, ground)
        if frame.regions_over_cap:
            self._regions_over_cap += frame.regions_over_cap
            self._say("regions_over_cap", f"{frame.regions_over_cap} candidate regions left out beyond "
                                          f"{MAX_REGIONS_PER_FRAME} per frame (the smallest)")
        self._adapt(frame, settings)
        self._frames += 1
        return FrameOutputs(semantic=semantic, score=score, frame=frame, inference_ms=infer_ms, settings=settings)

    def reset(self) -> None:
        """Forgets the stream memory (tracks, horizons); the counts stay, and so do the adapted batch-norm
        statistics (a new stream of the same camera: :meth:`reset_adaptation` forgets them)."""
        self.pipeline.reset()

    def status(self) -> DetectorStatus:
        guard = self.inference
        return DetectorStatus(frames=self._frames, out_of_memory_frames=guard.out_of_memory,
                              out_of_memory_dropped=guard.dropped, degraded=tuple(guard.degraded),
                              regions_over_cap=self._regions_over_cap, tracking=self.pipeline.counters,
                              camera_info_rejected=self._camera_rejected, camera_info_problem=self._camera_problem,
                              adaptation=self.adaptation_state())

    # ------------------------------------------------------------------------------------ adaptation
    def adaptation_state(self) -> AdaptationState:
        """What the batch-norm adaptation does now (core/adaptation.py)."""
        settings, adapter = self._settings, self._adapter
        if adapter is not None:
            return adapter.state()
        if not settings.adaptation:
            return AdaptationState(momentum=settings.adaptation_momentum)
        return AdaptationState(enabled=True, status=self._unavailable_reason() or "on",
                               momentum=settings.adaptation_momentum)

    def _unavailable_reason(self) -> str | None:
        """Why the engine cannot run the adapter (a compiled backend), None when it can (or will decide at
        the first frame: a native-size engine with backend auto)."""
        backend = str(getattr(self.engine, "backend", "torch"))
        return None if backend in ("torch", "auto") else f"unavailable: backend {backend} runs a fixed graph"

    def reset_adaptation(self) -> None:
        """Back to the checkpoint's batch-norm statistics (another camera); adaptation goes on if it is on."""
        if self._adapter is not None:
            self._adapter.reset()

    def _prepare_adaptation(self, settings: RuntimeSettings) -> None:
        """Attaches the adapter to the engine before an inference while ``settings.adaptation`` is on and
        the engine runs torch; detaches it (dropping the adapted statistics) when adaptation is off."""
        engine = self.engine
        if not settings.adaptation:
            if self._adapter is not None:
                if getattr(engine, "adapter", None) is self._adapter:
                    engine.adapter = None
                self._adapter = None  # the checkpoint's statistics again (the folded model never changed)
            self._adaptation_unavailable = None
            return
        backend = str(getattr(engine, "backend", "torch"))
        if backend != "torch":
            if getattr(engine, "adapter", None) is not None:
                engine.adapter = None
            self._adapter = None
            text = self._unavailable_reason()
            if text is None:  # backend auto: a native-size engine chooses its backend at the first frame
                return
            if self._adaptation_unavailable != text:
                self._adaptation_unavailable = text
                self._say("adaptation_unavailable", f"adaptation is on but {text}: frames are not adapted "
                                                    "(it needs backend torch)")
            return
        self._adaptation_unavailable = None
        if self._adapter is None:
            self._adapter = BatchNormAdapter(engine.source_model, settings.adaptation_momentum, device=engine.device,
                                             channels_last=bool(getattr(engine, "optimized", False)))
        self._adapter.momentum = settings.adaptation_momentum
        engine.adapter = self._adapter

    def _adapt(self, frame: ProcessedFrame, settings: RuntimeSettings) -> None:
        """After post-processing: commits the frame's statistics, or discards them while obstacles are
        reported (tracked ones, held ones included) or detected in this frame (not yet confirmed)."""
        adapter = self._adapter
        if adapter is None or not settings.adaptation or not adapter.has_pending:
            return
        settle(adapter, frame)

    # ------------------------------------------------------------------------------------ events
    def _tracking_forgot(self, text: str, reported_lost: int) -> None:
        self._say("tracking_forgot" if reported_lost else "tracking_note", text)

    def _say(self, kind: str, text: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, text)
