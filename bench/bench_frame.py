#!/usr/bin/env python3
"""Figure 2: full frame cost at 1024x512 on CPU with ESPNetv2, stage by stage (+ 1920x1080 input).

    python bench/bench_frame.py [--quick] [--profile] [--large 1920x1080] [--network 1024x512]

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

Figure 2b (``--large``, default 1920x1080): a camera-sized ``bgr8`` frame through the *node's own*
per-frame path with the network at 1024x512 (``--network``), stage by stage (:data:`NODE_STAGES`):
``convert`` (``ImageConverter.to_rgb``, what the node's image callback runs), ``to_tensor``,
``resize_normalize`` (the engine's ``normalize`` down to the network size + channels-last), ``forward``,
``score`` (energy + class map at the network size), ``upsample`` (both maps to the input size),
``smooth`` (7x7 Gaussian at the input size), ``to_host``, ``postprocess`` (``process_frame``) and
``encode`` (``node/outputs.build_output_messages`` with plain dict messages). Reported: each stage's
median and share, the **large-frame I/O share** = convert + to_tensor + resize_normalize + upsample +
encode over the frame (target <= 15 %), and everything-but-forward for comparison.

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

from bench.common import StageTimer, figure, interleaved, median, node_postprocess

TARGET_SHARE = 0.15
STAGES = ("decode", "to_tensor", "preprocess", "forward", "score", "mask_to_host", "obstacles", "encode")
NODE_STAGES = ("convert", "to_tensor", "resize_normalize", "forward", "score", "upsample", "smooth", "to_host",
               "postprocess", "encode")
#: The stages that scale with the input size and are not the network's work (figure 2b's target).
LARGE_IO_STAGES = ("convert", "to_tensor", "resize_normalize", "upsample", "encode")


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
        from pebal_perception.core.image_conversion import image_to_rgb, rgb_to_image_fields

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
        from pebal_perception.core.image_conversion import image_to_rgb, rgb_to_image_fields

        rgb = image_to_rgb(msg["encoding"], msg["height"], msg["width"], msg["step"], msg["is_bigendian"], msg["data"])
        res = self.engine.infer(rgb[None])[0]
        mask = res.score > self.threshold
        obstacles = extract_obstacles(mask, res.score, res.semantic)
        fields = [rgb_to_image_fields(res.semantic, "mono8"), rgb_to_image_fields(res.score, "32FC1"),
                  rgb_to_image_fields(mask.astype(np.uint8) * np.uint8(255), "mono8")]
        return {"obstacles": obstacles, "fields": fields, "score": res.score}


class NodePathPipeline:
    """The detector node's per-frame work (image callback + ``_process``), split into timed stages:
    the same calls as ``ImageConverter.to_rgb``, ``processing.infer_maps`` (``engine.score_tensors``),
    ``process_frame`` and ``build_output_messages``."""

    def __init__(self, engine, threshold: float | None = None) -> None:
        from pebal_perception.core.image_conversion import ImageConverter
        from pebal_perception.node.outputs import MessageClasses

        self.engine = engine
        self.threshold = engine.threshold if threshold is None else float(threshold)
        self.converter = ImageConverter(official="never")
        self.classes = MessageClasses(Image=dict, AnomalyResult=dict, Obstacle=dict, Point=dict)

    def run(self, msg: dict[str, Any], timer: StageTimer | None = None) -> dict[str, Any]:
        import types

        import torch
        import torch.nn.functional as F

        from pebal_perception.core import scoring
        from pebal_perception.core.preprocess import normalize, to_uint8_batch
        from pebal_perception.node.outputs import build_output_messages
        from pebal_perception.core.postprocess import process_frame

        t = timer or StageTimer()
        eng = self.engine
        image_msg = types.SimpleNamespace(**msg)
        with t("convert"):
            rgb = self.converter.to_rgb(image_msg)
        with torch.inference_mode():
            with t("to_tensor"):
                batch = to_uint8_batch(rgb[None], eng.device)
            with t("resize_normalize"):
                eng.check_image(*batch.shape[-2:])
                x = normalize(batch, eng.meta.mean, eng.meta.std, eng.input_size)
                if eng.optimized:
                    x = x.contiguous(memory_format=torch.channels_last)
            with t("forward"):
                logits = eng.model(x)
            with t("score"):
                energy, semantic = scoring.energy_and_prediction(logits, prediction_dtype=torch.uint8)
            with t("upsample"):
                out_hw = tuple(batch.shape[-2:])
                if tuple(energy.shape[-2:]) != out_hw:
                    energy = F.interpolate(energy.unsqueeze(1), size=out_hw, mode="bilinear",
                                           align_corners=False).squeeze(1)
                    semantic = F.interpolate(semantic.unsqueeze(1), size=out_hw, mode="nearest-exact").squeeze(1)
            with t("smooth"):
                if eng.smoothing:
                    energy = scoring.gaussian_smooth(energy, eng.smoothing_kernel, eng.smoothing_sigma)
            with t("to_host"):
                sem, score = semantic[0].cpu().numpy(), energy[0].float().cpu().numpy()
        with t("postprocess"):
            frame = process_frame(sem, score, node_postprocess(self.threshold))
        with t("encode"):
            messages = build_output_messages(rgb, sem, score, frame, {"stamp": 0}, self.classes, model_id="bench",
                                             threshold=self.threshold)
        return {"semantic": sem, "score": score, "frame": frame, "messages": messages}

    def run_node(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The same frame through the node's own functions (``infer_maps``), for the cross-check."""
        import types

        from pebal_perception.node.outputs import build_output_messages
        from pebal_perception.core.engine import infer_maps
        from pebal_perception.core.postprocess import process_frame

        rgb = self.converter.to_rgb(types.SimpleNamespace(**msg))
        sem, score, _ = infer_maps(self.engine, rgb)
        frame = process_frame(sem, score, node_postprocess(self.threshold))
        return build_output_messages(rgb, sem, score, frame, {"stamp": 0}, self.classes, model_id="bench",
                                     threshold=self.threshold)


