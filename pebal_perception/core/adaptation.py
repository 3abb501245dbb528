"""Test-time adaptation of batch-norm statistics to the camera (ROS-free, no training code).

A model trained on other cameras normalises its features with the training set's BatchNorm statistics;
a camera with other colours, exposure or optics shifts them, and the anomaly score with them.
:class:`BatchNormAdapter` re-estimates the running mean and variance of every ``BatchNorm`` layer from
the camera's own recent frames:

* :meth:`~BatchNormAdapter.forward` runs an eval-mode copy of the *unfolded* model (the engine folds
  BatchNorm into the convolutions, ``core/optimize.py``; the adapter copies the engine's pre-fold
  ``source_model``). Forward pre-hooks on the BN layers record the frame's per-channel mean and biased
  variance (over N, H, W) as *pending*; the frame itself is normalised with the current running
  statistics, so its own statistics count from the next frame on.
* :meth:`~BatchNormAdapter.commit` folds the pending statistics in:
  ``running = (1 - momentum) * running + momentum * pending``; :meth:`~BatchNormAdapter.discard` drops
  them (the detector discards frames in which obstacles are detected or reported: an obstacle must not
  become "normal"); :meth:`~BatchNormAdapter.reset` goes back to the checkpoint's statistics.
* :meth:`~BatchNormAdapter.state` reports counts and ``drift``: the mean over BN layers of
  ``mean_c |running_mean - checkpoint_mean| / sqrt(checkpoint_var + eps)`` (0 = the checkpoint's).

Compiled backends run fixed graphs with the statistics baked in: adaptation needs backend torch (the
detector reports it as unavailable otherwise). Every layer's running statistics live in one flat tensor
(each layer's buffers are views of it), so a commit is a few whole-model operations whatever the depth.
One thread at a time (the detector's).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from pebal_perception.core.settings import check_adaptation_momentum

DEFAULT_MOMENTUM = 0.01
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def pause_reason(frame: Any) -> str | None:
    """Why a post-processed frame (``core.postprocess.ProcessedFrame``) must not adapt the statistics: obstacles
    reported (tracked ones, held ones included) or regions detected in it (not yet confirmed), so that an
    obstacle never becomes "normal"; None when it may."""
    detected = sum(1 for region in frame.regions if not region.rejected)
    if frame.obstacles or detected:
        return f"{len(frame.obstacles)} obstacle(s) reported, {detected} detected"
    return None


def settle(adapter: "BatchNormAdapter", frame: Any) -> None:
    """Commits the adapter's pending statistics after ``frame``, or discards them (:func:`pause_reason`)."""
    reason = pause_reason(frame)
    if reason is None:
        adapter.commit()
    else:
        adapter.discard(reason)


@dataclass(frozen=True)
class AdaptationState:
    """What the adaptation does now (``/diagnostics``, ``summary.json``)."""

    enabled: bool = False  # the setting
    status: str = "off"  # 'off', 'on', or 'unavailable: backend X runs a fixed graph'
    momentum: float = DEFAULT_MOMENTUM
    frames_adapted: int = 0  # frames whose statistics were committed
    frames_paused: int = 0  # frames inferred with adaptation on but discarded (obstacles)
    drift: float = 0.0  # mean over BN layers of |running_mean - checkpoint mean| / checkpoint std


