"""PEBAL fine-tuning loop (spec sections 1.2, 1.3, 3 and 4) as plain functions and small classes.

Entry point: :func:`train(cfg, resume=None)`; ``pebal-finetune`` (:mod:`pebal_training.cli.finetune`)
is a thin wrapper. What it does:

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
  procedural scenes (:class:`SyntheticScenes`), with COCO (json / YOLO-seg / ood_seg) or synthetic
  (:class:`SyntheticOutliers`) outliers, :class:`~pebal_training.data.transforms.TrainTransform`. Every
  sample is a pure function of ``(seed, epoch, index)`` and the order of an epoch is a
  ``DistributedSampler`` permutation of ``(seed, epoch)``, so a run can be resumed mid-epoch exactly.
  Crops that are not a multiple of the network's size divisor are padded (image 0, label 255).
* **Optimiser / schedule.** Adam over the trainable parameters (lr 1e-5, betas (0.9, 0.999), no weight
  decay); poly schedule, where, as in the reference, step ``t`` runs with ``lr(t - 1)`` (step 0 with the
  base lr) and ``T_tot`` is either ``epochs x iterations per epoch`` (``exact``) or the reference's
  ``epochs x (#inlier // batch)`` (``code``; 371 instead of 409 iterations per epoch on Cityscapes, so
  the lr sits at ``min_lr`` for the last ~10 % of training).
* **Loss.** :func:`pebal_training.losses.pebal_loss`, computed here as a sum over ranks (see
  :func:`global_loss_statistics` / :func:`partial_pebal_loss`): every group mean is divided by the
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
  ``validation.kind`` is set) and ``model_final.pt`` (``meta.training_config`` = resolved config).
  The run folder must be new, empty or a run folder (:data:`RUN_FOLDER`: only the files above); a
  folder holding anything else, a file, a device or a fifo is refused before any work
  (:class:`~pebal_perception.core.io.OutputPathError`, a ``ValueError``).

Nothing here imports ROS.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pebal_perception.core.checkpoint import (ModelMeta, _torch_load, is_pebal_checkpoint, load_checkpoint,
                                              save_checkpoint)
from pebal_perception.core.io import FolderLayout, atomic_write, atomic_write_json, check_output_folder, \
    temp_target_name
from pebal_perception.core.models import NUM_INLIER_CLASSES, NUM_OUTPUTS, create_model, get_model_spec
from pebal_perception.core.models.common import CheckpointError, load_state_dict_strict
from pebal_perception.core.scoring import anomaly_score, gaussian_smooth
from pebal_training.config import FinetuneConfig
from pebal_training.data.labels import IGNORE_LABEL, OUTLIER_LABEL
from pebal_training.data.outlier_exposure import CityscapesCocoMix, loader_generator, seed_worker
from pebal_training.data.transforms import TrainTransform
from pebal_training.losses import OUTLIER_PROB_FLOOR, PENALTY_FLOOR, smoothness_regulariser
from pebal_training.metrics import AnomalyMetricAccumulator

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^step_(\d{9})\.pt$")
# What a run writes into its folder: a folder holding only these is a run folder (a config.yaml with no
# train_log.jsonl beside it is the user's own, e.g. the --config file, and is never replaced).
RUN_FOLDER = FolderLayout(
    "pebal-finetune", files=(r"config\.yaml", r"train_log\.jsonl", r"metrics\.json", r"model_final\.pt"),
    folders={CHECKPOINT_DIR: FolderLayout("pebal-finetune", files=(_CKPT_RE.pattern,)),
             "tensorboard": FolderLayout("pebal-finetune", files=(r"events\.out\.tfevents\..+",))},
    own=lambda d: ["config.yaml"] if (d / "config.yaml").exists() and not (d / "train_log.jsonl").exists() else [])


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the message names the global step."""


# --------------------------------------------------------------------------------------------------
# synthetic data (no files needed)


