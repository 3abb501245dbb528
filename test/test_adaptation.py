"""Test-time batch-norm adaptation (core/adaptation.py) and how the detector, /diagnostics and pebal-detect
use it: the adapter equals the plain model until a frame is committed, commits follow
running = (1 - momentum) * running + momentum * frame statistics exactly, discarded frames change nothing,
frames with obstacles pause it, switching it off restores the checkpoint's statistics, and a compiled
backend reports it unavailable instead of pretending."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pebal_perception.core import backends
from pebal_perception.core.adaptation import AdaptationState, BatchNormAdapter
from pebal_perception.core.detector import Detector
from pebal_perception.core.settings import PARAMETERS_BY_NAME, plan_parameter_batch

from tiny_models import write_tiny_checkpoint

MOMENTUM = 0.25


class TwoBatchNorms(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN: the second BN's input depends on the first's statistics."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x):
        return self.body(x)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TwoBatchNorms()
    with torch.no_grad():  # statistics unlike the frames' (as a checkpoint from other cameras)
        for bn in (model.body[1], model.body[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _frame(seed: int, shift: float = 2.0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(seed)) * scale + shift


def _bn_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """What each BN of the plain ``model`` receives on ``x`` (module order)."""
    seen, hooks = [], []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone())))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def _stats(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return torch.cat([m.running_mean for m in bns]), torch.cat([m.running_var for m in bns])


# --------------------------------------------------------------------------------------------- the adapter

def test_adapter_equals_the_plain_model_before_any_commit():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    adapter = BatchNormAdapter(model, MOMENTUM)
    x = _frame(1)
    with torch.no_grad():
        expected = model(x)
    for _ in range(3):  # forwards without a commit never change the statistics
        with torch.inference_mode():
            assert torch.equal(adapter.forward(x), expected)
        assert adapter.has_pending
    assert adapter.drift() == 0.0 and adapter.frames_adapted == 0
    adapter.commit()
    for key, value in model.state_dict().items():  # the caller's model is a copy's source, never changed
        assert torch.equal(value, before[key]), key


def test_commits_follow_the_momentum_formula_and_count_from_the_next_frame():
    model = _model()
    adapter = BatchNormAdapter(model, MOMENTUM)
    reference = copy.deepcopy(model)  # the plain model, its statistics updated by the formula here
    for seed in range(4):
        x = _frame(seed, shift=1.0 + seed)
        with torch.no_grad():
            expected_output = reference(x)  # normalised with the statistics before this frame
        with torch.inference_mode():
            got = adapter.forward(x)
        torch.testing.assert_close(got, expected_output, rtol=1e-5, atol=1e-6)
        frame_means = [t.mean(dim=(0, 2, 3)) for t in _bn_inputs(reference, x)]
        frame_vars = [t.var(dim=(0, 2, 3), unbiased=False) for t in _bn_inputs(reference, x)]
        with torch.no_grad():
            bns = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
            for bn, mean, var in zip(bns, frame_means, frame_vars):
                bn.running_mean.copy_((1 - MOMENTUM) * bn.running_mean + MOMENTUM * mean)
                bn.running_var.copy_((1 - MOMENTUM) * bn.running_var + MOMENTUM * var)
        assert adapter.commit()
        mean, var = adapter.running_statistics
        ref_mean, ref_var = _stats(reference)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, ref_var, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_stats(adapter.model)[0], ref_mean, rtol=1e-5, atol=1e-6)  # the layers' own
    assert adapter.frames_adapted == 4 and not adapter.has_pending and not adapter.commit()
    # drift: mean over BN layers of the channel mean of |running mean - checkpoint mean| / checkpoint std
    ck_mean, ck_var = _stats(model)
    ref_mean, _ = _stats(reference)
    per_layer = [((ref_mean[a:b] - ck_mean[a:b]).abs() / torch.sqrt(ck_var[a:b] + 1e-5)).mean()
                 for a, b in ((0, 6), (6, 10))]
    assert adapter.drift() == pytest.approx(float(sum(per_layer) / 2), rel=1e-5)
    state = adapter.state()
    assert state == AdaptationState(enabled=True, status="on", momentum=MOMENTUM, frames_adapted=4,
                                    frames_paused=0, drift=state.drift) and state.drift > 0.1


def test_discard_and_reset():
    model = _model()
    adapter = BatchNormAdapter(model, MOMENTUM)
    checkpoint = adapter.checkpoint_statistics
    with torch.inference_mode():
        adapter.forward(_frame(0))
    assert adapter.discard("obstacles") and not adapter.has_pending and not adapter.discard()
    assert adapter.frames_paused == 1 and adapter.last_pause == "obstacles" and adapter.frames_adapted == 0
    assert all(torch.equal(a, b) for a, b in zip(adapter.running_statistics, checkpoint))
    with torch.inference_mode():
        adapter.forward(_frame(1))
    adapter.commit()
    assert not torch.equal(adapter.running_statistics[0], checkpoint[0]) and adapter.drift() > 0
    adapter.reset()
    assert all(torch.equal(a, b) for a, b in zip(adapter.running_statistics, checkpoint)) and adapter.drift() == 0
    with torch.inference_mode(), torch.no_grad():
        assert torch.equal(adapter.forward(_frame(2)), model(_frame(2)))
    with pytest.raises(ValueError, match="adaptation_momentum"):
        BatchNormAdapter(model, 0.0)


@pytest.mark.parametrize("optimize", [True, False])
def test_engine_through_the_adapter_equals_the_engine_on_espnetv2(optimize):
    """A real architecture (BN folded by the engine, or not): the adapter's unfolded copy gives the engine's
    maps before any commit, and a commit changes them."""
    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.models import create_model

    torch.manual_seed(0)
    model = create_model("espnetv2").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 3.0)
    engine = InferenceEngine(model, ModelMeta.for_architecture("espnetv2", input_size=[64, 128]), device="cpu",
                             optimize=optimize, backend="torch")
    assert engine.source_model is model
    image = _image(3, 64, 128)
    expected = engine.infer_one(image)
    adapter = BatchNormAdapter(engine.source_model, 0.5, channels_last=engine.optimized)
    engine.adapter = adapter
    got = engine.infer_one(image)
    np.testing.assert_allclose(got.score, expected.score, atol=1e-4)
    assert len(adapter.layers) > 10 and adapter.has_pending and adapter.commit()
    assert np.abs(engine.infer_one(image).score - expected.score).max() > 1e-3
    engine.adapter = None
    np.testing.assert_array_equal(engine.infer_one(image).score, expected.score)  # the engine's model unchanged


# -------------------------------------------------------------------------------------------- settings

def test_parameters_and_run_time_changes():
    assert PARAMETERS_BY_NAME["adaptation"].default is False and not PARAMETERS_BY_NAME["adaptation"].read_only
    assert PARAMETERS_BY_NAME["adaptation_momentum"].default == 0.01
    assert "obstacles" in PARAMETERS_BY_NAME["adaptation"].description
    detector = Detector.for_engine(_engine(), {"backend": "torch"})
    current = detector.settings
    assert not current.adaptation and current.adaptation_momentum == 0.01
    new = plan_parameter_batch(current, [("adaptation", True), ("adaptation_momentum", 0.5)], -9.0)
    assert new.adaptation and new.adaptation_momentum == 0.5
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="adaptation_momentum"):
            plan_parameter_batch(current, [("adaptation_momentum", bad)], -9.0)


# -------------------------------------------------------------------------------------------- detector

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=-2.9)


def _engine(checkpoint_path=None, **options):
    from pebal_perception.core.engine import InferenceEngine

    if checkpoint_path is None:
        from tiny_models import TINY, TinySegNet
        from pebal_perception.core.checkpoint import ModelMeta

        torch.manual_seed(0)
        return InferenceEngine(TinySegNet(), ModelMeta.for_architecture(TINY), device="cpu", **options)
    return InferenceEngine.from_checkpoint(checkpoint_path, device="cpu", **options)


def _image(seed: int, h: int = 32, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    return np.clip(base * 0.5 + 120, 0, 255).astype(np.uint8)  # a camera duller than the training data


NOTHING = {"threshold": 1e6}  # no pixel is anomalous: no obstacle, every frame adapts
EVERYTHING = {"threshold": -1e6, "restrict_to_drivable": False, "min_obstacle_area": 1, "max_surface_share": 1.0,
              "min_fill": 0.0, "max_width_share": 1.0, "max_known_share": 1.0, "min_extent_share": 0.0,
              "border_margin": 0.0}


def _detector(checkpoint, values, events=None, **engine_options):
    values = {"backend": "torch", "adaptation": True, "adaptation_momentum": MOMENTUM, **values}
    engine = _engine(checkpoint, backend=values["backend"], **engine_options)
    return Detector.for_engine(engine, values, on_event=None if events is None else
                               lambda kind, text: events.append((kind, text)))


def test_frames_without_obstacles_adapt_the_statistics(checkpoint):
    detector = _detector(checkpoint, NOTHING)
    plain = _detector(checkpoint, {**NOTHING, "adaptation": False})
    assert detector.status().adaptation.status == "on" and detector.engine.adapter is None  # attached at a frame
    outputs = []
    for seed in range(3):
        out, ref = detector.step(_image(seed), seed * 10**8), plain.step(_image(seed), seed * 10**8)
        assert not out.frame.obstacles
        outputs.append(np.abs(out.score - ref.score).max())
    assert outputs[0] < 1e-4 < outputs[1] < outputs[2]  # the first frame: the checkpoint's statistics
    state = detector.status().adaptation
    assert (state.status, state.frames_adapted, state.frames_paused, state.momentum) == ("on", 3, 0, MOMENTUM)
    assert state.drift > 0 and detector.engine.adapter is detector._adapter
    assert plain.status().adaptation == AdaptationState(momentum=MOMENTUM) and plain.engine.adapter is None
    # reset() (a new stream) keeps the statistics; reset_adaptation() restores the checkpoint's
    detector.reset()
    assert detector.status().adaptation.drift == state.drift
    detector.reset_adaptation()
    assert detector.status().adaptation.drift == 0.0
    np.testing.assert_allclose(detector.step(_image(7)).score, plain.step(_image(7)).score, atol=1e-4)


def test_frames_with_obstacles_pause_the_adaptation(checkpoint):
    detector = _detector(checkpoint, EVERYTHING)
    for seed in range(3):
        out = detector.step(_image(seed), seed * 10**8)
        assert any(not r.rejected for r in out.frame.regions)  # detected (reported from the 2nd frame on)
    state = detector.status().adaptation
    assert (state.frames_adapted, state.frames_paused, state.drift) == (0, 3, 0.0)
    adapter = detector._adapter
    assert all(torch.equal(a, b) for a, b in zip(adapter.running_statistics, adapter.checkpoint_statistics))
    assert "obstacle" in adapter.last_pause


def test_switching_off_restores_the_checkpoint_statistics(checkpoint):
    detector = _detector(checkpoint, NOTHING)
    plain = _detector(checkpoint, {**NOTHING, "adaptation": False})
    for seed in range(3):
        detector.step(_image(seed), seed * 10**8)
    assert detector.status().adaptation.drift > 0
    detector.update(replace(detector.settings, adaptation=False))
    out, ref = detector.step(_image(5)), plain.step(_image(5))
    np.testing.assert_array_equal(out.score, ref.score)  # the folded model again, exactly
    assert detector.engine.adapter is None and detector.status().adaptation.status == "off"
    detector.update(replace(detector.settings, adaptation=True))  # on again: from the checkpoint's statistics
    np.testing.assert_allclose(detector.step(_image(6)).score, plain.step(_image(6)).score, atol=1e-4)
    assert detector.status().adaptation.frames_adapted == 1


def test_a_compiled_backend_reports_adaptation_unavailable(checkpoint):
    runtime = next((name for name in ("onnxruntime", "openvino") if backends.installed(name)), None)
    if runtime is None:
        pytest.skip("no compiled runtime installed")
    events: list[tuple[str, str]] = []
    detector = _detector(checkpoint, {**NOTHING, "backend": runtime}, events)
    plain = _detector(checkpoint, {**NOTHING, "backend": runtime, "adaptation": False})
    for seed in range(3):
        np.testing.assert_array_equal(detector.step(_image(seed)).score, plain.step(_image(seed)).score)
    state = detector.status().adaptation
    assert state.enabled and state.status == f"unavailable: backend {runtime} runs a fixed graph"
    assert (state.frames_adapted, state.frames_paused, state.drift) == (0, 0, 0.0)
    assert detector.engine.adapter is None and detector._adapter is None
    assert [kind for kind, _ in events] == ["adaptation_unavailable"]  # said once
    from pebal_perception.node import diagnostics

    level, message = diagnostics.status(SimpleNamespace(recent=lambda kind: None), _counts(), detector.status(),
                                        detector.engine, False)
    assert level == diagnostics.WARN and "unavailable" in message


def test_a_fixed_graph_backend_is_not_adapted(checkpoint, monkeypatch):
    """The same without a compiled runtime: an engine whose backend is not torch (its graph stood in by the
    torch path) gets no adapter, and the state says so from the start."""
    events: list[tuple[str, str]] = []
    detector = _detector(checkpoint, NOTHING, events)
    plain = _detector(checkpoint, {**NOTHING, "adaptation": False})
    engine, torch_path = detector.engine, detector.engine.score_frame
    monkeypatch.setattr(engine, "backend", "tensorrt")
    monkeypatch.setattr(engine, "score_frame", lambda rgb, smoothing=None, backend=None:
                        torch_path(rgb, smoothing=smoothing, backend="torch"))
    assert detector.status().adaptation.status == "unavailable: backend tensorrt runs a fixed graph"
    for seed in range(3):
        np.testing.assert_array_equal(detector.step(_image(seed)).score, plain.step(_image(seed)).score)
    state = detector.status().adaptation
    assert (state.frames_adapted, state.frames_paused, state.drift) == (0, 0, 0.0) and engine.adapter is None
    assert events == [("adaptation_unavailable", "adaptation is on but unavailable: backend tensorrt runs a fixed "
                                                 "graph: frames are not adapted (it needs backend torch)")]


def _counts():
    from pebal_perception.node.diagnostics import NodeCounters

    return NodeCounters(received=3, processed=3, failed=0, discarded=0, images_built=0, lost_in_transport=0,
                        dropped=0, rejected={}, input_subscribed=True, seconds=1.0, received_before=0,
                        processed_before=0)


def test_diagnostics_report_the_adaptation(checkpoint):
    from pebal_perception.node import diagnostics

    detector = _detector(checkpoint, NOTHING)
    detector.step(_image(0))
    detector.update(replace(detector.settings, config=replace(detector.settings.config, **{
        "threshold": -1e6, "restrict_to_drivable": False, "min_obstacle_area": 1, "max_surface_share": 1.0,
        "min_fill": 0.0, "max_width_share": 1.0, "max_known_share": 1.0, "min_extent_share": 0.0,
        "border_margin": 0.0})))
    detector.step(_image(1))
    pairs = dict(diagnostics.values(_counts(), detector.status(), detector.engine, model_id="m", network_input="64x32",
                                    threshold=-1e6, cpu_threads=1, window_s=10.0))
    assert pairs["adaptation"] == "on" and pairs["adaptation_momentum"] == "0.25"
    assert pairs["adaptation_frames_adapted"] == "1" and pairs["adaptation_frames_paused"] == "1"
    assert float(pairs["adaptation_drift"]) > 0
    level, _ = diagnostics.status(SimpleNamespace(recent=lambda kind: None), _counts(), detector.status(),
                                  detector.engine, False)
    assert level == diagnostics.OK
    off = _detector(checkpoint, {**NOTHING, "adaptation": False})
    pairs = dict(diagnostics.values(_counts(), off.status(), off.engine, model_id="m", network_input="64x32",
                                    threshold=1e6, cpu_threads=1, window_s=10.0))
    assert (pairs["adaptation"], pairs["adaptation_frames_adapted"], pairs["adaptation_drift"]) == ("off", "0",
                                                                                                   "0.0000")


# ---------------------------------------------------------------------------------------- pebal-detect

def test_pebal_detect_adapts_one_frame_at_a_time(tmp_path, checkpoint):
    import cv2

    from pebal_perception.cli import detect
    from pebal_perception.core.compressed_images import read_image_file

    src = tmp_path / "in"
    src.mkdir()
    for index in range(4):
        cv2.imwrite(str(src / f"f{index}.png"), _image(index))
    out, out_plain = tmp_path / "out", tmp_path / "plain"
    common = [str(src), "--checkpoint", str(checkpoint), "--device", "cpu", "--backend", "torch",
              "--threshold", "1e6", "--batch-size", "4"]
    assert detect.main([*common, "-o", str(out), "--adaptation", "--adaptation-momentum", "0.5"]) == 0
    assert detect.main([*common, "-o", str(out_plain)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adaptation"]["status"] == "on" and summary["adaptation"]["frames_adapted"] == 4
    assert json.loads((out_plain / "summary.json").read_text())["adaptation"]["status"] == "off"
    # the same as the detector stepped frame by frame (single images: no tracking)
    reference = Detector.for_engine(_engine(checkpoint, threshold=1e6, backend="torch"),
                                    {"threshold": 1e6, "adaptation": True, "adaptation_momentum": 0.5})
    for index in range(4):
        expected = reference.step(read_image_file(src / f"f{index}.png"), track=False)
        energy = np.load(out / f"f{index}_energy.npy")
        np.testing.assert_array_equal(energy, expected.score)
        plain = np.load(out_plain / f"f{index}_energy.npy")
        assert (np.abs(energy - plain).max() > 1e-3) == (index > 0)  # adapted from the second frame on
    assert detect.main([*common, "-o", str(tmp_path / "bad"), "--adaptation-momentum", "0"]) == 2
