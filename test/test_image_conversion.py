"""Tests for pebal_perception.core.image_conversion and core.compressed_images (ROS-free image conversion).

No ROS node is started: where ``sensor_msgs``/``rclpy`` are importable, messages are only built and
(de)serialised in-process. Fuzzing is bounded; ``PEBAL_FUZZ_EXAMPLES=5000`` raises it locally.
"""
from __future__ import annotations

import array
import importlib
import importlib.machinery
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pebal_perception.core import compressed_images as ci
from pebal_perception.core import image_conversion as ic
from pebal_perception.core.compressed_images import compressed_to_rgb, parse_compressed_format
from pebal_perception.core.image_conversion import (REJECT_REASONS, SUPPORTED_ENCODINGS, ImageConverter,
                                                    ImageRejected, image_to_rgb, rgb_to_image_fields)

FUZZ_EXAMPLES = int(os.environ.get("PEBAL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALIASES = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8", "16UC1": "mono16"}
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2, "32FC1": 4}


# ------------------------------------------------------------------------------------------------ helpers

def pad_rows(rows: np.ndarray, pad: int, fill: int = 0xAB) -> tuple[bytes, int]:
    """(height x row_bytes uint8) -> (message data with ``pad`` garbage bytes after each row, step)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8).reshape(rows.shape[0], -1)
    padded = np.full((rows.shape[0], rows.shape[1] + pad), fill, dtype=np.uint8)
    padded[:, :rows.shape[1]] = rows
    return padded.tobytes(), rows.shape[1] + pad


def reference_rgb(encoding: str, height: int, width: int, step: int, big: bool, data: bytes,
                  mono16_scale: str = "shift") -> np.ndarray:
    """A deliberately plain re-implementation: slice each row out of ``data``, then numpy per encoding."""
    enc = ALIASES.get(encoding, encoding)
    height, width, step = int(height), int(width), int(step)  # ROS fields may arrive as bool/np ints
    bpp = BYTES_PER_PIXEL[enc]
    packed = b"".join(bytes(data[r * step:r * step + width * bpp]) for r in range(height))
    if enc in ("rgb8", "bgr8", "rgba8", "bgra8"):
        px = np.frombuffer(packed, np.uint8).reshape(height, width, bpp)
        order = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2], "bgra8": [2, 1, 0]}[enc]
        return px[:, :, order].copy()
    if enc == "mono8":
        grey = np.frombuffer(packed, np.uint8).reshape(height, width)
    elif enc == "mono16":
        v = np.frombuffer(packed, ">u2" if big else "<u2").reshape(height, width).astype(np.int64)
        if mono16_scale == "shift":
            grey = (v >> 8).astype(np.uint8)
        else:
            lo, hi = v.min(), v.max()
            grey = (np.floor((v - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8) if hi > lo
                    else np.zeros_like(v, dtype=np.uint8))
    else:  # 32FC1
        v = np.frombuffer(packed, ">f4" if big else "<f4").reshape(height, width).astype(np.float64)
        grey = np.floor(np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def assert_valid_rgb(out: np.ndarray, height: int, width: int) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8 and out.shape == (height, width, 3)
    assert out.flags.c_contiguous and out.flags.writeable


def rejected(reason: str, fn, *args, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REJECT_REASONS
    assert isinstance(info.value, ValueError) and info.value.message
    return info.value


RNG = np.random.default_rng(1234)


def random_rgb(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------- encodings, by hand

SIZES = [(1, 1), (5, 7), (5, 33), (8, 64)]  # odd widths; 64 / 8 = the widest aspect ratio accepted
PADS = [0, 1, 3, 13]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "8UC3", "rgba8", "bgra8", "8UC4"])
def test_colour_8bit(encoding, height, width, pad):
    rgb = random_rgb(height, width)
    alpha = RNG.integers(0, 256, (height, width, 1), dtype=np.uint8)
    canonical = ALIASES.get(encoding, encoding)
    px = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
          "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], 2)}[canonical]
    data, step = pad_rows(px.reshape(height, -1), pad)
    out = image_to_rgb(encoding, height, width, step, 0, data)
    assert_valid_rgb(out, height, width)
    np.testing.assert_array_equal(out, rgb)
    # is_bigendian means nothing for 8-bit data
    np.testing.assert_array_equal(image_to_rgb(encoding, height, width, step, 1, data), rgb)


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8(encoding, height, width, pad):
    grey = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    data, step = pad_rows(grey, pad)
    out = image_to_rgb(encoding, height, width, step, False, data)
    assert_valid_rgb(out, height, width)
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("pad", PADS)  # odd pads make every other row unaligned for uint16
@pytest.mark.parametrize("big", [0, 1, True, False])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_mono16_shift(encoding, big, height, width, pad):
    values = RNG.integers(0, 65536, (height, width), dtype=np.uint16)
    values.flat[0] = 0xFF00  # high byte 255, low byte 0: catches a byte-order mix-up
    raw = values.astype(">u2" if big else "<u2").view(np.uint8)
    data, step = pad_rows(raw, pad)
    out = image_to_rgb(encoding, height, width, step, big, data)
    assert_valid_rgb(out, height, width)
    np.testing.assert_array_equal(out, np.stack([(values >> 8).astype(np.uint8)] * 3, axis=2))
    assert out[0, 0, 0] == 255


def test_mono16_endianness_differs():
    values = np.array([[0x0102, 0xFF00]], dtype=np.uint16)
    little = values.astype("<u2").tobytes()
    np.testing.assert_array_equal(image_to_rgb("16UC1", 1, 2, 4, 0, little)[0, :, 0], [0x01, 0xFF])
    np.testing.assert_array_equal(image_to_rgb("16UC1", 1, 2, 4, 1, little)[0, :, 0], [0x02, 0x00])


@pytest.mark.parametrize("big", [0, 1])
@pytest.mark.parametrize("pad", [0, 3])
def test_mono16_minmax(big, pad):
    values = np.array([[1000, 2000, 3000], [1500, 2500, 1000]], dtype=np.uint16)
    data, step = pad_rows(values.astype(">u2" if big else "<u2").view(np.uint8), pad)
    out = image_to_rgb("mono16", 2, 3, step, big, data, mono16_scale="minmax")
    assert_valid_rgb(out, 2, 3)
    expected = reference_rgb("mono16", 2, 3, step, bool(big), data, mono16_scale="minmax")
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255
    flat, flat_step = pad_rows(np.full((2, 3), 777, "<u2").view(np.uint8), 0)
    np.testing.assert_array_equal(image_to_rgb("mono16", 2, 3, flat_step, 0, flat, mono16_scale="minmax"), 0)


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("pad", [0, 1, 2, 5])  # unaligned float rows
@pytest.mark.parametrize("big", [0, 1])
def test_32fc1(big, height, width, pad):
    levels = RNG.integers(0, 256, (height, width))
    values = (levels / 255.0).astype(np.float32)
    data, step = pad_rows(values.astype(">f4" if big else "<f4").view(np.uint8), pad)
    out = image_to_rgb("32FC1", height, width, step, big, data)
    assert_valid_rgb(out, height, width)
    np.testing.assert_array_equal(out, np.stack([levels.astype(np.uint8)] * 3, axis=2))


def test_32fc1_clips_out_of_range():
    values = np.array([[-1.0, -0.0, 0.5, 1.0, 1.0001, 1e30, -1e30]], dtype="<f4")
    out = image_to_rgb("32FC1", 1, 7, 28, 0, values.tobytes())
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 255, 255, 255, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("big", [0, 1])
def test_32fc1_non_finite(bad, big):
    values = np.array([[0.1, 0.2], [bad, 0.4]], dtype=">f4" if big else "<f4")
    err = rejected("non_finite", image_to_rgb, "32FC1", 2, 2, 8, big, values.tobytes())
    assert "1 NaN/Inf" in str(err)


def test_encoding_names_are_matched_exactly_then_case_insensitively():
    data = bytes([10, 20, 30])
    for name in ["bgr8", "BGR8", " bgr8 ", "8uc3", "8UC3"]:
        np.testing.assert_array_equal(image_to_rgb(name, 1, 1, 3, 0, data)[0, 0], [30, 20, 10])
    assert set(SUPPORTED_ENCODINGS) == set(BYTES_PER_PIXEL) | set(ALIASES)


# ------------------------------------------------------------------------------------ data containers

def _containers(raw: bytes) -> dict:
    u8 = np.frombuffer(raw, np.uint8).copy()
    return {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "array('B')": array.array("B", raw),
        "ndarray": u8,
        "ndarray 2-D": u8.reshape(2, -1),
        "ndarray non-contiguous": np.repeat(u8, 2)[::2],
        "memoryview non-contiguous": memoryview(np.repeat(u8, 2))[::2],
        "list": list(raw),
        "ndarray uint16 (raw bytes)": u8.view("<u2"),
    }


@pytest.mark.parametrize("container", list(_containers(bytes(12))))
def test_data_containers(container):
    rgb = random_rgb(2, 2)
    raw, step = pad_rows(rgb[:, :, ::-1].reshape(2, -1), 0)
    data = _containers(raw)[container]
    np.testing.assert_array_equal(image_to_rgb("bgr8", 2, 2, step, 0, data), rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "bgr8"])
def test_result_never_aliases_the_message(encoding):
    bpp = BYTES_PER_PIXEL[encoding]
    data = bytearray(RNG.integers(0, 256, 4 * 5 * bpp, dtype=np.uint8).tobytes())
    before = bytes(data)
    out = image_to_rgb(encoding, 4, 5, 5 * bpp, 0, data)
    out[...] = 0
    assert bytes(data) == before
    data[:] = bytes(len(data))  # the caller may reuse its buffer: nothing of it is still exported
    assert out.max() == 0
    ro = image_to_rgb(encoding, 4, 5, 5 * bpp, 0, before)
    ro[0, 0, 0] = 1  # writable even from immutable bytes


def test_fields_accept_numpy_integers():
    out = image_to_rgb("mono8", np.uint32(2), np.int64(3), np.uint16(3), np.uint8(0), bytes(6))
    assert_valid_rgb(out, 2, 3)


# ------------------------------------------------------------------------------------------ rejections

def test_reject_unknown_encoding():
    for encoding in ["", "yuv422", "bgr16", "32FC3", "jpeg", None, 3, b"rgb8"]:
        rejected("unknown_encoding", image_to_rgb, encoding, 1, 1, 3, 0, bytes(3))


def test_reject_zero_size():
    rejected("empty", image_to_rgb, "rgb8", 0, 4, 12, 0, b"")
    rejected("empty", image_to_rgb, "rgb8", 4, 0, 0, 0, b"")
    rejected("empty", image_to_rgb, "mono16", 0, 0, 0, 1, b"")


def test_reject_step_too_small():
    err = rejected("bad_step", image_to_rgb, "rgb8", 2, 4, 11, 0, bytes(22))
    assert "12" in str(err)
    rejected("bad_step", image_to_rgb, "mono16", 2, 4, 7, 0, bytes(14))
    rejected("bad_step", image_to_rgb, "32FC1", 1, 1, 0, 0, b"")


@pytest.mark.parametrize("delta", [-1, 1, -12, 100])
def test_reject_size_mismatch(delta):
    err = rejected("size_mismatch", image_to_rgb, "rgb8", 2, 4, 12, 0, bytes(24 + delta))
    assert "24" in str(err) and str(24 + delta) in str(err)  # expected and actual are in the message


def test_reject_too_large():
    # checked before the data is looked at: a huge header with no data is too_large, not size_mismatch
    rejected("too_large", image_to_rgb, "rgb8", 100_000, 100_000, 300_000, 0, b"")
    rejected("too_large", image_to_rgb, "mono8", 10, 11, 11, 0, bytes(110), max_pixels=109)
    assert_valid_rgb(image_to_rgb("mono8", 10, 11, 11, 0, bytes(110), max_pixels=110), 10, 11)


@pytest.mark.parametrize("height,width", [(1_000_000, 32), (32, 1_000_000), (2_000_000, 32), (64_000_000, 1)])
def test_reject_thin_images_before_allocating(height, width):
    """Thin in-limit frames (32 MB of mono8) used to be upscaled to the network size at a cost of gigabytes."""
    import tracemalloc

    data = np.zeros(height * width, np.uint8)  # the real payload (calloc: pages are not touched)
    assert height * width <= ic.DEFAULT_MAX_PIXELS
    tracemalloc.start()
    try:
        err = rejected("bad_aspect_ratio", image_to_rgb, "mono8", height, width, width, 0, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated before refusing"
    assert f"{width}x{height}" in str(err) and str(ic.MAX_ASPECT_RATIO) in str(err)
    msg = types.SimpleNamespace(encoding="mono8", height=height, width=width, step=width, is_bigendian=0, data=data)
    rejected("bad_aspect_ratio", ImageConverter(official="never").to_rgb, msg)


def test_aspect_ratio_limit_is_inclusive():
    assert ic.MAX_ASPECT_RATIO == 8
    assert_valid_rgb(image_to_rgb("mono8", 1, 8, 8, 0, bytes(8)), 1, 8)
    assert_valid_rgb(image_to_rgb("mono8", 64, 8, 8, 0, bytes(512)), 64, 8)
    rejected("bad_aspect_ratio", image_to_rgb, "mono8", 1, 9, 9, 0, bytes(9))
    rejected("bad_aspect_ratio", image_to_rgb, "rgb8", 65, 8, 24, 0, bytes(65 * 24))
    assert "bad_aspect_ratio" in REJECT_REASONS


@pytest.mark.parametrize("field,value", [
    ("height", -1), ("width", -5), ("step", -3), ("height", 2**32), ("step", 2**40),
    ("height", 2.0), ("width", "4"), ("step", None), ("is_bigendian", "big"), ("is_bigendian", -1),
    ("is_bigendian", 0.5),
])
def test_reject_invalid_fields(field, value):
    fields = dict(encoding="mono16", height=2, width=2, step=4, is_bigendian=0, data=bytes(8))
    fields[field] = value
    rejected("invalid_field", image_to_rgb, **fields)


@pytest.mark.parametrize("data", [None, "abcdef", 12, [1, 2, 300, 4, 5, 6], [0.5] * 6, [[1, 2], [3, 4]],
                                  np.array([1, "x"], dtype=object), object()])
def test_reject_invalid_data(data):
    rejected("invalid_data", image_to_rgb, "mono8", 2, 3, 3, 0, data)


def test_bad_settings_are_value_errors_not_rejections():
    with pytest.raises(ValueError) as info:
        image_to_rgb("mono16", 1, 1, 2, 0, bytes(2), mono16_scale="log")
    assert not isinstance(info.value, ImageRejected)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            image_to_rgb("mono8", 1, 1, 1, 0, bytes(1), max_pixels=bad)
    with pytest.raises(ValueError):
        ImageConverter(official="sometimes")
    with pytest.raises(ValueError):
        ImageConverter(mono16_scale="gamma")


# ---------------------------------------------------------------------------------------------- fuzzing

FUZZ_ENCODINGS = list(SUPPORTED_ENCODINGS) + [
    "", "RGB8", "8uc3", "bgr16", "rgb16", "yuv422", "16UC3", "32FC3", "64FC1", "mono 8", "jpeg", "bayer_rggb8"]
WEIRD_INTS = st.sampled_from([-1, -2**31, 2**32, 2**32 - 1, 2**63, 1.0, None, "3", True])


@st.composite
def image_fields(draw):
    pick = draw(st.integers(0, 9))  # mostly supported encodings, so that the size checks and conversions run
    encoding = draw(st.sampled_from(SUPPORTED_ENCODINGS) if pick < 6 else st.sampled_from(FUZZ_ENCODINGS)
                    if pick < 8 else st.text(max_size=10) if pick == 8 else st.one_of(st.none(), st.integers(-3, 3)))
    spec = ic.lookup_encoding(encoding)
    if draw(st.booleans()):  # small and mostly consistent: exercises the conversions
        height, width = draw(st.integers(0, 12)), draw(st.integers(0, 12))
        bpp = draw(st.sampled_from([1, 2, 3, 4, 8]))
        if spec is not None and draw(st.integers(0, 3)):
            bpp = spec.channels * spec.itemsize
        step = max(0, width * bpp + draw(st.integers(0, 5)) - draw(st.sampled_from([0, 0, 0, 1])))
        size = max(0, step * height + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -step])))
    else:  # anything: almost always a mismatch
        height, width = draw(st.integers(0, 4096)), draw(st.integers(0, 4096))
        step = draw(st.one_of(st.integers(0, 20_000), st.just(width * 3)))
        size = draw(st.integers(0, 4096))
    fields = dict(encoding=encoding, height=height, width=width, step=step,
                  is_bigendian=draw(st.one_of(st.integers(0, 1), st.booleans(), st.integers(0, 255))),
                  data=draw(st.binary(min_size=size, max_size=size)))
    if draw(st.integers(0, 9)) == 0:  # occasionally a field of the wrong kind
        fields[draw(st.sampled_from(["height", "width", "step", "is_bigendian"]))] = draw(WEIRD_INTS)
    container = draw(st.sampled_from(["bytes", "bytearray", "memoryview", "array", "ndarray", "ndarray-strided",
                                      "list", "str", "none"]))
    raw = fields["data"]
    fields["data"] = {
        "bytes": lambda: raw, "bytearray": lambda: bytearray(raw), "memoryview": lambda: memoryview(raw),
        "array": lambda: array.array("B", raw), "ndarray": lambda: np.frombuffer(raw, np.uint8),
        "ndarray-strided": lambda: np.repeat(np.frombuffer(raw, np.uint8), 2)[::2],
        "list": lambda: list(raw), "str": lambda: raw.decode("latin-1"), "none": lambda: None,
    }[container]()
    return fields, raw


@FUZZ
@given(image_fields(), st.sampled_from(["shift", "minmax"]), st.sampled_from([ic.DEFAULT_MAX_PIXELS, 50, 1]))
def test_fuzz_image_to_rgb_returns_rgb_or_rejects(case, mono16_scale, max_pixels):
    fields, raw = case
    try:
        out = image_to_rgb(**fields, max_pixels=max_pixels, mono16_scale=mono16_scale)
    except ImageRejected as err:
        assert err.reason in REJECT_REASONS
        return
    assert_valid_rgb(out, fields["height"], fields["width"])
    assert fields["height"] * fields["width"] <= max_pixels
    spec_name = ic.lookup_encoding(fields["encoding"]).name
    expected = reference_rgb(spec_name, fields["height"], fields["width"], fields["step"],
                             bool(fields["is_bigendian"]), raw, mono16_scale)
    np.testing.assert_array_equal(out, expected)


@FUZZ
@given(encoding=st.sampled_from(SUPPORTED_ENCODINGS), height=st.integers(1, 8), width=st.integers(1, 8),
       pad=st.integers(0, 9), big=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_valid_images_match_reference(encoding, height, width, pad, big, seed):
    rng = np.random.default_rng(seed)
    bpp = BYTES_PER_PIXEL[ALIASES.get(encoding, encoding)]
    if encoding == "32FC1":  # finite floats, some outside [0, 1]
        floats = rng.uniform(-0.5, 1.5, (height, width)).astype(">f4" if big else "<f4")
        rows = floats.view(np.uint8).reshape(height, -1)
    else:
        rows = rng.integers(0, 256, (height, width * bpp), dtype=np.uint8)
    data, step = pad_rows(rows, pad, fill=int(rng.integers(0, 256)))
    for scale in ("shift", "minmax"):
        out = image_to_rgb(encoding, height, width, step, big, data, mono16_scale=scale)
        np.testing.assert_array_equal(out, reference_rgb(encoding, height, width, step, big, data, scale))


@st.composite
def compressed_payloads(draw):
    kind = draw(st.sampled_from(["random", "png", "jpeg", "png-mutated", "jpeg-mutated", "truncated"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    img = np.random.default_rng(draw(st.integers(0, 1000))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    payload = bytearray(cv2.imencode(".png" if kind.startswith("png") or kind == "truncated" else ".jpg", img)[1])
    if kind.endswith("mutated"):
        for _ in range(draw(st.integers(1, 8))):
            payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    if kind == "truncated":
        payload = payload[:draw(st.integers(0, len(payload)))]
    return bytes(payload)


@FUZZ
@given(payload=compressed_payloads(),
       fmt=st.one_of(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "", "16UC1; compressedDepth png"]),
                     st.text(max_size=20), st.none()),
       max_pixels=st.sampled_from([ic.DEFAULT_MAX_PIXELS, 100]))
def test_fuzz_compressed_returns_rgb_or_rejects(payload, fmt, max_pixels):
    try:
        out = compressed_to_rgb(fmt, payload, max_pixels=max_pixels)
    except ImageRejected as err:
        assert err.reason in REJECT_REASONS
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    assert out.shape[0] * out.shape[1] <= max_pixels


# ----------------------------------------------------------------------------------------------- output

@pytest.mark.parametrize("height,width", [(1, 1), (5, 7), (3, 23)])
def test_fields_round_trip(height, width):
    rgb = random_rgb(height, width)
    f = rgb_to_image_fields(rgb, "rgb8")
    assert (f["encoding"], f["height"], f["width"], f["step"], f["is_bigendian"]) == ("rgb8", height, width,
                                                                                      3 * width, 0)
    assert isinstance(f["data"], bytes) and len(f["data"]) == f["step"] * height
    np.testing.assert_array_equal(image_to_rgb(**f), rgb)

    grey = rgb[:, :, 1].copy()
    f = rgb_to_image_fields(grey, "mono8")
    assert (f["step"], len(f["data"])) == (width, width * height)
    np.testing.assert_array_equal(image_to_rgb(**f), np.stack([grey] * 3, axis=2))
    np.testing.assert_array_equal(rgb_to_image_fields(grey[:, :, None], "mono8")["data"], f["data"])

    score = RNG.random((height, width)).astype(np.float32)
    f = rgb_to_image_fields(score, "32FC1")
    assert (f["encoding"], f["step"], f["is_bigendian"]) == ("32FC1", 4 * width, 0)
    np.testing.assert_array_equal(np.frombuffer(f["data"], "<f4").reshape(height, width), score)  # exact
    np.testing.assert_array_equal(image_to_rgb(**f)[:, :, 0], np.floor(score * 255.0 + 0.5).astype(np.uint8))


def test_fields_from_views_and_other_float_types():
    big = random_rgb(6, 10)
    view = big[1:5, 2:9]  # non-contiguous
    np.testing.assert_array_equal(image_to_rgb(**rgb_to_image_fields(view, "rgb8")), view)
    score64 = np.linspace(0, 1, 12).reshape(3, 4)
    f = rgb_to_image_fields(score64, "32FC1")
    np.testing.assert_array_equal(np.frombuffer(f["data"], "<f4").reshape(3, 4), score64.astype(np.float32))
    f = rgb_to_image_fields(score64.astype(">f4"), "32FC1")  # big-endian input is written little-endian
    assert f["is_bigendian"] == 0
    np.testing.assert_array_equal(np.frombuffer(f["data"], "<f4").reshape(3, 4), score64.astype(np.float32))


@pytest.mark.parametrize("array,encoding", [
    (np.zeros((2, 2, 3), np.uint8), "bgr8"),
    (np.zeros((2, 2), np.uint8), "rgb8"),
    (np.zeros((2, 2, 3), np.float32), "rgb8"),
    (np.zeros((2, 2, 3), np.uint8), "mono8"),
    (np.zeros((2, 2), np.uint16), "mono8"),
    (np.zeros((2, 2), np.int32), "32FC1"),
    (np.zeros((0, 2), np.uint8), "mono8"),
])
def test_fields_reject_mismatched_arrays(array, encoding):
    with pytest.raises(ValueError):
        rgb_to_image_fields(array, encoding)


def _sensor_msgs_image():
    try:
        from sensor_msgs.msg import Image
    except Exception as exc:  # noqa: BLE001 - no ROS interfaces in this environment
        pytest.skip(f"sensor_msgs not importable: {exc}")
    return Image


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "32FC1"])
def test_real_sensor_msgs_image_round_trip(encoding):
    Image = _sensor_msgs_image()
    from std_msgs.msg import Header
    arr = {"rgb8": random_rgb(5, 7), "mono8": random_rgb(5, 7)[:, :, 0],
           "32FC1": RNG.random((5, 7)).astype(np.float32)}[encoding]
    header = Header(frame_id="camera")
    conv = ImageConverter(official="never")
    msg = Image(**conv.from_array(arr, encoding, header=header))
    assert msg.header.frame_id == "camera" and msg.encoding == encoding
    expected = image_to_rgb(**rgb_to_image_fields(arr, encoding))
    np.testing.assert_array_equal(conv.to_rgb(msg), expected)  # msg.data is an array.array('B') here
    try:
        from rclpy.serialization import deserialize_message, serialize_message
        wire = serialize_message(msg)
    except Exception as exc:  # noqa: BLE001 - serialisation needs the rclpy C extension
        pytest.skip(f"rclpy serialisation unavailable: {exc}")
    back = deserialize_message(wire, Image)
    np.testing.assert_array_equal(conv.to_rgb(back), expected)


def test_real_sensor_msgs_padded_big_endian_mono16():
    Image = _sensor_msgs_image()
    values = RNG.integers(0, 65536, (3, 5), dtype=np.uint16)
    data, step = pad_rows(values.astype(">u2").view(np.uint8), 6)
    msg = Image(height=3, width=5, encoding="16UC1", is_bigendian=1, step=step, data=data)
    out = ImageConverter(official="never").to_rgb(msg)
    np.testing.assert_array_equal(out[:, :, 2], (values >> 8).astype(np.uint8))


# ------------------------------------------------------------------------------------------- compressed

def test_compressed_png_exact_and_jpeg_close():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    rgb[..., 1] = np.arange(48, dtype=np.uint8)[:, None] * 5
    rgb[..., 2] = 200
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    png = cv2.imencode(".png", bgr)[1]
    for data in (png.tobytes(), png, bytearray(png.tobytes()), array.array("B", png.tobytes())):
        out = compressed_to_rgb("rgb8; png compressed bgr8", data)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    out = compressed_to_rgb("jpeg", jpeg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3.0
    assert out[..., 2].mean() > 190 and out[..., 0].mean() < out[..., 2].mean()  # channels not swapped


def test_compressed_grey_and_16bit_png():
    grey = RNG.integers(0, 256, (6, 9), dtype=np.uint8)
    out = compressed_to_rgb("mono8; png compressed ", cv2.imencode(".png", grey)[1].tobytes())
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))
    deep = RNG.integers(0, 65536, (6, 9), dtype=np.uint16)
    out = compressed_to_rgb("mono16; png compressed ", cv2.imencode(".png", deep)[1].tobytes())
    np.testing.assert_array_equal(out[:, :, 0], (deep >> 8).astype(np.uint8))


def test_compressed_rejections():
    rejected("empty", compressed_to_rgb, "jpeg", b"")
    rejected("empty", compressed_to_rgb, "png", array.array("B"))
    rejected("decode_failed", compressed_to_rgb, "jpeg", b"\x00" * 100)
    rejected("decode_failed", compressed_to_rgb, "png", b"this is not an image")
    png = cv2.imencode(".png", random_rgb(8, 8))[1].tobytes()
    rejected("decode_failed", compressed_to_rgb, "png", png[:40])
    rejected("unsupported_format", compressed_to_rgb, "16UC1; compressedDepth png", png)
    rejected("invalid_data", compressed_to_rgb, "png", None)


@pytest.fixture
def no_decoding(monkeypatch):
    """cv2.imdecode raises: a test using this proves that a payload was refused before decoding."""
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the header check should have refused the payload")

    monkeypatch.setattr(ic.cv2, "imdecode", no_decode)


def png_bytes(width: int, height: int, crc_ok: bool = True, ihdr_length: int = 13) -> bytes:
    """A complete, tiny PNG file whose header claims ``width x height`` (8-bit RGB): a decompression bomb
    when the claim is large (it holds one compressed row)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes, ok: bool = True) -> bytes:
        crc = zlib.crc32(kind + body) ^ (0 if ok else 1)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)[:ihdr_length]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr, crc_ok)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64, 9)) + chunk(b"IEND", b""))


