"""pebal-export: TorchScript equals eager, ONNX (onnxruntime) matches PyTorch, pebal-format conversion."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pebal_perception.core import scoring
from pebal_perception.core.checkpoint import ModelMeta, load_checkpoint
from pebal_perception.core.models import create_model
from pebal_training import export as E
from pebal_training.cli import export as export_cli

from tiny_models import TINY, TinySegNet, write_tiny_checkpoint

ort = pytest.importorskip("onnxruntime")


def _load_ts(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def _onnx_run(path, x: torch.Tensor):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["semantic", "energy"]
    return sess.run(None, {"image": x.numpy()})


def _check_against_eager(module, files, size_hw, batch=1):
    x = E.example_input(size_hw, batch=batch, seed=11)
    with torch.no_grad():
        sem_ref, en_ref = module(x)
        sem_ts, en_ts = _load_ts(files["torchscript"])(x)
    assert sem_ref.dtype == torch.int64 and en_ref.dtype == torch.float32
    assert sem_ref.shape == en_ref.shape == (batch, *size_hw)
    assert torch.equal(sem_ts, sem_ref)
    assert torch.allclose(en_ts, en_ref, rtol=0, atol=1e-6)
    sem_onnx, en_onnx = _onnx_run(files["onnx"], x)
    assert sem_onnx.dtype == np.int64 and en_onnx.dtype == np.float32
    np.testing.assert_allclose(en_onnx, en_ref.numpy(), rtol=0, atol=1e-4)
    assert (sem_onnx == sem_ref.numpy()).mean() >= 0.999


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3, threshold=-2.5)


@pytest.mark.slow
def test_tiny_cli_both_formats(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "export"
    rc = export_cli.main(["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--format", "both",
                          "--input-size", "64x32"])
    assert rc == 0, capsys.readouterr().err
    files = {"torchscript": out / "tiny.pt", "onnx": out / "tiny.onnx"}
    model, meta = load_checkpoint(tiny_checkpoint)
    module = E.scoring_model(model)
    _check_against_eager(module, files, (32, 64))

    # the exported energy is PEBAL's smoothed free energy of the model's logits
    x = E.example_input((32, 64), seed=5)
    with torch.no_grad():
        expected = scoring.anomaly_score(model(x))
        got = _load_ts(files["torchscript"])(x)[1]
    assert torch.allclose(got, expected, atol=1e-5)

    side = json.loads((out / "tiny.json").read_text())
    assert side["input_size"] == [32, 64] and side["input"]["shape"] == [1, 3, 32, 64]
    assert side["input"]["mean"] == meta.mean and side["input"]["std"] == meta.std
    assert side["threshold"] == -2.5 and side["threshold_calibrated"] is True
    assert side["smoothing"]["enabled"] and side["onnx_opset"] == 17
    assert side["files"] == {"torchscript": "tiny.pt", "onnx": "tiny.onnx"}


def test_no_smoothing_and_single_format(tmp_path, tiny_checkpoint):
    out = tmp_path / "export"
    assert export_cli.main(["--checkpoint", str(tiny_checkpoint), "-o", str(out), "--format", "onnx",
                            "--no-smoothing", "--name", "raw"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["raw.json", "raw.onnx"]
    model, meta = load_checkpoint(tiny_checkpoint)
    x = E.example_input(tuple(meta.input_size), seed=2)
    with torch.no_grad():
        raw = scoring.free_energy(model(x))
    _, energy = _onnx_run(out / "raw.onnx", x)
    np.testing.assert_allclose(energy, raw.numpy(), atol=1e-4)
    assert json.loads((out / "raw.json").read_text())["smoothing"]["enabled"] is False


def test_dynamic_batch_onnx(tmp_path):
    torch.manual_seed(0)
    module = E.scoring_model(TinySegNet())
    path = E.export_onnx(module, (16, 24), tmp_path / "dyn.onnx", dynamic_batch=True)
    x = E.example_input((16, 24), batch=3)
    sem, energy = _onnx_run(path, x)
    with torch.no_grad():
        ref = module(x)
    assert sem.shape == (3, 16, 24)
    np.testing.assert_allclose(energy, ref[1].numpy(), atol=1e-4)


def test_adaptive_pool_rewrite_is_exact():
    x = torch.randn(2, 3, 13, 22)
    reference = torch.nn.functional.adaptive_avg_pool2d(x, (5, 9))
    with E.onnx_friendly_adaptive_pool():
        rewritten = torch.nn.functional.adaptive_avg_pool2d(x, (5, 9))
        up = torch.nn.functional.adaptive_avg_pool2d(x, (20, 30))  # output larger than input
    assert torch.allclose(rewritten, reference, atol=1e-6)
    assert torch.allclose(up, torch.nn.functional.adaptive_avg_pool2d(x, (20, 30)), atol=1e-6)
    assert torch.nn.functional.adaptive_avg_pool2d.__name__ == "adaptive_avg_pool2d"  # restored


@pytest.mark.slow
def test_espnetv2_small_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("espnetv2").eval()  # random init is enough for equivalence
    meta = ModelMeta.for_architecture("espnetv2")
    size = (128, 256)
    try:
        files = E.export_model(model, meta, tmp_path, "espnetv2", size_hw=size)
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported, not hidden
        pytest.skip(f"ESPNetv2 export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    _check_against_eager(E.scoring_model(model), files, size)


def test_pebal_format_conversion(tmp_path, capsys):
    torch.manual_seed(4)
    bare = tmp_path / "third_party.pth"
    torch.save({"module." + k: v for k, v in TinySegNet().state_dict().items()}, bare)
    out = tmp_path / "ours.pt"
    assert export_cli.main(["--checkpoint", str(bare), "--model", TINY, "--format", "pebal", "-o", str(out),
                            "--threshold", "-4.25"]) == 0
    model, meta = load_checkpoint(out)
    assert meta.architecture == TINY and meta.threshold == -4.25 and meta.source == "third_party.pth"
    ref = torch.load(bare, weights_only=True)
    assert all(torch.equal(ref["module." + k], v) for k, v in model.state_dict().items())
    obj = torch.load(out, weights_only=True)
    assert obj["format"] == "pebal-checkpoint"


def test_cli_errors(tmp_path, tiny_checkpoint, capsys):
    assert export_cli.main(["--checkpoint", str(tmp_path / "none.pt"), "-o", str(tmp_path)]) == 2
    assert export_cli.main(["--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path), "--opset", "13"]) == 2
    assert export_cli.main(["--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path), "--input-size", "30x30"]) == 2
    assert export_cli.main(["--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path), "--format", "pebal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("pebal-export: error: ") for line in err)
    assert "none.pt" in err[0] and "multiples of 4" in err[2]


def test_an_output_folder_that_cannot_be_made_is_one_line_naming_it(tiny_checkpoint, capsys):
    out = "/proc/self/pebal_export"  # no folder can be made there, whoever runs the tests
    assert export_cli.main(["--checkpoint", str(tiny_checkpoint), "-o", out, "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pebal-export: error: {out}: cannot write ("), err


@pytest.mark.parametrize("value", ["inf", "nan", "1e308"])
def test_export_refuses_a_threshold_no_loader_would_accept(tmp_path, capsys, value):
    from pebal_training.cli.export import main

    rc = main(["--checkpoint", str(tmp_path / "absent.pt"), "--format", "pebal", "--threshold", value,
               "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--threshold" in err[0], err
    assert not (tmp_path / "out").exists()
