"""When a NaN appears during training: replay the saved batch to name the module where it was born.

The monitor keeps references to the batches logged for the last two steps (``watch.log(batch=...)``
or ``watch.watch_batch``; no copy). At each step whose gradients were measured, `NanReplay.check_flag`
looks at whether the step's gradient norms are all finite, without stalling the device:

* on CPU the flag is an ordinary host tensor (reading it waits for nothing), so the replay runs before
  this step updates the weights;
* on CUDA the flag goes to pinned host memory with a non-blocking copy and is read at the next step
  (the weights have then taken one step).

A flush that finds a non-finite loss or gradient the flag missed (a NaN loss with finite gradients,
a CUDA flag still in flight) asks for the replay too. The replay runs once per run, through
``locate``, the function the layer above gives the monitor (``traindoc.watch`` gives the
``nan-forward`` probe's `locate_nonfinite`); the monitor itself knows nothing of probes. The user's
RNG streams, gradients and train/eval modes are restored after it, and the watch's hooks ignore its
passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from traindoc.findings import Finding
from traindoc.monitor.failures import FailureLog

Locate = Callable[..., list[Finding]]
"""``locate(model, batch, forward=...) -> findings``: where a batch's NaN/Inf is born."""


class NanReplay:
    def __init__(self, model: torch.nn.Module, locate: Locate | None, *, forward: Callable[..., Any] | None,
                 failures: FailureLog, pause: Callable[[], contextlib.AbstractContextManager[Any]],
                 report: Callable[[Finding, int], None]):
        self.model = model
        self.locate = locate
        self.forward = forward
        self.failures = failures
        self.pause = pause
        self.report = report
        self.done = False
        self.info: dict[str, Any] | None = None
        self._batches: dict[int, Any] = {}
        self._flag_step: int | None = None
        self._flag_host: torch.Tensor | None = None

    def keep_batch(self, step: int, batch: Any) -> None:
        self._batches[step] = batch
        for old in [k for k in self._batches if k < step - 1]:
            del self._batches[old]

    def check_flag(self, step: int, grad_norms: torch.Tensor) -> None:
        """Is any of this step's gradient norms non-finite? Replay the batch if so (see the module
        docstring)."""
        if self._flag_step is not None and self._flag_host is not None:
            if not math.isfinite(float(self._flag_host)):
                self.replay(self._flag_step)
            self._flag_step = None
        if self.done:
            return
        if grad_norms.device.type == "cpu":  # host memory: reading it waits for nothing
            if not math.isfinite(sum(grad_norms.tolist())):  # NaN or Inf iff one norm is
                self.replay(step)
            return
        if self._flag_host is None:
            self._flag_host = torch.zeros((), dtype=torch.float32, pin_memory=torch.cuda.is_available())
        self._flag_host.copy_(grad_norms.sum(), non_blocking=True)  # NaN or Inf iff one norm is
        self._flag_step = step

    def replay(self, step: int) -> None:
        if self.done:
            return
        self.done = True
        self.failures.guard("nan-forward replay", self._replay, step)

    def _replay(self, step: int) -> None:
        batch_step = step if step in self._batches else max(self._batches, default=None)
        batch = self._batches.get(batch_step) if batch_step is not None else None
        if batch is None:
            self.info = {"step": step, "replayed": False, "reason": "no batch given (w.log(batch=...))"}
            return
        if self.locate is None:
            self.info = {"step": step, "replayed": False,
                         "reason": "no replay function (traindoc.watch gives the nan-forward probe)"}
            return
        model = self.model
        modes = [(mod, mod.training) for mod in model.modules()]
        params = list(model.parameters())
        grads = [p.grad for p in params]
        device = next((p.device for p in params), torch.device("cpu"))
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with self.pause(), torch.random.fork_rng(devices=devices), torch.enable_grad():
                found = self.locate(model, batch, forward=self.forward) or []
        finally:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            for mod, mode in modes:
                mod.training = mode
        self.info = {"step": step, "replayed": True, "batch_step": batch_step, "findings": len(found)}
        for f in found:
            self.report(f, step)

    def clear(self) -> None:
        self._batches.clear()