def gif_bytes(width: int, height: int) -> bytes:
    """A 35-byte GIF89a claiming ``width x height`` (screen and image), one LZW block."""
    w, h = width.to_bytes(2, "little"), height.to_bytes(2, "little")
    return (b"GIF89a" + w + h + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
            + b"," + b"\x00\x00\x00\x00" + w + h + b"\x00" + b"\x02\x02\x44\x01\x00" + b";")


def webp_bytes(width: int, height: int) -> bytes:
    """An extended-format (VP8X) WebP header claiming ``width x height``."""
    body = b"VP8X" + (10).to_bytes(4, "little") + b"\x00\x00\x00\x00" + \
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WEBP" + body


OTHER_FORMATS = {
    "gif": gif_bytes(30000, 30000),
    "webp": webp_bytes(16383, 16383),
    "jp2": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 " + bytes(40),
    "j2k": b"\xff\x4f\xff\x51\x00\x2f\x00\x00" + (10000).to_bytes(4, "big") * 2 + bytes(40),
    "tiff": b"II*\x00\x08\x00\x00\x00" + bytes(40),
    "tiff-be": b"MM\x00*\x00\x00\x00\x08" + bytes(40),
    "bmp": cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))[1].tobytes(),
    "pnm": b"P6\n30000 30000\n255\n" + bytes(40),
}


