"""Label tables and label-encoding mappers.

Two families of tables live here:

* **Cityscapes** ``labelId -> trainId`` (the 19 evaluation classes, everything else void = 255), used
  to read ``*_gtFine_labelIds.png`` when ``*_gtFine_labelTrainIds.png`` are absent.
* **LostAndFound** ``labelId -> trainId`` (``*_gtCoarse_labelIds.png``), and the mappers that bring
  every anomaly benchmark's own encoding to one **unified** encoding:

  ====== =====================================
  value  meaning
  ====== =====================================
  0      inlier (in-distribution) pixel
  1      anomaly pixel
  255    void: ignored by every metric
  ====== =====================================

Every mapper takes a 2-D integer array and returns a new ``uint8`` array; none modifies its input.
A value that the benchmark's encoding does not define raises :class:`LabelValueError` (a
``ValueError``) listing the offending values; the dataset readers turn it into a one-line error
that names the file.

Nothing here imports ROS.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# VOID / IGNORE_LABEL (255), OUTLIER_LABEL (254), the 19 classes and their names are defined once in
# pebal_perception.core.constants; re-exported here under the names the data pipeline uses.
from pebal_perception.core.constants import CITYSCAPES_CLASSES, IGNORE_LABEL, VOID
from pebal_perception.core.constants import OUTLIER_LABEL as OUTLIER_LABEL  # re-exported
from pebal_perception.core.constants import NUM_INLIER_CLASSES as NUM_CLASSES

#: Unified anomaly-label encoding (void: :data:`VOID`).
INLIER = 0
ANOMALY = 1


class LabelValueError(ValueError):
    """A label map holds values its encoding does not define."""


class CityscapesLabel(NamedTuple):
    name: str
    label_id: int
    train_id: int


#: The Cityscapes label definition (labelId, name, trainId). ``license plate`` has labelId -1 in the
#: official table; it never occurs in a ``labelIds`` PNG and is listed for completeness only.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, IGNORE_LABEL),
    CityscapesLabel("ego vehicle", 1, IGNORE_LABEL),
    CityscapesLabel("rectification border", 2, IGNORE_LABEL),
    CityscapesLabel("out of roi", 3, IGNORE_LABEL),
    CityscapesLabel("static", 4, IGNORE_LABEL),
    CityscapesLabel("dynamic", 5, IGNORE_LABEL),
    CityscapesLabel("ground", 6, IGNORE_LABEL),
    CityscapesLabel("road", 7, 0),
    CityscapesLabel("sidewalk", 8, 1),
    CityscapesLabel("parking", 9, IGNORE_LABEL),
    CityscapesLabel("rail track", 10, IGNORE_LABEL),
    CityscapesLabel("building", 11, 2),
    CityscapesLabel("wall", 12, 3),
    CityscapesLabel("fence", 13, 4),
    CityscapesLabel("guard rail", 14, IGNORE_LABEL),
    CityscapesLabel("bridge", 15, IGNORE_LABEL),
    CityscapesLabel("tunnel", 16, IGNORE_LABEL),
    CityscapesLabel("pole", 17, 5),
    CityscapesLabel("polegroup", 18, IGNORE_LABEL),
    CityscapesLabel("traffic light", 19, 6),
    CityscapesLabel("traffic sign", 20, 7),
    CityscapesLabel("vegetation", 21, 8),
    CityscapesLabel("terrain", 22, 9),
    CityscapesLabel("sky", 23, 10),
    CityscapesLabel("person", 24, 11),
    CityscapesLabel("rider", 25, 12),
    CityscapesLabel("car", 26, 13),
    CityscapesLabel("truck", 27, 14),
    CityscapesLabel("bus", 28, 15),
    CityscapesLabel("caravan", 29, IGNORE_LABEL),
    CityscapesLabel("trailer", 30, IGNORE_LABEL),
    CityscapesLabel("train", 31, 16),
    CityscapesLabel("motorcycle", 32, 17),
    CityscapesLabel("bicycle", 33, 18),
    CityscapesLabel("license plate", -1, IGNORE_LABEL),
)

#: trainId -> class name, for the 19 training classes (the names of the table above).
CITYSCAPES_TRAIN_NAMES: tuple[str, ...] = CITYSCAPES_CLASSES
#: Values a valid ``labelTrainIds`` map may hold.
CITYSCAPES_TRAIN_ID_VALUES = frozenset(range(NUM_CLASSES)) | {IGNORE_LABEL}


def _lut(pairs: dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    for src, dst in pairs.items():
        if 0 <= src <= 255:
            lut[src] = dst
    return lut


#: 256-entry lookup table labelId -> trainId (ids outside the official table map to void).
CITYSCAPES_ID_TO_TRAIN_ID = _lut({lab.label_id: lab.train_id for lab in CITYSCAPES_LABELS}, IGNORE_LABEL)


def _check_integer_2d(label: np.ndarray, what: str) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise LabelValueError(f"{what}: expected a single-channel H x W label map, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise LabelValueError(f"{what}: expected an integer label map, got dtype {label.dtype}")
    return label


def _values_outside(label: np.ndarray, allowed: frozenset[int]) -> list[int]:
    present = np.unique(label)
    return [int(v) for v in present if int(v) not in allowed]


def _format_values(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", …" if len(values) > limit else "")


def _lookup(label: np.ndarray, lut: np.ndarray, what: str) -> np.ndarray:
    label = _check_integer_2d(label, what)
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        bad = [int(v) for v in np.unique(label) if v < 0 or v > 255]
        raise LabelValueError(f"unexpected {what} values {_format_values(bad)} (expected 0..255)")
    return lut[label.astype(np.intp, copy=False)]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes ``labelIds`` -> ``trainIds`` (0..18, 255 void) as uint8.

    Every labelId that is not one of the 19 training classes (including ids the official table does
    not define) becomes 255, as in the official ``createTrainIdLabelImgs`` conversion.
    """
    return _lookup(label_ids, CITYSCAPES_ID_TO_TRAIN_ID, "Cityscapes labelId")


