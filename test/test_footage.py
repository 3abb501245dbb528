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

from pebal_perception.core.bag import read_all_messages  # noqa: E402
from pebal_perception.cli import bag as bag_cli  # noqa: E402
from pebal_perception.core.frame_sources import FootageError, load_calibration, open_source  # noqa: E402

from tiny_models import write_tiny_checkpoint  # noqa: E402

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
    bag = tmp_path / "input_bag"
    assert run(capsys, "from-video", folder, "-o", bag, "--camera-info", calibration, "-q")[0] == 0
    out = tmp_path / "processed"
    # The real architecture with random weights, the same checkpoint test_bag processes bags with.
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt", architecture="espnetv2", input_size=[128, 256])
    rc, _, err = run(capsys, "process", bag, "-o", out, "--checkpoint", checkpoint,
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


# -------------------------------------------------------------------------------- limits at every entry

def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (IHDR, CRC correct) claims ``width x height`` but whose pixel data is a few bytes:
    a size over the limits costs nothing to make, and only a decoder that trusts the header allocates it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def write_video(path: Path, size: tuple[int, int], count: int, noise: bool = False) -> Path:
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (w, h))
    assert writer.isOpened(), "this OpenCV cannot write MJPG"
    rng = np.random.default_rng(0)
    for i in range(count):
        writer.write(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else frame_bgr(i, (w, h)))
    writer.release()
    return path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("placement", ["file", "folder"])
def test_image_over_the_pixel_limit_is_refused_from_its_header(capsys, tmp_path, placement):
    """16000x16000 (256 MP) in a 100-byte PNG: refused from the header, nothing decoded, no bag."""
    big = tmp_path / "big.png"
    if placement == "folder":
        big = tmp_path / "frames" / "big.png"
        big.parent.mkdir()
    big.write_bytes(png_claiming(16000, 16000))
    out = tmp_path / "out_bag"
    rc, _, err = run(capsys, "from-video", big if placement == "file" else big.parent, "-o", out, "-q")
    line = one_error_line(err)
    assert rc == 1 and line.startswith(f"pebal-bag: error: {big}: ") and "16000x16000" in line and "pixels" in line
    assert leftovers(tmp_path, out.name) == []


def _thin_input(kind: str, base: Path) -> Path:
    if kind == "1x1 image":
        path = base / "dot.png"
        assert cv2.imwrite(str(path), np.zeros((1, 1, 3), np.uint8))
    elif kind == "100000x1 image":
        path = base / "line.png"
        assert cv2.imwrite(str(path), np.zeros((1, 100_000, 3), np.uint8))
    elif kind == "folder of 1x1 images":
        path = base / "dots"
        path.mkdir()
        for i in range(3):
            assert cv2.imwrite(str(path / f"{i}.png"), np.zeros((1, 1, 3), np.uint8))
    elif kind == "4000x100 video":
        path = write_video(base / "strip.avi", (4000, 104), 2)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["1x1 image", "100000x1 image", "folder of 1x1 images", "4000x100 video"])
def test_tiny_or_thin_frames_are_refused_at_entry(capsys, tmp_path, kind):
    """Frames the detector cannot use are refused when they come in, not written to a bag."""
    path = _thin_input(kind, tmp_path)
    out = tmp_path / "out_bag"
    rc, _, err = run(capsys, "from-video", path, "-o", out, "-q")
    line = one_error_line(err)
    assert rc == 1 and line.startswith(f"pebal-bag: error: {path}"), line
    assert "aspect ratio" in line or "smaller than" in line, line
    assert leftovers(tmp_path, out.name) == []


class ScriptedCapture:
    """Stands in for cv2.VideoCapture: reports ``size`` (WxH) and returns ``frames`` (counting reads)."""

    reads = 0

    def __init__(self, size: tuple[int, int], frames: list[np.ndarray]):
        self.size, self.frames = size, list(frames)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: self.size[0], cv2.CAP_PROP_FRAME_HEIGHT: self.size[1],
                cv2.CAP_PROP_FPS: VIDEO_FPS, cv2.CAP_PROP_FRAME_COUNT: len(self.frames)}.get(prop, 0.0)

    def read(self):
        ScriptedCapture.reads += 1
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def grab(self) -> bool:
        return self.read()[0]

    def release(self) -> None:
        pass


def scripted(monkeypatch, size: tuple[int, int], frames: list[np.ndarray]) -> None:
    ScriptedCapture.reads = 0
    monkeypatch.setattr(cv2, "VideoCapture", lambda *_: ScriptedCapture(size, frames))