def test_gif_bomb_is_refused_before_decoding(no_decoding):
    bomb = gif_bytes(30000, 30000)
    assert len(bomb) == 35
    for fmt in ("gif", "jpeg", "png", "", "rgb8; jpeg compressed bgr8"):
        err = rejected("unsupported_format", compressed_to_rgb, fmt, bomb)
        assert "gif" in str(err).lower()


@pytest.mark.parametrize("kind", sorted(OTHER_FORMATS))
def test_other_formats_labelled_jpeg_or_png_are_refused_by_their_magic_bytes(kind, no_decoding):
    for fmt in ("jpeg", "png", ""):
        rejected("unsupported_format", compressed_to_rgb, fmt, OTHER_FORMATS[kind])
    rejected("unsupported_format", ci.encoded_image_info, OTHER_FORMATS[kind])


@pytest.mark.parametrize("fmt", ["gif", "webp", "tiff", "bmp", "jp2", "jpeg2000", "rgb8; tiff compressed bgr8",
                                 "bgr8; webp compressed bgr8", "16UC1; compressedDepth png", "theora", "x"])
def test_only_jpeg_and_png_format_strings_are_accepted(fmt, no_decoding):
    png = png_bytes(8, 8)
    rejected("unsupported_format", compressed_to_rgb, fmt, png)