def check_train_ids(train_ids: np.ndarray, allow_outlier: bool = False) -> np.ndarray:
    """Validates a Cityscapes ``trainIds`` map (values 0..18 or 255); returns it as uint8.

    ``allow_outlier=True`` also accepts :data:`OUTLIER_LABEL` (254): an inlier frame that carries
    outlier pixels (e.g. objects pasted on its road), which the losses treat as pasted OE pixels
    (``data.inlier_outlier_label``). By default a 254 is an error, as in real Cityscapes.
    """
    train_ids = _check_integer_2d(train_ids, "Cityscapes trainId")
    allowed = CITYSCAPES_TRAIN_ID_VALUES | {OUTLIER_LABEL} if allow_outlier else CITYSCAPES_TRAIN_ID_VALUES
    bad = _values_outside(train_ids, allowed)
    if bad:
        expected = f"0..18, {OUTLIER_LABEL} or 255" if allow_outlier else "0..18 or 255"
        raise LabelValueError(f"unexpected Cityscapes trainId values {_format_values(bad)} (expected {expected})")
    return train_ids.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------------
# LostAndFound
#
# Provenance: Meta-OoD's LostAndFound trainId table (also used by PEBAL and RPL): 1 = free road
# (inlier), 2 = obstacle (anomaly), 0 = "random non-hazard" objects and 255 = everything else. The
# per-labelId assignment below (which of the dataset's 42 object labelIds are "random non-hazards")
# follows that public table:
# labelId 0 (unlabeled / ego vehicle / rectification border / out of roi / background) -> 255,
# 1 (free) -> 1, 2..43 (objects) -> 2 except the seven random non-hazards -> 0.


class LostAndFoundLabel(NamedTuple):
    name: str
    label_id: int
    train_id: int
    category: str