def _calibrated_pipeline(pipeline: type, width: int, height: int, network_hw: tuple[int, int], seed: int):
    """``pipeline`` around ESPNetv2 (random weights, randomised BN statistics) at ``network_hw``, with a
    ``width x height`` bgr8 message and a threshold at the first frame's 99th score percentile."""
    import numpy as np
    import torch

    from bench.bench_forward import randomise_batchnorm
    from pebal_perception.core.checkpoint import ModelMeta
    from pebal_perception.core.engine import InferenceEngine
    from pebal_perception.core.models import create_model

    torch.manual_seed(seed)
    model = randomise_batchnorm(create_model("espnetv2"), seed).eval()
    meta = ModelMeta.for_architecture("espnetv2")
    engine = InferenceEngine(model, meta, device="cpu", input_size=network_hw)
    msg = make_message(width, height, seed)
    pipe = pipeline(engine)
    first = pipe.run(msg)
    pipe.threshold = float(np.percentile(first["score"], 99.0))
    return pipe, msg


def build(width: int = 1024, height: int = 512, seed: int = 0):
    return _calibrated_pipeline(FramePipeline, width, height, (height, width), seed)


def build_node_path(width: int = 1920, height: int = 1080, net_width: int = 1024, net_height: int = 512,
                    seed: int = 0):
    """Figure 2b's pipeline: ESPNetv2 (random weights) at ``net`` size fed ``width x height`` bgr8 frames."""
    return _calibrated_pipeline(NodePathPipeline, width, height, (net_height, net_width), seed)


