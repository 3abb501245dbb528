"""Videos people can play: H.264 MP4 (yuv420p, faststart: what browsers play) through the ffmpeg that the
``imageio-ffmpeg`` package ships, else Motion-JPEG AVI through OpenCV (plays in VLC / ffplay, not in every
browser). Written under a temporary name and renamed when complete."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pebal_perception.core.io import atomic_write_path

H264 = "h264"
MJPEG = "mjpeg"


def h264_available() -> bool:
    """Whether the imageio-ffmpeg package (and its ffmpeg binary) can be used."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError):
        return False


def _even(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    # yuv420p needs even sizes: crop a last odd row / column rather than rescale the whole video
    h, w = frames[0].shape[:2]
    return [np.ascontiguousarray(f[: h - h % 2, : w - w % 2, :3]) for f in frames]


def _write_h264(tmp: str, frames: list[np.ndarray], fps: float) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                                         output_params=["-crf", "23", "-movflags", "+faststart", "-f", "mp4"],
                                         ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(frame)
    finally:
        writer.close()


def _write_mjpeg(tmp: str, frames: list[np.ndarray], fps: float) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"{tmp}: OpenCV cannot write Motion-JPEG AVI")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def write_video(stem: str | os.PathLike, frames: Iterable[np.ndarray], fps: float,
                codec: str | None = None) -> tuple[Path, str]:
    """Writes the RGB ``frames`` (all of one size) as ``<stem>.mp4`` (H.264) or, when imageio-ffmpeg is
    missing (or ``codec='mjpeg'``), ``<stem>.avi`` (Motion-JPEG); returns ``(path, codec)``.

    The file is written as a temporary sibling and renamed over the target when complete; the target
    must be absent or a regular file (:func:`pebal_perception.core.io.check_output_file`)."""
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("write_video: no frames")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] < 3 or shape[0] < 2 or shape[1] < 2:
        raise ValueError(f"write_video: frames must be H x W x 3 RGB of at least 2 x 2, got {shape}")
    if any(f.shape != shape for f in frames):
        raise ValueError("write_video: frames differ in size")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video: fps must be positive, got {fps}")
    codec = codec or (H264 if h264_available() else MJPEG)
    if codec not in (H264, MJPEG):
        raise ValueError(f"write_video: codec must be {H264!r} or {MJPEG!r}, got {codec!r}")
    path = Path(f"{os.fspath(stem)}{'.mp4' if codec == H264 else '.avi'}")
    frames = _even([f.astype(np.uint8, copy=False) for f in frames])

    def encode(tmp: str) -> None:
        (_write_h264 if codec == H264 else _write_mjpeg)(tmp, frames, float(fps))
        if os.path.getsize(tmp) == 0:
            raise OSError(f"{path}: the {codec} encoder wrote nothing")

    atomic_write_path(path, encode, suffix=path.suffix)
    return path, codec