class BatchNormAdapter:
    """Online BatchNorm statistics of an unfolded model (module docstring). ``model`` is copied (eval
    mode; on ``device`` when given, channels-last when ``channels_last``): the caller's is never changed."""

    def __init__(self, model: nn.Module, momentum: float = DEFAULT_MOMENTUM, device: Any = None,
                 channels_last: bool = False):
        self.momentum = check_adaptation_momentum(momentum)
        with torch.inference_mode(False), torch.no_grad():
            self.model = copy.deepcopy(model).eval()
            if channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            if device is not None:
                self.model = self.model.to(device)
            self.layers = [m for m in self.model.modules()
                           if isinstance(m, BATCH_NORMS) and m.track_running_stats
                           and m.running_mean is not None and m.running_var is not None]
            self._sizes = [int(m.num_features) for m in self.layers]
            self._alias()
            self._checkpoint = (self._mean.clone(), self._var.clone())
            self._set_drift_weights()
        for index, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(partial(self._record, index))
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._recording = False
        self._has_pending = False
        self.frames_adapted = 0
        self.frames_paused = 0
        self.last_pause = ""  # why the latest frame was paused
        self._drift: torch.Tensor | float = 0.0

    # ---------------------------------------------------------------------------------- buffers
    def _alias(self) -> None:
        """One flat tensor per statistic; every layer's running_mean / running_var become views of it."""
        means = [m.running_mean.detach() for m in self.layers]
        variances = [m.running_var.detach() for m in self.layers]
        device = next((t.device for t in means), torch.device("cpu"))
        self._mean = torch.cat(means) if means else torch.zeros(0, device=device)
        self._var = torch.cat(variances) if variances else torch.zeros(0, device=device)
        start = 0
        for layer, size in zip(self.layers, self._sizes):
            layer.running_mean = self._mean[start:start + size]
            layer.running_var = self._var[start:start + size]
            start += size

    def _set_drift_weights(self) -> None:
        ck_mean, ck_var = self._checkpoint
        eps = torch.cat([torch.full((size,), float(m.eps), device=ck_var.device)
                         for m, size in zip(self.layers, self._sizes)]) if self.layers else ck_var
        self._inv_std = torch.rsqrt(ck_var + eps)
        # each layer weighs 1/L, spread over its channels: sum(w * |...|) = mean over layers of channel means
        self._weights = torch.cat([torch.full((size,), 1.0 / (len(self._sizes) * size), device=ck_var.device)
                                   for size in self._sizes]) if self.layers else ck_var

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def to(self, device: Any) -> "BatchNormAdapter":
        """Moves the model and the statistics to ``device`` (e.g. the CPU after CUDA ran out of memory);
        what is pending is dropped."""
        device = torch.device(device)
        with torch.inference_mode(False), torch.no_grad():
            self.model = self.model.to(device)
            self._alias()
            self._checkpoint = tuple(t.to(device) for t in self._checkpoint)
            self._set_drift_weights()
        self._clear_pending()
        if isinstance(self._drift, torch.Tensor):
            self._drift = float(self._drift)
        return self

    # ---------------------------------------------------------------------------------- frames
    def _record(self, index: int, module: nn.Module, args: tuple) -> None:
        if not self._recording:
            return
        x = args[0]
        x = x if x.dtype == torch.float32 else x.float()
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x.detach(), dim=dims, unbiased=False)
        count = x.numel() // max(1, x.shape[1])
        previous = self._pending[index]
        if previous is not None:  # a layer called twice in one forward: the pooled statistics
            n0, m0, v0 = previous
            total = n0 + count
            delta = mean - m0
            mean = m0 + delta * (count / total)
            var = (n0 * v0 + count * var + delta * delta * (n0 * count / total)) / total
            count = total
        self._pending[index] = (count, mean, var)
        self._has_pending = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unfolded model on ``x`` with the current running statistics; this input's statistics
        become pending (replacing any pending ones)."""
        if x.device != self.device:
            self.to(x.device)
        self._clear_pending()
        self._recording = True
        try:
            return self.model(x)
        finally:
            self._recording = False

    __call__ = forward

    @property
    def has_pending(self) -> bool:
        """A forward's statistics wait for :meth:`commit` or :meth:`discard`."""
        return self._has_pending

    def _clear_pending(self) -> None:
        self._pending = [None] * len(self.layers)
        self._has_pending = False

    def commit(self) -> bool:
        """running = (1 - momentum) * running + momentum * pending, for every layer the last forward
        reached; False when nothing was pending."""
        if not self._has_pending:
            return False
        with torch.inference_mode(), torch.no_grad():
            start, means, variances = 0, [], []
            for pending, size in zip(self._pending, self._sizes):
                if pending is None:  # a layer that forward did not reach keeps its statistics
                    means.append(self._mean[start:start + size])
                    variances.append(self._var[start:start + size])
                else:
                    means.append(pending[1])
                    variances.append(pending[2])
                start += size
            if means:
                self._mean.lerp_(torch.cat(means), self.momentum)
                self._var.lerp_(torch.cat(variances), self.momentum)
                ck_mean, _ = self._checkpoint
                self._drift = ((self._mean - ck_mean).abs_() * self._inv_std * self._weights).sum()
        self._clear_pending()
        self.frames_adapted += 1
        return True

    def discard(self, reason: str = "") -> bool:
        """Drops the pending statistics (the frame is paused: ``reason``, e.g. obstacles reported);
        False when nothing was pending."""
        if not self._has_pending:
            return False
        self._clear_pending()
        self.frames_paused += 1
        self.last_pause = reason
        return True

    def reset(self) -> None:
        """Back to the checkpoint's statistics (the counts stay); what is pending is dropped."""
        with torch.inference_mode(), torch.no_grad():
            self._mean.copy_(self._checkpoint[0])
            self._var.copy_(self._checkpoint[1])
        self._drift = 0.0
        self._clear_pending()

    @property
    def checkpoint_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, variances) of the checkpoint, every layer's channels in one flat tensor each."""
        return self._checkpoint[0].clone(), self._checkpoint[1].clone()

    @property
    def running_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, variances) now, in the layout of :attr:`checkpoint_statistics`."""
        return self._mean.clone(), self._var.clone()

    def drift(self) -> float:
        return float(self._drift)

    def state(self) -> AdaptationState:
        return AdaptationState(enabled=True, status="on", momentum=self.momentum, frames_adapted=self.frames_adapted,
                               frames_paused=self.frames_paused, drift=self.drift())