def run_node_path(quick: bool = False, width: int = 1920, height: int = 1080, net_width: int = 1024,
                  net_height: int = 512, warmup: int = 1, repeats: int | None = None,
                  verbose: bool = True) -> list[dict[str, Any]]:
    """Figure 2b: the node's per-frame path on a large frame, stage by stage (module docstring)."""
    repeats = repeats if repeats is not None else (3 if quick else 11)
    pipe, msg = build_node_path(width, height, net_width, net_height)
    for _ in range(warmup):
        pipe.run(msg)
        pipe.run_node(msg)
    stage_samples: dict[str, list[float]] = {s: [] for s in NODE_STAGES}
    totals: list[float] = []

    def staged():
        timer = StageTimer()
        pipe.run(msg, timer)
        for s in NODE_STAGES:
            stage_samples[s].append(timer.times.get(s, 0.0))
        totals.append(sum(timer.times.values()))

    samples = interleaved({"staged": staged, "node": lambda: pipe.run_node(msg)}, repeats=repeats, warmup=0)
    stage_med = {s: median(v) for s, v in stage_samples.items()}
    total = median(totals)
    io_share = median([sum(stage_samples[s][i] for s in LARGE_IO_STAGES) / totals[i]
                       for i in range(len(totals)) if totals[i] > 0])
    non_forward = median([1.0 - stage_samples["forward"][i] / totals[i] for i in range(len(totals)) if totals[i] > 0])
    node_path = median(samples["node"])
    name = f"frame_node_path_espnetv2_{width}x{height}_to_{net_width}x{net_height}"
    if verbose:
        print(f"frame (node path): bgr8 {width}x{height} -> ESPNetv2 at {net_width}x{net_height} CPU -> outputs at "
              f"{width}x{height}; median of {repeats}", flush=True)
        for s in NODE_STAGES:
            mark = " *" if s in LARGE_IO_STAGES else ""
            print(f"  {s:16s} {stage_med[s] * 1e3:8.2f} ms  ({stage_med[s] / total:6.1%}){mark}", flush=True)
        print(f"  total (staged) {total * 1e3:.1f} ms; node functions (infer_maps ...) {node_path * 1e3:.1f} ms; "
              f"* large-frame I/O share {io_share:.1%} (target <= {TARGET_SHARE:.0%}); "
              f"everything but forward {non_forward:.1%}", flush=True)
    return [
        figure(f"{name}_total", total, "s", None, stages_ms={s: v * 1e3 for s, v in stage_med.items()},
               node_functions_s=node_path, repeats=repeats, non_forward_share=non_forward,
               note=f"forward {stage_med['forward'] * 1e3:.0f} ms; everything but forward {non_forward:.1%}"),
        {"name": f"{name}_io_share", "value": io_share * 100.0, "unit": "%", "baseline": None, "ratio": None,
         "target": TARGET_SHARE * 100.0, "target_text": f"<= {TARGET_SHARE:.0%} of the frame",
         "meets_target": bool(io_share <= TARGET_SHARE), "io_stages": list(LARGE_IO_STAGES),
         "stages_share": {s: stage_med[s] / total for s in NODE_STAGES}},
    ]


def profile_post(pipe: FramePipeline, msg: dict[str, Any], rows: int = 12) -> str:
    """torch.profiler table of one frame (CPU ops, sorted by self time), for the report."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pipe.run(msg)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(quick: bool = False, width: int = 1024, height: int = 512, warmup: int = 1, repeats: int | None = None,
        profile: bool = False, verbose: bool = True, large: tuple[int, int] | None = (1920, 1080),
        network: tuple[int, int] = (1024, 512)) -> list[dict[str, Any]]:
    """Figure 2 at ``width x height``, then (``large`` given) figure 2b: ``large`` (w, h) frames through the
    node's path with the network at ``network`` (w, h)."""
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
    if large is not None:
        figs += run_node_path(quick, large[0], large[1], network[0], network[1], warmup=warmup, repeats=repeats,
                              verbose=verbose)
    return figs


def main(argv: list[str] | None = None) -> int:
    from bench.common import format_figure, size_wh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one frame")
    parser.add_argument("--large", type=size_wh, default=(1920, 1080), help="figure 2b's input size WxH")
    parser.add_argument("--network", type=size_wh, default=(1024, 512), help="figure 2b's network size WxH")
    parser.add_argument("--only-large", action="store_true", help="figure 2b only")
    args = parser.parse_args(argv)
    figs = (run_node_path(args.quick, *args.large, *args.network) if args.only_large
            else run(args.quick, profile=args.profile, large=args.large, network=args.network))
    for fig in figs:
        print(format_figure(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