def test_accepted_format_strings():
    rgb = random_rgb(6, 10)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    assert ci.ACCEPTED_CODECS == ("jpeg", "png")
    for fmt in ("png", "PNG", "jpeg", "jpg", "", "  ", "bgr8; png compressed bgr8", "rgb8; jpeg compressed bgr8",
                "mono8; png compressed "):
        np.testing.assert_array_equal(compressed_to_rgb(fmt, png), rgb)  # the payload decides png vs jpeg
        assert compressed_to_rgb(fmt, jpeg).shape == (6, 10, 3)
    rejected("invalid_field", compressed_to_rgb, None, png)
    rejected("invalid_field", compressed_to_rgb, 3, png)


def test_png_bomb_is_refused_from_its_header(no_decoding):
    bomb = png_bytes(100_000, 100_000)
    assert len(bomb) < 100
    assert ci.encoded_image_info(bomb, max_pixels=10**12) == ("png", 100_000, 100_000)
    err = rejected("too_large", compressed_to_rgb, "png", bomb)
    assert "100000x100000" in str(err)
    rejected("too_large", compressed_to_rgb, "png", png_bytes(30, 20), max_pixels=599)


def test_thin_compressed_images_are_refused_from_their_header(no_decoding):
    rejected("bad_aspect_ratio", compressed_to_rgb, "png", png_bytes(2_000_000, 32))
    rejected("bad_aspect_ratio", compressed_to_rgb, "png", png_bytes(1, 9))
    jpeg = cv2.imencode(".jpg", np.zeros((16, 200, 3), np.uint8))[1].tobytes()
    rejected("bad_aspect_ratio", compressed_to_rgb, "jpeg", jpeg)


