"""From an obstacle mask to obstacle summaries a planner can use."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

ROAD_TRAIN_ID = 0
DRIVABLE_TRAIN_IDS = (ROAD_TRAIN_ID,)
#: Road users the segmentation names (person, rider, car, truck, bus, train, motorcycle, bicycle): known
#: objects, which the vehicle's object detection handles; not unexpected obstacles.
ROAD_USER_TRAIN_IDS = (11, 12, 13, 14, 15, 16, 17, 18)


@dataclass
class Obstacle:
    id: int
    bbox: tuple[int, int, int, int]  # x, y, width, height in pixels of the input image
    area: int  # pixels
    mean_score: float
    max_score: float
    drivable_fraction: float  # share of the footprint (the rows just below the blob) predicted drivable
    ground_position: tuple[float, float, float] = field(default=(float("nan"),) * 3)  # camera frame, metres
    width_m: float = float("nan")  # width at its distance [m], NaN when no scale is known
    track_id: int = 0  # stable over frames (core.tracking); 0 = not tracked
    age_frames: int = 1  # frames since first detected (first = 1)
    first_seen_ns: int = 0  # stamp of the first frame it was detected in
    held: bool = False  # not detected in this frame, kept by the tracker's hold

    def to_dict(self) -> dict:
        return {"id": self.id, "bbox": list(self.bbox), "area": self.area, "mean_score": self.mean_score,
                "max_score": self.max_score, "drivable_fraction": self.drivable_fraction,
                "ground_position": list(self.ground_position), "width_m": self.width_m,
                "track_id": self.track_id, "age_frames": self.age_frames, "first_seen_ns": self.first_seen_ns,
                "held": self.held}


def extract_obstacles(mask: np.ndarray, score: np.ndarray, semantic: np.ndarray | None = None,
                      min_area: int = 1, footprint_rows: int = 3) -> list[Obstacle]:
    """One Obstacle per 8-connected region of ``mask`` with at least ``min_area`` pixels.

    The drivable fraction looks at the ``footprint_rows`` pixel rows directly below each region's
    columns (where an object touches the ground) and also the region's own predicted classes, so it
    is meaningful whether the network labels the object itself as road or not.
    """
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    h = mask.shape[0]
    obstacles = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < min_area:
            continue
        x, y, w, bh = (int(v) for v in stats[i, :4])
        region = labels[y:y + bh, x:x + w] == i
        values = score[y:y + bh, x:x + w][region]
        drivable = float("nan")
        if semantic is not None:
            y0, y1 = y + bh, min(h, y + bh + footprint_rows)
            below = semantic[y0:y1, x:x + w]
            if below.size == 0:  # the region touches the image bottom: use its own bottom rows
                below = semantic[max(y, y + bh - footprint_rows):y + bh, x:x + w]
            drivable = float(np.isin(below, DRIVABLE_TRAIN_IDS).mean()) if below.size else float("nan")
        obstacles.append(Obstacle(id=len(obstacles), bbox=(x, y, w, bh), area=area,
                                  mean_score=float(values.mean()), max_score=float(values.max()),
                                  drivable_fraction=drivable))
    return obstacles
