"""Label space of the scenes: Cityscapes trainIds, their names and visualisation colours."""
from __future__ import annotations

from typing import Sequence

import numpy as np

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)
VOID = 255

TRAIN_ID_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: The standard Cityscapes colours of the 19 trainIds (for visualisation only; scenes use photo colours).
CITYSCAPES_PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
     [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
     [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]],
    dtype=np.uint8)


def colorize_labels(semantic: np.ndarray, void_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Map an ``H x W`` trainId image to an ``H x W x 3`` RGB image with :data:`CITYSCAPES_PALETTE`."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = np.asarray(void_color, np.uint8)
    lut[:19] = CITYSCAPES_PALETTE
    return lut[np.asarray(semantic, np.uint8)]