def test_unparsable_png_headers_are_refused_not_decoded(no_decoding):
    good = png_bytes(8, 8)
    for bad in (good[:8], good[:20], good[:32], png_bytes(8, 8, crc_ok=False), png_bytes(8, 8, ihdr_length=12),
                png_bytes(0, 8), png_bytes(8, 0), png_bytes(2**31, 1),
                good[:12] + b"IDAT" + good[16:]):  # first chunk is not IHDR
        rejected("decode_failed", compressed_to_rgb, "png", bad)


def test_decoding_after_the_header_check_is_still_checked(monkeypatch):
    png = png_bytes(8, 8)
    monkeypatch.setattr(ic.cv2, "imdecode", lambda *a, **k: np.zeros((10, 100, 3), np.uint8))
    rejected("bad_aspect_ratio", compressed_to_rgb, "png", png)
    monkeypatch.setattr(ic.cv2, "imdecode", lambda *a, **k: np.zeros((300, 300, 3), np.uint8))
    rejected("too_large", compressed_to_rgb, "png", png, max_pixels=80_000)


def _jpeg(height: int, width: int, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    return cv2.imencode(".jpg", random_rgb(height, width), params)[1].tobytes()


def _with_size(jpeg: bytes, width: int, height: int, marker: bytes = b"\xff\xc0") -> bytes:
    at = jpeg.index(marker) + 5  # marker (2), length (2), precision (1)
    return jpeg[:at] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 4:]


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_header_gives_the_size_baseline_and_progressive(progressive):
    jpeg = _jpeg(20, 30, progressive)
    assert (b"\xff\xc2" if progressive else b"\xff\xc0") in jpeg
    assert ci.encoded_image_info(jpeg) == ("jpeg", 30, 20)
    assert compressed_to_rgb("jpeg", jpeg).shape == (20, 30, 3)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_bomb_is_refused_from_its_frame_header(progressive, no_decoding):
    bomb = _with_size(_jpeg(20, 30, progressive), 60000, 60000, b"\xff\xc2" if progressive else b"\xff\xc0")
    assert ci.encoded_image_info(bomb, max_pixels=10**12) == ("jpeg", 60000, 60000)
    rejected("too_large", compressed_to_rgb, "jpeg", bomb)
    rejected("too_large", compressed_to_rgb, "jpeg", _jpeg(20, 30, progressive), max_pixels=599)


