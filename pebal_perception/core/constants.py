"""The label space and input convention every PEBAL model, dataset and metric shares, defined once.

Everything else (scoring, checkpoints, visualisation, the training data pipeline, losses, metrics,
recipes, benches) imports these names from here, so the values cannot drift apart:

* ``NUM_INLIER_CLASSES`` = 19 Cityscapes trainIds (0 road ... 18 bicycle), ``NUM_OUTPUTS`` = 20: the
  inlier logits plus PEBAL's abstention channel (index 19, used by the training loss only);
* ``CITYSCAPES_CLASSES``: the trainId names, ``CITYSCAPES_PALETTE``: their standard RGB colours;
* ``IGNORE_LABEL`` (= ``VOID``) 255: void / padding pixels, ignored by losses and metrics (also the
  void value of the unified anomaly encoding 0 inlier / 1 anomaly / 255 void);
* ``OUTLIER_LABEL`` 254: pixels pasted from an outlier object during outlier exposure;
* ``IMAGENET_MEAN`` / ``IMAGENET_STD``: the RGB normalisation of the ImageNet-pretrained backbones,
  applied to ``pixel / 255``.

Imports neither ROS nor torch nor the training code.
"""
from __future__ import annotations

import numpy as np

#: Cityscapes trainIds the models segment (channels 0..18 of the logits).
NUM_INLIER_CLASSES = 19
#: Logit channels of every model: the inlier classes plus the abstention channel (the last one).
NUM_OUTPUTS = NUM_INLIER_CLASSES + 1

#: trainId -> class name.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)

#: The standard Cityscapes trainId colours (RGB), ``NUM_INLIER_CLASSES x 3`` uint8, read-only.
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
CITYSCAPES_PALETTE.setflags(write=False)

#: Void / padding label: ignored by the losses and every metric.
IGNORE_LABEL = 255
#: The same value under the name the label tables and the synthetic scenes use.
VOID = IGNORE_LABEL
#: Label of pixels pasted from an outlier (COCO) object during outlier exposure.
OUTLIER_LABEL = 254

#: RGB normalisation ``(pixel / 255 - mean) / std`` of the ImageNet-pretrained backbones.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
