"""A user's own footage: ``pebal-bag from-video`` (video or image folder -> bag), the shared frame sources
and ``pebal-camera`` (the same frames published live over DDS).

Small inputs keep this fast: a 12-frame 320x240 MJPG video and six 160x120 PNGs whose pixels say which
frame they are (blue = 10 * index, green 100, red 200).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from pebal_perception.testing import ros_harness

ros_harness.use_loopback()
pytest.importorskip("rosbags")
cv2 = pytest.importorskip("cv2")

from pebal_perception.bag import read_all_messages  # noqa: E402
from pebal_perception.cli import bag as bag_cli  # noqa: E402
from pebal_perception.frame_sources import FootageError, load_calibration, open_source  # noqa: E402

VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 12, (320, 240), 10.0
FOLDER_FRAMES, FOLDER_SIZE = 6, (160, 120)
START_NS = 100 * 1_000_000_000
CALIBRATION = """\
image_width: 160
image_height: 120
camera_name: test_camera
camera_matrix: {rows: 3, cols: 3, data: [150.0, 0.0, 80.0, 0.0, 150.0, 60.0, 0.0, 0.0, 1.0]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.05, 0.0, 0.0, 0.0]}
rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
projection_matrix: {rows: 3, cols: 4, data: [150.0, 0.0, 80.0, 0.0, 0.0, 150.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]}
"""


def frame_bgr(index: int, size=FOLDER_SIZE) -> np.ndarray:
    w, h = size
    frame = np.empty((h, w, 3), np.uint8)
    frame[...] = (10 * index, 100, 200)
    return frame


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("footage")


@pytest.fixture(scope="module")
def video(work) -> Path:
    path = work / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, VIDEO_SIZE)
    assert writer.isOpened(), "this OpenCV cannot write MJPG"
    for i in range(VIDEO_FRAMES):
        writer.write(frame_bgr(i, VIDEO_SIZE))
    writer.release()
    return path


@pytest.fixture(scope="module")
def folder(work) -> Path:
    path = work / "frames"
    path.mkdir()
    for i in range(FOLDER_FRAMES):
        assert cv2.imwrite(str(path / f"frame_{i:03d}.png"), frame_bgr(i))
    return path


@pytest.fixture(scope="module")
def calibration(work) -> Path:
    path = work / "camera.yaml"
    path.write_text(CALIBRATION)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = bag_cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


read_bag = read_all_messages


def stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def pixels(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def leftovers(parent: Path, name: str) -> list[str]:
    return [n for n in os.listdir(parent) if n == name or n.startswith(f".{name}.partial")]


# --------------------------------------------------------------------------------------------- from-video

def test_video_to_bag(capsys, video, tmp_path):
    out = tmp_path / "video_bag"
    rc, stdout, err = run(capsys, "from-video", video, "-o", out, "--start-time", 100, "-q")
    assert rc == 0, err
    msgs = read_bag(out)
    assert list(msgs) == ["/camera/image_raw"]
    images = msgs["/camera/image_raw"]
    assert len(images) == VIDEO_FRAMES
    expected = [START_NS + i * 100_000_000 for i in range(VIDEO_FRAMES)]  # the video's own 10 fps
    assert [t for t, _ in images] == expected
    assert [stamp(m) for _, m in images] == expected
    first = images[0][1]
    assert (first.encoding, first.width, first.height, first.step) == ("bgr8", 320, 240, 960)
    assert first.header.frame_id == "camera"
    assert json.loads((out / "footage.json").read_text())["frames"] == VIDEO_FRAMES


def test_folder_with_every_size_and_camera_info(capsys, folder, calibration, tmp_path):
    out = tmp_path / "folder_bag"
    rc, stdout, err = run(capsys, "from-video", folder, "-o", out, "--fps", 5, "--every", 2, "--size", "80x60",
                          "--camera-info", calibration, "--frame-id", "cam_optical", "--topic", "/front/image",
                          "--start-time", 100)
    assert rc == 0, err
    assert "wrote" in stdout
    msgs = read_bag(out)
    images, infos = msgs["/front/image"], msgs["/front/camera_info"]
    kept = range(0, FOLDER_FRAMES, 2)
    expected = [START_NS + i * 200_000_000 for i in kept]  # source index / fps
    assert [t for t, _ in images] == [t for t, _ in infos] == expected
    assert [stamp(m) for _, m in infos] == expected
    for index, (_, msg) in zip(kept, images):
        assert (msg.width, msg.height, msg.encoding, msg.header.frame_id) == (80, 60, "bgr8", "cam_optical")
        assert (pixels(msg) == frame_bgr(index, (80, 60))).all()  # bgr8, in name order
    info = infos[0][1]
    assert (info.width, info.height, info.distortion_model) == (80, 60, "plumb_bob")
    np.testing.assert_allclose(info.k, [75, 0, 40, 0, 75, 30, 0, 0, 1])
    np.testing.assert_allclose(info.p, [75, 0, 40, 0, 0, 75, 30, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(info.d, [0.1, -0.05, 0, 0, 0])


def test_compressed(capsys, folder, tmp_path):
    out = tmp_path / "compressed_bag"
    rc, _, err = run(capsys, "from-video", folder, "-o", out, "--compressed", "-q")
    assert rc == 0, err
    msgs = read_bag(out)["/camera/image_raw/compressed"]
    assert len(msgs) == FOLDER_FRAMES
    assert [t for t, _ in msgs] == sorted(t for t, _ in msgs) and len({t for t, _ in msgs}) == FOLDER_FRAMES
    assert np.diff([t for t, _ in msgs]).tolist() == [100_000_000] * (FOLDER_FRAMES - 1)  # folders: 10 fps
    msg = msgs[3][1]
    assert "jpeg" in msg.format
    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (120, 160, 3)
    assert np.abs(decoded.astype(int) - frame_bgr(3)).max() <= 8


def test_overwrite_only_its_own_bag(capsys, folder, tmp_path):
    out = tmp_path / "again"
    assert run(capsys, "from-video", folder, "-o", out, "-q")[0] == 0
    rc, _, err = run(capsys, "from-video", folder, "-o", out, "-q", "--every", 3)
    assert rc == 1 and err.count("\n") == 1 and "exists" in err
    assert run(capsys, "from-video", folder, "-o", out, "-q", "--every", 3, "--overwrite")[0] == 0
    assert len(read_bag(out)["/camera/image_raw"]) == 2


def test_process_reads_every_frame(capsys, folder, calibration, tmp_path):
    from test_bag import make_checkpoint

    bag = tmp_path / "input_bag"
    assert run(capsys, "from-video", folder, "-o", bag, "--camera-info", calibration, "-q")[0] == 0
    out = tmp_path / "processed"
    rc, _, err = run(capsys, "process", bag, "-o", out, "--checkpoint", make_checkpoint(tmp_path / "tiny.pt"),
                     "--device", "cpu", "-q")
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == summary["frames_out"] == FOLDER_FRAMES
    assert summary["camera_info_topic"] == "/camera/camera_info"


def _bad_input(kind: str, base: Path, folder: Path) -> tuple[list, Path]:
    """(extra arguments, the path the error must name) of one kind of bad input."""
    if kind == "missing":
        return [base / "nothing.mp4"], base / "nothing.mp4"
    if kind == "unreadable video":
        path = base / "notes.avi"
        path.write_text("not a video\n")
        return [path], path
    if kind == "empty folder":
        path = base / "empty"
        path.mkdir()
        return [path], path
    if kind in ("text files only", "corrupt image in folder"):
        path = base / "mixed"
        path.mkdir()
        if kind == "text files only":
            (path / "LICENSE").write_text("hello\n")
            return [path], path
        for name in sorted(os.listdir(folder)):
            (path / name).write_bytes((folder / name).read_bytes())
        bad = path / "frame_004.png"  # a PNG header, then garbage: found only when decoding frame 4
        bad.write_bytes(bad.read_bytes()[:40] + b"\0" * 100)
        return [path], bad
    if kind == "bad yaml":
        path = base / "bad.yaml"
        path.write_text("camera_matrix: [1, 2\n")
        return [folder, "--camera-info", path], path
    if kind == "incomplete calibration":
        path = base / "partial.yaml"
        path.write_text("image_width: 160\nimage_height: 120\n")
        return [folder, "--camera-info", path], path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unreadable video", "empty folder", "text files only",
                                  "corrupt image in folder", "bad yaml", "incomplete calibration"])
def test_bad_input_is_one_line_and_leaves_nothing(capsys, folder, tmp_path, kind):
    argv, named = _bad_input(kind, tmp_path, folder)
    out = tmp_path / "out_bag"
    rc, _, err = run(capsys, "from-video", *argv, "-o", out, "-q")
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith(f"pebal-bag: error: {named}: "), err
    assert leftovers(tmp_path, out.name) == []


def test_folder_leaves_out_other_files_with_a_note(capsys, caplog, folder, tmp_path):
    """A LICENSE, a calibration file or a sub-folder beside the frames is left out with a note, not refused."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in sorted(os.listdir(folder)):
        (mixed / name).write_bytes((folder / name).read_bytes())
    (mixed / "LICENSE").write_text("MIT\n")
    (mixed / "camera.yaml").write_text("image_width: 160\n")
    (mixed / "sub").mkdir()
    with caplog.at_level("WARNING", logger="pebal.footage"):
        source = open_source(mixed)
    assert source.count == FOLDER_FRAMES
    assert source.skipped == ["LICENSE: not an image", "camera.yaml: not an image", "sub: not a regular file"]
    assert "left out 3 entries" in caplog.text and "LICENSE" in caplog.text
    out = tmp_path / "mixed_bag"
    rc, _, _ = run(capsys, "from-video", mixed, "-o", out, "-q")
    assert rc == 0 and (out / "metadata.yaml").is_file()


