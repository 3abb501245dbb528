"""One frame's output messages, for the live node (rclpy classes) and ``pebal-bag process`` (rosbags classes).

ROS-free: the message classes come in as :class:`MessageClasses`, so both producers write exactly the
same mapping of a processed frame to messages:

* ``semantic``: mono8 trainIds, ``energy``: 32FC1 anomaly score, ``obstacle_mask``: mono8 0/255,
  ``overlay`` and ``debug`` (each only when asked for: the node asks while someone subscribes): rgb8
  visualisations (``debug``: drivable surface, excluded zone, horizon, every candidate region with its
  score and why it was rejected), all at the input resolution;
* ``result``: ``pebal_perception/AnomalyResult`` with one ``Obstacle`` per region;
* every message carries the input image's header.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pebal_perception.core.obstacles import Obstacle
from pebal_perception.image_conversion import rgb_to_image_fields
from pebal_perception.node.processing import ProcessedFrame

#: Output topic suffixes (relative to the node's ``~/``), in publishing order.
OUTPUT_TOPICS = ("semantic", "energy", "obstacle_mask", "overlay", "debug", "result")


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
                          overlay: bool = False, debug: bool = False,
                          processing_time_ms: float = 0.0) -> dict[str, Any]:
    """Topic suffix -> message for one frame (keys in :data:`OUTPUT_TOPICS` order; ``overlay`` and
    ``debug`` only when asked for). ``rgb`` is the input frame, ``semantic`` / ``score`` the engine's maps and
    ``frame`` their post-processing (processing.process_frame); ``header`` (the input image's) is
    copied into every message. The caller may update ``result.processing_time_ms`` once it has
    published the images."""

    def image(array: np.ndarray, encoding: str) -> Any:
        fields = rgb_to_image_fields(array, encoding)
        fields["data"] = classes.image_data(fields["data"])
        return classes.Image(header=header, **fields)

    messages = {
        "semantic": image(semantic, "mono8"),
        "energy": image(score, "32FC1"),
        "obstacle_mask": image(frame.mask.astype(np.uint8) * 255, "mono8"),
    }
    if overlay:
        from pebal_perception.core.visualize import overlay as draw_overlay

        messages["overlay"] = image(draw_overlay(rgb, semantic, frame.mask), "rgb8")
    if debug:
        from pebal_perception.core.visualize import debug_overlay

        messages["debug"] = image(debug_overlay(rgb, frame), "rgb8")
    messages["result"] = classes.AnomalyResult(
        header=header, model_id=str(model_id), threshold=float(threshold),
        anomalous_fraction=float(frame.anomalous_fraction), max_score=float(frame.max_score),
        processing_time_ms=float(processing_time_ms),
        obstacles=[obstacle_message(o, classes) for o in frame.obstacles])
    return messages
