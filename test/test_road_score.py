"""The road-relative anomaly score (core/road_score.py): its pieces, the engine's torch path, every
compiled runtime's graph, and the checkpoint metadata that names it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pebal_perception.core import backends
from pebal_perception.core.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from pebal_perception.core.engine import InferenceEngine, infer_maps
from pebal_perception.core.models import create_model
from pebal_perception.core.models.common import CheckpointError
from pebal_perception.core.road_score import (RoadRelativeScore, RoadScoreConfig, newton_schulz_inverse,
                                              parse_score)
from tiny_models import write_tiny_checkpoint

RUNTIMES = [name for name in ("openvino", "onnxruntime") if backends.installed(name)]
NETWORK = (64, 128)
# a random network rarely calls anything road with confidence: a low bar makes the term non-trivial
LOW_BAR = {"kind": "road_relative", "reference_confidence": 0.02, "min_reference": 4}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEBAL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def espnetv2():
    torch.manual_seed(0)
    return create_model("espnetv2").eval(), ModelMeta.for_architecture("espnetv2", input_size=list(NETWORK))


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    small = np.random.default_rng(seed).integers(0, 255, (6, 9, 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("rank", [64, 8, 1])
def test_newton_schulz_inverse_equals_the_inverse_within_the_ridges_condition(rank):
    """Full-rank and rank-deficient covariances with the score's ridge: the worst condition it can see."""
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(2, rank, 400, generator=g) * torch.rand(2, rank, 1, generator=g) * 50
    x = torch.randn(2, 64, rank, generator=g) @ x
    a = x @ x.transpose(1, 2) / 400
    a = a + (RoadScoreConfig().ridge * a.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] + 1e-6) * torch.eye(64)
    inverse = newton_schulz_inverse(a.double()).float()
    identity = (a.double() @ inverse.double()).float()
    assert torch.allclose(identity, torch.eye(64).expand(2, -1, -1), atol=1e-3)