def _scene_seed(seed: int, index: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence((int(stream), int(seed), int(index)))


class SyntheticScenes(Dataset):
    """Procedural street scenes without anomalies: item ``i`` = ``dict(image, label, name)`` generated
    from ``(seed, i)`` (deterministic, cached per process). With ``anomalies=True`` items also carry
    ``anomaly`` (0 inlier, 1 anomaly, 255 void), for validation."""

    def __init__(self, num_scenes: int, height: int, width: int, seed: int = 0, anomalies: bool = False) -> None:
        from pebal_training.data.synthetic import SceneConfig

        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
        self.num_scenes = int(num_scenes)
        self.seed = int(seed)
        self.anomalies = bool(anomalies)
        self.config = SceneConfig(height=int(height), width=int(width),
                                  anomaly_count_range=(1, 3) if anomalies else (0, 0))
        self.config.validate()
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_scenes:
            raise IndexError(index)
        if index not in self._cache:
            from pebal_training.data.synthetic import generate_scene

            scene = generate_scene(np.random.default_rng(_scene_seed(self.seed, index, 3 if self.anomalies else 1)),
                                   self.config)
            item = {"image": scene.image, "label": scene.semantic, "name": f"synthetic_{index:05d}"}
            if self.anomalies:
                item["anomaly"] = scene.anomaly
            self._cache[index] = item
        return self._cache[index]


class SyntheticOutliers(Dataset):
    """Random textured blobs standing in for COCO objects: ``source[i] -> (rgb uint8, mask bool)``,
    a pure function of ``(seed, i)``. Object size is 10-40 % of ``size``."""

    def __init__(self, num_objects: int, size: int = 128, seed: int = 0) -> None:
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        self.num_objects = int(num_objects)
        self.size = max(8, int(size))
        self.seed = int(seed)
        self.names = [f"blob_{i:04d}" for i in range(self.num_objects)]

    def __len__(self) -> int:
        return self.num_objects

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        rng = np.random.default_rng(_scene_seed(self.seed, index, 2))
        s = self.size
        side = max(4, int(s * rng.uniform(0.1, 0.4)))
        mask = np.zeros((side, side), np.uint8)
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.25, 0.5, n) * side
        pts = np.stack([side / 2 + rad * np.cos(ang), side / 2 + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, 40, (side, side, 1)) * rng.uniform(0.2, 1.0, 3)
        rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
        return rgb, mask.astype(bool)


# --------------------------------------------------------------------------------------------------
# datasets from the config


def build_inlier_dataset(cfg: FinetuneConfig) -> Dataset:
    """Cityscapes (``data.root``) or synthetic scenes; raises DatasetError for a missing folder."""
    if cfg.data.kind == "cityscapes":
        from pebal_training.data.datasets import CityscapesSegmentation

        return CityscapesSegmentation(cfg.data.root, split=cfg.data.split, on_error=cfg.data.on_error)
    s = cfg.data.synthetic
    return SyntheticScenes(s.num_scenes, s.height, s.width, seed=s.seed)


class OutlierView(Dataset):
    """A subset (by name) of an outlier source, objects optionally resized by ``scale``."""

    def __init__(self, source: Dataset, include: Sequence[str] | None = None, scale: float = 1.0) -> None:
        names = list(getattr(source, "names", [str(i) for i in range(len(source))]))
        if include is not None:
            wanted = [str(n) for n in include]
            missing = sorted(set(wanted) - set(names))
            if missing:
                from pebal_training.data.datasets import DatasetError

                raise DatasetError(f"data.outliers.include: {', '.join(missing[:5])} not in the outlier source "
                                   f"({getattr(source, 'root', '')})")
            self.indices = [names.index(n) for n in wanted]
        else:
            self.indices = list(range(len(names)))
        if scale <= 0:
            raise ValueError(f"data.outliers.scale must be > 0, got {scale}")
        self.source = source
        self.scale = float(scale)
        self.names = [names[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, mask = self.source[self.indices[index]]
        if self.scale != 1.0:
            import cv2

            h, w = mask.shape
            size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return rgb, mask


def build_outlier_source(cfg: FinetuneConfig) -> Dataset | None:
    o = cfg.data.outliers
    if o.kind == "none":
        return None
    if o.kind == "synthetic":
        s = cfg.data.synthetic
        source: Dataset = SyntheticOutliers(s.num_outliers, size=min(s.height, s.width), seed=s.seed)
    else:
        from pebal_training.data.datasets import CocoOutlierSource

        fmt = {"coco_json": "coco", "yolo": "yolo", "ood_seg": "ood_seg"}[o.kind]
        source = CocoOutlierSource(o.root, fmt=fmt, split=o.split, min_size=o.min_size)
    if o.include is not None or o.scale != 1.0:
        source = OutlierView(source, o.include, o.scale)
    return source


def build_train_dataset(cfg: FinetuneConfig) -> CityscapesCocoMix:
    transform = TrainTransform(crop_size=cfg.data.crop_size, scales=cfg.data.scales, flip_prob=cfg.data.flip_prob,
                               mean=get_model_spec(cfg.model.name).mean, std=get_model_spec(cfg.model.name).std)
    return CityscapesCocoMix(build_inlier_dataset(cfg), build_outlier_source(cfg),
                             outlier_fraction=cfg.data.outliers.fraction, transform=transform, seed=cfg.train.seed)


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch]),
            "is_ood": torch.tensor([b["is_ood"] for b in batch]), "index": torch.tensor([b["index"] for b in batch])}