LOST_AND_FOUND_LABELS: tuple[LostAndFoundLabel, ...] = (
    LostAndFoundLabel("unlabeled", 0, VOID, "Miscellaneous"),
    LostAndFoundLabel("free", 1, 1, "Counter hypotheses"),
    LostAndFoundLabel("Crate (black)", 2, 2, "Standard objects"),
    LostAndFoundLabel("Crate (black - stacked)", 3, 2, "Standard objects"),
    LostAndFoundLabel("Crate (black - upright)", 4, 2, "Standard objects"),
    LostAndFoundLabel("Crate (gray)", 5, 2, "Standard objects"),
    LostAndFoundLabel("Crate (gray - stacked)", 6, 2, "Standard objects"),
    LostAndFoundLabel("Crate (gray - upright)", 7, 2, "Standard objects"),
    LostAndFoundLabel("Bumper", 8, 2, "Random hazards"),
    LostAndFoundLabel("Cardboard box 1", 9, 2, "Random hazards"),
    LostAndFoundLabel("Crate (blue)", 10, 2, "Random hazards"),
    LostAndFoundLabel("Crate (blue - small)", 11, 2, "Random hazards"),
    LostAndFoundLabel("Crate (green)", 12, 2, "Random hazards"),
    LostAndFoundLabel("Crate (green - small)", 13, 2, "Random hazards"),
    LostAndFoundLabel("Exhaust Pipe", 14, 2, "Random hazards"),
    LostAndFoundLabel("Headlight", 15, 2, "Random hazards"),
    LostAndFoundLabel("Euro Pallet", 16, 2, "Random hazards"),
    LostAndFoundLabel("Pylon", 17, 2, "Random hazards"),
    LostAndFoundLabel("Pylon (large)", 18, 2, "Random hazards"),
    LostAndFoundLabel("Pylon (white)", 19, 2, "Random hazards"),
    LostAndFoundLabel("Rearview mirror", 20, 2, "Random hazards"),
    LostAndFoundLabel("Tire", 21, 2, "Random hazards"),
    LostAndFoundLabel("Ball", 22, 2, "Emotional hazards"),
    LostAndFoundLabel("Bicycle", 23, 2, "Emotional hazards"),
    LostAndFoundLabel("Dog (black)", 24, 2, "Emotional hazards"),
    LostAndFoundLabel("Dog (white)", 25, 2, "Emotional hazards"),
    LostAndFoundLabel("Kid dummy", 26, 2, "Emotional hazards"),
    LostAndFoundLabel("Bobby car (gray)", 27, 2, "Emotional hazards"),
    LostAndFoundLabel("Bobby car (red)", 28, 2, "Emotional hazards"),
    LostAndFoundLabel("Bobby car (yellow)", 29, 2, "Emotional hazards"),
    LostAndFoundLabel("Cardboard box 2", 30, 2, "Random hazards"),
    LostAndFoundLabel("Marker pole (lying)", 31, 0, "Random non-hazards"),
    LostAndFoundLabel("Plastic bag (bloated)", 32, 2, "Random hazards"),
    LostAndFoundLabel("Post (red - lying)", 33, 0, "Random non-hazards"),
    LostAndFoundLabel("Post stand", 34, 0, "Random non-hazards"),
    LostAndFoundLabel("Styrofoam", 35, 2, "Random hazards"),
    LostAndFoundLabel("Timber (small)", 36, 0, "Random non-hazards"),
    LostAndFoundLabel("Timber (squared)", 37, 0, "Random non-hazards"),
    LostAndFoundLabel("Wheel cap", 38, 0, "Random non-hazards"),
    LostAndFoundLabel("Wood (thin)", 39, 0, "Random non-hazards"),
    LostAndFoundLabel("Kid (walking)", 40, 2, "Humans"),
    LostAndFoundLabel("Kid (on a bobby car)", 41, 2, "Humans"),
    LostAndFoundLabel("Kid (small bobby)", 42, 2, "Humans"),
    LostAndFoundLabel("Kid (crawling)", 43, 2, "Humans"),
)

#: LostAndFound trainIds.
LAF_TRAIN_ID_NON_HAZARD = 0
LAF_TRAIN_ID_FREE = 1
LAF_TRAIN_ID_OBSTACLE = 2
LAF_TRAIN_ID_VALUES = frozenset({0, 1, 2, VOID})
#: 256-entry lookup table LostAndFound labelId -> trainId ("everything else" -> 255).
LAF_ID_TO_TRAIN_ID = _lut({lab.label_id: lab.train_id for lab in LOST_AND_FOUND_LABELS}, VOID)


def laf_label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """LostAndFound ``gtCoarse_labelIds`` -> ``gtCoarse_labelTrainIds`` (0, 1, 2, 255) as uint8."""
    return _lookup(label_ids, LAF_ID_TO_TRAIN_ID, "LostAndFound labelId")


