"""Acceptance: pebal-detect with the real EdgeNets ESPNetv2 Cityscapes weights on a real Cityscapes frame."""
import json

import numpy as np
import pytest
from PIL import Image

from pebal_perception.cli import detect

pytestmark = pytest.mark.slow

FRAME = "frankfurt_000000_000294"


def test_pebal_detect_espnetv2_pixel_accuracy(shared_assets, tmp_path):
    ckpt = shared_assets / "espnetv2_cityscapes" / "espnetv2_s_2.0_city_1024x512.pth"
    image = shared_assets / "cityscapes_val" / f"{FRAME}_leftImg8bit.png"
    labels = shared_assets / "cityscapes_val" / "mmseg_pseudo_256x128" / f"{FRAME}_gtFine_labelTrainIds.png"
    out = tmp_path / "out"
    assert detect.main([str(image), "--model", "espnetv2", "--checkpoint", str(ckpt), "--output", str(out),
                        "--device", "cpu"]) == 0
    name = f"{FRAME}_leftImg8bit"
    semantic = Image.open(out / f"{name}_semantic.png")
    assert semantic.size == (2048, 1024) and semantic.mode == "L"  # input resolution, mono8 trainIds
    pred = np.asarray(semantic.resize((256, 128), Image.NEAREST))
    gt = np.asarray(Image.open(labels))
    valid = gt != 255
    accuracy = float((pred[valid] == gt[valid]).mean())
    assert accuracy >= 0.95, accuracy

    energy = np.load(out / f"{name}_energy.npy")
    assert energy.shape == (1024, 2048) and energy.dtype == np.float32 and np.isfinite(energy).all()
    # Confident Cityscapes pixels have large logsumexp: the energy is negative nearly everywhere.
    assert np.median(energy) < -5.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["architecture"] == "espnetv2" and summary["threshold_source"] == "default (uncalibrated)"
