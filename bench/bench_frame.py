#!/usr/bin/env python3
"""Figure 2: full frame cost at 1024x512 on CPU with ESPNetv2, stage by stage.

    python bench/bench_frame.py [--quick] [--profile]

One camera frame as the node receives it (``bgr8`` message bytes of a synthetic street scene) goes
through every stage the detector runs, each timed on its own:

1. ``decode``: :func:`image_to_rgb` (bgr8 bytes -> fresh RGB array);
2. ``to_tensor``: :func:`to_uint8_batch` (host array -> uint8 N x 3 x H x W on the device);
3. ``preprocess``: the engine's normalisation (+ resize when the sizes differ) and channels-last copy;
4. ``forward``: the engine's model (BN folded, channels-last, inference mode);
5. ``score``: free energy + argmax + (resize) + 7x7 Gaussian smoothing, as ``score_tensors``;
6. ``mask_to_host``: threshold + copies of semantic/score/mask to numpy;
7. ``obstacles``: :func:`extract_obstacles` (connected components + per-blob statistics);
8. ``encode``: :func:`rgb_to_image_fields` for the mono8 semantic map, the 32FC1 energy and the mono8
   0/255 obstacle mask.

Reported: the median frame time, each stage's median and the **pre/post-processing share** =
everything but ``forward``, over the total (target <= 15 %). As a cross-check the same frame also
runs through the engine's public path (``engine.infer`` + obstacles + encode), interleaved.

Weights are random (randomised BN statistics), so the score map means nothing; the obstacle threshold
is set to the frame's 99th score percentile, which gives a realistic-sized mask (1 % of the pixels)
and exercises the obstacle extraction with several blobs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import StageTimer, figure, interleaved, median

TARGET_SHARE = 0.15
STAGES = ("decode", "to_tensor", "preprocess", "forward", "score", "mask_to_host", "obstacles", "encode")


def make_message(width: int, height: int, seed: int = 0) -> dict[str, Any]:
    """The fields of a bgr8 ``sensor_msgs/Image`` holding a synthetic scene (random noise if unavailable)."""
    import numpy as np

    try:
        from pebal_training.data.synthetic import SceneConfig, generate_scene

        rgb = generate_scene(seed, SceneConfig(height=height, width=width)).image
    except Exception:  # noqa: BLE001 - the scene is only a realistic payload
        rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return {"encoding": "bgr8", "height": height, "width": width, "step": width * 3, "is_bigendian": 0,
            "data": bgr.tobytes()}


class FramePipeline:
    """The detector's per-frame work, split into timed stages (same operations as the engine)."""

    def __init__(self, engine, threshold: float | None = None) -> None:
        self.engine = engine
        self.threshold = engine.threshold if threshold is None else float(threshold)

    def run(self, msg: dict[str, Any], timer: StageTimer | None = None) -> dict[str, Any]:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from pebal_perception.core import scoring
        from pebal_perception.core.obstacles import extract_obstacles
        from pebal_perception.core.preprocess import normalize, to_uint8_batch
        from pebal_perception.image_conversion import image_to_rgb, rgb_to_image_fields

        t = timer or StageTimer()
        eng = self.engine
        with t("decode"):
            rgb = image_to_rgb(msg["encoding"], msg["height"], msg["width"], msg["step"], msg["is_bigendian"],
                               msg["data"])
        with torch.inference_mode():
            with t("to_tensor"):
                batch = to_uint8_batch(rgb[None], eng.device, pin_memory=True)
            with t("preprocess"):
                x = normalize(batch, eng.meta.mean, eng.meta.std, eng.input_size)
                if eng.optimized:
                    x = x.contiguous(memory_format=torch.channels_last)
            with t("forward"):
                logits = eng.model(x)
            with t("score"):
                out_hw = tuple(batch.shape[-2:])
                energy, semantic = scoring.energy_and_prediction(logits, prediction_dtype=torch.uint8)
                if tuple(energy.shape[-2:]) != out_hw:
                    energy = F.interpolate(energy.unsqueeze(1), size=out_hw, mode="bilinear",
                                           align_corners=False).squeeze(1)
                    semantic = F.interpolate(semantic.unsqueeze(1), size=out_hw, mode="nearest-exact").squeeze(1)
                if eng.smoothing:
                    energy = scoring.gaussian_smooth(energy, eng.smoothing_kernel, eng.smoothing_sigma)
            with t("mask_to_host"):
                mask_t = scoring.obstacle_mask(energy, self.threshold)
                sem, score, mask = semantic[0].cpu().numpy(), energy[0].cpu().numpy(), mask_t[0].cpu().numpy()
        with t("obstacles"):
            obstacles = extract_obstacles(mask, score, sem)
        with t("encode"):
            fields = [rgb_to_image_fields(sem, "mono8"), rgb_to_image_fields(score, "32FC1"),
                      rgb_to_image_fields(mask.astype(np.uint8) * np.uint8(255), "mono8")]
        return {"semantic": sem, "score": score, "mask": mask, "obstacles": obstacles, "fields": fields}

    def run_public(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The same frame through the engine's public API (``infer``), for the cross-check."""
        import numpy as np

        from pebal_perception.core.obstacles import extract_obstacles
        from pebal_perception.image_conversion import image_to_rgb, rgb_to_image_fields

        rgb = image_to_rgb(msg["encoding"], msg["height"], msg["width"], msg["step"], msg["is_bigendian"], msg["data"])
        res = self.engine.infer(rgb[None])[0]
        mask = res.score > self.threshold
        obstacles = extract_obstacles(mask, res.score, res.semantic)
        fields = [rgb_to_image_fields(res.semantic, "mono8"), rgb_to_image_fields(res.score, "32FC1"),
                  rgb_to_image_fields(mask.astype(np.uint8) * np.uint8(255), "mono8")]
        return {"obstacles": obstacles, "fields": fields, "score": res.score}


def build(width: int = 1024, height: int = 512, seed: int = 0):
    import numpy as np

    from bench.bench_forward import randomise_batchnorm
    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.models import create_model

    import torch

    torch.manual_seed(seed)
    model = randomise_batchnorm(create_model("espnetv2"), seed).eval()
    meta = ModelMeta.for_architecture("espnetv2")
    engine = InferenceEngine(model, meta, device="cpu", input_size=(height, width))
    msg = make_message(width, height, seed)
    pipe = FramePipeline(engine)
    first = pipe.run(msg)
    pipe.threshold = float(np.percentile(first["score"], 99.0))
    return pipe, msg


def profile_post(pipe: FramePipeline, msg: dict[str, Any], rows: int = 12) -> str:
    """torch.profiler table of one frame (CPU ops, sorted by self time), for the report."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pipe.run(msg)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(quick: bool = False, width: int = 1024, height: int = 512, warmup: int = 1, repeats: int | None = None,
        profile: bool = False, verbose: bool = True) -> list[dict[str, Any]]:
    repeats = repeats if repeats is not None else (3 if quick else 15)
    pipe, msg = build(width, height)
    for _ in range(warmup):
        pipe.run(msg)
        pipe.run_public(msg)
    stage_samples: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: list[float] = []
    info: dict[str, Any] = {}

    def staged():
        timer = StageTimer()
        out = pipe.run(msg, timer)
        for s in STAGES:
            stage_samples[s].append(timer.times.get(s, 0.0))
        totals.append(sum(timer.times.values()))
        info["blobs"] = len(out["obstacles"])

    samples = interleaved({"staged": staged, "public": lambda: pipe.run_public(msg)}, repeats=repeats, warmup=0)
    stage_med = {s: median(v) for s, v in stage_samples.items()}
    # Share per frame (then the median), so that one noisy forward does not skew a stage's share.
    shares = [1.0 - f / t for f, t in zip(stage_samples["forward"], totals) if t > 0]
    share = median(shares)
    total = median(totals)
    public = median(samples["public"])
    fig_name = f"frame_espnetv2_{width}x{height}"
    if verbose:
        print(f"frame: ESPNetv2 {width}x{height} CPU, bgr8 message -> outputs; {info.get('blobs', 0)} obstacle blobs; "
              f"median of {repeats}", flush=True)
        for s in STAGES:
            print(f"  {s:13s} {stage_med[s] * 1e3:8.2f} ms  ({stage_med[s] / total:6.1%})", flush=True)
        print(f"  total (staged) {total * 1e3:.1f} ms; engine.infer path + obstacles + encode {public * 1e3:.1f} ms; "
              f"pre/post share {share:.1%} (target <= {TARGET_SHARE:.0%})", flush=True)
    pre_post = {s: stage_med[s] for s in STAGES if s != "forward"}
    dominant = max(pre_post, key=pre_post.get)
    figs = [
        figure(f"{fig_name}_total", total, "s", None, stages_ms={s: v * 1e3 for s, v in stage_med.items()},
               engine_infer_path_s=public, blobs=info.get("blobs", 0), repeats=repeats,
               note=f"forward {stage_med['forward'] * 1e3:.0f} ms; largest pre/post stage: {dominant} "
                    f"{pre_post[dominant] * 1e3:.1f} ms"),
        {"name": f"{fig_name}_prepost_share", "value": share * 100.0, "unit": "%", "baseline": None,
         "ratio": None, "target": TARGET_SHARE * 100.0, "target_text": f"<= {TARGET_SHARE:.0%} of the frame",
         "meets_target": bool(share <= TARGET_SHARE), "dominant_stage": dominant,
         "stages_share": {s: stage_med[s] / total for s in STAGES}},
    ]
    if profile:
        table = profile_post(pipe, msg)
        figs[0]["profile"] = table
        if verbose:
            print(table)
    return figs


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one frame")
    args = parser.parse_args(argv)
    for fig in run(args.quick, profile=args.profile):
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
