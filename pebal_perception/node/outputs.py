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
from pebal_perception.image_conversion import rgb_to_image_fields
from pebal_perception.core.postprocess import ProcessedFrame

#: Output topic suffixes (relative to the node's ``~/``), in publishing order.
OUTPUT_TOPICS = ("semantic", "semantic/color", "energy", "obstacle_mask", "overlay", "debug", "result")
#: The images built when the caller does not say which (``pebal-bag process``, benchmarks).
DEFAULT_IMAGES = ("semantic", "energy", "obstacle_mask")


@dataclass(frozen=True)
class MessageClasses:
    """Constructors of the output message types (keyword arguments = the message fields).

    ``image_data`` turns the packed pixel bytes into what ``Image(data=...)`` takes: ``bytes`` as they
    are for rclpy, a uint8 array for rosbags."""

    Image: Callable[..., Any]  # named as the message types
    AnomalyResult: Callable[..., Any]
    Obstacle: Callable[..., Any]
    Point: Callable[..., Any]
    image_data: Callable[[bytes], Any] = bytes
    Time: Callable[..., Any] | None = None  # builtin_interfaces/Time (Obstacle.first_seen)


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
                          processing_time_ms: float = 0.0) -> dict[str, Any]:
    """Topic suffix -> message for one frame (keys in :data:`OUTPUT_TOPICS` order). The images are
    ``wanted`` when given (the node: the topics with subscribers), else :data:`DEFAULT_IMAGES` plus
    ``overlay`` / ``debug`` when asked for; ``result`` is always built. ``rgb`` is the input frame,
    ``semantic`` / ``score`` the engine's maps and ``frame`` their post-processing
    (processing.process_frame); ``header`` (the input image's) is copied into every message. The
    caller may update ``result.processing_time_ms`` once it has published the images."""

    def image(array: np.ndarray, encoding: str) -> Any:
        fields = rgb_to_image_fields(array, encoding)
        fields["data"] = classes.image_data(fields["data"])
        return classes.Image(header=header, **fields)

    if wanted is None:
        wanted = set(DEFAULT_IMAGES) | ({"overlay"} if overlay else set()) | ({"debug"} if debug else set())
    unknown = set(wanted) - set(OUTPUT_TOPICS)
    if unknown:
        raise ValueError(f"unknown output topics {sorted(unknown)}")
    from pebal_perception.core import visualize

    builders = {
        "semantic": lambda: image(semantic, "mono8"),
        "semantic/color": lambda: image(visualize.colorize(semantic), "rgb8"),
        "energy": lambda: image(score, "32FC1"),
        "obstacle_mask": lambda: image(frame.mask.astype(np.uint8) * 255, "mono8"),
        "overlay": lambda: image(visualize.overlay(rgb, semantic, frame.mask), "rgb8"),
        "debug": lambda: image(visualize.debug_overlay(rgb, frame), "rgb8"),
    }
    messages = {topic: builders[topic]() for topic in OUTPUT_TOPICS if topic in wanted and topic in builders}
    messages["result"] = classes.AnomalyResult(
        header=header, model_id=str(model_id), threshold=float(threshold),
        anomalous_fraction=float(frame.anomalous_fraction), max_score=float(frame.max_score),
        processing_time_ms=float(processing_time_ms),
        obstacles=[obstacle_message(o, classes) for o in frame.obstacles])
    return messages


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