def laf_train_ids_to_unified(train_ids: np.ndarray) -> np.ndarray:
    """LostAndFound trainIds -> unified: 1 (free road) -> 0, 2 (obstacle) -> 1, 0 and 255 -> 255.

    The evaluation is therefore restricted to the road region of interest, as in the reference.
    """
    train_ids = _check_integer_2d(train_ids, "LostAndFound trainId")
    bad = _values_outside(train_ids, LAF_TRAIN_ID_VALUES)
    if bad:
        raise LabelValueError(f"unexpected LostAndFound trainId values {_format_values(bad)} (expected 0, 1, 2 or 255)")
    out = np.full(train_ids.shape, VOID, dtype=np.uint8)
    out[train_ids == LAF_TRAIN_ID_FREE] = INLIER
    out[train_ids == LAF_TRAIN_ID_OBSTACLE] = ANOMALY
    return out


def laf_label_ids_to_unified(label_ids: np.ndarray) -> np.ndarray:
    """LostAndFound labelIds -> unified, through :func:`laf_label_ids_to_train_ids`."""
    return laf_train_ids_to_unified(laf_label_ids_to_train_ids(label_ids))


# --------------------------------------------------------------------------------------------------
# Benchmarks that already ship 0 / 1 / 255

UNIFIED_VALUES = frozenset({INLIER, ANOMALY, VOID})


def _check_unified(label: np.ndarray, what: str) -> np.ndarray:
    label = _check_integer_2d(label, what)
    bad = _values_outside(label, UNIFIED_VALUES)
    if bad:
        raise LabelValueError(f"unexpected {what} label values {_format_values(bad)} (expected 0, 1 or 255)")
    return label.astype(np.uint8, copy=True)


def fishyscapes_to_unified(label: np.ndarray) -> np.ndarray:
    """Fishyscapes (L&F and Static, SynBoost-preprocessed): already 0 inlier, 1 anomaly, 255 void."""
    return _check_unified(label, "Fishyscapes")


def road_anomaly_to_unified(label: np.ndarray, encoding: str = "synboost") -> np.ndarray:
    """Road Anomaly -> unified.

    ``encoding="synboost"`` (the SynBoost-preprocessed release the reference evaluates on):
    0 = inlier, 1 = anomaly; 255 is accepted as void although that release does not use it.

    ``encoding="epfl"``: the original EPFL release (``*.labels/labels_semantic.png``) marks anomalies
    with 2 and everything else with 0; it is converted 0 -> 0, 2 -> 1 (255 -> void).

    ``encoding="auto"`` decides per file: a label holding 2 (and no 1) is the EPFL encoding, any other
    the SynBoost one (a label with only 0 reads the same either way).

    Any other value raises :class:`LabelValueError`. In particular a 2 in a "synboost" label is
    reported rather than guessed: it means the tree is the original release (pass ``encoding="epfl"``).
    """
    if encoding == "synboost":
        try:
            return _check_unified(label, "Road Anomaly")
        except LabelValueError as exc:
            if 2 in np.unique(np.asarray(label)):
                raise LabelValueError(f"{exc}; 2 marks anomalies in the original EPFL release: "
                                      "pass encoding='epfl' for that release") from None
            raise
    if encoding == "epfl":
        label = _check_integer_2d(label, "Road Anomaly (EPFL)")
        bad = _values_outside(label, frozenset({0, 2, VOID}))
        if bad:
            raise LabelValueError(
                f"unexpected Road Anomaly (EPFL) label values {_format_values(bad)} (expected 0, 2 or 255)")
        out = np.full(label.shape, VOID, dtype=np.uint8)
        out[label == 0] = INLIER
        out[label == 2] = ANOMALY
        return out
    if encoding == "auto":
        values = np.unique(np.asarray(label))
        return road_anomaly_to_unified(label, "epfl" if 2 in values and 1 not in values else "synboost")
    raise ValueError(f"unknown Road Anomaly encoding {encoding!r} (expected 'synboost', 'epfl' or 'auto')")


def smiyc_to_unified(label: np.ndarray) -> np.ndarray:
    """SegmentMeIfYouCan RoadAnomaly21 / RoadObstacle21 ``*_labels_semantic.png``: 0 not anomaly,
    1 anomaly, 255 void; already the unified encoding."""
    return _check_unified(label, "SegmentMeIfYouCan")
