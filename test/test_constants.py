"""The shared constants (pebal_perception.core.constants) hold the Cityscapes/PEBAL values, and every
module that offers one of them under its own name hands out that very object, so they cannot drift."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest

from pebal_perception.core import constants as C

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_values_are_the_cityscapes_and_pebal_ones():
    assert C.NUM_INLIER_CLASSES == 19
    assert C.NUM_OUTPUTS == 20  # 19 trainIds + PEBAL's abstention channel
    assert C.IGNORE_LABEL == 255 and C.VOID == 255
    assert C.OUTLIER_LABEL == 254
    assert C.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert C.IMAGENET_STD == (0.229, 0.224, 0.225)
    assert C.CITYSCAPES_CLASSES == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
        "bicycle")
    assert C.CITYSCAPES_PALETTE.dtype == np.uint8 and C.CITYSCAPES_PALETTE.shape == (19, 3)
    assert C.CITYSCAPES_PALETTE.tolist() == [
        [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
        [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
        [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]]
    assert not C.CITYSCAPES_PALETTE.flags.writeable  # shared: nobody may change it in place


def test_cityscapes_label_table_agrees_with_the_class_names():
    from pebal_training.data import labels as L

    by_train_id = sorted((lab for lab in L.CITYSCAPES_LABELS if lab.train_id != C.IGNORE_LABEL),
                         key=lambda lab: lab.train_id)
    assert [lab.train_id for lab in by_train_id] == list(range(C.NUM_INLIER_CLASSES))
    assert tuple(lab.name for lab in by_train_id) == C.CITYSCAPES_CLASSES


# (module, name there, name in core.constants)
ALIASES = [
    ("pebal_perception.core.models", "NUM_INLIER_CLASSES", "NUM_INLIER_CLASSES"),
    ("pebal_perception.core.models", "NUM_OUTPUTS", "NUM_OUTPUTS"),
    ("pebal_perception.core.models", "IMAGENET_MEAN", "IMAGENET_MEAN"),
    ("pebal_perception.core.models", "IMAGENET_STD", "IMAGENET_STD"),
    ("pebal_perception.core.models.common", "NUM_INLIER_CLASSES", "NUM_INLIER_CLASSES"),
    ("pebal_perception.core.models.common", "NUM_OUTPUTS", "NUM_OUTPUTS"),
    ("pebal_perception.core.scoring", "NUM_INLIER_CLASSES", "NUM_INLIER_CLASSES"),
    ("pebal_perception.core.checkpoint", "CITYSCAPES_CLASSES", "CITYSCAPES_CLASSES"),
    ("pebal_perception.core.visualize", "CITYSCAPES_PALETTE", "CITYSCAPES_PALETTE"),
    ("pebal_training.data.labels", "VOID", "VOID"),
    ("pebal_training.data.labels", "IGNORE_LABEL", "IGNORE_LABEL"),
    ("pebal_training.data.labels", "OUTLIER_LABEL", "OUTLIER_LABEL"),
    ("pebal_training.data.labels", "NUM_CLASSES", "NUM_INLIER_CLASSES"),
    ("pebal_training.data.labels", "CITYSCAPES_TRAIN_NAMES", "CITYSCAPES_CLASSES"),
    ("pebal_training.data.synthetic", "VOID", "VOID"),
    ("pebal_training.data.synthetic", "TRAIN_ID_NAMES", "CITYSCAPES_CLASSES"),
    ("pebal_training.data.synthetic", "CITYSCAPES_PALETTE", "CITYSCAPES_PALETTE"),
    ("pebal_training.data.synthetic.label_space", "VOID", "VOID"),
    ("pebal_training.data.synthetic.label_space", "TRAIN_ID_NAMES", "CITYSCAPES_CLASSES"),
    ("pebal_training.data.synthetic.label_space", "CITYSCAPES_PALETTE", "CITYSCAPES_PALETTE"),
    ("pebal_training.data.transforms", "IMAGENET_MEAN", "IMAGENET_MEAN"),
    ("pebal_training.data.transforms", "IMAGENET_STD", "IMAGENET_STD"),
    ("pebal_training.losses", "OUTLIER_LABEL", "OUTLIER_LABEL"),
    ("pebal_training.losses", "IGNORE_LABEL", "IGNORE_LABEL"),
]


@pytest.mark.parametrize("module, name, core_name", ALIASES, ids=[f"{m}.{n}" for m, n, _ in ALIASES])
def test_other_modules_hand_out_the_same_objects(module, name, core_name):
    assert getattr(importlib.import_module(module), name) is getattr(C, core_name)


def test_nobody_else_assigns_a_literal_to_a_shared_name():
    """A module-level ``NAME = <literal>`` for one of the shared names outside core/constants.py
    would be a second definition (imports and ``NAME = OTHER_NAME`` aliases are fine)."""
    shared = {"NUM_INLIER_CLASSES", "NUM_OUTPUTS", "NUM_CLASSES", "IGNORE_LABEL", "VOID", "OUTLIER_LABEL",
              "IMAGENET_MEAN", "IMAGENET_STD", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "TRAIN_ID_NAMES",
              "CITYSCAPES_TRAIN_NAMES"}
    constants_file = REPO_ROOT / "pebal_perception" / "core" / "constants.py"
    offenders = []
    for top in ("pebal_perception", "pebal_training", "bench"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            if path == constants_file or "__pycache__" in path.parts:
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                targets = (node.targets if isinstance(node, ast.Assign)
                           else [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None
                           else [])
                value = getattr(node, "value", None)
                if isinstance(value, ast.Name):
                    continue  # an alias of an imported name
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in shared:
                        offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {target.id}")
    assert not offenders, "defined outside pebal_perception/core/constants.py: " + ", ".join(offenders)
