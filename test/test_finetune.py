"""Fine-tuning loop, config and CLI (pebal_training.trainer / run_folder / config / cli.finetune).

Everything runs on CPU with ``tiny_test_net`` and 64 x 128 synthetic scenes, so each test takes
seconds. The DDP test spawns two gloo processes on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch

import pebal_training.trainer as trainer
import tiny_models  # registers tiny_test_net
from loss_oracle import oracle_terms
from pebal_perception.core.checkpoint import _torch_load, load_checkpoint
from pebal_training.cli.finetune import main as finetune_main
from pebal_training.config import ConfigError, FinetuneConfig, config_from_dict, load_config
from pebal_training.distributed import DistContext
from pebal_training.losses import loss_statistics, partial_pebal_loss, pebal_loss
from pebal_training.rng_state import capture_rng_state, restore_rng_state
from pebal_training.run_folder import find_resume_checkpoint, list_checkpoints
from pebal_training.trainer import (PolySchedule, TrainingDiverged, build_model, forward_and_loss, freeze_all_but,
                                    pebal_loss_options, reinit_abstention_row, set_train_mode, train)

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_models.TINY


def tiny_overrides(output: Path, **extra: object) -> list[str]:
    base = {
        "model.name": TINY,
        "data.kind": "synthetic",
        "data.synthetic.num_scenes": 8,
        "data.synthetic.height": 64,
        "data.synthetic.width": 128,
        "data.synthetic.num_outliers": 4,
        "data.outliers.fraction": 0.25,
        "data.crop_size": 64,
        "train.epochs": 2,
        "train.batch_size": 4,
        "train.progress": False,
        "train.tensorboard": False,
        "train.keep_checkpoints": 0,
        "optim.lr": 1e-3,
        "output": str(output),
    }
    base.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]


def tiny_cfg(output: Path, **extra: object) -> FinetuneConfig:
    return config_from_dict({}, tiny_overrides(output, **extra))


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return _torch_load(run / "model_final.pt")["state_dict"]


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


class SimulatedKill(Exception):
    """Raised inside a training step, as if the process had died there."""


@contextlib.contextmanager
def faulty_steps(nan_at: int | None = None, kill_after: int | None = None, kill_with: type = SimulatedKill):
    """Fault injection by patching the trainer's per-step loss (steps counted from the first call):
    the loss of step ``nan_at`` becomes NaN; the step after ``kill_after`` raises ``kill_with`` before
    its backward pass, so the run folder is that of a run killed right after step ``kill_after`` and
    its checkpoints."""
    real, calls = trainer.forward_and_loss, []

    def patched(*args, **kwargs):
        step = len(calls)
        calls.append(step)
        if kill_after is not None and step == kill_after + 1:
            raise kill_with(f"killed at step {step}")
        loss, comps, logits = real(*args, **kwargs)
        if step == nan_at:
            loss, comps = loss * float("nan"), dict(comps, total=comps["total"] * float("nan"))
        return loss, comps, logits

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "forward_and_loss", patched)
        yield


# --------------------------------------------------------------------------------------------------
# config


def test_config_file_defaults_match_spec():
    cfg = load_config(REPO / "config" / "finetune.yaml")
    assert cfg.optim.lr == 1e-5 and cfg.optim.betas == [0.9, 0.999] and cfg.optim.weight_decay == 0.0
    assert cfg.lr_schedule.power == 0.9 and cfg.lr_schedule.total_iters_mode == "exact"
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.seed, cfg.train.bn_mode) == (8, 40, 666, "train")
    assert cfg.data.crop_size == 900 and cfg.data.outliers.fraction == 0.1
    assert (cfg.loss.energy_weight, cfg.loss.m_in, cfg.loss.m_out, cfg.loss.pal_variant) == (0.1, -12.0, -6.0, "code")
    assert cfg.train.amp == "off"
    # the YAML file holds every key of the dataclasses (documented defaults = built-in defaults)
    assert cfg.to_dict() == FinetuneConfig().to_dict()


def test_config_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=2e-5", "train.epochs=3", "optim.betas=[0.8, 0.99]", "train.amp=bf16",
                             "model.init_checkpoint=null", "data.crop_size=[64, 128]", "loss.m_in=-10",
                             "data.synthetic.height=96", "train.amp=off"])
    assert cfg.optim.lr == 2e-5 and cfg.train.epochs == 3 and cfg.optim.betas == [0.8, 0.99]
    assert cfg.loss.m_in == -10.0 and isinstance(cfg.loss.m_in, float)
    assert cfg.data.crop_size == [64, 128] and cfg.data.synthetic.height == 96 and cfg.train.amp == "off"


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=1", "optim.lrr: unknown key"),
    ("nosuch.key=1", "nosuch: unknown section"),
    ("train.epochs=abc", "train.epochs: expected an integer"),
    ("train.epochs=1.5", "train.epochs: expected an integer"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("train.progress=3", "train.progress: expected true/false"),
    ("train.bn_mode=sometimes", "train.bn_mode: 'sometimes' is not one of"),
    ("lr_schedule.total_iters_mode=foo", "lr_schedule.total_iters_mode"),
    ("data.kind=cityscapes", "data.root: required"),
    ("train.epochs", "expected key=value"),
])
def test_config_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_config_file_unknown_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="train.batchsize: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------------
# loss decomposition (what makes DDP equal to one process)


def _batch(seed: int = 0, n: int = 4, h: int = 12, w: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, 20, h, w, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.randint(0, 19, (n, h, w), generator=g)
    labels[0, :3] = 255
    labels[1, 2:6, 3:9] = 254  # images 1 and 2 hold outliers, 0 and 3 do not
    labels[2, :2, :4] = 254
    labels[3, -2:] = 255
    return logits, labels


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_partial_loss_sums_to_global_loss(variant):
    cfg = FinetuneConfig().loss
    cfg.pal_variant = variant
    options = pebal_loss_options(cfg)
    logits, labels = _batch()
    want = oracle_terms(logits, labels, variant=variant)  # independent per-term computation (test/loss_oracle.py)
    (g_ref,) = torch.autograd.grad(want["total"], logits)
    # one rank: pebal_loss is the partial loss with the batch's own statistics
    one, comps = pebal_loss(logits, labels, pal_variant=variant)
    torch.testing.assert_close(one, want["total"], rtol=1e-12, atol=1e-12)
    for key, value in want.items():
        torch.testing.assert_close(comps[key], value.detach(), rtol=1e-10, atol=1e-14, msg=key)
    # two "ranks" holding halves of the batch, normalised with the summed statistics
    halves = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    stats = sum(loss_statistics(x, y) for x, y in halves)
    parts = [partial_pebal_loss(x, y, stats, **options) for x, y in halves]
    total = sum(loss for loss, _ in parts)
    (g_split,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, want["total"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_split, g_ref, rtol=1e-10, atol=1e-12)
    for key, value in want.items():  # every logged component sums over ranks to the global one
        torch.testing.assert_close(sum(c[key] for _, c in parts), value.detach(), rtol=1e-10, atol=1e-14, msg=key)


class PixelNet(torch.nn.Module):
    """A per-pixel (1x1 conv) network: its logits inside a padded input equal those of the unpadded one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 20, 1).double()

    def forward(self, x):
        return self.conv(x) * 4.0


