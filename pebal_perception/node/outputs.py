"""One frame's output messages, for the live node (rclpy classes) and ``pebal-bag process`` (rosbags classes).

ROS-free: the message classes come in as :class:`MessageClasses`, so both producers write exactly the
same mapping of a processed frame to messages:

* ``semantic``: mono8 trainIds, ``semantic/color``: rgb8 Cityscapes colours of the same (for image views,
  where trainIds look black), ``energy``: 32FC1 anomaly score, ``obstacle_mask``: mono8 0/255,
  ``overlay`` and ``debug``: rgb8 visualisations (``debug``: drivable surface, excluded zone, horizon,
  every candidate region with its score and why it was rejected), all at the input resolution; the node
  builds each image only while someone subscribes to it (``wanted``);
* ``result``: ``pebal_perception/AnomalyResult`` with one ``Obstacle`` per region;
* every message carries the input image's header.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection

import numpy as np

from pebal_perception.core.obstacles import Obstacle
from pebal_perception.core.image_conversion import rgb_to_image_fields
from pebal_perception.core.postprocess import ProcessedFrame

@dataclass(frozen=True)
class MessageClasses:
    """Constructors of the output message types (keyword arguments = the message fields).

    ``image_data`` turns the packed pixel bytes into what ``Image(data=...)`` takes: ``bytes`` as they
    are for rclpy, a uint8 array for rosbags. Types left None are not built (a bag of the node's outputs
    holds no markers or processing times)."""

    Image: Callable[..., Any]  # named as the message types
    AnomalyResult: Callable[..., Any]
    Obstacle: Callable[..., Any]
    Point: Callable[..., Any]
    image_data: Callable[[bytes], Any] = bytes
    Time: Callable[..., Any] | None = None  # builtin_interfaces/Time (Obstacle.first_seen)
    Float32: Callable[..., Any] | None = None  # std_msgs/Float32
    Marker: Any = None  # visualization_msgs/Marker (its constants are used too)
    MarkerArray: Callable[..., Any] | None = None


@dataclass
class FrameMessages:
    """What the output messages of one frame are made of (the builders of :data:`OUTPUTS` read it)."""

    rgb: np.ndarray  # the input frame
    semantic: np.ndarray
    score: np.ndarray
    frame: ProcessedFrame  # the post-processed frame (reported obstacles)
    header: Any  # the input image's, copied into every message
    classes: MessageClasses
    model_id: str
    threshold: float
    processing_time_ms: float = 0.0  # receipt -> the other outputs published (known to the late ones)

    def image(self, array: np.ndarray, encoding: str) -> Any:
        fields = rgb_to_image_fields(array, encoding)
        fields["data"] = self.classes.image_data(fields["data"])
        return self.classes.Image(header=self.header, **fields)


@dataclass(frozen=True)
class OutputTopic:
    """One output of the node: its topic (relative to the node's ``~/``), message type and builder."""

    name: str
    msgtype: str  # the ROS type name, e.g. "sensor_msgs/msg/Image"
    build: Callable[[FrameMessages], Any]
    needs: str = "Image"  # the MessageClasses field the builder uses (None there: not built)
    default: bool = False  # built when the caller does not say which (pebal-bag process, benchmarks)
    always: bool = False  # built and published for every frame, whoever listens
    late: bool = False  # built after the others are published (it carries the processing time)
    on_request: bool = False  # costs work per frame: the test harness subscribes to it only when asked


def _result(m: FrameMessages) -> Any:
    frame = m.frame
    return m.classes.AnomalyResult(
        header=m.header, model_id=str(m.model_id), threshold=float(m.threshold),
        anomalous_fraction=float(frame.anomalous_fraction), max_score=float(frame.max_score),
        processing_time_ms=float(m.processing_time_ms),
        obstacles=[obstacle_message(o, m.classes) for o in frame.obstacles])


def _visualize() -> Any:
    from pebal_perception.core import visualize  # OpenCV drawing: only when a view is built

    return visualize


IMAGE = "sensor_msgs/msg/Image"

#: The node's outputs, in publishing order. The node publishes each one (images and markers only while
#: someone subscribes), ``pebal-bag process`` writes the default ones, the test harness subscribes to them:
#: a new output is one entry here.
OUTPUTS: tuple[OutputTopic, ...] = (
    OutputTopic("semantic", IMAGE, lambda m: m.image(m.semantic, "mono8"), default=True),
    OutputTopic("semantic/color", IMAGE, lambda m: m.image(_visualize().colorize(m.semantic), "rgb8"),
                on_request=True),
    OutputTopic("energy", IMAGE, lambda m: m.image(m.score, "32FC1"), default=True),
    OutputTopic("obstacle_mask", IMAGE, lambda m: m.image(m.frame.mask.astype(np.uint8) * 255, "mono8"),
                default=True),
    OutputTopic("overlay", IMAGE, lambda m: m.image(_visualize().overlay(m.rgb, m.semantic, m.frame.mask), "rgb8")),
    OutputTopic("debug", IMAGE, lambda m: m.image(_visualize().debug_overlay(m.rgb, m.frame), "rgb8"),
                on_request=True),
    OutputTopic("obstacles/markers", "visualization_msgs/msg/MarkerArray",
                lambda m: obstacle_markers(m.frame.obstacles, m.header, m.classes.Marker, m.classes.MarkerArray),
                needs="MarkerArray", on_request=True),
    OutputTopic("result", "pebal_perception/msg/AnomalyResult", _result, needs="AnomalyResult", default=True,
                always=True, late=True),
    OutputTopic("processing_time_ms", "std_msgs/msg/Float32",
                lambda m: m.classes.Float32(data=float(m.processing_time_ms)), needs="Float32", always=True,
                late=True),
)
OUTPUTS_BY_NAME = {t.name: t for t in OUTPUTS}
#: Output topic names (relative to the node's ``~/``), in publishing order.
OUTPUT_TOPICS = tuple(t.name for t in OUTPUTS)
#: The images built when the caller does not say which.
DEFAULT_IMAGES = tuple(t.name for t in OUTPUTS if t.default and not t.always)


def message_class(msgtype: str) -> Any:
    """The rclpy class of one of :data:`OUTPUTS`' message types ("pkg/msg/Name"); only ever called with
    the table's own type names."""
    import importlib

    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def uint8_array(data: bytes) -> np.ndarray:
    """``image_data`` for message classes whose ``uint8[]`` fields are numpy arrays (rosbags)."""
    return np.frombuffer(data, dtype=np.uint8)


def obstacle_message(o: Obstacle, classes: MessageClasses) -> Any:
    """A ``pebal_perception/Obstacle`` message of one obstacle."""
    x, y, w, h = o.bbox
    gx, gy, gz = o.ground_position
    first_seen = {}
    if classes.Time is not None:
        sec, nanosec = divmod(int(o.first_seen_ns), 1_000_000_000)
        first_seen["first_seen"] = classes.Time(sec=int(sec), nanosec=int(nanosec))
    return classes.Obstacle(id=int(o.id), track_id=int(o.track_id), age_frames=int(o.age_frames), held=bool(o.held),
                            x_offset=int(x), y_offset=int(y), width=int(w), height=int(h),
                            area=int(o.area), mean_score=float(o.mean_score), max_score=float(o.max_score),
                            drivable_fraction=float(o.drivable_fraction), width_m=float(o.width_m),
                            ground_position=classes.Point(x=float(gx), y=float(gy), z=float(gz)), **first_seen)


def build_output_messages(rgb: np.ndarray, semantic: np.ndarray, score: np.ndarray, frame: ProcessedFrame,
                          header: Any, classes: MessageClasses, *, model_id: str, threshold: float,
                          overlay: bool = False, debug: bool = False, wanted: Collection[str] | None = None,
                          processing_time_ms: float = 0.0, late: bool | None = None) -> dict[str, Any]:
    """Topic name -> message for one frame, in :data:`OUTPUTS` order: the ``wanted`` topics (the node: those
    with subscribers), else the default ones plus ``overlay`` / ``debug`` when asked for, and those built
    ``always``; a topic whose message class ``classes`` lacks is left out. ``late`` True / False: only the
    late / only the other topics (None: both). ``rgb`` is the input frame, ``semantic`` / ``score`` the
    engine's maps and ``frame`` their post-processing; ``header`` (the input image's) is copied into every
    message."""
    if wanted is None:
        wanted = ({t.name for t in OUTPUTS if t.default} | ({"overlay"} if overlay else set())
                  | ({"debug"} if debug else set()))
    unknown = set(wanted) - set(OUTPUTS_BY_NAME)
    if unknown:
        raise ValueError(f"unknown output topics {sorted(unknown)}")
    parts = FrameMessages(rgb=rgb, semantic=semantic, score=score, frame=frame, header=header, classes=classes,
                          model_id=model_id, threshold=threshold, processing_time_ms=processing_time_ms)
    return {t.name: t.build(parts) for t in OUTPUTS
            if (t.name in wanted or t.always) and getattr(classes, t.needs) is not None
            and (late is None or t.late == late)}


# ---------------------------------------------------------------------------------------- RViz markers

MARKER_NAMESPACE = "pebal_obstacles"
MARKER_COLOUR = (1.0, 0.0, 1.0, 0.6)  # magenta, as in the overlays
DEFAULT_MARKER_WIDTH_M = 0.5  # when the obstacle's width is unknown
TEXT_HEIGHT_M = 0.4


def marker_id(ident: int, text: bool) -> int:
    """The Marker id (int32) of an obstacle's box or text: two per track id, wrapping after 2**30 track
    ids so that a long-running node never overflows the field (ids 2**30 apart would share a marker)."""
    return 2 * ((ident - 1) % 2**30) + int(text)


def obstacle_markers(obstacles, header: Any, marker_cls: Any, array_cls: Any) -> Any:
    """``visualization_msgs/MarkerArray`` for RViz: a DELETEALL first (so obstacles that disappeared, or
    lost their position, vanish), then per obstacle with a finite ground position a box standing on the
    ground there (as wide and as tall as ``width_m``, else :data:`DEFAULT_MARKER_WIDTH_M`) and a text
    ``#track_id score`` above it. Positions are in the camera's optical frame (x right, y down, z
    forward: ``header.frame_id``, the input image's), as ``Obstacle.ground_position``."""
    clear = marker_cls()
    clear.header, clear.ns, clear.action = header, MARKER_NAMESPACE, marker_cls.DELETEALL
    markers = [clear]
    for o in obstacles:
        x, y, z = (float(v) for v in o.ground_position)
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            continue
        size = float(o.width_m) if math.isfinite(o.width_m) and o.width_m > 0 else DEFAULT_MARKER_WIDTH_M
        ident = int(o.track_id) or int(o.id) + 1
        for kind, offset in ((marker_cls.CUBE, size / 2), (marker_cls.TEXT_VIEW_FACING, size + TEXT_HEIGHT_M)):
            m = marker_cls()
            m.header, m.ns, m.action, m.type = header, MARKER_NAMESPACE, marker_cls.ADD, kind
            m.id = marker_id(ident, kind == marker_cls.TEXT_VIEW_FACING)
            m.pose.position.x, m.pose.position.y, m.pose.position.z = x, y - offset, z  # y points down
            m.pose.orientation.w = 1.0
            if kind == marker_cls.CUBE:
                m.scale.x = m.scale.y = m.scale.z = size
            else:
                m.scale.z = TEXT_HEIGHT_M
                m.text = f"#{ident} {float(o.mean_score):.1f}"
            m.color.r, m.color.g, m.color.b, m.color.a = MARKER_COLOUR if kind == marker_cls.CUBE else (1.0,) * 4
            markers.append(m)
    out = array_cls()
    out.markers = markers
    return out
