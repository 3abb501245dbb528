"""A second, finer look at the road band: far obstacles are a few pixels tall at the network's size.

The rows of the image where the far road lies (``top`` .. ``bottom``, shares of the image height) are cut
out, resized to ``scale`` times the resolution the whole frame runs at, and run through the same model,
runtime and anomaly score (a native-size engine on the model: one graph per band size, built at the first
frame of a camera). Inside the band its score replaces the whole frame's, blended linearly over
``blend_rows`` rows at the band's edges so no seam becomes a region; the class map stays the whole
frame's (the road, the horizon and the region tests read it). Off by default: ``bench/bench_quality.py
--band`` measures whether it pays for its cost (BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class RoadBand:
    top: float = 0.40
    bottom: float = 0.65
    scale: float = 2.0
    blend_rows: int = 16

    def __post_init__(self) -> None:
        if not (0.0 <= self.top < self.bottom <= 1.0 and 1.0 < self.scale <= 4.0 and self.blend_rows >= 0):
            raise ValueError(f"road band {self}: expected 0 <= top < bottom <= 1 and 1 < scale <= 4")

    def rows(self, height: int) -> tuple[int, int]:
        return int(round(self.top * height)), max(int(round(self.top * height)) + 1, int(round(self.bottom * height)))

    def network_size(self, crop_hw: tuple[int, int], frame_scale: float, divisor: int) -> tuple[int, int]:
        """The band's network size: the crop at ``scale`` x ``frame_scale`` (the whole frame's network width
        over the image width), rounded to the architecture's divisor."""
        factor = self.scale * frame_scale
        return tuple(max(divisor, int(round(n * factor / divisor)) * divisor) for n in crop_hw)  # type: ignore


class BandRefiner:
    """Runs :class:`RoadBand` for one engine (:meth:`refine`); holds the band's native-size engine."""

    def __init__(self, band: RoadBand):
        self.band = band
        self._engine: Any = None

    def _band_engine(self, engine: Any, score: dict[str, Any]) -> Any:
        from .engine import InferenceEngine

        key = (engine.backend, str(engine.device), engine.precision, repr(sorted(score.items())))
        if self._engine is None or self._engine[0] != key:
            self._engine = (key, InferenceEngine(engine.source_model, engine.meta, device=engine.device,
                                                 precision=engine.precision, input_size="native", smoothing=False,
                                                 optimize=engine.optimized, backend=engine.backend, score=score))
        return self._engine[1]

    def refine(self, engine: Any, rgb: np.ndarray, score: np.ndarray, smoothing: bool,
               score_kind: dict[str, Any] | None = None) -> np.ndarray:
        """``score`` (the whole frame's, image size) with the band's finer score inside the band; the band runs
        ``engine``'s anomaly score unless ``score_kind`` names another (``ModelMeta.score`` form)."""
        from . import scoring

        h, w = rgb.shape[:2]
        top, bottom = self.band.rows(h)
        crop = rgb[top:bottom]
        frame_scale = engine.input_size[1] / w
        size = self.band.network_size(crop.shape[:2], frame_scale, engine.spec.size_divisor)
        interp = cv2.INTER_AREA if size[1] < crop.shape[1] else cv2.INTER_LINEAR
        resized = np.ascontiguousarray(cv2.resize(crop, (size[1], size[0]), interpolation=interp))
        band_engine = self._band_engine(engine, engine.score if score_kind is None else score_kind)
        _, band_score = band_engine.score_frame(resized, smoothing=False)
        band_score = cv2.resize(band_score, (w, bottom - top), interpolation=cv2.INTER_LINEAR)
        if smoothing and engine.smoothing:
            import torch

            band_score = scoring.gaussian_smooth(torch.from_numpy(band_score)[None], engine.smoothing_kernel,
                                                 engine.smoothing_sigma)[0].numpy()
        weight = np.ones(bottom - top, np.float32)
        ramp = min(self.band.blend_rows, (bottom - top) // 2)
        if ramp > 0:
            edge = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
            weight[:ramp] = np.where(top > 0, edge, 1.0)
            weight[-ramp:] = np.where(bottom < h, edge[::-1], 1.0)
        out = score.copy()
        out[top:bottom] = weight[:, None] * band_score + (1.0 - weight[:, None]) * score[top:bottom]
        return out