def pad_to_multiple(images: torch.Tensor, labels: torch.Tensor, divisor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads the bottom/right of a batch to multiples of ``divisor`` (image 0, label 255)."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph), value=0.0)
        labels = F.pad(labels, (0, pw, 0, ph), value=IGNORE_LABEL)
    return images, labels


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
    """``model.train()``; with ``bn_mode='frozen'`` BN layers without trainable parameters go to eval."""
    model.train()
    if bn_mode == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if not any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()


# --------------------------------------------------------------------------------------------------
# loss, decomposed over ranks

# Layout of the statistics vector (float64): pixel/pair counts and the squared outlier-energy sum.
_N_IN_IMG, _N_OOD_INLIER, _N_OUT_PAIRS, _N_NONVOID, _N_E_IN, _N_E_OUT, _SUMSQ_E_OUT = range(7)
_NUM_STATS = 7


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outlier = labels == OUTLIER_LABEL
    void = labels == IGNORE_LABEL
    inlier = ~(outlier | void)
    is_ood = outlier.flatten(1).any(dim=1)[:, None, None]
    return outlier, void, inlier, is_ood


def loss_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """This rank's normalisers of the PEBAL loss (detached float64 vector; sum it over ranks)."""
    outlier, void, inlier, is_ood = _masks(labels)
    c = logits.shape[1]
    with torch.no_grad():
        energy = -torch.logsumexp(logits.detach()[:, :-1].double(), dim=1)
        n_out = outlier.sum()
        return torch.stack([
            (inlier & ~is_ood).sum().double(), (inlier & is_ood).sum().double(), (n_out * (c - 1)).double(),
            (~void).sum().double(), inlier.sum().double(), n_out.double(),
            torch.where(outlier, energy, torch.zeros_like(energy)).square().sum(),
        ])


def partial_pebal_loss(logits: torch.Tensor, labels: torch.Tensor, stats: torch.Tensor, cfg_loss: Any
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's share of :func:`pebal_training.losses.pebal_loss` of the global batch.

    ``stats`` is :func:`loss_statistics` summed over all ranks. Every mean of the reference loss is
    written as (this rank's sum) / (global count), the smoothness term is a plain sum, and the
    sparsity norm ``w·‖E_out‖₂`` is replaced by ``w·(S_r + S_r.detach()) / (2‖E_out‖₂)`` with
    ``S_r`` this rank's squared outlier energies and the global norm detached: its values summed over
    ranks equal ``w·‖E_out‖₂`` and its gradient is the exact ``w·E/‖E_out‖₂``. So the sum of the
    returned losses over ranks *is* the global loss, value and gradient. With one rank it equals
    ``pebal_loss`` up to summation order.
    """
    stats = stats.to(logits.device)
    outlier, void, inlier, is_ood = _masks(labels)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits if logits.dtype == torch.float64 else logits.float()
        dtype = x.dtype
        st = stats.to(dtype)
        c = x.shape[1]
        zero = torch.zeros((), dtype=dtype, device=x.device)

        def msum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, values, zero).sum()

        def denom(i: int) -> torch.Tensor:
            return st[i].clamp_min(1.0)

        lse = torch.logsumexp(x[:, :-1], dim=1)
        energy = -lse
        logp = torch.log_softmax(x, dim=1)
        penalty = gaussian_smooth(lse.square())
        log_res = logp[:, c - 1] - torch.log(penalty.clamp_min(PENALTY_FLOOR))
        target = torch.where(inlier, labels, torch.zeros_like(labels)).long()
        log_py = logp[:, : c - 1].gather(1, target.unsqueeze(1)).squeeze(1)
        log_gain = torch.logaddexp(log_py, log_res)
        comps: dict[str, torch.Tensor] = {}
        if cfg_loss.pal_variant == "paper":
            log_gain_out = torch.logaddexp(logp[:, c - 1], log_res)
            per_pixel = torch.where(outlier, log_gain_out, log_gain)
            pal = msum(-per_pixel, ~void) / denom(_N_NONVOID)
        else:
            pal_in_img = msum(-log_gain, inlier & ~is_ood) / denom(_N_IN_IMG)
            ood_inlier = msum(-log_gain, inlier & is_ood) / denom(_N_OOD_INLIER)
            out_terms = torch.logaddexp(logp[:, : c - 1].permute(0, 2, 3, 1)[outlier], log_res[outlier].unsqueeze(1))
            out_terms = out_terms.clamp_min(math.log(OUTLIER_PROB_FLOOR))
            ood_outlier = -cfg_loss.outlier_weight * out_terms.sum() / denom(_N_OUT_PAIRS)
            pal = pal_in_img + ood_inlier + ood_outlier
            comps.update(pal_in_img=pal_in_img, pal_ood_img=ood_inlier + ood_outlier,
                         pal_ood_inlier=ood_inlier, pal_ood_outlier=ood_outlier)
        l_in = msum(F.relu(energy - cfg_loss.m_in).square(), inlier) / denom(_N_E_IN)
        l_out = msum(F.relu(cfg_loss.m_out - energy).square(), outlier) / denom(_N_E_OUT)
        hinge = 0.5 * (l_in + l_out) if float(st[_N_E_OUT]) > 0 else l_in
        norm = float(stats[_SUMSQ_E_OUT].sqrt())
        if norm > 0:
            s_r = msum(energy.square(), outlier)
            sparse = cfg_loss.sparse_weight * (s_r + s_r.detach()) / (2.0 * norm)
        else:
            sparse = zero
        smooth = smoothness_regulariser(energy, cfg_loss.smooth_weight)
        ebm = hinge + sparse + smooth
        total = pal + cfg_loss.energy_weight * ebm
    comps.update(pal=pal, energy=ebm, energy_in=l_in, energy_out=l_out, energy_sparse=sparse,
                 energy_smooth=smooth, energy_weighted=cfg_loss.energy_weight * ebm, total=total)
    return total, {k: v.detach() for k, v in comps.items()}


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ctx: "DistContext"
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's share of the global-batch cross-entropy over the 19 inlier classes.

    Pixels labelled 254 (outlier) or 255 (void) are ignored; the abstention channel takes no part.
    The sum is divided by the number of labelled pixels of the whole global batch, so the shares
    of all ranks add up to the single-process mean (as for :func:`partial_pebal_loss`).
    """
    valid = labels < NUM_INLIER_CLASSES
    count = ctx.all_reduce_sum(valid.sum().double().reshape(1)).clamp_min(1.0)[0]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        target = torch.where(valid, labels, torch.full_like(labels, IGNORE_LABEL)).long()
        total = F.cross_entropy(logits[:, :NUM_INLIER_CLASSES].float(), target, ignore_index=IGNORE_LABEL,
                                reduction="sum") / count.to(logits.device).float()
    return total, {"total": total.detach(), "cross_entropy": total.detach()}


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
# distributed


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dev = tensor.device
            # gloo reduces CPU tensors only; nccl CUDA only.
            work = tensor.to(self.device) if self.device.type == "cuda" else tensor.cpu()
            dist.all_reduce(work)
            return work.to(dev)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(device_cfg: str) -> DistContext:
    """Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun); initialises the process group when > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device_cfg == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu") if world > 1 \
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device_cfg == "cuda" and world > 1:
        device = torch.device(f"cuda:{local_rank}")
    else:
        device = torch.device(device_cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
            ctx.initialised_here = True
    return ctx


# --------------------------------------------------------------------------------------------------
# RNG state <-> weights_only-loadable data


def capture_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --------------------------------------------------------------------------------------------------
# checkpoints of a run


def checkpoint_path(run_dir: Path, global_step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{global_step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp files of interrupted writes never match)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _CKPT_RE.match(p.name) and p.is_file())


def save_training_checkpoint(run_dir: Path, global_step: int, model: nn.Module, meta: ModelMeta,
                             training_state: dict[str, Any], keep: int = 0) -> Path:
    """Writes ``step_<global_step>.pt`` atomically (temp file + rename), then prunes all but the
    newest ``keep`` checkpoints (0 = keep all). Killed at any point, the folder holds the previous
    checkpoints intact plus, at worst, a temp file that no reader matches (removed on resume)."""
    path = checkpoint_path(run_dir, global_step)
    try:
        save_checkpoint(path, model, meta, extra={"training_state": training_state})
    except OSError as exc:  # e.g. a full disk: name the file the save was for (the temp file is gone)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def remove_interrupted_writes(run_dir: Path) -> list[Path]:
    """Deletes temp files that killed checkpoint writes left in ``<run_dir>/checkpoints``."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _CKPT_RE.match(temp_target_name(p.name) or "") and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    obj = _torch_load(path)
    if not is_pebal_checkpoint(obj) or not isinstance(obj.get("training_state"), dict):
        raise CheckpointError(f"{path}: not a resumable pebal-finetune checkpoint (no training_state)")
    return obj


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads completely (unreadable ones are skipped)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            load_training_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            continue
        return path
    return None


# --------------------------------------------------------------------------------------------------
# evaluation


def iter_validation(cfg: FinetuneConfig) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """``(rgb, anomaly label 0/1/255)`` pairs of the configured validation set."""
    v = cfg.validation
    if v.kind == "synthetic":
        s = cfg.data.synthetic
        ds = SyntheticScenes(v.num_scenes, s.height, s.width, seed=v.seed, anomalies=True)
        for i in range(len(ds)):
            yield ds[i]["image"], ds[i]["anomaly"]
        return
    from pebal_training.data.datasets import open_anomaly_dataset

    ds = open_anomaly_dataset(v.kind, v.root)
    for item in ds:
        yield item["image"], item["label"]


@torch.no_grad()
def evaluate_anomaly(model: nn.Module, pairs: Iterable[tuple[np.ndarray, np.ndarray]], device: torch.device,
                     mean: Sequence[float], std: Sequence[float], divisor: int, size: Sequence[int] | None = None,
                     smoothing: bool = True) -> dict[str, Any]:
    """Pixel-level anomaly AP / AUROC / FPR95 of the (smoothed) free energy; label 1 = anomaly,
    0 = inlier, 255 ignored. Images are resized to ``size`` or to their size rounded down to
    ``divisor`` (labels nearest)."""
    import cv2

    was_training = model.training
    model.eval()
    acc = AnomalyMetricAccumulator(ignore_label=IGNORE_LABEL)
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    for rgb, label in pairs:
        h, w = (int(size[0]), int(size[1])) if size else (max(divisor, rgb.shape[0] // divisor * divisor),
                                                           max(divisor, rgb.shape[1] // divisor * divisor))
        if (h, w) != rgb.shape[:2]:
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(np.asarray(label, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        x = torch.from_numpy(((rgb.astype(np.float32) / 255.0 - m) / s).transpose(2, 0, 1).copy())[None].to(device)
        score = anomaly_score(model(x).float(), smoothing=smoothing)[0].cpu()
        acc.update(score, torch.from_numpy(np.asarray(label).astype(np.int64)))
    model.train(was_training)
    return acc.compute()


# --------------------------------------------------------------------------------------------------
# logging helpers


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


class _RunLog:
    """``train_log.jsonl`` of rank 0, truncated to the resumed step so it matches the weights."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        lines = []
        if resume_step > 0 and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] < resume_step:
                        lines.append(line)
                except (ValueError, KeyError, TypeError):
                    continue
        atomic_write(path, lambda f: f.write("".join(f"{line}\n" for line in lines)), binary=False)
        self.file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------------------------------
# the loop


def _amp_setup(cfg: FinetuneConfig, device: torch.device) -> tuple[Callable[[], Any], Any]:
    import contextlib

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
        return _train(cfg, resume, ctx)
    finally:
        ctx.close()


def _train(cfg: FinetuneConfig, resume: str | None, ctx: DistContext) -> dict[str, Any]:
    run_dir = check_output_folder(cfg.output, RUN_FOLDER)  # before any work; every rank sees the same
    device = ctx.device
    spec = get_model_spec(cfg.model.name)
    if cfg.train.batch_size % ctx.world_size:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by the world size {ctx.world_size}")
    local_batch = cfg.train.batch_size // ctx.world_size
    dataset = build_train_dataset(cfg)  # raises DatasetError for missing folders, before any work
    torch.manual_seed(cfg.train.seed + ctx.rank)  # as the reference: torch seeded with seed (+ rank)
    random.seed(cfg.train.seed + ctx.rank)
    np.random.seed((cfg.train.seed + ctx.rank) % 2**32)

    model, meta = build_model(cfg)
    prefixes = trainable_prefixes(cfg)
    params = freeze_all_but(model, prefixes)
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
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    resolved = cfg.to_dict()
    writer = None
    run_log = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", lambda f: f.write(yaml.safe_dump(resolved, sort_keys=False)), binary=False)
        run_log = _RunLog(run_dir / "train_log.jsonl", global_step)
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step if global_step else None)
    meta.training_config = resolved

    def save(epoch: int, iteration: int) -> None:
        rng = ctx.gather_objects(capture_rng_state())
        if not ctx.is_main:
            return
        state = {
            "optimizer": optimizer.state_dict(), "scheduler": dict(schedule.state_dict(), global_step=global_step),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "iteration": iteration, "global_step": global_step, "world_size": ctx.world_size,
            "rng": rng}
        save_training_checkpoint(run_dir, global_step, model, meta, state, cfg.train.keep_checkpoints)

    progress = None
    if ctx.is_main and cfg.train.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.train.epochs * iters_per_epoch, initial=global_step, desc="pebal-finetune",
                        dynamic_ncols=True, file=sys.stderr)
    stopped_early = False
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            dataset.set_epoch(epoch)
            sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                         seed=cfg.train.seed, drop_last=True)
            sampler.set_epoch(epoch)
            first = start_iter if epoch == start_epoch else 0
            indices = list(sampler)[first * local_batch: iters_per_epoch * local_batch]
            loader = DataLoader(dataset, batch_size=local_batch, sampler=indices, drop_last=True,
                                num_workers=cfg.data.num_workers, collate_fn=_collate, worker_init_fn=seed_worker,
                                generator=loader_generator(cfg.train.seed + epoch),
                                pin_memory=device.type == "cuda")
            set_train_mode(model, cfg.train.bn_mode)
            for it, batch in enumerate(loader, start=first):
                lr = schedule.lr_for_step(global_step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = pad_to_multiple(batch["image"], batch["label"], spec.size_divisor)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with autocast():
                    logits = train_model(images)
                if cfg.loss.objective == "cross_entropy":
                    loss, comps = partial_cross_entropy(logits, labels, ctx)
                else:
                    stats = ctx.all_reduce_sum(loss_statistics(logits, labels))
                    loss, comps = partial_pebal_loss(logits, labels, stats, cfg.loss)
                if global_step == cfg.debug.nan_at_step:
                    loss = loss * float("nan")
                    comps["total"] = comps["total"] * float("nan")
                keys = sorted(comps)
                reduced = ctx.all_reduce_sum(torch.stack([comps[k].double() for k in keys]))
                values = dict(zip(keys, reduced.tolist()))
                if not math.isfinite(values["total"]):
                    raise TrainingDiverged(
                        f"non-finite loss ({values['total']}) at global step {global_step} (epoch {epoch}, "
                        f"iteration {it}); stopped before the optimiser step; the last good checkpoint is "
                        f"{(list_checkpoints(run_dir) or ['none'])[-1]}")
                optimizer.zero_grad(set_to_none=True)
                scaled = loss * ctx.world_size  # DDP averages gradients; the per-rank losses sum to the global one
                if scaler is not None:
                    scaler.scale(scaled).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    scaled.backward()
                    optimizer.step()
                if ctx.is_main:
                    record = {"step": global_step, "epoch": epoch, "iteration": it, "lr": lr, "loss": values["total"]}
                    record.update({k: v for k, v in values.items() if k != "total"})
                    run_log.write(record)
                    if writer is not None and cfg.train.log_every and global_step % cfg.train.log_every == 0:
                        writer.add_scalar("train/lr", lr, global_step)
                        for k, v in values.items():
                            writer.add_scalar(f"loss/{k}", v, global_step)
                    if writer is not None and cfg.train.image_every and global_step % cfg.train.image_every == 0:
                        _image_panels(writer, global_step, images[0], labels[0], logits[0], spec.mean, spec.std)
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{values['total']:.4f}", lr=f"{lr:.2e}", epoch=epoch)
                global_step += 1
                if it + 1 == iters_per_epoch:
                    save(epoch + 1, 0)
                elif cfg.train.checkpoint_every and global_step % cfg.train.checkpoint_every == 0:
                    save(epoch, it + 1)
                if global_step - 1 == cfg.debug.stop_at_step:
                    stopped_early = True
                    break
            if stopped_early:
                break
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.flush()
            writer.close()
        if run_log is not None:
            run_log.close()

    summary: dict[str, Any] = {"run_dir": str(run_dir), "global_step": global_step, "resumed_from": resumed_from,
                               "stopped_early": stopped_early, "world_size": ctx.world_size}
    if stopped_early:
        return summary
    metrics: dict[str, Any] = {}
    if ctx.is_main and cfg.validation.kind != "none":
        metrics = evaluate_anomaly(model, iter_validation(cfg), device, spec.mean, spec.std, spec.size_divisor,
                                   cfg.validation.size, cfg.validation.smoothing)
        metrics = {"validation": cfg.validation.kind, **metrics}
        atomic_write_json(run_dir / "metrics.json", metrics)
        meta.metrics = metrics
    if ctx.is_main:
        final = save_checkpoint(run_dir / "model_final.pt", model, meta)
        summary["final_checkpoint"] = str(final)
    summary["metrics"] = metrics
    ctx.barrier()
    return summary
