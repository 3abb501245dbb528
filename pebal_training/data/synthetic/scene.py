"""What rendering returns: a :class:`Scene` (image, label maps, camera) and its visible obstacles."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .camera import Camera


@dataclass
class Obstacle:
    """One anomaly visible in a scene."""

    #: Identifier, stable across the frames of a drive.
    id: int
    #: One of :data:`ANOMALY_KINDS`.
    kind: str
    #: Tight box around the visible anomaly pixels: ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive.
    bbox: tuple[int, int, int, int]
    #: Visible pixels (anomaly value 1).
    area: int
    #: Pixels the object would cover inside the image without occluders (cars, people, the bonnet).
    full_area: int
    #: ``(x, z)`` of the nearest contact point, camera ground frame, metres (see package docstring).
    ground_position: tuple[float, float]
    #: ``(X, Z)`` of the same point in the world frame (``Z`` along the road; fixed during a drive).
    world_position: tuple[float, float]
    #: Extent ``(width, height, length)`` in metres (lateral, vertical, along the road).
    size: tuple[float, float, float]
    #: Whether the object's projection is cut by the image border.
    truncated: bool

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area if self.full_area else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = [int(b) for b in self.bbox]
        d["ground_position"] = [round(float(v), 4) for v in self.ground_position]
        d["world_position"] = [round(float(v), 4) for v in self.world_position]
        d["size"] = [round(float(v), 4) for v in self.size]
        d["visible_fraction"] = round(self.visible_fraction, 4)
        return d


@dataclass
class Scene:
    """One rendered frame."""

    #: ``H x W x 3`` uint8 RGB.
    image: np.ndarray
    #: ``H x W`` uint8 trainIds; anomaly pixels carry the label of the surface they rest on (road).
    semantic: np.ndarray
    #: ``H x W`` uint8: 0 inlier, 1 anomaly, 255 void.
    anomaly: np.ndarray
    #: Visible anomalies (area > 0), nearest first.
    obstacles: list[Obstacle]
    camera: Camera
    #: World ``Z`` of the camera (metres along the road).
    ego_z: float = 0.0
    #: Seconds since the start of the drive (0 for single scenes).
    timestamp: float = 0.0
    frame_index: int = 0
    #: ``H x W`` uint8 obstacle ids (:attr:`Obstacle.id`, stable across a drive; 0 = none, and under the
    #: bonnet); ``None`` for scenes made without it.
    instances: np.ndarray | None = None

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description (camera, obstacles, timing)."""
        return {
            "camera": self.camera.to_dict(),
            "ego_z": round(float(self.ego_z), 4),
            "timestamp": round(float(self.timestamp), 6),
            "frame_index": int(self.frame_index),
            "obstacles": [o.to_dict() for o in self.obstacles],
        }
