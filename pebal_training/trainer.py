"""PEBAL fine-tuning loop (the training of the reference code, tianyu0207/PEBAL) as plain functions, in the shape of
torchvision's segmentation reference: :func:`fit` sets a run up and loops over epochs,
:func:`train_one_epoch` runs the optimiser steps of one epoch.

Entry point: :func:`train(cfg, resume=None)`; ``pebal-finetune`` (:mod:`pebal_training.cli.finetune`)
is a thin wrapper. The data sources live in :mod:`pebal_training.data.sources`, the run folder
(checkpoints, log) in :mod:`pebal_training.run_folder`, the process group in
:mod:`pebal_training.distributed`, the RNG states in :mod:`pebal_training.rng_state`. What it does:

* **Model.** ``model.name`` from the registry, initialised from ``model.init_checkpoint`` (ours or any
  third-party file :func:`~pebal_perception.core.checkpoint.load_checkpoint` knows; 19-class files are
  widened there) or randomly. ``model.reinit_abstention`` re-draws row 19 of the head's last conv
  (Kaiming normal, fan_in, gain sqrt 2, bias 0, from a generator seeded with ``train.seed``); by default
  only for third-party inits, whose channel 19 is an untrained void class (ESPNetv2) or a random row.
* **Trainable parameters.** Everything is frozen except the parameters whose names start with one of
  the architecture's ``head_prefixes`` (PEBAL trains only the final block). ``model.train()`` is called
  every epoch; ``train.bn_mode: train`` keeps the reference's behaviour (all BN layers, frozen ones
  included, use batch statistics and update their running statistics), ``frozen`` puts BN layers
  without trainable parameters in eval mode.
* **Data.** :class:`~pebal_training.data.outlier_exposure.CityscapesCocoMix` over Cityscapes or
  procedural scenes (:class:`~pebal_training.data.sources.SyntheticScenes`), with COCO (json / YOLO-seg /
  ood_seg) or synthetic (:class:`~pebal_training.data.sources.SyntheticOutliers`) outliers,
  :class:`~pebal_training.data.transforms.TrainTransform`. Every sample is a pure function of
  ``(seed, epoch, index)`` and the order of an epoch is a ``DistributedSampler`` permutation of
  ``(seed, epoch)``, so a run can be resumed mid-epoch exactly.
  Crops that are not a multiple of the network's size divisor are padded with 0 for the forward pass
  and the logits cropped back before the loss (:func:`forward_and_loss`), so the loss covers the crop.
* **Optimiser / schedule.** Adam over the trainable parameters (lr 1e-5, betas (0.9, 0.999), no weight
  decay); poly schedule, where, as in the reference, step ``t`` runs with ``lr(t - 1)`` (step 0 with the
  base lr) and ``T_tot`` is either ``epochs x iterations per epoch`` (``exact``) or the reference's
  ``epochs x (#inlier // batch)`` (``code``; 371 instead of 409 iterations per epoch on Cityscapes, so
  the lr sits at ``min_lr`` for the last ~10 % of training).
* **Loss.** :func:`pebal_training.losses.pebal_loss`, computed here as a sum over ranks (see
  :func:`~pebal_training.losses.loss_statistics` / :func:`~pebal_training.losses.partial_pebal_loss`):
  every group mean is divided by the
  pixel count of the *global* batch and the sparsity norm uses the global outlier energies, so under
  DDP the gradient equals the single-process gradient of the same global batch (up to float rounding).
* **DDP** when started by ``torchrun`` (``WORLD_SIZE`` > 1): nccl on CUDA, gloo on CPU; each rank gets
  ``batch_size / world_size`` samples (rank ``r`` of global batch ``k`` holds a fixed share of the same
  ``DistributedSampler`` permutation, so the union over ranks is exactly the single-process batch);
  the logged loss is the global one. Each rank backpropagates ``world_size x`` its share of the loss
  (DDP averages gradients), so gradients match a single process with the same global batch. The one
  thing that cannot match is BatchNorm in training mode: with ``bn_mode: train`` every rank normalises
  with the statistics of its own ``batch_size / world_size`` samples (plain BN, as the reference under
  DDP); ``bn_mode: frozen`` (or a model whose trained BN layers see the same samples) gives
  single-process results up to float rounding (tested with 2 gloo processes: rel. 1e-5).
* **AMP** (``train.amp: fp16|bf16``) on CUDA only: autocast, plus a GradScaler for fp16.
* **Robustness.** A non-finite loss stops training (:class:`TrainingDiverged`, naming the global step)
  before the optimiser step, so the checkpoints on disk are the last good ones. Checkpoints
  (``<output>/checkpoints/step_<global step>.pt``, our format, written atomically) are taken at the end
  of every epoch and every ``train.checkpoint_every`` iterations; their ``training_state`` holds the
  optimiser, schedule, epoch / iteration / global step and every RNG state (all weights_only-loadable).
* **Outputs** (rank 0): ``config.yaml`` (resolved), ``train_log.jsonl`` (one line per step),
  TensorBoard scalars and image panels, ``metrics.json`` (held-out anomaly AP / AUROC / FPR95, when
  ``validation.kind`` is set; computed by pebal-eval's :func:`pebal_training.evaluate.evaluate_anomaly`)
  and ``model_final.pt`` (``meta.training_config`` = resolved config). The run folder must be new,
  empty or a run folder (:data:`~pebal_training.run_folder.RUN_FOLDER`: only the files above); a folder
  holding anything else, a file, a device or a fifo is refused before any work
  (:class:`~pebal_perception.core.io.OutputPathError`, a ``ValueError``).

Nothing here imports ROS.
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from pebal_perception.core.checkpoint import ModelMeta, _torch_load, is_pebal_checkpoint, load_checkpoint, \
    save_checkpoint
from pebal_perception.core.io import atomic_write, atomic_write_json, check_output_folder
from pebal_perception.core.models import NUM_OUTPUTS, create_model, get_model_spec
from pebal_perception.core.models.common import CheckpointError, load_state_dict_strict
from pebal_training.config import FinetuneConfig
from pebal_training.data.labels import OUTLIER_LABEL
from pebal_training.data.outlier_exposure import CityscapesCocoMix, loader_generator, seed_worker
from pebal_training.data.sources import build_train_dataset, build_validation_dataset
from pebal_training.distributed import DistContext, setup_distributed
from pebal_training.losses import loss_statistics, partial_cross_entropy, partial_pebal_loss
from pebal_training.rng_state import capture_rng_state, restore_rng_state
from pebal_training.run_folder import CHECKPOINT_DIR, RUN_FOLDER, RunLog, find_resume_checkpoint, \
    list_checkpoints, load_training_checkpoint, remove_interrupted_writes, save_training_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the message names the global step."""


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch]),
            "is_ood": torch.tensor([b["is_ood"] for b in batch]), "index": torch.tensor([b["index"] for b in batch])}


