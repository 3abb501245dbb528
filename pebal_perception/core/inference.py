"""Inference that survives running out of device memory: :class:`OomGuardedInference` runs
:func:`~pebal_perception.core.engine.infer_maps` and, on an out-of-memory error, releases cached memory,
retries, then applies the configured fallbacks (``oom_fallback``)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pebal_perception.core.engine import infer_maps

OOM_FALLBACK_STEPS = ("fp16", "cpu")


def parse_oom_fallback(text: str) -> tuple[str, ...]:
    """``oom_fallback`` setting -> ordered steps: '' or 'none' -> (), 'fp16', 'cpu', 'fp16,cpu'."""
    steps = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if steps == ["none"]:
        return ()
    unknown = [step for step in steps if step not in OOM_FALLBACK_STEPS]
    if unknown or len(set(steps)) != len(steps):
        raise ValueError(f"oom_fallback must be 'none' or a comma-separated list of {', '.join(OOM_FALLBACK_STEPS)} "
                         f"(each at most once), got {text!r}")
    return tuple(steps)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA (or other device) allocation failures: ``torch.OutOfMemoryError``, and the
    RuntimeErrors cuDNN/cuBLAS raise when their workspace allocation fails."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class FrameOutOfMemory(RuntimeError):
    """A frame could not be processed for lack of device memory, even after the configured fallbacks."""


class OomGuardedInference:
    """:func:`infer_maps` that survives running out of device memory on a frame.

    On an out-of-memory error the allocator's cached blocks are released and the frame is retried
    as it is (fragmentation after an unusually large frame often clears that way). If it fails
    again, the configured ``fallback`` steps are applied in order, each retried on the same frame:
    ``'fp16'`` (autocast half precision: about half the activation memory; CUDA fp32 only) and
    ``'cpu'`` (moves the model to the CPU: slow, but the detector keeps running). An applied step
    stays: a GPU that has just run out of memory is likely to do so again. When nothing is left,
    :class:`FrameOutOfMemory` is raised; the caller drops that frame and carries on.

    ``out_of_memory`` counts the frames that hit the error, ``dropped`` those that could not be
    processed at all, ``degraded`` lists the applied steps. ``infer`` is :func:`infer_maps`
    (replaceable for tests).
    """

    def __init__(self, engine: Any, fallback: Sequence[str] = (), infer=None):
        self.engine = engine
        self.pending = list(fallback)
        self.degraded: list[str] = []
        self.out_of_memory = 0
        self.dropped = 0
        self._infer = infer or infer_maps

    def __call__(self, rgb: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """The maps of ``rgb``; ``kwargs`` (e.g. ``smoothing``) go to every ``infer`` attempt."""
        failure = self._attempt(rgb, kwargs)
        if not isinstance(failure, str):
            return failure
        # Retried outside the except block: the failed attempt's tensors (held by the traceback)
        # must be released before the memory can be reused.
        self.out_of_memory += 1
        for step in [None, *self.pending]:
            if step is not None:
                self.pending.remove(step)
                if not self._apply(step):
                    continue
            self._release_cached_memory()
            failure = self._attempt(rgb, kwargs)
            if not isinstance(failure, str):
                return failure
        self.dropped += 1
        raise FrameOutOfMemory(f"out of memory on a {rgb.shape[1]}x{rgb.shape[0]} frame on {self.engine.device} "
                               f"({self.engine.precision}), no fallback left: {failure}")

    def _attempt(self, rgb: np.ndarray, kwargs: dict[str, Any]):
        """The maps, or a one-line description of an out-of-memory failure (other errors propagate)."""
        try:
            return self._infer(self.engine, rgb, **kwargs)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            text = str(exc).strip()
            return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"

    def _apply(self, step: str) -> bool:
        engine = self.engine
        if step == "fp16":
            if engine.device.type != "cuda" or engine.precision != "fp32":
                return False
            engine.set_precision("fp16")
        elif step == "cpu":
            if engine.device.type == "cpu":
                return False
            engine.to_device("cpu")
        else:  # pragma: no cover - parse_oom_fallback validates
            raise ValueError(f"unknown out-of-memory fallback {step!r}")
        self.degraded.append(step)
        return True

    @staticmethod
    def _release_cached_memory() -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