def test_trainer_loss_is_the_loss_of_the_unpadded_crop():
    torch.manual_seed(0)
    model = PixelNet()
    images = torch.randn(4, 3, 30, 26, dtype=torch.float64)  # not multiples of 8: padded to 32 x 32
    _, labels = _batch(n=4, h=30, w=26)
    labels[0, 24:, 20:] = 254  # outliers at the bottom/right edges, next to the padding
    cfg = FinetuneConfig().loss
    loss, comps, out = forward_and_loss(model, images, labels, 8, cfg, DistContext())
    assert out.shape[-2:] == (30, 26)
    want = oracle_terms(model(images), labels)
    torch.testing.assert_close(loss, want["total"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(comps["energy_smooth"], want["energy_smooth"].detach(), rtol=1e-12, atol=1e-14)
    # the loss on the padded map (padding labelled void) is a different number: the check above bites
    padded = model(torch.nn.functional.pad(images, (0, 6, 0, 2)))
    padded_labels = torch.nn.functional.pad(labels, (0, 6, 0, 2), value=255)
    assert abs(pebal_loss(padded, padded_labels)[0].item() - loss.item()) > 1e-6


@pytest.mark.parametrize("objective", ["pebal", "cross_entropy"])
def test_trainer_loss_refuses_labels_outside_the_label_space(objective):
    cfg = FinetuneConfig().loss
    cfg.objective = objective
    images = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 3, 3] = 100  # neither a class (0..18), the outlier label 254 nor void 255
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.18, 254 \(outlier\) or 255 \(void\); "
                                         r"found \[100\]"):
        forward_and_loss(PixelNet(), images, labels, 8, cfg, DistContext())


