"""pebal-detect: the files it writes, and its behaviour on bad input."""
import json

import cv2
import numpy as np
import pytest
import torch

from pebal_perception.cli import detect
from pebal_perception.core.checkpoint import ModelMeta, save_checkpoint

from tiny_models import TINY, TinySegNet


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, TinySegNet(), ModelMeta.for_architecture(TINY, threshold=-2.9))


def _write_image(path, h=48, w=80, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return img


def test_writes_every_output_per_frame(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    _write_image(src / "a.png")
    _write_image(src / "b.jpg", 40, 64, seed=1)
    out = tmp_path / "out"
    assert detect.main([str(src), "--output", str(out), "--checkpoint", str(checkpoint)]) == 0
    for name, (h, w) in {"a": (48, 80), "b": (40, 64)}.items():
        sem = cv2.imread(str(out / f"{name}_semantic.png"), cv2.IMREAD_UNCHANGED)
        assert sem.shape == (h, w) and sem.dtype == np.uint8 and sem.max() <= 18
        energy = np.load(out / f"{name}_energy.npy")
        assert energy.shape == (h, w) and energy.dtype == np.float32
        obstacle = cv2.imread(str(out / f"{name}_obstacle.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(obstacle)) <= {0, 255}
        assert np.array_equal(obstacle == 255, energy > -2.9)
        assert cv2.imread(str(out / f"{name}_overlay.jpg")).shape == (h, w, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == 2 and summary["threshold"] == -2.9
    assert summary["threshold_source"] == "calibrated" and summary["failures"] == []
    assert {f["name"] for f in summary["frames"]} == {"a", "b"}


def test_unreadable_image_is_reported_and_the_rest_processed(tmp_path, checkpoint, capsys):
    _write_image(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    rc = detect.main([str(tmp_path / "good.png"), str(tmp_path / "broken.png"), "-o", str(out),
                      "--checkpoint", str(checkpoint), "--threshold", "0.5"])
    assert rc == 1
    assert "broken.png: not a readable image" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [f["name"] for f in summary["frames"]] == ["good"] and len(summary["failures"]) == 1
    assert summary["threshold"] == 0.5 and summary["threshold_source"] == "command line"


def test_video_frames(tmp_path, checkpoint):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(4):
        writer.write(np.full((32, 64, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert detect.main([str(video), "-o", str(out), "--checkpoint", str(checkpoint), "--every", "2"]) == 0
    assert sorted(p.name for p in out.glob("*_semantic.png")) == ["clip_000000_semantic.png",
                                                                  "clip_000002_semantic.png"]


@pytest.mark.parametrize("argv, message", [
    (["missing.png"], "missing.png: no such file or folder"),
    (["{img}", "--checkpoint", "nope.pt"], "nope.pt: checkpoint file not found"),
    (["{img}", "--checkpoint", "{ckpt}", "--model", "espnetv2"], "not 'espnetv2'"),
])
def test_errors_are_one_line_and_nonzero(tmp_path, checkpoint, capsys, argv, message):
    img = tmp_path / "x.png"
    _write_image(img)
    argv = [a.format(img=img, ckpt=checkpoint) for a in argv]
    rc = detect.main([*argv, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("pebal-detect: error:")


def test_default_model_is_used_without_a_checkpoint(tmp_path):
    from pebal_perception.core.checkpoint import load_checkpoint
    from pebal_perception.core.default_model import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no embedded default model in this checkout")
    _, meta = load_checkpoint(DEFAULT_MODEL_PATH)
    assert meta.threshold is not None and meta.threshold_info, "the embedded model must be calibrated"
    _write_image(tmp_path / "x.png", 160, 320)
    assert detect.main([str(tmp_path / "x.png"), "-o", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"] == meta.model_id and summary["threshold_source"] == "calibrated"


def test_missing_default_model_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PEBAL_DEFAULT_MODEL", str(tmp_path / "absent.pt"))
    _write_image(tmp_path / "x.png")
    assert detect.main([str(tmp_path / "x.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pebal-detect: error: no default model at") and len(err.splitlines()) == 1
