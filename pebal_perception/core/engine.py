"""The inference engine: images in, semantic map + anomaly score + obstacle mask out.

ROS-free and batch-oriented. Everything from the uint8 image to the final maps runs on the model's
device; the only host synchronisation per batch is the final copy of the results.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import backends, scoring
from .backends import build_runner, choose_fastest, resolve_backend, weights_digest
from .checkpoint import ModelMeta, load_checkpoint
from .constants import NUM_INLIER_CLASSES
from .limits import check_threshold
from .models import get_model_spec
from .optimize import fold_batchnorm
from .preprocess import check_image_size, check_resize, network_size, normalize, resize_batch, to_uint8_batch
from .road_band import BandRefiner, RoadBand
from .road_score import FeatureTap, road_score_module

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. An explicit 'cuda' without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return dev


@dataclass
class FrameResult:
    """Results for one image, at the image's own resolution."""

    semantic: np.ndarray  # H x W uint8 Cityscapes trainIds
    score: np.ndarray  # H x W float32 anomaly score (smoothed free energy), higher = more anomalous
    obstacle: np.ndarray  # H x W bool, score > threshold
    threshold: float


class InferenceEngine:
    """Runs a PEBAL-scored segmentation model.

    Args:
        model: a registry model (N x 3 x h x w -> N x 20 x h x w logits).
        meta: its metadata (normalisation, default input size, calibrated threshold).
        device: 'auto', 'cpu', 'cuda', 'cuda:1', ...
        precision: 'fp32', or 'fp16'/'bf16' (autocast, CUDA only; the energy is always float32).
        input_size: (height, width) the network runs at; None = the checkpoint's, 'native' = each
            image's own size rounded to the architecture's size divisor. Network sizes and images are
            bounded (``core/preprocess.py``: at most 4096 per network side, images up to 64 M pixels
            within 1:8..8:1); :meth:`check_image` raises ``ImageSizeError`` before anything is allocated.
        threshold: obstacle threshold on the score; None = the checkpoint's calibrated one (either must
            pass ``core.limits.check_threshold``: finite, |t| <= 1e6).
        smoothing: apply PEBAL's 7x7, sigma-1 Gaussian to the energy (the reference behaviour).
        optimize: fold BatchNorm into convolutions and run channels-last (outputs equal the plain
            model's to float rounding; see ``core/optimize.py`` and test_engine.py).
        backend: the runtime of :meth:`score_frame` (``infer_maps``, :meth:`infer`), one of
            ``backends.BACKENDS`` (``core/backends.py``'s registry; ``backends.help_text()`` says what each
            is): ``torch`` (this class's own path, the reference; the default here, as training and
            evaluation need it), a compiled runtime of the device's kind, or ``auto`` (the fastest installed
            for the device, measured on the CPU once per machine; elsewhere the first registered runtime
            installed, falling back to torch when its graph cannot be built; the default of the node and
            the CLIs; ``backend`` is then the one it chose, ``backend_timings`` what it measured). The
            compiled graph is built at construction for a fixed network size (native size: on first use
            per size).
            :meth:`score_tensors` is always torch.
    """

    def __init__(self, model: nn.Module, meta: ModelMeta, device: str | torch.device = "auto",
                 precision: str = "fp32", input_size: Sequence[int] | str | None = None,
                 threshold: float | None = None, smoothing: bool = True,
                 smoothing_kernel: int = scoring.DEFAULT_KERNEL_SIZE, smoothing_sigma: float = scoring.DEFAULT_SIGMA,
                 optimize: bool = True, backend: str = "torch", score: dict[str, Any] | None = None,
                 band: RoadBand | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            precision = "fp32"  # half precision convolutions are slow or missing on CPU
        self.precision = precision
        self.meta = meta
        self.spec = get_model_spec(meta.architecture)
        model = model.eval()
        # the pre-fold model, as given (not moved: core/adaptation.py copies it onto the device when needed)
        self.source_model = model
        self.adapter: Any = None  # a core/adaptation.BatchNormAdapter: forward_logits runs it instead of model
        self.optimized = optimize
        if optimize:
            model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        self.model = model.to(self.device)
        self._set_score(meta.score if score is None else score)
        self.band = None if band is None else BandRefiner(band)  # core/road_band.py: a finer look at the far road
        if input_size is None:
            input_size = meta.input_size
        self.native_size = input_size == "native"
        self.input_size = None if self.native_size else network_size((0, 0), input_size, self.spec.size_divisor)
        self.threshold = check_threshold(meta.effective_threshold if threshold is None else threshold)
        self.smoothing = smoothing
        self.smoothing_kernel = smoothing_kernel
        self.smoothing_sigma = smoothing_sigma
        scoring.gaussian_kernel_1d(smoothing_kernel, smoothing_sigma)  # validate now, not per frame
        self.backend = resolve_backend(backend, self.device)  # BackendError when it cannot run here
        self._auto = (backend or "auto").strip().lower() == "auto"
        self._runners: dict[tuple[tuple[int, int], str], Any] = {}  # (network size, backend) -> compiled graph
        self.backend_timings: dict[str, float] | None = None  # what backend auto measured (ms per frame)
        self._digest: str | None = None  # backends.weights_digest of the model, once a graph needs it
        if self.input_size is not None:  # built (and auto measured) now: a problem shows at start-up, once
            if self.backend == "auto":
                self._choose_backend(tuple(self.input_size))
            elif self.backend != "torch":
                self._build_or_fall_back(tuple(self.input_size))

    @property
    def running_model(self) -> nn.Module:
        """The model :meth:`forward_logits` runs: the BN-folded one, or the adapter's while one is attached."""
        return self.model if self.adapter is None else self.adapter.model

    def _set_score(self, score: dict[str, Any]) -> None:
        """The anomaly score the engine computes: ``{}`` = PEBAL's free energy, else the road-relative score
        of ``core/road_score.py`` (its config as a dict); ValueError when the architecture has no road
        features."""
        if score and dict(score) == {"kind": self.meta.score.get("kind")}:
            score = self.meta.score  # the kind alone: the checkpoint's settings for it
        self._road = road_score_module(score, self.spec.road_features, self.spec.name)
        self.score = {} if self._road is None else self._road.config.to_dict()
        if self._road is not None:
            self._road = self._road.to(self.device)

    def _build_or_fall_back(self, size: tuple[int, int]) -> None:
        """Builds the backend's graph for ``size``; when ``auto`` chose it unmeasured (a CUDA runtime) and its
        graph cannot be built, warns and runs torch instead (an explicit backend raises the BackendError)."""
        try:
            self.runner(size)
        except ValueError as exc:
            if not self._auto:
                raise
            import logging

            logging.getLogger("pebal.backends").warning("backend auto: %s cannot run here (%s): using torch",
                                                        self.backend, exc)
            self.backend = "torch"

    def set_precision(self, precision: str) -> None:
        """Switches the autocast precision (takes effect on the next batch; CPU stays fp32). A compiled graph
        (a CUDA runtime's engine) is built again for the new precision, at the next frame."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        precision = precision if self.device.type == "cuda" else "fp32"
        if precision != self.precision:  # each graph was built for the old one (build_runner's precision)
            self._runners.clear()
        self.precision = precision

    def to_device(self, device: str | torch.device) -> None:
        """Moves the model to ``device`` (e.g. the CPU after CUDA ran out of memory); fp32 off CUDA."""
        self.device = resolve_device(device)
        self.model = self.model.to(self.device)
        if self._road is not None:
            self._road = self._road.to(self.device)
        if self.device.type != "cuda":
            self.precision = "fp32"
        if not backends.runs_on(self.backend, self.device.type):
            self.backend = "torch"  # e.g. a CUDA runtime after CUDA ran out of memory: the CPU runs torch
            self._runners.clear()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, model_name: str | None = None, **kwargs) -> "InferenceEngine":
        model, meta = load_checkpoint(path, model_name)
        return cls(model, meta, **kwargs)

    def check_image(self, height: int, width: int) -> None:
        """Raises ``ImageSizeError`` (a ValueError) unless a ``height x width`` image can be run: at most
        MAX_IMAGE_PIXELS pixels, aspect ratio within MAX_ASPECT_RATIO, and (native size) a network size
        within the limits; no resize on the way may hold more than MAX_RESIZE_VALUES values per channel."""
        height, width = int(height), int(width)
        check_image_size(height, width)
        size = (network_size((height, width), None, self.spec.size_divisor) if self.native_size
                else self.input_size)
        check_resize((height, width), size)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    @torch.inference_mode()
    def forward_logits(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W on the engine's device -> logits N x 20 x h x w at the network size."""
        self.check_image(*batch_uint8.shape[-2:])
        size = (network_size(tuple(batch_uint8.shape[-2:]), None, self.spec.size_divisor)
                if self.native_size else self.input_size)
        x = normalize(batch_uint8, self.meta.mean, self.meta.std, size)
        if self.optimized:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(x) if self.adapter is None else self.adapter.forward(x)

    @torch.inference_mode()
    def score_tensors(self, batch_uint8: torch.Tensor,
                      smoothing: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Device-side pipeline: uint8 N x 3 x H x W -> (semantic N x H x W uint8, score N x H x W float32).

        Outputs are at the input image size. The energy is computed at the network size, resized
        bilinearly to the image size and then smoothed there, so the Gaussian keeps the reference
        code's 7-pixel meaning at full resolution; the class map is resized with nearest neighbour.
        ``smoothing`` overrides ``self.smoothing`` for this call (None = ``self.smoothing``).
        """
        if self._road is None:
            logits = self.forward_logits(batch_uint8)
            energy, semantic = scoring.energy_and_prediction(logits, prediction_dtype=torch.uint8)
        else:
            with FeatureTap(self.running_model, self.spec.road_features[0]) as tap:
                logits = self.forward_logits(batch_uint8)
            energy, semantic = scoring.energy_and_prediction(logits, prediction_dtype=torch.uint8)
            energy = self._road(logits[:, :NUM_INLIER_CLASSES], energy.unsqueeze(1).float(), tap.take())[:, 0]
        return self._to_image(semantic, energy, tuple(batch_uint8.shape[-2:]), smoothing)

    def _to_image(self, semantic: torch.Tensor, energy: torch.Tensor, out_hw: tuple[int, int],
                  smoothing: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Network-size maps -> image-size maps (energy bilinear, classes nearest-exact), then the Gaussian."""
        if tuple(energy.shape[-2:]) != out_hw:
            energy = F.interpolate(energy.unsqueeze(1), size=out_hw, mode="bilinear", align_corners=False).squeeze(1)
            semantic = F.interpolate(semantic.unsqueeze(1), size=out_hw, mode="nearest-exact").squeeze(1)
        if self.smoothing if smoothing is None else smoothing:
            energy = scoring.gaussian_smooth(energy, self.smoothing_kernel, self.smoothing_sigma)
        return semantic, energy

    def runner(self, size: tuple[int, int], backend: str | None = None) -> Any:
        """The compiled network-size graph of ``backend`` (default: the engine's) for network size ``size``
        (built on first use)."""
        backend = backend or self.backend
        runner = self._runners.get((size, backend))
        if runner is None:
            if len(self._runners) >= 4:  # native-size engines see many sizes: keep the newest few
                self._runners.pop(next(iter(self._runners)))
            if self._digest is None:  # the weights do not change after construction: hashed once
                self._digest = weights_digest(self.model)
            runner = build_runner(backend, self.model, self.meta.mean, self.meta.std, size, digest=self._digest,
                                  precision=self.precision, device=self.device, score=self.score,
                                  road_features=self.spec.road_features)
            self._runners[(size, backend)] = runner
        return runner

    def _choose_backend(self, size: tuple[int, int]) -> None:
        """backend auto on the CPU: the fastest of torch and the installed compiled runtimes, measured on a
        frame of the network size (``backends.choose_fastest``; cached per machine: then only the chosen
        runtime's graph is built); a runtime whose graph cannot be built is left out (logged)."""
        import logging

        from .backends import compiled_runtimes, cpu_model, runtime_version

        names = ["torch", *compiled_runtimes()]
        frame = np.zeros((size[0], size[1], 3), np.uint8)
        key = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "architecture": self.meta.architecture,
               "network_hw": list(size), "smoothing": bool(self.smoothing), "score": self.score,
               "versions": {name: runtime_version(name) for name in names},
               # a new graph (form) can change the winner: measured again, not the old choice reused
               "graph_version": backends.GRAPH_VERSION}
        left_out: list[str] = []
        while True:
            choice = choose_fastest(lambda name: self._score_whole(frame, backend=name),
                                    [n for n in names if n not in left_out], {**key, "left_out": left_out})
            if choice["backend"] == "torch":
                break
            try:  # a cached choice: its graph is built now, at start-up
                self.runner(size, choice["backend"])
                break
            except ValueError as exc:  # chosen on another day, cannot be built now: choose among the rest
                logging.getLogger("pebal.backends").warning("backend auto: leaving %s out: %s",
                                                            choice["backend"], exc)
                left_out.append(choice["backend"])
        self.backend, self.backend_timings = choice["backend"], choice["ms"]
        for cached in [k for k in self._runners if k[1] != self.backend]:
            del self._runners[cached]  # only the chosen runtime's graph is kept

    @torch.inference_mode()
    def score_frame(self, rgb: np.ndarray, smoothing: bool | None = None,
                    backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One H x W x 3 uint8 RGB frame -> (semantic H x W uint8, score H x W float32) on the host, through
        the engine's backend. With a compiled runtime the frame is resized on the host (PyTorch's uint8
        kernel, as :func:`normalize`), the graph runs normalisation, network, energy and argmax, and the
        maps come back to the image size and are smoothed as in :meth:`score_tensors`. With a road band
        (``band``), its finer score replaces the frame's inside the band (core/road_band.py)."""
        semantic, score = self._score_whole(rgb, smoothing, backend)
        if self.band is not None and not self.native_size:
            score = self.band.refine(self, rgb, score, self.smoothing if smoothing is None else smoothing)
        return semantic, score

    def _score_whole(self, rgb: np.ndarray, smoothing: bool | None = None,
                     backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score_frame` of the whole frame at the network size (no band)."""
        h, w = rgb.shape[:2]
        if self.backend == "auto" and backend is None:  # a native-size engine: measured at the first frame
            self.check_image(h, w)
            self._choose_backend(tuple(network_size((h, w), None, self.spec.size_divisor)))
        backend = backend or self.backend
        if backend == "torch":
            batch = to_uint8_batch(rgb[None], self.device, pin_memory=self.device.type == "cuda")
            semantic_t, score_t = self.score_tensors(batch, smoothing=smoothing)
            return semantic_t[0].cpu().numpy(), score_t[0].float().cpu().numpy()
        self.check_image(h, w)
        size = network_size((h, w), None, self.spec.size_divisor) if self.native_size else self.input_size
        if backends.get_backend(backend).device == "cuda":  # everything on the device; the host copies the maps
            if (tuple(size), backend) not in self._runners:
                self._build_or_fall_back(tuple(size))  # a native-size engine: per size, at its first frame
                if self.backend == "torch":
                    return self._score_whole(rgb, smoothing=smoothing)
            batch = to_uint8_batch(rgb[None], self.device, pin_memory=True)
            resized = resize_batch(batch, size).permute(0, 2, 3, 1)
            semantic_t, energy_t = self.runner(tuple(size), backend)(resized)
            semantic_t, score_t = self._to_image(semantic_t, energy_t.float(), (h, w), smoothing)
            return semantic_t[0].cpu().numpy(), score_t[0].cpu().numpy()
        batch = to_uint8_batch(rgb[None], torch.device("cpu"))
        resized = resize_batch(batch, size).permute(0, 2, 3, 1).contiguous().numpy()
        semantic, energy = self.runner(tuple(size), backend)(resized)
        semantic_t, score_t = self._to_image(torch.from_numpy(np.ascontiguousarray(semantic)),
                                             torch.from_numpy(np.ascontiguousarray(energy)), (h, w), smoothing)
        return semantic_t[0].numpy(), score_t[0].numpy()

    def infer(self, images: Sequence[np.ndarray] | np.ndarray) -> list[FrameResult]:
        """Runs a batch of H x W x 3 uint8 RGB images (all the same size) and returns host results.

        Image sizes are checked (:meth:`check_image`) before the batch is stacked or copied to the device.
        """
        if isinstance(images, np.ndarray):
            shapes = {images.shape[-3:-1]} if images.ndim in (3, 4) else set()
        else:
            images = list(images)
            shapes = {tuple(np.shape(image)[:2]) for image in images}
        for hw in shapes:
            if len(hw) == 2:
                self.check_image(*hw)
        if self.backend != "torch":  # the compiled graphs take one frame at a time
            frames = images[None] if isinstance(images, np.ndarray) and images.ndim == 3 else images
            maps = [self.score_frame(np.asarray(frame)) for frame in frames]
            return [FrameResult(sem, score, score > self.threshold, self.threshold) for sem, score in maps]
        batch = to_uint8_batch(images, self.device, pin_memory=True)
        semantic, score = self.score_tensors(batch)
        obstacle = scoring.obstacle_mask(score, self.threshold)
        semantic, score, obstacle = semantic.cpu().numpy(), score.cpu().numpy(), obstacle.cpu().numpy()
        return [FrameResult(semantic[i], score[i], obstacle[i], self.threshold) for i in range(len(semantic))]

    def infer_one(self, image: np.ndarray) -> FrameResult:
        return self.infer(image[None])[0]


def infer_maps(engine: InferenceEngine, rgb: np.ndarray,
               smoothing: bool | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """One H x W x 3 uint8 RGB frame through ``engine`` -> (semantic H x W uint8 trainIds, score H x W
    float32, inference milliseconds), as the node, ``pebal-bag process`` and the calibration run it, through
    the engine's backend (:meth:`InferenceEngine.score_frame`). The only host synchronisation is the copy
    of the two maps. ``smoothing`` overrides the engine's setting
    for this frame (None = the engine's)."""
    import time

    t0 = time.perf_counter()
    semantic, score = engine.score_frame(rgb, smoothing=smoothing)
    return semantic, score, (time.perf_counter() - t0) * 1000.0