def test_video_over_the_limits_is_refused_before_a_frame_is_decoded(monkeypatch, video):
    """A video whose frame size breaks the limits (20 frames of 16000x16000 in a 15 MB AVI) is refused
    from the size the container gives, before the first frame is read."""
    scripted(monkeypatch, (16000, 16000), [frame_bgr(0)])
    with pytest.raises(FootageError, match=r"16000x16000.*pixels") as refused:
        open_source(video)
    assert str(refused.value).startswith(f"{video}: ") and ScriptedCapture.reads == 0


def test_each_decoded_frame_is_checked_too(monkeypatch, video):
    """The container's size is a claim: every decoded frame is checked as well."""
    thin = np.zeros((100, 4000, 3), np.uint8)
    scripted(monkeypatch, (160, 120), [thin])
    with pytest.raises(FootageError, match="aspect ratio"):
        open_source(video)
    scripted(monkeypatch, (160, 120), [frame_bgr(0), frame_bgr(1), thin, frame_bgr(3)])
    source = open_source(video)
    scripted(monkeypatch, (160, 120), [frame_bgr(0), frame_bgr(1), thin, frame_bgr(3)])
    with pytest.raises(FootageError, match="frame 2 .*aspect ratio"):
        list(source.frames())


SIZE_ERRORS = ["40000x40000", "100000x1", "4000x100", "1x1"]


@pytest.mark.parametrize("size", SIZE_ERRORS)
def test_size_option_is_bounded_by_the_limits(capsys, folder, tmp_path, size):
    from pebal_perception.cli import camera as camera_cli

    for argv, parse in ((["from-video", str(folder), "-o", str(tmp_path / "out"), "--size", size],
                         bag_cli.build_parser().parse_args),
                        ([str(folder), "--size", size], camera_cli.build_parser().parse_args)):
        with pytest.raises(SystemExit) as usage:
            parse(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert usage.value.code == 2 and len(errors) == 1 and "argument --size" in errors[0], err
    assert not (tmp_path / "out").exists()


def _limited_cli(module: str, *argv, timeout: float = 30) -> tuple[int, str]:
    """Runs ``python -m MODULE ARGV`` with at most 4 GB of address space (a read with no bound fails
    instead of eating the machine) and a time limit (a blocking open fails the test, it does not hang it)."""
    import resource
    import subprocess

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    try:
        done = subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                              timeout=timeout, env=ros_harness.child_env(), preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} {argv} still runs after {timeout} s")
    return done.returncode, done.stderr


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("what", ["fifo as input", "device as input", "fifo as camera info",
                                  "device as camera info", "camera: fifo as input"])
def test_inputs_must_be_regular_files(fifo, folder, tmp_path, what):
    """A FIFO would block the open, /dev/zero would be read forever: both are refused at once."""
    special = fifo if "fifo" in what else Path("/dev/zero")
    if what.startswith("camera"):
        rc, err = _limited_cli("pebal_perception.cli.camera", special)
        prog = "pebal-camera"
    else:
        argv = [special] if "input" in what else [folder, "--camera-info", special]
        rc, err = _limited_cli("pebal_perception.cli.bag", "from-video", *argv, "-o", tmp_path / "out", "-q")
        prog = "pebal-bag"
    line = one_error_line(err)
    assert rc == 1 and line.startswith(f"{prog}: error: {special}: ") and "not a regular file" in line, err
    assert not (tmp_path / "out").exists()


def test_calibration_file_is_read_with_a_bound(tmp_path):
    big = tmp_path / "huge.yaml"
    big.write_text(CALIBRATION + "#" * (2 << 20) + "\n")
    with pytest.raises(FootageError, match=r"huge\.yaml: .*larger than"):
        load_calibration(big)


def test_truncated_video_is_reported(capsys, tmp_path):
    """12 of 50 claimed frames: the bag is written, with a warning line and the counts in footage.json."""
    whole = write_video(tmp_path / "whole.avi", (64, 48), 50, noise=True)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 4])
    out = tmp_path / "cut_bag"
    rc, _, err = run(capsys, "from-video", cut, "-o", out, "-q")
    assert rc == 0, err
    line = one_error_line(err)
    summary = json.loads((out / "footage.json").read_text())
    read = summary["source_frames_read"]
    assert 0 < read < 40 and summary["source_frames_claimed"] == 50 and summary["frames"] == read
    assert line.startswith(f"pebal-bag: warning: {cut}: ") and f"{read} of the 50 frames" in line
    assert summary["warnings"] == [line.split("warning: ", 1)[1]]
    complete = tmp_path / "whole_bag"
    rc, _, err = run(capsys, "from-video", whole, "-o", complete, "-q")
    assert rc == 0 and err == ""
    summary = json.loads((complete / "footage.json").read_text())
    assert summary["source_frames_read"] == summary["source_frames_claimed"] == 50 and summary["warnings"] == []


class EmptyPasses:
    """A source whose every pass gives no frame (the file went away, every frame is undecodable)."""

    path, passes = Path("gone.avi"), 0

    def frames(self):
        self.passes += 1
        return iter(())

    def shortfall(self):
        return None


