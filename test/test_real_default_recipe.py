"""recipes/real_default (the embedded default model's recipe): synthetic scenes with exact labels and 254 on
their anomalies, the COCO outlier selection (no Cityscapes class, nothing held out), the output-folder guard,
and the whole recipe on tiny settings (slow; needs ``../shared/assets``, skipped without it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(os.environ.get("PEBAL_SHARED_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
needs_assets = pytest.mark.skipif(not ((ASSETS / "coco128_seg").is_dir() and (ASSETS / "real_driving_frames").is_dir()),
                                  reason="shared assets not available")


def test_synthetic_labels_are_exact_with_outliers_on_the_anomalies():
    from pebal_perception.core.constants import OUTLIER_LABEL
    from pebal_training.recipes.real_default import synthetic_label, synthetic_scene

    scene = synthetic_scene(0, seed=1, stream=5, size_hw=(128, 256))
    label = synthetic_label(scene)
    anomaly = scene.anomaly == 1
    assert anomaly.any()  # every training scene holds 1..3 anomalies
    assert (label[anomaly] == OUTLIER_LABEL).all()
    np.testing.assert_array_equal(label[~anomaly], scene.semantic[~anomaly])
    again = synthetic_scene(0, seed=1, stream=5, size_hw=(128, 256))
    np.testing.assert_array_equal(again.image, scene.image)  # deterministic
    other = synthetic_scene(0, seed=1, stream=6, size_hw=(128, 256))
    assert not np.array_equal(other.image, scene.image)  # the calibration stream is another set of scenes


@needs_assets
def test_coco_outliers_hold_no_cityscapes_class_and_nothing_held_out():
    from pebal_training.data.datasets import parse_yolo_seg
    from pebal_training.data.road_pastes import HELD_OUT_COCO
    from pebal_training.recipes.real_default import INLIER_COCO80, coco_outlier_images

    root = ASSETS / "coco128_seg"
    names = coco_outlier_images(root)
    assert names and not set(names) & set(HELD_OUT_COCO)
    for name in names:
        classes = {int(c) for c, _ in parse_yolo_seg(root / "labels" / "train2017" / f"{name}.txt")}
        assert classes and not classes & INLIER_COCO80


def test_refuses_a_foreign_output_folder(tmp_path, capsys):
    from pebal_training.recipes.real_default import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    if not (ASSETS / "coco128_seg").is_dir():
        pytest.skip("shared assets not available (checked before the folder)")
    assert main(["--output", str(out), "--assets", str(ASSETS)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"real_default: error: {out}") and err.count("\n") == 1
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
@needs_assets
def test_the_whole_recipe_on_tiny_settings(tmp_path, capsys):
    from pebal_perception.core.checkpoint import load_checkpoint
    from pebal_training.recipes.real_default import MODEL_ID, main

    out = tmp_path / "rd"
    assert main(["--output", str(out), "--assets", str(ASSETS), "--iters", "1", "--batch", "2", "--variants", "0",
                 "--pastes", "1", "--renders", "1", "--synthetic", "1", "--calibration-scenes", "1",
                 "--threads", "1"]) == 0
    _, meta = load_checkpoint(out / "real_default.pt")
    assert meta.model_id == MODEL_ID and meta.input_size == [512, 1024] and meta.threshold is not None
    record = json.loads((out / "real_default.json").read_text())
    info = record["threshold_info"]
    assert meta.threshold == pytest.approx(max(info["normal_driving"]["threshold"], info["synthetic_tpr"]["threshold"]))
    assert "real_driving_frames" in info["normal_driving"]["chosen_on"]
    assert record["iterations"] >= 1 and record["data"]["synthetic_scenes"] == 1