# --------------------------------------------------------------------------------------------------
# schedule, model set-up


def test_poly_schedule_follows_reference():
    s = PolySchedule(1e-5, 100, 0.9, 1e-8)
    assert s.lr_for_step(0) == 1e-5 and s.lr_for_step(1) == 1e-5  # step t uses lr(t - 1)
    assert s.lr_for_step(51) == pytest.approx(1e-5 * 0.5 ** 0.9)
    assert s.lr_for_step(101) == 1e-8 and s.lr_for_step(500) == 1e-8  # past T_tot: clipped
    code = tiny_cfg(Path("/tmp/unused"), **{"lr_schedule.total_iters_mode": "code"})
    assert code.lr_schedule.total_iters_mode == "code"


@pytest.mark.slow
def test_code_mode_total_iters_uses_inlier_count(tmp_path):
    # 8 inlier scenes + 2 OE samples, batch 4: exact T_tot = 2 x (10 // 4) = 4, code = 2 x (8 // 4) = 4;
    # with batch 3: exact 2 x 3 = 6, code 2 x 2 = 4 -> lr at the last step differs.
    logs = {}
    for mode in ("exact", "code"):
        run = tmp_path / mode
        train(tiny_cfg(run, **{"lr_schedule.total_iters_mode": mode, "train.batch_size": 3}))
        logs[mode] = [r["lr"] for r in read_log(run)]
    assert len(logs["exact"]) == len(logs["code"]) == 6
    assert logs["code"][5] == 1e-8 < logs["exact"][5]  # code: T_tot = 4 reached before the end


