"""pebal-detect: the files it writes, and its behaviour on bad input."""
import json

import cv2
import numpy as np
import pytest
import torch

from pebal_perception.cli import detect
from pebal_perception.core.checkpoint import ModelMeta, save_checkpoint

from tiny_models import TINY, TinySegNet, write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=-2.9)


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
    err = capsys.readouterr().err
    assert "broken.png: " in err and "(decode_failed)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [f["name"] for f in summary["frames"]] == ["good"] and len(summary["failures"]) == 1
    assert summary["threshold"] == 0.5 and summary["threshold_source"] == "command line"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims ``width x height`` (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 300, 9)) + chunk(b"IEND", b""))


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("pebal-detect: error:")]


def test_bad_inputs_are_one_line_each_and_the_rest_is_processed(tmp_path, checkpoint, capsys):
    """A 74-byte PNG claiming 100000x100000 used to end the whole run with a cv2 traceback."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    assert len(bomb.read_bytes()) <= 74
    thin = tmp_path / "thin.png"
    cv2.imwrite(str(thin), np.zeros((16, 400, 3), np.uint8))
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + (30000).to_bytes(2, "little") * 2 + bytes(23))
    labelled = tmp_path / "fake.jpg"  # a GIF named .jpg
    labelled.write_bytes(gif.read_bytes())
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "denied.png").mkdir()  # a folder named like an image: cannot be read as a file
    _write_image(tmp_path / "good.png")
    _write_image(tmp_path / "later.jpg", 40, 64, seed=2)
    out = tmp_path / "out"
    inputs = [bomb, thin, gif, tmp_path / "good.png", labelled, tmp_path / "later.jpg", folder]
    rc = detect.main([*map(str, inputs), "-o", str(out), "--checkpoint", str(checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1
    lines = _error_lines(err)
    assert len(lines) == 5 and "Traceback" not in err, err
    for line, (path, reason) in zip(lines, [(bomb, "too_large"), (thin, "bad_aspect_ratio"),
                                            (gif, "unsupported_format"), (labelled, "unsupported_format"),
                                            (folder / "denied.png", "cannot read")]):
        assert str(path) in line and reason in line, line
    assert "100000x100000" in lines[0]
    for name in ("good", "later"):
        for suffix in ("_semantic.png", "_energy.npy", "_obstacle.png", "_overlay.jpg"):
            assert (out / f"{name}{suffix}").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [f["name"] for f in summary["frames"]] == ["good", "later"]
    assert [f["name"] for f in summary["failures"]] == ["bomb", "thin", "anim", "fake", "denied"]


def test_images_the_engine_cannot_run_are_one_line_each(tmp_path, checkpoint, capsys):
    _write_image(tmp_path / "big.png", 4200, 600)  # native network size 4200 x 600: over 4096 per side
    _write_image(tmp_path / "small.png", 40, 64)
    out = tmp_path / "out"
    rc = detect.main([str(tmp_path / "big.png"), str(tmp_path / "small.png"), "-o", str(out),
                      "--checkpoint", str(checkpoint), "--input-size", "native"])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert rc == 1 and len(lines) == 1 and "big.png" in lines[0] and "4096" in lines[0], err
    assert (out / "small_semantic.png").is_file()


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


def test_video_over_the_limits_is_refused_before_its_frames_are_read(tmp_path, checkpoint, capsys):
    thin = tmp_path / "thin.avi"
    writer = cv2.VideoWriter(str(thin), cv2.VideoWriter_fourcc(*"MJPG"), 5, (256, 16))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for _ in range(3):
        writer.write(np.zeros((16, 256, 3), np.uint8))
    writer.release()
    _write_image(tmp_path / "good.png")
    out = tmp_path / "out"
    assert detect.main([str(thin), str(tmp_path / "good.png"), "-o", str(out), "--checkpoint", str(checkpoint)]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "thin.avi" in lines[0] and "(bad_aspect_ratio)" in lines[0]
    assert (out / "good_semantic.png").is_file() and not list(out.glob("thin*"))


@pytest.mark.parametrize("argv, message", [
    (["missing.png"], "missing.png: no such file or folder"),
    (["{img}", "--checkpoint", "nope.pt"], "nope.pt: checkpoint file not found"),
    (["{img}", "--checkpoint", "{ckpt}", "--model", "espnetv2"], "not 'espnetv2'"),
    (["{img}", "--checkpoint", "{ckpt}", "--threshold", "inf"], "threshold must be finite"),
    (["{img}", "--checkpoint", "{ckpt}", "--threshold", "nan"], "threshold must be finite"),
    (["{img}", "--checkpoint", "{ckpt}", "--input-size", "8192x64"], "4096"),
])
def test_errors_are_one_line_and_nonzero(tmp_path, checkpoint, capsys, argv, message):
    img = tmp_path / "x.png"
    _write_image(img)
    argv = [a.format(img=img, ckpt=checkpoint) for a in argv]
    rc = detect.main([*argv, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("pebal-detect: error:")


def _nan_model():
    model = TinySegNet()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


@pytest.mark.parametrize("model, meta, message", [
    (TinySegNet, {"input_size": [100_000, 100_000]}, "input_size"),
    (_nan_model, {}, "weights are not finite"),
    (TinySegNet, {"threshold": float("inf")}, "threshold must be finite"),
])
def test_broken_checkpoints_are_one_line_and_exit_2(tmp_path, capsys, model, meta, message):
    """These used to load: a traceback on a 120 GB allocation; NaN scores and exit 0; an infinite threshold."""
    path = save_checkpoint(tmp_path / "broken.pt", model(), ModelMeta.for_architecture(TINY, **meta))
    _write_image(tmp_path / "x.png")
    rc = detect.main([str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--checkpoint", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"pebal-detect: error: {path}: ") and message in err, err


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


def test_folder_inputs_leave_out_other_files_with_a_note(tmp_path, capsys):
    """A LICENSE or notes beside the frames are left out with one note on stderr, not treated as inputs."""
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "LICENSE").write_text("MIT\n")
    (tmp_path / "notes.txt").write_text("drive 3\n")
    assert detect.expand_inputs([tmp_path]) == [tmp_path / "a.jpg", tmp_path / "b.png"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "left out 2 file(s)" in err and "LICENSE" in err and "notes.txt" in err