def test_jpeg_header_skips_app_segments_fill_bytes_and_stuffing():
    jpeg = _jpeg(7, 11)
    app1 = b"\xff\xe1" + (2 + 300).to_bytes(2, "big") + b"\xff\xc0" * 150  # an EXIF-like segment with fake SOFs
    with_app = jpeg[:2] + app1 + jpeg[2:]
    assert ci.encoded_image_info(with_app) == ("jpeg", 11, 7)
    assert compressed_to_rgb("jpeg", with_app).shape == (7, 11, 3)
    # Large metadata pushing the frame header past the first MiB (e.g. multi-picture APP2 blocks).
    big = b"".join(b"\xff\xe2" + (65535).to_bytes(2, "big") + bytes(65533) for _ in range(20))
    assert ci.encoded_image_info(jpeg[:2] + big + jpeg[2:]) == ("jpeg", 11, 7)
    # Fill bytes (0xFF padding) and garbage between segments, as libjpeg tolerates.
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    padded = jpeg[:after_app0] + b"junk\xff\x00" + b"\xff" * 50 + jpeg[after_app0:]
    assert ci.encoded_image_info(padded) == ("jpeg", 11, 7)
    assert compressed_to_rgb("jpeg", padded).shape == (7, 11, 3)


def test_unparsable_jpeg_headers_are_refused_not_decoded(no_decoding):
    jpeg = _jpeg(7, 11)
    sof = jpeg.index(b"\xff\xc0")
    cases = {
        "soi only": b"\xff\xd8\xff",
        "truncated before the frame header": jpeg[:sof + 3],
        "truncated frame header": jpeg[:sof + 7],
        "scan before any frame header": jpeg[:2] + b"\xff\xda\x00\x08" + bytes(6) + jpeg[2:],
        "end of image before any frame header": jpeg[:2] + b"\xff\xd9" + jpeg[2:],
        "second start of image": jpeg[:2] + b"\xff\xd8" + jpeg[2:],
        "segment length < 2": jpeg[:2] + b"\xff\xe0\x00\x01" + jpeg[2:],
        "height 0 (DNL)": _with_size(jpeg, 11, 0),
        "width 0": _with_size(jpeg, 0, 7),
        "no marker after SOI": b"\xff\xd8" + bytes(100),
        "reserved marker": jpeg[:2] + b"\xff\x02\x00\x04\x00\x00" + jpeg[2:],
        "endless restart markers": b"\xff\xd8" + b"\xff\xd0" * 100_000 + jpeg[2:],
    }
    for name, bad in cases.items():
        err = rejected("decode_failed", compressed_to_rgb, "jpeg", bad)
        assert err.message, name


