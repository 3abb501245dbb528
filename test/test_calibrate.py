"""pebal-calibrate: the threshold reaches the target rate minimally, is stored, and is used by default."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pebal_perception.core.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from pebal_perception.core.engine import InferenceEngine
from pebal_training.cli import calibrate
from pebal_training.data import synthetic_layouts as SL
from pebal_training.data.datasets import FishyscapesDataset

from tiny_models import TINY, TinySegNet

SIZE = (96, 48)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    SL.write_fishyscapes(root, "Static", n=4, seed=7, size=SIZE)
    return root


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(1)
    return save_checkpoint(tmp_path / "tiny.pt", TinySegNet(), ModelMeta.for_architecture(TINY))


def pooled(engine, root):
    pos, neg = [], []
    for sample in FishyscapesDataset(root, "Static"):
        score = engine.infer_one(sample["image"]).score
        pos.append(score[sample["label"] == 1])
        neg.append(score[sample["label"] == 0])
    return np.concatenate(pos), np.concatenate(neg)


def rate(scores, thr):
    return float((scores > np.float32(thr)).mean())


def test_target_tpr_is_reached_minimally_and_stored(checkpoint, data_root, capsys):
    rc = calibrate.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_static", "--root",
                         str(data_root), "--target-tpr", "0.9", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    _, meta = load_checkpoint(checkpoint)
    thr = meta.threshold
    info = meta.threshold_info
    assert info["target"] == {"tpr": 0.9} and info["dataset"] == "fishyscapes_static"
    assert info["num_images"] == 4 and info["date"] and info["input_size"] == [32, 64]

    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")  # the deployed default
    assert engine.threshold == thr
    pos, neg = pooled(engine, data_root)
    tpr = rate(pos, thr)
    assert tpr >= 0.9 and tpr == pytest.approx(info["achieved_tpr"], abs=0)
    assert rate(neg, thr) == pytest.approx(info["achieved_fpr"], abs=0)
    # minimal: the next representable (float32) threshold above misses the target
    above = np.nextafter(np.float32(thr), np.float32(np.inf))
    assert rate(pos, above) < 0.9
    # the engine's obstacle mask uses that threshold
    sample = next(iter(FishyscapesDataset(data_root, "Static")))
    res = engine.infer_one(sample["image"])
    assert np.array_equal(res.obstacle, res.score > np.float32(thr))


def test_target_fpr(checkpoint, data_root):
    assert calibrate.main(["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_static", "--root",
                           str(data_root), "--target-fpr", "0.05", "--quiet"]) == 0
    _, meta = load_checkpoint(checkpoint)
    pos, neg = pooled(InferenceEngine.from_checkpoint(checkpoint, device="cpu"), data_root)
    assert rate(neg, meta.threshold) <= 0.05
    below = np.nextafter(np.float32(meta.threshold), np.float32(-np.inf))
    assert rate(neg, below) > 0.05  # the lowest threshold within the budget
    assert meta.threshold_info["target"] == {"fpr": 0.05}


def test_tie_and_rounding_rules():
    pos = np.array([1, 2, 2, 2, 3], np.float32)
    thr = calibrate.threshold_for_tpr(pos, 0.5)  # k = 3 -> v = 2, every tie detected
    assert thr < 2 and np.float32(thr) == np.nextafter(np.float32(2), np.float32(-np.inf))
    assert (pos > np.float32(thr)).mean() == 0.8
    hundred = np.arange(100, dtype=np.float32)
    assert (hundred > np.float32(calibrate.threshold_for_tpr(hundred, 0.95))).sum() == 95  # not 96
    assert calibrate.threshold_for_tpr(hundred, 0.0) == 99.0
    neg = np.arange(100, dtype=np.float32)
    thr = calibrate.threshold_for_fpr(neg, 0.05, lowest=-1.0)
    assert thr == 94.0 and (neg > thr).sum() == 5
    assert calibrate.threshold_for_fpr(neg, 1.0, lowest=-1.0) < -1.0


def test_third_party_checkpoint_needs_output(tmp_path, data_root, capsys):
    torch.manual_seed(2)
    bare = tmp_path / "bare.pth"
    torch.save(TinySegNet().state_dict(), bare)
    args = ["--checkpoint", str(bare), "--model", TINY, "--dataset", "fishyscapes_static", "--root",
            str(data_root), "--quiet"]
    assert calibrate.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--output-checkpoint" in err
    out = tmp_path / "calibrated.pt"
    assert calibrate.main(args + ["--output-checkpoint", str(out)]) == 0
    model, meta = load_checkpoint(out)
    assert meta.architecture == TINY and meta.source == "bare.pth" and math.isfinite(meta.threshold)
    assert meta.threshold_info["target"] == {"tpr": 0.95}
    ref = torch.load(bare, weights_only=True)
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())
    assert InferenceEngine.from_checkpoint(out, device="cpu").threshold == meta.threshold


def test_errors_are_one_line_exit_2(tmp_path, checkpoint, capsys):
    base = ["--checkpoint", str(checkpoint), "--dataset", "fishyscapes_static"]
    assert calibrate.main(base + ["--root", str(tmp_path / "missing")]) == 2
    assert calibrate.main(base + ["--root", ".", "--target-tpr", "1.5"]) == 2
    assert calibrate.main(base + ["--root", ".", "--target-tpr", "0.9", "--target-fpr", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("pebal-calibrate: error: ") for line in err)
    assert str(tmp_path / "missing") in err[0]


# ------------------------------------------------------------------------------------ --normal
@pytest.fixture(scope="module")
def normal_folder(tmp_path_factory):
    """Six frames of a synthetic drive with no anomaly on the road (image folder input)."""
    import cv2

    from pebal_training.data.synthetic import SceneConfig, generate_scene

    folder = tmp_path_factory.mktemp("normal")
    config = SceneConfig(height=48, width=96, anomaly_count_range=(0, 0))
    for i in range(6):
        scene = generate_scene(100 + i, config)
        cv2.imwrite(str(folder / f"frame_{i:02d}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return folder


def test_normal_driving_calibration_meets_the_rate_and_records_provenance(checkpoint, normal_folder, capsys):
    from pebal_perception.core.postprocess import PostProcessConfig, process_frame
    from pebal_perception.core.postprocess import calibrated_postprocess

    assert calibrate.main(["--checkpoint", str(checkpoint), "--normal", str(normal_folder),
                           "--max-false-frames", "0.2", "--quiet"]) == 0
    assert "normal frames report an obstacle" in capsys.readouterr().out
    _, meta = load_checkpoint(checkpoint)
    normal = meta.threshold_info["normal_driving"]
    assert normal["num_frames"] == 6 and normal["max_false_frames"] == 0.2
    assert normal["inputs"] == [str(normal_folder)] and normal["date"]
    assert normal["postprocess"]["threshold"] == meta.threshold
    assert calibrated_postprocess(meta) == normal["postprocess"]
    assert (checkpoint.parent / "tiny_false_frames.png").is_file()
    # Re-running the post-processing at the stored threshold: at most floor(0.2 * 6) = 1 frame reports.
    engine = InferenceEngine(*load_checkpoint(checkpoint), device="cpu")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in normal["postprocess"].items()}
    config = PostProcessConfig(**fields)
    import cv2

    reporting = 0
    for path in sorted(normal_folder.glob("*.png")):
        res = engine.infer_one(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        reporting += bool(process_frame(res.semantic, res.score, config).obstacles)
    assert reporting <= 1
    assert normal["achieved_false_frames"] == pytest.approx(reporting / 6)


def test_normal_driving_plot_replaces_only_its_own_file(checkpoint, normal_folder, tmp_path, capsys):
    plot = checkpoint.parent / "tiny_false_frames.png"
    args = ["--checkpoint", str(checkpoint), "--normal", str(normal_folder), "--max-false-frames", "0.2",
            "--quiet"]
    assert calibrate.main(args) == 0 and plot.is_file()
    assert calibrate.main(args) == 0  # the file it wrote itself is replaced
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a user's picture")
    before = checkpoint.read_bytes()
    assert calibrate.main(args + ["--plot", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pebal-calibrate: error: ") and str(mine) in err[-1]
    assert mine.read_bytes() == b"a user's picture" and checkpoint.read_bytes() == before  # before any work
    assert calibrate.main(args + ["--plot", str(tmp_path / "elsewhere.png")]) == 0
    assert (tmp_path / "elsewhere.png").is_file()


def test_normal_driving_needs_inputs_that_exist(checkpoint, tmp_path, capsys):
    assert calibrate.main(["--checkpoint", str(checkpoint), "--normal", str(tmp_path / "none")]) == 2
    assert calibrate.main(["--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("pebal-calibrate: error: ") for line in err)
    assert str(tmp_path / "none") in err[0]


def test_normal_driving_with_a_dataset_shows_what_the_threshold_still_finds(checkpoint, normal_folder, data_root,
                                                                           capsys):
    """--normal with --dataset: the share of the dataset's labelled obstacles found at the calibrated threshold
    is printed, stored and plotted beside the false-frame rate (the trade-off, not a silent choice)."""
    assert calibrate.main(["--checkpoint", str(checkpoint), "--normal", str(normal_folder), "--dataset",
                           "fishyscapes_static", "--root", str(data_root), "--target-tpr", "0.95",
                           "--max-false-frames", "0.2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "labelled obstacles of fishyscapes_static are found" in out
    _, meta = load_checkpoint(checkpoint)
    found = meta.threshold_info["normal_driving"]["obstacles_found"]
    assert found["dataset"] == "fishyscapes_static" and found["objects"] > 0 and 0.0 <= found["found"] <= 1.0
    assert (checkpoint.parent / "tiny_false_frames.png").is_file()
