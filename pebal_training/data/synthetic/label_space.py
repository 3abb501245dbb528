"""Label space of the scenes: Cityscapes trainIds, their names and visualisation colours."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# VOID (255), the trainId names and the standard Cityscapes colours (for visualisation only; scenes use
# photo colours) are defined once in pebal_perception.core.constants.
from pebal_perception.core.constants import CITYSCAPES_CLASSES as TRAIN_ID_NAMES  # noqa: F401 (re-exported)
from pebal_perception.core.constants import CITYSCAPES_PALETTE, NUM_INLIER_CLASSES
from pebal_perception.core.constants import VOID as VOID  # re-exported

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(NUM_INLIER_CLASSES)


def colorize_labels(semantic: np.ndarray, void_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Map an ``H x W`` trainId image to an ``H x W x 3`` RGB image with :data:`CITYSCAPES_PALETTE`."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = np.asarray(void_color, np.uint8)
    lut[:NUM_INLIER_CLASSES] = CITYSCAPES_PALETTE
    return lut[np.asarray(semantic, np.uint8)]
