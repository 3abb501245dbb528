"""The road band at a finer resolution (core/road_band.py)."""
import numpy as np
import pytest
import torch

from pebal_perception.core.engine import InferenceEngine
from pebal_perception.core.road_band import BandRefiner, RoadBand
from tiny_models import TINY, TinySegNet, ensure_registered
from pebal_perception.core.checkpoint import ModelMeta

ensure_registered()


def _engine(band=None, smoothing=True):
    torch.manual_seed(0)
    model = TinySegNet().eval()
    return InferenceEngine(model, ModelMeta.for_architecture(TINY, input_size=[32, 64]), device="cpu",
                           band=band, smoothing=smoothing)


def _frame(h=96, w=192, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_band_settings_are_checked_and_sized_from_the_frame_scale():
    with pytest.raises(ValueError, match="road band"):
        RoadBand(top=0.7, bottom=0.6)
    with pytest.raises(ValueError, match="road band"):
        RoadBand(scale=1.0)
    band = RoadBand(top=0.25, bottom=0.75, scale=2.0)
    assert band.rows(96) == (24, 72)
    # a 48 x 192 crop of a frame that runs at a third of its width, twice as fine: 32 x 128
    assert band.network_size((48, 192), 64 / 192, 4) == (32, 128)


def test_outside_the_band_the_score_is_the_whole_frames_and_inside_it_the_finer_one():
    rgb = _frame()
    plain = _engine()
    banded = _engine(RoadBand(top=0.25, bottom=0.75, scale=2.0, blend_rows=0), smoothing=False)
    sem0, score0 = _engine(smoothing=False).score_frame(rgb)
    sem1, score1 = banded.score_frame(rgb)
    assert (sem0 == sem1).all()  # the class map stays the whole frame's
    assert np.array_equal(score0[:24], score1[:24]) and np.array_equal(score0[72:], score1[72:])
    # inside: the crop run by itself at its band size, back to the crop's size
    crop = rgb[24:72]
    import cv2

    native = InferenceEngine(plain.source_model, plain.meta, device="cpu", input_size="native", smoothing=False)
    _, finer = native.score_frame(cv2.resize(crop, (128, 32), interpolation=cv2.INTER_AREA))
    expected = cv2.resize(finer, (192, 48), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(score1[24:72], expected, atol=1e-5)
    assert not np.allclose(score1[24:72], score0[24:72])


def test_band_edges_blend_into_the_frame():
    rgb = _frame(seed=1)
    whole = _engine(smoothing=False).score_frame(rgb)[1]
    refiner = BandRefiner(RoadBand(top=0.25, bottom=0.75, scale=2.0, blend_rows=8))
    hard = BandRefiner(RoadBand(top=0.25, bottom=0.75, scale=2.0, blend_rows=0))
    engine = _engine(smoothing=False)
    blended, full = refiner.refine(engine, rgb, whole, False), hard.refine(engine, rgb, whole, False)
    w = (np.arange(8) + 0.5) / 8
    assert np.allclose(blended[24:32], w[:, None] * full[24:32] + (1 - w[:, None]) * whole[24:32], atol=1e-6)
    assert np.allclose(blended[40:64], full[40:64])