def test_garbage_payloads_are_refused_before_decoding(no_decoding):
    rejected("decode_failed", compressed_to_rgb, "jpeg", b"\x00" * 100)
    rejected("decode_failed", compressed_to_rgb, "png", b"this is not an image")
    rejected("decode_failed", compressed_to_rgb, "jpeg", bytes(np.random.default_rng(0).integers(0, 256, 4000,
                                                                                                  np.uint8)))


def test_parse_compressed_format():
    assert parse_compressed_format("jpeg") == (None, "jpeg", None)
    assert parse_compressed_format("JPG") == (None, "jpeg", None)
    assert parse_compressed_format("rgb8; jpeg compressed bgr8") == ("rgb8", "jpeg", "bgr8")
    assert parse_compressed_format("mono16; png compressed ") == ("mono16", "png", None)
    assert parse_compressed_format("16UC1; compressedDepth png") == ("16UC1", "compresseddepth png", None)
    assert parse_compressed_format("") == (None, None, None)
    assert parse_compressed_format(None) == (None, None, None)


# ----------------------------------------------------------------------------------------------- ImageConverter

def test_converter_duck_typed_messages():
    conv = ImageConverter(official="never")
    assert conv.backend == "pebal"
    rgb = random_rgb(3, 4)
    msg = types.SimpleNamespace(**rgb_to_image_fields(rgb, "rgb8"))
    np.testing.assert_array_equal(conv.to_rgb(msg), rgb)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    np.testing.assert_array_equal(conv.compressed_to_rgb(types.SimpleNamespace(format="png", data=png)), rgb)
    err = rejected("invalid_field", conv.to_rgb, types.SimpleNamespace(encoding="rgb8", height=1))
    assert "width" in str(err) and "data" in str(err)
    rejected("invalid_field", conv.compressed_to_rgb, object())
    fields = conv.from_array(rgb, "rgb8")
    assert "header" not in fields and fields["encoding"] == "rgb8"
    assert conv.from_array(rgb, "rgb8", header="h")["header"] == "h"