def test_loop_over_a_source_without_frames_stops():
    """``--loop`` over a pass that gives no frame would spin: the pacing stops with a FootageError."""
    import threading

    from pebal_perception.core.frame_sources import paced_frames

    source, stop = EmptyPasses(), threading.Event()
    with pytest.raises(FootageError, match="gone.avi: .*no frame"):
        for _ in paced_frames(source, period=0.01, stop=stop, loop=True):
            pass
    assert source.passes == 1


def test_loop_warns_about_a_short_pass_once(tmp_path):
    import threading

    from pebal_perception.core.frame_sources import paced_frames

    whole = write_video(tmp_path / "whole.avi", (64, 48), 50, noise=True)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 4])
    source, stop, warnings = open_source(cut), threading.Event(), []
    frames = 0
    for _ in paced_frames(source, period=0.0, stop=stop, loop=True, warn=warnings.append):
        frames += 1
        if frames == 60:  # several passes
            stop.set()
    assert len(warnings) == 1 and "of the 50 frames" in warnings[0]


@pytest.mark.ros
def test_camera_loop_without_frames_exits_1(monkeypatch, capsys, folder):
    reason = ros_harness.ros_unavailable(("rclpy", "sensor_msgs.msg"), executables=())
    if reason:
        pytest.skip(reason)
    from pebal_perception.core import frame_sources
    from pebal_perception.cli import camera as camera_cli

    real_open = frame_sources.open_source

    def open_then_lose_frames(*args, **kwargs):
        source = real_open(*args, **kwargs)
        source.frames = lambda: iter(())
        return source

    def too_long(*_):
        raise TimeoutError("pebal-camera --loop still runs after 60 s")

    monkeypatch.setattr(frame_sources, "open_source", open_then_lose_frames)
    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        rc = camera_cli.main([str(folder), "--loop", "--topic", "/footage_empty/image_raw"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert rc == 1 and one_error_line(err).startswith(f"pebal-camera: error: {folder}: "), err


@pytest.mark.parametrize("topic", ["/camera image", "/camera//image_raw", "/camera/", "/camera/1st", "/cam-era",
                                   "", "/a/~b", "/" + "a" * 250])
def test_invalid_topic_is_a_usage_error(capsys, folder, tmp_path, topic):
    from pebal_perception.cli import camera as camera_cli

    for argv, parse in ((["from-video", str(folder), "-o", str(tmp_path / "out"), "--topic", topic],
                         bag_cli.build_parser().parse_args),
                        ([str(folder), "--topic", topic], camera_cli.build_parser().parse_args)):
        with pytest.raises(SystemExit) as usage:
            parse(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert usage.value.code == 2 and len(errors) == 1 and "argument --topic" in errors[0], err


def test_topic_names_a_bag_can_hold(capsys, folder, tmp_path):
    """A relative name is written fully qualified (as ros2 bag record does); a private ``~`` name has no
    node to belong to in a bag."""
    from pebal_perception.cli import camera as camera_cli

    out = tmp_path / "relative"
    assert run(capsys, "from-video", folder, "-o", out, "--topic", "front/image", "--every", 3, "-q")[0] == 0
    assert sorted(read_bag(out)) == ["/front/image"]
    with pytest.raises(SystemExit):
        bag_cli.build_parser().parse_args(["from-video", str(folder), "-o", str(out), "--topic", "~/image"])
    assert "argument --topic" in capsys.readouterr().err
    assert camera_cli.build_parser().parse_args([str(folder), "--topic", "~/image"]).topic == "~/image"


def test_single_image_file_is_one_frame(capsys, folder, tmp_path):
    image = folder / "frame_002.png"
    source = open_source(image)
    assert (source.kind, source.count, source.size) == ("image", 1, (120, 160))
    assert [i for i, _ in source.frames()] == [0]
    out = tmp_path / "one"
    assert run(capsys, "from-video", image, "-o", out, "-q")[0] == 0
    (_, msg), = read_bag(out)["/camera/image_raw"]
    assert (pixels(msg) == frame_bgr(2)).all()


def test_an_unwritable_output_place_is_named_not_the_input(tmp_path, monkeypatch, capsys):
    """The partial bag cannot be created beside --output (a read-only folder; simulated, tests run as
    root): the one line names the output path."""
    import tempfile

    from pebal_perception.cli import bag as bag_cli

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((64, 128, 3), np.uint8))
    output = tmp_path / "readonly" / "bag"
    output.parent.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(kwargs["dir"]) / f"{kwargs['prefix']}abcd"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert bag_cli.main(["from-video", str(frames), "--output", str(output), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pebal-bag: error: {output}: cannot write the output bag (Permission denied)"]