def _inputs(road_logit: float, h: int = 32, w: int = 64, channels: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.zeros(1, 19, h, w)
    logits[:, 0] = road_logit  # road everywhere (or nowhere)
    energy = -torch.logsumexp(logits, dim=1, keepdim=True)
    features = torch.randn(1, channels, h // 8, w // 8, generator=g) * 0.1
    return logits, energy, features


def test_without_road_in_view_the_score_is_the_energy():
    logits, energy, features = _inputs(road_logit=-10.0)
    score = RoadRelativeScore(16, RoadScoreConfig(dims=8))(logits, energy, features)
    assert torch.equal(score, energy)


def test_a_pixel_unlike_the_road_around_it_scores_higher():
    logits, energy, features = _inputs(road_logit=10.0)
    features[:, :, 2, 4] += 5.0  # one feature cell far from the frame's road
    module = RoadRelativeScore(16, RoadScoreConfig(dims=8, min_reference=4))
    term = module.term(logits, energy, features)
    assert term.shape == (1, 1, 4, 8)
    assert term[0, 0, 2, 4] == term.max() and term[0, 0, 2, 4] > 1.0
    assert term[0, 0, 0, 0] < 0.5 * term[0, 0, 2, 4]
    score = module(logits, energy, features)
    assert score.shape == energy.shape and (score >= energy).all()
    expected = energy + 3.0 * F.interpolate(term, size=(32, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(score, expected, atol=1e-5)


def test_score_config_round_trips_and_refuses_unknown_settings():
    assert parse_score({}) is None and parse_score({"kind": "energy"}) is None
    config = RoadScoreConfig(weight=2.0)
    assert parse_score(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown anomaly score"):
        parse_score({"kind": "mahalanobis"})
    with pytest.raises(ValueError, match="unknown anomaly score"):
        parse_score({"kind": "road_relative", "wieght": 2})
    with pytest.raises(ValueError, match="out of range"):
        parse_score({"kind": "road_relative", "gate_cells": 4})


def test_engine_default_is_the_free_energy_and_the_checkpoint_names_its_score(espnetv2, tmp_path):
    model, meta = espnetv2
    rgb = _frame(*NETWORK)
    plain = InferenceEngine(model, meta, device="cpu")
    assert plain.score == {}
    meta_road = ModelMeta.for_architecture("espnetv2", input_size=list(NETWORK), score=dict(LOW_BAR))
    path = save_checkpoint(tmp_path / "road.pt", model, meta_road)
    loaded, loaded_meta = load_checkpoint(path)
    assert parse_score(loaded_meta.score) == parse_score(LOW_BAR)
    road = InferenceEngine(loaded, loaded_meta, device="cpu")
    assert road.score["kind"] == "road_relative"
    (sem0, energy, _), (sem1, score, _) = infer_maps(plain, rgb), infer_maps(road, rgb)
    assert (sem0 == sem1).all()
    assert (score >= energy - 1e-4).all() and (score - energy).max() > 0.01
    override = InferenceEngine(loaded, loaded_meta, device="cpu", score={})  # the caller's choice wins
    assert np.allclose(infer_maps(override, rgb)[1], energy, atol=1e-5)


def test_a_checkpoint_cannot_ask_for_a_score_its_architecture_lacks(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny.pt", score={"kind": "road_relative"})
    with pytest.raises(CheckpointError, match="offers only the free energy"):
        load_checkpoint(path)
    bad = write_tiny_checkpoint(tmp_path / "bad.pt", score={"kind": "nonsense"})
    with pytest.raises(CheckpointError, match="metadata score"):
        load_checkpoint(bad)


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("image_hw", [NETWORK, (150, 330)], ids=["network", "shrink"])
def test_every_runtime_computes_the_road_relative_score(espnetv2, backend, image_hw):
    model, meta = espnetv2
    reference = InferenceEngine(model, meta, device="cpu", backend="torch", score=dict(LOW_BAR))
    engine = InferenceEngine(model, meta, device="cpu", backend=backend, score=dict(LOW_BAR))
    plain = InferenceEngine(model, meta, device="cpu", backend=backend)
    rgb = _frame(*image_hw, seed=3)
    sem_ref, score_ref, _ = infer_maps(reference, rgb)
    sem, score, _ = infer_maps(engine, rgb)
    assert (sem == sem_ref).mean() >= 0.999
    assert np.abs(score - score_ref).max() <= 1e-3
    assert (score - infer_maps(plain, rgb)[1]).max() > 0.01  # a different graph, not the cached energy one


def test_anomaly_score_parameter_picks_the_score_and_a_changed_score_needs_a_threshold(espnetv2, tmp_path):
    from pebal_perception.core.detector import DetectorError, default_values, load_engine

    model, _ = espnetv2
    meta = ModelMeta.for_architecture("espnetv2", input_size=list(NETWORK), score=dict(LOW_BAR), threshold=1.0)
    path = str(save_checkpoint(tmp_path / "road.pt", model, meta))
    values = {**default_values(), "checkpoint": path, "device": "cpu", "backend": "torch"}
    assert parse_score(load_engine(values).score) == parse_score(LOW_BAR)  # '' = the checkpoint's
    same = load_engine({**values, "anomaly_score": "road_relative"})
    assert parse_score(same.score) == parse_score(LOW_BAR)  # the kind alone: the checkpoint's settings
    with pytest.raises(DetectorError, match="anomaly_score='energy'.*set threshold too"):
        load_engine({**values, "anomaly_score": "energy"})
    assert load_engine({**values, "anomaly_score": "energy", "threshold": -5.0}).score == {}
    with pytest.raises(DetectorError, match="anomaly_score"):
        load_engine({**values, "anomaly_score": "mahalanobis"})


@pytest.mark.skipif(not backends.installed("onnxruntime"), reason="onnxruntime not installed")
def test_pebal_export_carries_the_checkpoints_score(espnetv2, tmp_path):
    """An exported road-score checkpoint computes what the engine computes (the sidecar names the score)."""
    import json

    import onnxruntime as ort

    from pebal_training.export import export_model

    model, _ = espnetv2
    meta = ModelMeta.for_architecture("espnetv2", input_size=list(NETWORK), score=dict(LOW_BAR))
    files = export_model(model, meta, tmp_path, "road", formats=("onnx",), smoothing=False)
    assert json.loads(files["sidecar"].read_text())["score"]["kind"] == "road_relative"
    rgb = _frame(*NETWORK, seed=5)
    x = ((rgb / 255.0 - np.array(meta.mean)) / np.array(meta.std)).astype(np.float32).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    _, energy = session.run(None, {session.get_inputs()[0].name: x})
    engine = InferenceEngine(model, meta, device="cpu", smoothing=False)
    _, score = engine.score_frame(rgb)
    assert np.abs(energy[0] - score).max() <= 1e-3
    with pytest.raises(ValueError, match="dynamic batch"):
        export_model(model, meta, tmp_path / "dyn", "road", formats=("onnx",), dynamic_batch=True)