def test_reinit_abstention_touches_only_row_19():
    model, _ = build_model(tiny_cfg(Path("/tmp/unused")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinit_abstention_row(model, ("classifier.",), seed=1)
    after = model.state_dict()
    w0, w1 = before["classifier.weight"], after["classifier.weight"]
    assert torch.equal(w0[:19], w1[:19]) and not torch.equal(w0[19], w1[19])
    assert after["classifier.bias"][19] == 0
    assert torch.equal(before["classifier.bias"][:19], after["classifier.bias"][:19])
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("classifier."))


def test_bn_modes():
    model, _ = build_model(tiny_cfg(Path("/tmp/unused")))
    freeze_all_but(model, ("classifier.",))
    set_train_mode(model, "train")
    assert model.body[1].training
    set_train_mode(model, "frozen")
    assert not model.body[1].training and model.training
    # eval: also the BN layers whose affine parameters train keep their running statistics
    freeze_all_but(model, ("",))
    set_train_mode(model, "frozen")
    assert model.body[1].training
    set_train_mode(model, "eval")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.training
    assert all(p.requires_grad for m in bns for p in m.parameters())


def test_only_head_parameters_change(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", **{"optim.lr": 1e-2, "train.epochs": 1, "train.bn_mode": "frozen"})
    initial, _ = build_model(cfg)  # same seed as the run: identical initial weights
    torch.manual_seed(cfg.train.seed)
    initial, _ = build_model(cfg)
    train(cfg)
    final = final_state(tmp_path / "run")
    for key, value in initial.state_dict().items():
        if key.startswith("classifier."):
            assert not torch.equal(value, final[key]), key
        else:  # frozen weights and (bn_mode frozen) BN statistics are bit-identical
            assert torch.equal(value, final[key]), key


def test_bn_mode_train_updates_running_stats_but_not_weights(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", **{"train.epochs": 1})
    torch.manual_seed(cfg.train.seed)
    initial, _ = build_model(cfg)
    train(cfg)
    final = final_state(tmp_path / "run")
    assert torch.equal(initial.state_dict()["body.0.weight"], final["body.0.weight"])
    assert torch.equal(initial.state_dict()["body.1.weight"], final["body.1.weight"])
    assert not torch.equal(initial.state_dict()["body.1.running_mean"], final["body.1.running_mean"])


def test_loss_decreases_on_fixed_batch():
    cfg = tiny_cfg(Path("/tmp/unused"))
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    params = freeze_all_but(model, ("classifier.",))
    set_train_mode(model, "frozen")
    opt = torch.optim.Adam(params, lr=5e-2)
    _, labels = _batch(n=4, h=16, w=16)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        logits = model(images)
        loss, _ = pebal_loss(logits, labels, **pebal_loss_options(cfg.loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_outlier_view_subset_and_scale():
    from pebal_training.data.sources import OutlierView, SyntheticOutliers

    src = SyntheticOutliers(4, size=64, seed=3)
    view = OutlierView(src, ["blob_0003", "blob_0001"], scale=0.5)
    assert view.names == ["blob_0003", "blob_0001"] and len(view) == 2
    rgb, mask = view[0]
    full_rgb, full_mask = src[3]
    assert mask.shape == (round(full_mask.shape[0] * 0.5), round(full_mask.shape[1] * 0.5)) == rgb.shape[:2]
    assert mask.dtype == bool and mask.any()
    from pebal_training.data.datasets import DatasetError

    with pytest.raises(DatasetError, match="blob_0009"):
        OutlierView(src, ["blob_0009"])


def test_amp_is_cuda_only():
    from pebal_training.trainer import _amp_setup

    cfg = tiny_cfg(Path("/tmp/unused"), **{"train.amp": "fp16"})
    context, scaler = _amp_setup(cfg, torch.device("cpu"))
    assert scaler is None
    with context():
        assert not torch.is_autocast_enabled()


def test_rng_state_round_trip_is_weights_only(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    expect = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expect


# --------------------------------------------------------------------------------------------------
# outputs, resume, NaN


@pytest.mark.slow
def test_run_folder_outputs(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(run, **{"validation.kind": "synthetic", "validation.num_scenes": 2, "train.tensorboard": True,
                           "train.image_every": 2, "train.log_every": 1})
    summary = train(cfg)
    assert summary["global_step"] == 4  # 2 epochs x (10 samples // 4)
    assert load_config(run / "config.yaml").to_dict() == cfg.to_dict()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"ap", "auroc", "fpr95"} <= set(metrics) and metrics["num_pos"] > 0
    model, meta = load_checkpoint(run / "model_final.pt", TINY)
    assert meta.training_config == cfg.to_dict() and meta.metrics["ap"] == metrics["ap"]
    assert any((run / "tensorboard").iterdir())
    ckpt = _torch_load(sorted((run / "checkpoints").glob("step_*.pt"))[-1])  # weights_only load
    ts = ckpt["training_state"]
    assert (ts["epoch"], ts["iteration"], ts["global_step"]) == (2, 0, 4)
    assert set(ts["rng"][0]) == {"python", "numpy", "torch", "cuda"}


@pytest.mark.slow
def test_kill_and_resume_is_bit_exact(tmp_path):
    extra = {"train.epochs": 3, "train.checkpoint_every": 2}
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(tiny_cfg(full, **extra))
    # "killed" right after global step 4 (5 steps done); the newest checkpoint is step 4 (epoch 2,
    # iteration 0 is step 4 -> checkpoint at 4 steps = end of epoch 1); step 4 is re-run after resume.
    with faulty_steps(kill_after=4), pytest.raises(SimulatedKill):
        train(tiny_cfg(broken, **extra))
    assert len(read_log(broken)) == 5  # global steps 0..4 done
    ckpts = broken / "checkpoints"
    assert [p.name for p in sorted(ckpts.glob("step_*.pt"))][-1] == "step_000000004.pt"
    # a torn write (temp file of the atomic writer) and a damaged "newer" file are both ignored
    (ckpts / ".step_000000009.pt.x1y2.tmp").write_bytes(b"partial")
    (ckpts / "step_000000008.pt").write_bytes(b"\x80\x02garbage")
    assert find_resume_checkpoint(broken).name == "step_000000004.pt"
    (ckpts / "step_000000008.pt").unlink()
    summary = train(tiny_cfg(broken, **extra), resume="auto")
    assert summary["resumed_from"].endswith("step_000000004.pt") and summary["global_step"] == 6
    a, b = final_state(full), final_state(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(full) == read_log(broken)  # same losses and lrs, step for step


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_exact(tmp_path):
    extra = {"train.epochs": 2, "train.checkpoint_every": 1, "train.batch_size": 3}  # 3 iterations per epoch
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(tiny_cfg(full, **extra))
    with faulty_steps(kill_after=4), pytest.raises(SimulatedKill):
        train(tiny_cfg(broken, **extra))  # checkpoint at 5 steps: epoch 1, it 2
    summary = train(tiny_cfg(broken, **extra), resume="auto")
    assert summary["resumed_from"].endswith("step_000000005.pt")
    ts = _torch_load(broken / "checkpoints" / "step_000000005.pt")["training_state"]
    assert (ts["epoch"], ts["iteration"]) == (1, 2)
    a, b = final_state(full), final_state(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(full) == read_log(broken)


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    with faulty_steps(nan_at=3), pytest.raises(TrainingDiverged, match="global step 3"):
        train(tiny_cfg(run, **{"train.checkpoint_every": 1}))
    last = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    assert last.name == "step_000000003.pt"
    model, _ = load_checkpoint(last, TINY)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run / "model_final.pt").exists()
    # through the CLI: exit status 1 and one line naming the step
    with faulty_steps(nan_at=2):
        rc = finetune_main(tiny_overrides(tmp_path / "cli"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "global step 2" in err[0]


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_missing_data_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no_cityscapes_here"
    rc = finetune_main(["--config", str(REPO / "config" / "finetune.yaml"), "data.kind=cityscapes",
                        f"data.root={missing}", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and str(missing) in err[0]
    rc = finetune_main(tiny_overrides(tmp_path / "run2", **{"data.outliers.kind": "yolo",
                                                            "data.outliers.root": str(missing)}))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and str(missing) in err[0]
    assert not (tmp_path / "run").exists()


def test_broken_cityscapes_sample_stops_naming_the_file_or_is_skipped_when_chosen(tmp_path, capsys):
    from pebal_training.data import synthetic_layouts as SL

    root = tmp_path / "cityscapes"
    samples = SL.write_cityscapes(root, split="train", n=8, seed=3, size=(128, 64))
    broken = next((root / "leftImg8bit" / "train").rglob(f"{samples[2].name}_leftImg8bit.png"))
    broken.write_bytes(b"not a png")
    data = {"data.kind": "cityscapes", "data.root": str(root), "data.split": "train", "train.epochs": 1}
    rc = finetune_main(tiny_overrides(tmp_path / "strict", **data))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and str(broken) in err[0], err
    assert not list((tmp_path / "strict").rglob("step_*.pt"))

    rc = finetune_main(tiny_overrides(tmp_path / "lenient", **data, **{"data.on_error": "skip"}))
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "lenient" / "model_final.pt").is_file()
    assert finetune_main(tiny_overrides(tmp_path / "bad", **data, **{"data.on_error": "ignore"})) == 2
    assert "data.on_error" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_config_error_and_success(tmp_path, capsys):
    assert finetune_main(["train.epochz=1"]) == 2
    assert "train.epochz: unknown key" in capsys.readouterr().err
    run = tmp_path / "run"
    assert finetune_main(tiny_overrides(run, **{"train.epochs": 1}) + ["--output", str(run)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["final_checkpoint"] == str(run / "model_final.pt") and out["global_step"] == 2
    assert finetune_main(["--print-config", "train.epochs=7"]) == 0
    assert "epochs: 7" in capsys.readouterr().out
    # interrupted run continued with --resume auto through the CLI
    run2 = tmp_path / "run2"
    overrides = tiny_overrides(run2, **{"train.epochs": 1, "train.checkpoint_every": 1})
    with faulty_steps(kill_after=0, kill_with=KeyboardInterrupt):  # Ctrl-C after the first step
        assert finetune_main(overrides) == 130
    assert "interrupted; resume with --resume auto" in capsys.readouterr().err
    assert not (run2 / "model_final.pt").exists()
    assert finetune_main(overrides) == 2  # a fresh run into a folder holding another run's checkpoints
    assert "--resume auto" in capsys.readouterr().err
    assert finetune_main(["--resume", "auto"] + overrides) == 0
    assert "resuming from" in capsys.readouterr().err
    assert all(torch.equal(v, final_state(run)[k]) for k, v in final_state(run2).items())


# --------------------------------------------------------------------------------------------------
# DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config_from_dict({}, overrides))


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    extra = {"train.bn_mode": "frozen", "train.epochs": 2, "optim.lr": 1e-2}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: same float reduction order
    try:
        train(tiny_cfg(single, **extra))
    finally:
        torch.set_num_threads(threads)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), tiny_overrides(ddp, **extra)), nprocs=2,
                       join=True, start_method="spawn")
    a, b = read_log(single), read_log(ddp)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        assert ra["lr"] == rb["lr"]
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)
        assert rb["pal"] == pytest.approx(ra["pal"], rel=1e-5, abs=1e-6)
    sa, sb = final_state(single), final_state(ddp)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-6)


def test_cross_entropy_objective_is_the_closed_set_mean_and_splits_across_ranks():
    from pebal_training.losses import partial_cross_entropy

    logits, labels = _batch()
    total, comps = partial_cross_entropy(logits, labels, DistContext().all_reduce_sum)
    target = labels.clone()
    target[target >= 19] = 255  # outliers (254) and void are ignored
    expected = torch.nn.functional.cross_entropy(logits[:, :19], target, ignore_index=255)
    assert torch.allclose(total, expected.float(), atol=1e-6) and torch.equal(comps["total"], total.detach())

    class TwoRanks(DistContext):  # each half sees the global labelled-pixel count, as all_reduce gives it
        def all_reduce_sum(self, tensor):
            return tensor * 0 + (labels < 19).sum().double()

    halves = [partial_cross_entropy(logits[i:i + 2], labels[i:i + 2], TwoRanks().all_reduce_sum)[0] for i in (0, 2)]
    assert torch.allclose(sum(halves), expected.float(), atol=1e-6)


def test_cross_entropy_pretraining_trains_every_parameter(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", **{"loss.objective": "cross_entropy", "model.trainable_prefixes": [""],
                                        "data.outliers.kind": "none", "train.epochs": 1, "optim.lr": 1e-2})
    torch.manual_seed(cfg.train.seed)
    initial, _ = build_model(cfg)
    train(cfg)
    final = final_state(tmp_path / "run")
    assert not torch.equal(initial.state_dict()["body.0.weight"], final["body.0.weight"])
    assert not torch.equal(initial.state_dict()["classifier.weight"], final["classifier.weight"])
    assert read_log(tmp_path / "run")[0]["cross_entropy"] > 0


# The child SIGKILLs itself inside the backward pass of the first step after its k-th checkpoint:
# mid-step, at a point fixed by order (not by how fast a loaded machine happens to be).
KILL_MID_STEP = r'''
import os, signal, sys, torch, tiny_models
import pebal_training.trainer as trainer
torch.set_num_threads(int(sys.argv[1]))
kill_after, saves = int(sys.argv[2]), []
real_save, real_backward = trainer.save_training_checkpoint, torch.Tensor.backward
def counting_save(*args, **kwargs):
    path = real_save(*args, **kwargs)
    saves.append(path)
    return path
def backward(self, *args, **kwargs):
    if len(saves) >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_backward(self, *args, **kwargs)
trainer.save_training_checkpoint, torch.Tensor.backward = counting_save, backward
from pebal_training.cli.finetune import main
sys.exit(main(sys.argv[3:]))
'''


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_checkpoints", [1, 3])
def test_sigkill_mid_run_then_resume_reproduces_the_uninterrupted_run(tmp_path, kill_after_checkpoints):
    """A real `pebal-finetune` process is SIGKILLed mid-step (in the backward pass after its k-th
    checkpoint); `--resume auto` continues from the newest complete checkpoint and ends with the
    uninterrupted run's weights."""
    import subprocess
    import sys

    extra = {"train.epochs": 12, "train.checkpoint_every": 1}
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    # Same intra-op thread count in both processes: bit-exactness needs the same float reduction order.
    proc = subprocess.run([sys.executable, "-c", KILL_MID_STEP, str(torch.get_num_threads()),
                           str(kill_after_checkpoints), *tiny_overrides(killed, **extra)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert len(list((killed / "checkpoints").glob("step_*.pt"))) == kill_after_checkpoints
    assert not (killed / "model_final.pt").exists(), "killed too late to test anything"
    summary = train(tiny_cfg(killed, **extra), resume="auto")
    assert summary["resumed_from"] is not None
    train(tiny_cfg(full, **extra))
    a, b = final_state(full), final_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# kill during a checkpoint save

SAVE_LOOP = r'''
import os, pathlib, signal, sys, time
import torch, tiny_models
from pebal_perception.core.checkpoint import ModelMeta
from pebal_training.run_folder import save_training_checkpoint

run_dir, trap, saves = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
model = tiny_models.TinySegNet()
meta = ModelMeta.for_architecture(tiny_models.TINY)
blob = torch.randn(3_000_000)  # ~12 MB of "optimizer state": a write takes long enough to be hit
existing = sorted(run_dir.glob("checkpoints/step_*.pt"))
step = int(existing[-1].stem.split("_")[1]) if existing else 0

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def save():
    global step
    step += 1
    with torch.no_grad():
        model.classifier.bias.fill_(step)  # the weights say which step wrote them
    save_training_checkpoint(run_dir, step, model, meta, {"global_step": step, "blob": blob}, keep=2)
    print(step, flush=True)

for _ in range(saves):
    save()
if trap == "write":  # half the bytes reach the temp file
    real_fdopen = os.fdopen
    class HalfWriter:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def write(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush(); die()
    os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
elif trap == "fsync":  # before the temp file is flushed to disk
    os.fsync = die
elif trap == "rename":  # complete temp file, not yet renamed
    os.replace = die
elif trap == "directory-fsync":  # renamed, directory entry not yet synced
    real_fsync, calls = os.fsync, []
    def second_fsync(fd):
        calls.append(fd)
        return die() if len(calls) == 2 else real_fsync(fd)
    os.fsync = second_fsync
elif trap == "prune":  # new checkpoint written, deleting the oldest
    pathlib.Path.unlink = die
while True:  # trap "time": saves until killed from outside
    save()
'''

KILL_TRAPS = {"write": False, "fsync": False, "rename": False, "directory-fsync": True, "prune": True}


def _save_loop(run_dir: Path, trap: str, saves: int):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(run_dir), trap, str(saves)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_run_folder(run_dir: Path, last_reported: int, new_one_complete: bool | None) -> int:
    """Every complete checkpoint loads and holds its own step; resume picks the newest one; stale temp
    files are removed. Returns the step resume would continue from."""
    from pebal_training.run_folder import list_checkpoints, load_training_checkpoint, remove_interrupted_writes

    complete = list_checkpoints(run_dir)
    assert complete, "the previous checkpoints are gone"
    for path in complete:
        ckpt = load_training_checkpoint(path)  # weights_only load of the whole file
        step = int(path.stem.split("_")[1])
        assert ckpt["training_state"]["global_step"] == step
        assert torch.all(ckpt["state_dict"]["classifier.bias"] == step)
    newest = find_resume_checkpoint(run_dir)
    assert newest == complete[-1]
    resume_step = int(newest.stem.split("_")[1])
    assert resume_step >= last_reported  # nothing a finished save reported was lost
    if new_one_complete is not None:  # a trap fired during the save of step last_reported + 1
        assert resume_step == last_reported + (1 if new_one_complete else 0)
    temps = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert len(temps) <= 1
    assert sorted(remove_interrupted_writes(run_dir)) == sorted(temps)
    assert list_checkpoints(run_dir) == complete
    return resume_step


@pytest.mark.slow
@pytest.mark.parametrize("trap", sorted(KILL_TRAPS))
def test_sigkill_at_each_point_of_a_checkpoint_save_keeps_a_loadable_checkpoint(tmp_path, trap):
    """The process kills itself (SIGKILL) at a chosen point inside ``save_training_checkpoint``:
    mid-write, before the file's fsync, before the rename, before the folder's fsync, mid-pruning."""
    proc = _save_loop(tmp_path, trap, saves=3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, err
    reported = [int(line) for line in out.split()]
    assert reported == [1, 2, 3], err
    _check_run_folder(tmp_path, reported[-1], KILL_TRAPS[trap])


@pytest.mark.slow
def test_sigkill_at_random_times_while_saving_continuously(tmp_path):
    """Saves back to back (so almost every moment is inside a save) and is SIGKILLed from outside at
    random times; after each kill the run folder is checked and the next process carries on from it."""
    import random
    import signal

    rng = random.Random(1234)
    step = 0
    for trial in range(4):
        proc = _save_loop(tmp_path, "time", saves=1)
        try:
            # Kill once a random number of saves has been reported: the process is then somewhere in
            # the save that follows, wherever the scheduler happens to have it (no sleeps: CI is noisy).
            lines = [proc.stdout.readline() for _ in range(rng.randint(1, 4))]
            assert all(line.strip() for line in lines), proc.stderr.read()
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        reported = [int(line) for line in lines] + [int(line) for line in out.split()]
        assert reported[0] == step + 1, (trial, reported)
        step = _check_run_folder(tmp_path, reported[-1], None)


# --------------------------------------------------------------------------------------------------
# full disk


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoints(tmp_path, capsys, monkeypatch):
    """The third checkpoint's write fails with ENOSPC (simulated): exit 1, one line naming the file and
    the reason, the two checkpoints before it load and ``--resume auto`` picks the newest."""
    import errno

    from pebal_perception.core import io as core_io

    real_write, writes = core_io.atomic_write, []

    def write_until_full(path, write, binary=True):
        if Path(path).name.startswith("step_"):
            writes.append(path)
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, write, binary)

    monkeypatch.setattr(core_io, "atomic_write", write_until_full)
    run = tmp_path / "run"
    rc = finetune_main(tiny_overrides(run, **{"train.checkpoint_every": 1}))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("pebal-finetune: error: cannot write ") and "step_000000003.pt" in err[0], err
    assert "No space left on device" in err[0], err
    assert [p.name for p in list_checkpoints(run)] == ["step_000000001.pt", "step_000000002.pt"]
    assert find_resume_checkpoint(run).name == "step_000000002.pt"


@pytest.mark.slow
def test_real_full_disk_is_one_line_and_keeps_the_previous_checkpoints(tmp_path):
    """The same on a real 64 KiB tmpfs (a private mount namespace: nothing outlives the test): the
    run fills it, stops with one line and exit 1, and what it wrote before is complete."""
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a private tmpfs here (unshare -rm + mount not permitted)")
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    code = ("import sys, tiny_models; from pebal_training.cli.finetune import main; "
            "sys.exit(main(sys.argv[1:]))")
    overrides = " ".join(f"'{o}'" for o in tiny_overrides(disk / "run", **{"train.checkpoint_every": 1,
                                                                            "train.epochs": 20}))
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} || exit 99; "
              f"'{sys.executable}' -c '{code}' {overrides}; rc=$?; cp -a {disk}/run {kept}; exit $rc")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([unshare, "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert err[0].startswith("pebal-finetune: error: cannot write ") and "No space left" in err[0], err
    complete = list_checkpoints(kept)
    assert complete, "no checkpoint fitted before the disk was full"
    for path in complete:
        load_checkpoint(path)  # every checkpoint left behind is whole
    assert find_resume_checkpoint(kept) == complete[-1]