def test_frame_source_and_calibration(folder, calibration):
    source = open_source(folder, every=4, size=(30, 40))
    assert (source.kind, source.count, source.size, source.native_size) == ("folder", 2, (30, 40), (120, 160))
    assert [i for i, _ in source.frames()] == [0, 4]
    fields = load_calibration(calibration).fields((240, 320))
    assert fields["k"][0] == 300 and fields["k"][5] == 120
    with pytest.raises(FootageError, match="aspect ratio"):
        load_calibration(calibration).fields((120, 320))


# ------------------------------------------------------------------------------------------ pebal-camera

CAMERA = Path(sys.prefix) / "bin" / "pebal-camera"


@pytest.mark.ros
def test_camera_publishes_the_frames(folder, calibration, tmp_path):
    reason = ros_harness.ros_unavailable(("rclpy", "sensor_msgs.msg"), executables=(CAMERA,))
    if reason:
        pytest.skip(reason)
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    peer = ros_harness.Peer("footage_peer")
    try:
        images = peer.collect(Image, "/footage/image_raw", qos_profile_sensor_data)
        infos = peer.collect(CameraInfo, "/footage/camera_info", qos_profile_sensor_data)
        camera = ros_harness.ChildProcess(
            [CAMERA, folder, "--topic", "/footage/image_raw", "--rate", 20, "--loop", "--frame-id", "cam_test",
             "--camera-info", calibration], tmp_path / "camera.log")
        try:
            def seen() -> set[int]:
                return {int(pixels(m)[0, 0, 0]) // 10 for m in images.snapshot()}

            assert ros_harness.wait_for(lambda: seen() >= set(range(FOLDER_FRAMES))), \
                f"frames seen: {sorted(seen())}; {camera.tail()}"
            assert infos.wait(lambda m: m.width == 160) is not None
        finally:
            rc = camera.stop(signal.SIGINT)
        assert rc == 0, camera.tail()
        msg = images.snapshot()[-1]
        assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == ("bgr8", 160, 120, "cam_test")
        lines = camera.output().strip().splitlines()
        assert lines[0].startswith("pebal-camera: publishing") and lines[-1].startswith("pebal-camera: published")
    finally:
        peer.close()
