#!/usr/bin/env python3
"""Figure 5: fine-tuning step throughput vs data-loader throughput (ESPNetv2, CPU).

    python bench/bench_training.py [--quick] [--workers 2]

* **step**: one PEBAL fine-tuning step on a fixed batch of 2 crops of 512x256 (width x height):
  every parameter frozen except ``get_model_spec("espnetv2").head_prefixes`` (BatchNorms of frozen
  layers in eval mode, as the trainer's ``bn_mode='frozen'``), forward, ``pebal_loss``, backward, Adam
  step. Reported in images/s (median of the repeats after a warm-up step).
* **loader**: ``DataLoader(CityscapesCocoMix(inliers, outliers, TrainTransform(crop 512x256)),
  batch_size=2, num_workers=2)``, sampling at random with replacement (any number of batches).
  Inliers are synthetic street scenes (``generate_scene``, 1024x512, half of the samples get a pasted
  outlier) rendered once and held as PNG bytes that ``__getitem__`` decodes, so
  each sample pays an image decode as with files on disk; outliers are random textured blobs with
  masks (stand-ins for COCO objects). Reported in images/s in steady state (after the first batch;
  the worker start-up time is stored separately).

The figure is loader rate / step rate: >= 1.5x means the loader keeps the step fed with headroom.
The two are measured one after the other (on a CPU machine they share the same cores in training).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, median, skipped

TARGET_RATIO = 1.5
MODEL = "espnetv2"


class PngScenes:
    """Inlier dataset: ``dict(image, label, name)`` decoded from in-memory PNGs of synthetic scenes."""

    def __init__(self, num_scenes: int, height: int = 512, width: int = 1024, seed: int = 0) -> None:
        import cv2

        from pebal_training.data.synthetic import SceneConfig, generate_scene

        cfg = SceneConfig(height=height, width=width, anomaly_count_range=(0, 0))
        self.items = []
        for i in range(num_scenes):
            scene = generate_scene(seed * 10_000 + i, cfg)
            ok1, img = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
            ok2, lab = cv2.imencode(".png", scene.semantic)
            if not (ok1 and ok2):
                raise RuntimeError("PNG encoding failed")
            self.items.append((img.tobytes(), lab.tobytes()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import cv2
        import numpy as np

        img_b, lab_b = self.items[index]
        bgr = cv2.imdecode(np.frombuffer(img_b, np.uint8), cv2.IMREAD_COLOR)
        label = cv2.imdecode(np.frombuffer(lab_b, np.uint8), cv2.IMREAD_UNCHANGED)
        return {"image": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "label": label, "name": f"scene_{index}"}


class BlobOutliers:
    """Outlier source: ``(rgb uint8, mask bool)`` random textured polygons, 32-160 px, deterministic."""

    def __init__(self, num_objects: int, seed: int = 0) -> None:
        self.num_objects = num_objects
        self.seed = seed

    def __len__(self) -> int:
        return self.num_objects

    def __getitem__(self, index: int):
        import cv2
        import numpy as np

        rng = np.random.default_rng((7, self.seed, index))
        side = int(rng.integers(32, 161))
        n = int(rng.integers(5, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.2, 0.5, n) * side
        pts = np.stack([side / 2 + rad * np.cos(ang), side / 2 + rad * np.sin(ang)], 1).astype(np.int32)
        mask = np.zeros((side, side), np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        rgb = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        return rgb, mask.astype(bool)


def _collate(batch):
    import torch

    return {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch])}


def build_dataset(num_scenes: int, crop_hw: tuple[int, int], seed: int = 0, scene_hw: tuple[int, int] = (512, 1024)):
    from pebal_perception.core.models import get_model_spec
    from pebal_training.data.outlier_exposure import CityscapesCocoMix
    from pebal_training.data.transforms import TrainTransform

    spec = get_model_spec(MODEL)
    transform = TrainTransform(crop_size=crop_hw, mean=spec.mean, std=spec.std)
    # outlier_fraction 1.0: as many pasted samples as plain ones, so the paste path is well exercised.
    return CityscapesCocoMix(PngScenes(num_scenes, *scene_hw, seed=seed), BlobOutliers(64, seed), outlier_fraction=1.0,
                             transform=transform, seed=seed)


def measure_loader(dataset, batch_size: int, workers: int, batches: int, seed: int = 0) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from pebal_training.data.outlier_exposure import loader_generator, seed_worker

    # Sampling with replacement gives any number of batches from a small dataset.
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch_size * batches,
                                             generator=loader_generator(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=_collate,
                        worker_init_fn=seed_worker if workers else None, drop_last=True)
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["image"].shape[0]
    steady = time.perf_counter() - t1
    return {"first_batch_s": t_first, "images": n, "seconds": steady, "rate": n / steady if steady > 0 else 0.0,
            "example": first}


def build_step(batch: dict[str, Any], lr: float = 1e-4, seed: int = 0):
    import torch
    from torch import nn

    from bench.bench_forward import randomise_batchnorm
    from pebal_perception.core.models import create_model, get_model_spec
    from pebal_training.losses import pebal_loss

    torch.manual_seed(seed)
    model = randomise_batchnorm(create_model(MODEL), seed)
    prefixes = tuple(get_model_spec(MODEL).head_prefixes)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            trainable.append(p)
    if not trainable:
        raise RuntimeError(f"no parameter starts with {prefixes}")
    model.train()
    for m in model.modules():  # frozen BatchNorms keep their statistics (trainer's bn_mode='frozen')
        frozen = not any(p.requires_grad for p in m.parameters(False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and frozen:  # noqa: SLF001 - torch's BN base class
            m.eval()
    opt = torch.optim.Adam(trainable, lr=lr)
    images, labels = batch["image"], batch["label"]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss, _ = pebal_loss(model(images), labels)
        loss.backward()
        opt.step()
        return float(loss.detach())

    n_train = sum(p.numel() for p in trainable)
    return step, n_train


def run(quick: bool = False, workers: int = 2, batch_size: int = 2, crop_wh: tuple[int, int] = (512, 256),
        num_scenes: int | None = None, batches: int | None = None, step_repeats: int | None = None,
        scene_wh: tuple[int, int] = (1024, 512), verbose: bool = True) -> list[dict[str, Any]]:
    import math

    name = f"train_espnetv2_{crop_wh[0]}x{crop_wh[1]}_b{batch_size}_loader_vs_step"
    try:
        from pebal_training.data.outlier_exposure import CityscapesCocoMix  # noqa: F401
        from pebal_training.data.synthetic import generate_scene  # noqa: F401
        from pebal_training.data.transforms import TrainTransform  # noqa: F401
        from pebal_training.losses import pebal_loss  # noqa: F401
    except ImportError as exc:
        return [skipped(name, f"training modules not importable: {exc}")]
    num_scenes = num_scenes if num_scenes is not None else (4 if quick else 12)
    batches = batches if batches is not None else (8 if quick else 40)
    step_repeats = step_repeats if step_repeats is not None else (2 if quick else 10)
    crop_hw = (crop_wh[1], crop_wh[0])

    t0 = time.perf_counter()
    dataset = build_dataset(num_scenes, crop_hw, scene_hw=(scene_wh[1], scene_wh[0]))
    build_s = time.perf_counter() - t0
    lo = measure_loader(dataset, batch_size, workers, batches)
    step, n_train = build_step(lo.pop("example"))
    losses = [step()]  # warm-up (allocations, Adam state)
    times = []
    for _ in range(step_repeats):
        t1 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t1)
    if not all(math.isfinite(v) for v in losses):
        raise AssertionError(f"non-finite PEBAL loss during the step benchmark: {losses}")
    t_step = median(times)
    step_rate = batch_size / t_step
    if verbose:
        print(f"training: ESPNetv2 head-only ({n_train} trainable parameters), crops {crop_wh[0]}x{crop_wh[1]}, "
              f"batch {batch_size}; {num_scenes} synthetic scenes rendered in {build_s:.1f} s", flush=True)
        print(f"  step: median {t_step * 1e3:.0f} ms over {step_repeats} -> {step_rate:.2f} images/s "
              f"(losses {losses[0]:.3f} -> {losses[-1]:.3f})", flush=True)
        print(f"  loader ({workers} workers): first batch {lo['first_batch_s']:.2f} s, then {lo['images']} images "
              f"in {lo['seconds']:.2f} s -> {lo['rate']:.2f} images/s", flush=True)
    return [
        figure(name, lo["rate"], "images/s", step_rate, higher_is_better=True, target=TARGET_RATIO,
               baseline_label="step rate", step_images_per_s=step_rate, step_s=t_step, step_samples=times,
               loader_first_batch_s=lo["first_batch_s"], loader_images=lo["images"], workers=workers,
               batch_size=batch_size, trainable_parameters=n_train,
               note=f"loader {lo['rate']:.1f} img/s ({workers} workers) vs step {step_rate:.2f} img/s"),
        figure(f"train_espnetv2_{crop_wh[0]}x{crop_wh[1]}_b{batch_size}_step", step_rate, "images/s", None,
               step_s=t_step),
    ]


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    for fig in run(args.quick, workers=args.workers):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