def test_converter_settings_apply():
    values = np.array([[100, 300]], dtype="<u2")
    msg = types.SimpleNamespace(encoding="mono16", height=1, width=2, step=4, is_bigendian=0,
                                data=values.tobytes())
    assert ImageConverter(official="never").to_rgb(msg)[0, :, 0].tolist() == [0, 1]
    assert ImageConverter(official="never", mono16_scale="minmax").to_rgb(msg)[0, :, 0].tolist() == [0, 255]
    rejected("too_large", ImageConverter(official="never", max_pixels=1).to_rgb, msg)


def _make_fake_cv_bridge(root, with_boost: bool, importable: bool = True):
    """A fake ``cv_bridge`` package on disk: the ROS layout (with a compiled boost module) or the PyPI one."""
    pkg = root / "cv_bridge"
    pkg.mkdir()
    if not importable:
        (pkg / "__init__.py").write_text("raise RuntimeError('the broken port must not be imported')\n")
    else:
        (pkg / "__init__.py").write_text(
            "import numpy as np\n"
            "calls = []\n"
            "class CvBridge:\n"
            "    def imgmsg_to_cv2(self, msg, desired_encoding='passthrough'):\n"
            "        calls.append((msg.encoding, desired_encoding))\n"
            "        if msg.encoding == 'explode':\n"
            "            raise RuntimeError('boom')\n"
            "        return np.full((msg.height, msg.width, 3), 7, np.uint8)\n")
    if with_boost:
        (pkg / "boost").mkdir()
        (pkg / "boost" / "__init__.py").write_text("")
        (pkg / "boost" / ("cv_bridge_boost" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    importlib.invalidate_caches()


@pytest.fixture
def fake_cv_bridge_root(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PEBAL_CV_BRIDGE", raising=False)
    saved = {name: mod for name, mod in sys.modules.items() if name == "cv_bridge" or name.startswith("cv_bridge.")}
    for name in saved:
        del sys.modules[name]
    yield tmp_path
    for name in [n for n in sys.modules if n == "cv_bridge" or n.startswith("cv_bridge.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_official_cv_bridge_absent_here():
    if ic.find_official_cv_bridge() is not None:
        pytest.skip("a real ROS cv_bridge is installed")
    assert ImageConverter().backend == "pebal"


def test_pypi_port_is_ignored_without_being_imported(fake_cv_bridge_root):
    _make_fake_cv_bridge(fake_cv_bridge_root, with_boost=False, importable=False)
    assert ic.find_official_cv_bridge() is None
    assert "cv_bridge" not in sys.modules
    assert ImageConverter().backend == "pebal"


def test_official_cv_bridge_is_detected_and_used(fake_cv_bridge_root, monkeypatch):
    _make_fake_cv_bridge(fake_cv_bridge_root, with_boost=True)
    module = ic.find_official_cv_bridge()
    assert module is not None and module.__name__ == "cv_bridge"
    rgb = random_rgb(2, 3)
    known = types.SimpleNamespace(**rgb_to_image_fields(rgb, "rgb8"))
    other = types.SimpleNamespace(encoding="yuv422", height=2, width=3, step=6, is_bigendian=0, data=bytes(12))

    fallback = ImageConverter()  # ours for what we know, the official bridge for the rest
    assert fallback.backend == "pebal+cv_bridge"
    np.testing.assert_array_equal(fallback.to_rgb(known), rgb)
    assert fallback.to_rgb(other).max() == 7 and module.calls == [("yuv422", "rgb8")]
    rejected("size_mismatch", fallback.to_rgb, types.SimpleNamespace(**{**vars(other), "data": bytes(11)}))
    rejected("conversion_failed", fallback.to_rgb, types.SimpleNamespace(**{**vars(other), "encoding": "explode"}))

    prefer = ImageConverter(official="prefer")
    assert prefer.backend == "cv_bridge"
    out = prefer.to_rgb(known)
    assert out.max() == 7 and out.flags.writeable
    exploding_known = types.SimpleNamespace(**{**vars(known)})
    module.CvBridge.imgmsg_to_cv2 = lambda self, msg, desired_encoding="passthrough": 1 / 0
    np.testing.assert_array_equal(prefer.to_rgb(exploding_known), rgb)  # official failed -> ours

    assert ImageConverter(official="never").backend == "pebal"
    monkeypatch.setenv("PEBAL_CV_BRIDGE", "0")
    assert ic.find_official_cv_bridge() is None and ImageConverter().backend == "pebal"


def test_module_is_ros_free():
    code = ("import sys; import pebal_perception.core.image_conversion as m; m.ImageConverter(official='never'); "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('rclpy', 'sensor_msgs', 'std_msgs', 'cv_bridge')]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)
