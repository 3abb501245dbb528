#!/usr/bin/env python3
"""Figure 11: what each quality lever of issue 26 costs per frame on the node's path, as ratios in one run.

    python bench/bench_levers.py [--quick] [--backends torch,openvino] [--frames 12]

Real highway frames (the 38-frame clip of ``../shared/assets/driving_video``, 1280x720; a synthetic street
scene when the assets are absent) go through :meth:`pebal_perception.core.detector.Detector.step` (inference,
post-processing, tracking: what the node runs per frame) with the embedded default model at its network size
(1024x512), for each configuration and runtime backend, interleaved round by round so that a noisy machine
loads every configuration alike:

* ``energy``: PEBAL's free energy (the faithful score; the product before issue 26);
* ``road``: the road-relative score (``anomaly_score: road_relative``, core/road_score.py);
* ``road+adapt``: the same with test-time BN adaptation (``adaptation: true``; torch only: a compiled
  backend runs a fixed graph);
* ``energy+band``: the road band 0.40-0.65 run again at twice the resolution (core/road_band.py).

Reported per backend: the median wall and CPU (process) time per frame and each configuration's ratio to
``energy`` on the same backend (the issue's budget: at most 1.3x). Results: ``bench/results/levers.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLIP = REPO.parent / "shared" / "assets" / "driving_video" / "udacity_vehicle_detection_test_video.mp4"
CONFIGS = ("energy", "road", "road+adapt", "energy+band")


def frames(count: int) -> tuple[list[np.ndarray], str]:
    import cv2

    if CLIP.is_file():
        from pebal_perception.core.frame_sources import open_source

        out = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for _, bgr in open_source(CLIP).frames()][:count]
        return out, f"{CLIP.name} ({len(out)} frames)"
    from pebal_training.data.synthetic import SceneConfig, generate_scene

    scene = generate_scene(0, SceneConfig(height=720, width=1280))
    return [scene.image] * count, "synthetic street scene (assets absent)"


def detector(config: str, backend: str):
    from pebal_perception.core.detector import Detector, load_engine, default_values
    from pebal_perception.core.road_band import RoadBand

    values = {**default_values(), "device": "cpu", "backend": backend, "threshold": -5.0,
              "anomaly_score": "energy" if config.startswith("energy") else "road_relative",
              "adaptation": config.endswith("adapt")}
    engine = load_engine(values)
    if config.endswith("band"):
        from pebal_perception.core.road_band import BandRefiner

        engine.band = BandRefiner(RoadBand())
    return Detector.for_engine(engine, values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_levers", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 frames, 2 rounds (a smoke run, not a result)")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", default="torch,auto", help="comma-separated runtime backends")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "levers.json")
    args = p.parse_args(argv)
    count, rounds = (3, 2) if args.quick else (args.frames, args.rounds)
    rgbs, source = frames(count)
    results: dict[str, dict] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        dets = {c: detector(c, backend) for c in CONFIGS if not (c.endswith("adapt") and backend != "torch")}
        chosen = {c: d.engine.backend for c, d in dets.items()}
        for d in dets.values():  # warm-up: graphs built, band engines made, caches filled
            d.step(rgbs[0], 0, "bench", track=True)
        wall = {c: [] for c in dets}
        cpu = {c: [] for c in dets}
        for r in range(rounds):
            for i, rgb in enumerate(rgbs):
                for c, d in dets.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    d.step(rgb, (r * len(rgbs) + i + 1) * 50_000_000, "bench", track=True)
                    wall[c].append(time.perf_counter() - t0)
                    cpu[c].append(time.process_time() - c0)
        base_wall, base_cpu = statistics.median(wall["energy"]), statistics.median(cpu["energy"])
        results[backend] = {c: {"runtime": chosen[c], "wall_ms": 1000 * statistics.median(wall[c]),
                                "cpu_ms": 1000 * statistics.median(cpu[c]),
                                "wall_ratio": statistics.median(wall[c]) / base_wall,
                                "cpu_ratio": statistics.median(cpu[c]) / base_cpu} for c in dets}
    import torch

    from pebal_perception.core.backends import cpu_model
    from pebal_perception.core.io import atomic_write_json

    record = {"source": source, "frames": count, "rounds": rounds, "cpu": cpu_model(),
              "threads": torch.get_num_threads(), "quick": bool(args.quick), "results": results,
              "date": time.strftime("%Y-%m-%d")}
    if not args.quick:
        atomic_write_json(args.output, record)
    print(f"bench_levers: {source}, {cpu_model()}, {torch.get_num_threads()} threads")
    print("| backend (runtime) | configuration | wall ms | CPU ms | wall / energy | CPU / energy |")
    print("|---|---|---|---|---|---|")
    for backend, per in results.items():
        for c, v in per.items():
            print(f"| {backend} ({v['runtime']}) | {c} | {v['wall_ms']:.0f} | {v['cpu_ms']:.0f} | "
                  f"{v['wall_ratio']:.2f} | {v['cpu_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
