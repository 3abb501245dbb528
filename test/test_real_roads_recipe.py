"""recipes/real_roads: the data preparation (deployment scale, pseudo-labels, Cityscapes tree, ood_seg
outliers with 254 on objects pasted on the road, no held-out objects) and the output-folder guard.

Needs the shared assets (``../shared/assets`` or ``PEBAL_SHARED_ASSETS``); skipped without them. The full
recipe with tiny settings takes about a minute on 2 CPU cores, so it is not run here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(os.environ.get("PEBAL_SHARED_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
CKPT = ASSETS / "espnetv2_cityscapes" / "espnetv2_s_2.0_city_1024x512.pth"

pytestmark = pytest.mark.skipif(not (CKPT.is_file() and (ASSETS / "real_driving_frames").is_dir()
                                     and (ASSETS / "coco_outlier_samples").is_dir()),
                                reason="shared assets not available")


def test_deployment_size():
    from pebal_training.recipes.real_roads import deployment_size

    assert deployment_size(720, 1280) == (576, 1024)
    assert deployment_size(1024, 2048) == (512, 1024)
    assert deployment_size(100, 1024)[0] % 16 == 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    import torch

    from pebal_perception.core.checkpoint import load_checkpoint
    from pebal_training.recipes.real_roads import (prepare_inliers, prepare_outliers, train_frames,
                                                   training_cutouts)

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("real_roads")
    model, _ = load_checkpoint(CKPT, "espnetv2")
    frames = [fr for fr in train_frames(ASSETS) if fr.name in ("test1", "frankfurt_000000_000576")]
    inliers = prepare_inliers(model, frames, root / "cityscapes", 0.5, variants=1, seed=0)
    cutouts = training_cutouts(ASSETS, renders=2)
    outliers = prepare_outliers(inliers, cutouts, root / "ood_seg", pastes=2, seed=0)
    return root, frames, inliers, cutouts, outliers


def test_inliers_at_deployment_scale_and_readable(prepared):
    from pebal_training.data.datasets import CityscapesSegmentation

    root, frames, inliers, _, _ = prepared
    assert {fr.rgb.shape[:2] for fr in frames} == {(576, 1024), (512, 1024)}
    assert len(inliers) == 2 * len(frames)
    ds = CityscapesSegmentation(root / "cityscapes", split="train")
    assert len(ds) == len(inliers)
    for item in ds:
        label = item["label"]
        assert item["image"].shape[:2] == label.shape
        assert set(np.unique(label)) <= set(range(19)) | {255}
        assert (label == 0).mean() > 0.2  # road predicted on these road frames


def test_outliers_are_an_ood_seg_source_without_held_out_objects(prepared):
    from pebal_training.data.datasets import CocoOutlierSource
    from pebal_training.data.road_pastes import EVALUATION_RENDER_SEED, HELD_OUT_COCO, TRAIN_SCENES

    root, _, _, cutouts, outliers = prepared
    assert outliers and all(o["scene"] in TRAIN_SCENES for o in outliers)
    names = {c.name for c in cutouts}
    assert not any(n.split("_")[0] in HELD_OUT_COCO for n in names)
    for n in names:
        if n.startswith("render"):
            assert int(n[len("render"):].split("_")[0]) < EVALUATION_RENDER_SEED
    source = CocoOutlierSource(root / "ood_seg", fmt="ood_seg", split="train2017", min_size=0)
    assert len(source) == len(outliers)
    for i in range(len(source)):
        rgb, mask = source[i]
        assert rgb.shape[:2] == mask.shape and mask.any()


def test_pastes_sit_on_the_pseudo_label_road(prepared):
    from pebal_training.data.datasets import read_label

    root, _, inliers, _, outliers = prepared
    labels = {i["name"]: i["label"] for i in inliers}
    for o in outliers:
        mask = read_label(root / "ood_seg" / "annotations" / "ood_seg_train2017" / f"{o['name']}.png") == 254
        label = labels[o["frame"]]
        rows, cols = np.nonzero(mask)
        bottom = rows.max()
        # the lowest object pixels lie on (or next to) the predicted road of the frame pasted on
        assert (label[max(0, bottom - 20):bottom + 1, cols.min():cols.max() + 1] == 0).any()


def test_refuses_a_foreign_output_folder(tmp_path, capsys):
    from pebal_training.recipes.real_roads import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--assets", str(ASSETS), "--output", str(tmp_path)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
