"""cli.video: H.264 MP4 through imageio-ffmpeg, Motion-JPEG AVI without it; atomic, refuses non-files."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from pebal_perception.core.io import OutputPathError
from pebal_perception.cli.video import H264, MJPEG, h264_available, write_video


def _frames(n=6, h=33, w=65):  # odd sizes: yuv420p needs even ones
    return [np.full((h, w, 3), 30 * i, np.uint8) for i in range(n)]


def _read_back(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_mjpeg_fallback_reads_back(tmp_path):
    path, codec = write_video(tmp_path / "clip", _frames(), fps=10, codec=MJPEG)
    assert codec == MJPEG and path == tmp_path / "clip.avi"
    frames = _read_back(path)
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3)  # odd row / column cropped
    assert os.stat(path).st_mode & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]  # no temp file left


@pytest.mark.skipif(not h264_available(), reason="imageio-ffmpeg not installed")
def test_h264_mp4_is_the_default_and_is_h264():
    import subprocess
    import tempfile

    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        path, codec = write_video(os.path.join(tmp, "clip"), _frames(), fps=10)
        assert codec == H264 and path.suffix == ".mp4"
        probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                               capture_output=True, text=True).stderr
        assert "h264" in probe and "yuv420p" in probe and "64x32" in probe


def test_bad_input_is_refused_and_nothing_is_replaced(tmp_path):
    with pytest.raises(ValueError):
        write_video(tmp_path / "a", [], fps=10)
    with pytest.raises(ValueError):
        write_video(tmp_path / "a", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], fps=10)
    with pytest.raises(ValueError):
        write_video(tmp_path / "a", _frames(), fps=0)
    (tmp_path / "taken.avi").mkdir()
    with pytest.raises(OutputPathError):
        write_video(tmp_path / "taken", _frames(), fps=10, codec=MJPEG)
    assert (tmp_path / "taken.avi").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["taken.avi"]


def test_annotated_frame_shows_boxes_ground_truth_and_legend():
    from pebal_perception.core.visualize import GROUND_TRUTH_COLOUR, OBSTACLE_COLOUR, annotate_obstacles

    image = np.full((120, 200, 3), 90, np.uint8)
    gt = np.zeros((120, 200), np.uint8)
    gt[60:90, 120:160] = 3
    out = annotate_obstacles(image, [(20, 70, 40, 30, 7, -4.25)], gt, caption="frame 1")
    assert out.shape == image.shape and image.max() == 90  # the input is not drawn on
    magenta = np.all(out == OBSTACLE_COLOUR, axis=-1)
    cyan = np.all(out == np.array(GROUND_TRUTH_COLOUR, np.uint8), axis=-1)
    assert magenta[70, 20:60].any() and magenta[99, 20:60].any()  # the box's top and bottom edges
    assert cyan[60:90, 120].any() and not cyan[40:, :100].any()  # the outline is around the object only
    assert (out[:30, :100] != 90).any()  # the legend panel in the top-left corner
    assert annotate_obstacles(image, [], None).shape == image.shape