def pad_to_multiple(images: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pads the bottom/right of a batch with 0 (normalised space) to multiples of ``divisor``."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(images, (0, pw, 0, ph), value=0.0) if ph or pw else images


# --------------------------------------------------------------------------------------------------
# model


def _final_conv(model: nn.Module, prefixes: Sequence[str]) -> tuple[str, nn.Conv2d]:
    """The last Conv2d with NUM_OUTPUTS output channels inside the head."""
    found = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.out_channels == NUM_OUTPUTS
                and any(f"{name}.".startswith(p) for p in prefixes)):
            found = (name, module)
    if found is None:
        raise ValueError(f"no {NUM_OUTPUTS}-channel conv found under {list(prefixes)}")
    return found


def reinit_abstention_row(model: nn.Module, prefixes: Sequence[str], seed: int) -> str:
    """Re-draws row 19 (abstention) of the head's final conv: Kaiming normal (fan_in, gain sqrt 2) as
    PEBAL's loader does for its widened classifier; bias entry 0. Returns the conv's name."""
    name, conv = _final_conv(model, prefixes)
    fan_in = conv.weight[0].numel()
    gen = torch.Generator().manual_seed(int(seed))
    row = torch.randn(conv.weight.shape[1:], generator=gen, dtype=torch.float32) * math.sqrt(2.0 / fan_in)
    with torch.no_grad():
        conv.weight[NUM_OUTPUTS - 1].copy_(row.to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias[NUM_OUTPUTS - 1] = 0.0
    return name


def build_model(cfg: FinetuneConfig) -> tuple[nn.Module, ModelMeta]:
    """Creates ``model.name`` with its initial weights (see module docstring)."""
    third_party = False
    if cfg.model.init_checkpoint:
        path = Path(cfg.model.init_checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: model.init_checkpoint not found")
        third_party = not is_pebal_checkpoint(_torch_load(path))
        model, meta = load_checkpoint(path, cfg.model.name)
        meta.source = path.name
    else:
        model = create_model(cfg.model.name, **cfg.model.kwargs)
        meta = ModelMeta.for_architecture(cfg.model.name, model_kwargs=dict(cfg.model.kwargs), source="random init")
    reinit = cfg.model.reinit_abstention if cfg.model.reinit_abstention is not None else third_party
    if reinit:
        reinit_abstention_row(model, trainable_prefixes(cfg), cfg.train.seed)
    meta.model_id = f"{cfg.model.name}:pebal-finetune"
    return model, meta


def trainable_prefixes(cfg: FinetuneConfig) -> tuple[str, ...]:
    if cfg.model.trainable_prefixes:
        return tuple(str(p) for p in cfg.model.trainable_prefixes)
    return tuple(get_model_spec(cfg.model.name).head_prefixes)


def freeze_all_but(model: nn.Module, prefixes: Sequence[str]) -> list[nn.Parameter]:
    """``requires_grad`` only for parameters whose name starts with one of ``prefixes``."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(p) for p in prefixes))
        if param.requires_grad:
            trainable.append(param)
    if not trainable:
        raise ValueError(f"no parameter name starts with {list(prefixes)}")
    return trainable


def set_train_mode(model: nn.Module, bn_mode: str) -> None:
    """``model.train()``; with ``bn_mode='frozen'`` BN layers without trainable parameters go to eval, with
    ``bn_mode='eval'`` every BN layer does (running statistics kept; trainable affine parameters still
    learn): small CPU batches of crops from a few frames would otherwise overwrite the pretrained
    statistics of the trained blocks."""
    model.train()
    if bn_mode in ("frozen", "eval"):
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):  # noqa: SLF001 - torch's BN base class
                if bn_mode == "eval" or not any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()


# --------------------------------------------------------------------------------------------------
# lr schedule


@dataclass
class PolySchedule:
    """Poly lr; ``lr_for_step(t)`` is what optimiser step ``t`` uses (the reference sets lr(t) *after*
    step ``t``, so step ``t`` runs with ``lr(t - 1)`` and step 0 with the base lr)."""

    base_lr: float
    total_iters: int
    power: float = 0.9
    min_lr: float = 1e-8

    def lr_after(self, t: int) -> float:
        frac = 1.0 - t / max(self.total_iters, 1)
        if frac <= 0:  # the reference's complex-number branch ends up at the clip's lower bound
            return self.min_lr
        return float(min(max(self.base_lr * frac ** self.power, self.min_lr), self.base_lr))

    def lr_for_step(self, t: int) -> float:
        return self.base_lr if t == 0 else self.lr_after(t - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "total_iters": self.total_iters, "power": self.power, "min_lr": self.min_lr}


# --------------------------------------------------------------------------------------------------
# one batch


def pebal_loss_options(cfg_loss: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`~pebal_training.losses.partial_pebal_loss` from ``cfg.loss``."""
    return {"energy_weight": cfg_loss.energy_weight, "pal_variant": cfg_loss.pal_variant,
            "outlier_weight": cfg_loss.outlier_weight, "m_in": cfg_loss.m_in, "m_out": cfg_loss.m_out,
            "smooth_weight": cfg_loss.smooth_weight, "sparse_weight": cfg_loss.sparse_weight}


def forward_and_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, divisor: int, cfg_loss: Any,
                     ctx: DistContext, autocast: Callable[[], Any] = contextlib.nullcontext
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Forward pass and this rank's share of the global batch's loss: ``(loss, components, logits)``.

    Images whose size is not a multiple of the network's ``divisor`` are padded for the forward pass
    and the logits cropped back, so the loss covers exactly the crop, as the reference's does (on the
    padded map the smoothness sum and the penalty blur at the bottom/right edges would see the strip).
    """
    h, w = images.shape[-2:]
    with autocast():
        logits = model(pad_to_multiple(images, divisor))[..., :h, :w]
    if cfg_loss.objective == "cross_entropy":
        loss, comps = partial_cross_entropy(logits, labels, ctx.all_reduce_sum)
    else:
        stats = ctx.all_reduce_sum(loss_statistics(logits, labels))
        loss, comps = partial_pebal_loss(logits, labels, stats, **pebal_loss_options(cfg_loss))
    return loss, comps, logits


# --------------------------------------------------------------------------------------------------
# outputs of rank 0


def _label_panel(label: torch.Tensor) -> np.ndarray:
    from pebal_training.data.synthetic import colorize_labels

    lab = label.cpu().numpy().astype(np.uint8)
    rgb = colorize_labels(lab)
    rgb[lab == OUTLIER_LABEL] = (255, 255, 255)
    return rgb


def _image_panels(writer: Any, step: int, image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor,
                  mean: Sequence[float], std: Sequence[float]) -> None:
    img = image.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    writer.add_image("train/input", img.clamp(0, 1), step)
    writer.add_image("train/label", _label_panel(label), step, dataformats="HWC")
    energy = -torch.logsumexp(logits.detach().float()[:-1], dim=0).cpu()
    lo, hi = float(energy.min()), float(energy.max())
    writer.add_image("train/energy", ((energy - lo) / max(hi - lo, 1e-6))[None], step)


class StepLog:
    """Where each step is reported: ``train_log.jsonl``, TensorBoard and the progress bar (rank 0 only;
    on other ranks every method does nothing)."""

    def __init__(self, cfg: FinetuneConfig, run_dir: Path, global_step: int, total_steps: int, enabled: bool) -> None:
        self.cfg = cfg.train
        self.spec = get_model_spec(cfg.model.name)
        self.run_log = self.writer = self.progress = None
        if not enabled:
            return
        self.run_log = RunLog(run_dir / "train_log.jsonl", global_step)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step if global_step else None)
        if self.cfg.progress:
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, initial=global_step, desc="pebal-finetune", dynamic_ncols=True,
                                 file=sys.stderr)

    def step(self, global_step: int, epoch: int, it: int, lr: float, values: dict[str, float],
             images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        if self.run_log is None:
            return
        record = {"step": global_step, "epoch": epoch, "iteration": it, "lr": lr, "loss": values["total"]}
        record.update({k: v for k, v in values.items() if k != "total"})
        self.run_log.write(record)
        if self.writer is not None and self.cfg.log_every and global_step % self.cfg.log_every == 0:
            self.writer.add_scalar("train/lr", lr, global_step)
            for k, v in values.items():
                self.writer.add_scalar(f"loss/{k}", v, global_step)
        if self.writer is not None and self.cfg.image_every and global_step % self.cfg.image_every == 0:
            _image_panels(self.writer, global_step, images[0], labels[0], logits[0], self.spec.mean, self.spec.std)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{values['total']:.4f}", lr=f"{lr:.2e}", epoch=epoch)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.run_log is not None:
            self.run_log.close()


# --------------------------------------------------------------------------------------------------
# the loop


def _amp_setup(cfg: FinetuneConfig, device: torch.device) -> tuple[Callable[[], Any], Any]:
    if device.type != "cuda" or cfg.train.amp == "off":
        return contextlib.nullcontext, None
    dtype = torch.float16 if cfg.train.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def train(cfg: FinetuneConfig, resume: str | None = None) -> dict[str, Any]:
    """Runs (or resumes) fine-tuning; returns a summary (run dir, global step, final path, metrics).

    ``resume``: None (fresh run), ``"auto"`` (newest complete checkpoint in ``<output>/checkpoints``;
    fresh when there is none) or a checkpoint path. Raises :class:`TrainingDiverged` on a NaN/Inf loss,
    DatasetError / CheckpointError for bad inputs.
    """
    ctx = setup_distributed(cfg.train.device)
    try:
        return fit(cfg, resume, ctx)
    finally:
        ctx.close()


def epoch_loader(dataset: CityscapesCocoMix, cfg: FinetuneConfig, ctx: DistContext, epoch: int, first_iter: int,
                 iters_per_epoch: int) -> DataLoader:
    """This rank's batches of ``epoch`` from iteration ``first_iter`` on: a pure function of
    ``(seed, epoch)``, so a resumed epoch continues with exactly the samples it would have drawn."""
    local_batch = cfg.train.batch_size // ctx.world_size
    dataset.set_epoch(epoch)
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)[first_iter * local_batch: iters_per_epoch * local_batch]
    return DataLoader(dataset, batch_size=local_batch, sampler=indices, drop_last=True,
                      num_workers=cfg.data.num_workers, collate_fn=_collate, worker_init_fn=seed_worker,
                      generator=loader_generator(cfg.train.seed + epoch), pin_memory=ctx.device.type == "cuda")


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, schedule: PolySchedule,
                    cfg: FinetuneConfig, ctx: DistContext, epoch: int, first_iter: int, global_step: int,
                    iters_per_epoch: int, step_log: StepLog, save: Callable[[int, int, int], None],
                    autocast: Callable[[], Any] = contextlib.nullcontext, scaler: Any = None) -> int:
    """Runs the batches of ``loader`` (iterations ``first_iter..iters_per_epoch - 1`` of ``epoch``);
    ``save(epoch, iteration, global_step)`` is called at the end of the epoch and every
    ``train.checkpoint_every`` steps with the position to resume from. Returns the new global step."""
    divisor = get_model_spec(cfg.model.name).size_divisor
    for it, batch in enumerate(loader, start=first_iter):
        lr = schedule.lr_for_step(global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        loss, comps, logits = forward_and_loss(model, images, labels, divisor, cfg.loss, ctx, autocast)
        keys = sorted(comps)
        reduced = ctx.all_reduce_sum(torch.stack([comps[k].double() for k in keys]))
        values = dict(zip(keys, reduced.tolist()))
        if not math.isfinite(values["total"]):
            raise TrainingDiverged(
                f"non-finite loss ({values['total']}) at global step {global_step} (epoch {epoch}, "
                f"iteration {it}); stopped before the optimiser step; the last good checkpoint is "
                f"{(list_checkpoints(Path(cfg.output)) or ['none'])[-1]}")
        optimizer.zero_grad(set_to_none=True)
        scaled = loss * ctx.world_size  # DDP averages gradients; the per-rank losses sum to the global one
        if scaler is not None:
            scaler.scale(scaled).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            scaled.backward()
            optimizer.step()
        step_log.step(global_step, epoch, it, lr, values, images, labels, logits)
        global_step += 1
        if it + 1 == iters_per_epoch:
            save(epoch + 1, 0, global_step)
        elif cfg.train.checkpoint_every and global_step % cfg.train.checkpoint_every == 0:
            save(epoch, it + 1, global_step)
    return global_step


def validate(model: nn.Module, meta: ModelMeta, cfg: FinetuneConfig, device: torch.device) -> dict[str, Any]:
    """Anomaly AP / AUROC / FPR95 on ``cfg.validation`` with pebal-eval's protocol and code
    (:func:`pebal_training.evaluate.evaluate_anomaly`); the model's train/eval mode is kept."""
    from pebal_perception.core.engine import InferenceEngine
    from pebal_training.evaluate import evaluate_anomaly

    v = cfg.validation
    was_training = model.training
    try:
        # optimize=False: folding BatchNorm would change the weights that are saved next
        engine = InferenceEngine(model, meta, device=device, input_size=list(v.size) if v.size else "native",
                                 smoothing=v.smoothing, optimize=False)
        report = evaluate_anomaly(engine, build_validation_dataset(cfg), output=None, dataset_name=v.kind,
                                  progress=cfg.train.progress)
    finally:
        model.train(was_training)
    return {"validation": v.kind, **{k: report[k] for k in ("auroc", "ap", "fpr95", "num_pos", "num_neg",
                                                              "num_images")}}


def fit(cfg: FinetuneConfig, resume: str | None, ctx: DistContext) -> dict[str, Any]:
    """The whole run on this rank: set-up, resume, the epochs, validation and the final checkpoint."""
    run_dir = check_output_folder(cfg.output, RUN_FOLDER)  # before any work; every rank sees the same
    device = ctx.device
    if cfg.train.batch_size % ctx.world_size:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by the world size {ctx.world_size}")
    dataset = build_train_dataset(cfg)  # raises DatasetError for missing folders, before any work
    torch.manual_seed(cfg.train.seed + ctx.rank)  # as the reference: torch seeded with seed (+ rank)
    random.seed(cfg.train.seed + ctx.rank)
    np.random.seed((cfg.train.seed + ctx.rank) % 2**32)

    model, meta = build_model(cfg)
    params = freeze_all_but(model, trainable_prefixes(cfg))
    model.to(device)
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                 weight_decay=cfg.optim.weight_decay)
    autocast, scaler = _amp_setup(cfg, device)

    iters_per_epoch = len(dataset) // cfg.train.batch_size
    if cfg.train.iters_per_epoch is not None:
        iters_per_epoch = min(iters_per_epoch, cfg.train.iters_per_epoch)
    if iters_per_epoch < 1:
        raise ValueError(f"{len(dataset)} training samples are fewer than one batch of {cfg.train.batch_size}")
    if cfg.lr_schedule.total_iters_mode == "code":
        total_iters = cfg.train.epochs * max(dataset.num_inlier // cfg.train.batch_size, 1)
    else:
        total_iters = cfg.train.epochs * iters_per_epoch
    schedule = PolySchedule(cfg.optim.lr, total_iters, cfg.lr_schedule.power, cfg.lr_schedule.min_lr)

    start_epoch, start_iter, global_step = 0, 0, 0
    resumed_from = None
    if resume:
        if ctx.is_main:
            for stale in remove_interrupted_writes(run_dir):
                print(f"removed {stale.name}, left by an interrupted checkpoint write", file=sys.stderr)
        path = find_resume_checkpoint(run_dir) if resume == "auto" else Path(resume)
        if path is not None:
            ckpt = load_training_checkpoint(path)
            load_state_dict_strict(model, ckpt["state_dict"], source=str(path))
            ts = ckpt["training_state"]
            optimizer.load_state_dict(ts["optimizer"])
            if scaler is not None and ts.get("scaler"):
                scaler.load_state_dict(ts["scaler"])
            start_epoch, start_iter, global_step = int(ts["epoch"]), int(ts["iteration"]), int(ts["global_step"])
            rng = ts["rng"]
            restore_rng_state(rng[ctx.rank] if ctx.rank < len(rng) else rng[0])
            resumed_from = str(path)
            if ctx.is_main:
                print(f"resuming from {path} (epoch {start_epoch}, iteration {start_iter}, "
                      f"global step {global_step})", file=sys.stderr)
        elif ctx.is_main:
            print(f"no complete checkpoint in {run_dir / CHECKPOINT_DIR}; starting a fresh run", file=sys.stderr)
    if resumed_from is None and list_checkpoints(run_dir):
        # a fresh run would interleave its checkpoints with the old run's (and prune the wrong ones)
        raise ValueError(f"{run_dir / CHECKPOINT_DIR}: already holds checkpoints of another run; "
                         "continue it with --resume auto or choose a new --output")

    train_model: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    resolved = cfg.to_dict()
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", lambda f: f.write(yaml.safe_dump(resolved, sort_keys=False)),
                     binary=False)
    meta.training_config = resolved

    def save(epoch: int, iteration: int, step: int) -> None:
        rng = ctx.gather_objects(capture_rng_state())
        if not ctx.is_main:
            return
        state = {
            "optimizer": optimizer.state_dict(), "scheduler": dict(schedule.state_dict(), global_step=step),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "iteration": iteration, "global_step": step, "world_size": ctx.world_size,
            "rng": rng}
        save_training_checkpoint(run_dir, step, model, meta, state, cfg.train.keep_checkpoints)

    step_log = StepLog(cfg, run_dir, global_step, cfg.train.epochs * iters_per_epoch, enabled=ctx.is_main)
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            first = start_iter if epoch == start_epoch else 0
            loader = epoch_loader(dataset, cfg, ctx, epoch, first, iters_per_epoch)
            set_train_mode(model, cfg.train.bn_mode)
            global_step = train_one_epoch(train_model, loader, optimizer, schedule, cfg, ctx, epoch, first, global_step,
                                          iters_per_epoch, step_log, save, autocast, scaler)
    finally:
        step_log.close()

    summary: dict[str, Any] = {"run_dir": str(run_dir), "global_step": global_step, "resumed_from": resumed_from,
                               "world_size": ctx.world_size}
    metrics: dict[str, Any] = {}
    if ctx.is_main and cfg.validation.kind != "none":
        metrics = validate(model, meta, cfg, device)
        atomic_write_json(run_dir / "metrics.json", metrics)
        meta.metrics = metrics
    if ctx.is_main:
        final = save_checkpoint(run_dir / "model_final.pt", model, meta)
        summary["final_checkpoint"] = str(final)
    summary["metrics"] = metrics
    ctx.barrier()
    return summary
