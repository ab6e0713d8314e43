"""An experiment's trial run of an unmodified script: its `Setting` applied through PyTorch's hooks.

``traindoc tune ...`` and ``traindoc overfit`` start ``traindoc run SCRIPT --max-steps N --trial
SETTING`` once per trial. `TrialRun` changes, for the optimizer traindoc watches, only what the
setting names, and nothing in the script's source:

* **LR**: at each optimizer step's pre-hook every param group's LR is multiplied by
  ``setting.lr_at(t, peak) / peak``, where ``peak`` is group 0's peak LR at the first step
  (`traindoc.probes.optimizer.group_lr`): the script's own schedule keeps its shape (warmup,
  decay) around the trial's peak, a warmup multiplies it by ``(t + 1) / warmup``, a ramp rises
  exponentially. The post-hook puts the script's values back, so its scheduler never sees ours.
* **clipping**: in the pre-hook, after the script's own clipping, the gradients of the optimizer's
  parameters are clipped to ``setting.clip``.
* **zero_grad** (``True``): the gradients are zeroed after every step of the optimizer, as the
  missing ``optimizer.zero_grad()`` would; a script's own ``zero_grad`` cannot be taken away.
* **targets** (``ignore_index``, ``score_ignore_index``): `traindoc.experiments.trial.TargetsPatch`,
  whose per-step scores go into the run's ``info["trial"]["scores"]``.
* **scheduler per step** (``scheduler_per_step``): the LR schedulers built on the watched optimizer
  step after each of its steps, and the script's own ``scheduler.step()`` calls do nothing.
* **one batch**: the first DataLoader the script iterates yields its first batch forever (every
  epoch), so the script trains on one batch; scripts that read data without a DataLoader cannot be
  run this way, and the trial says so.
* **seed**: ``torch.manual_seed(s)`` calls of the script become ``manual_seed(s + seed * 1000003)``
  (a different initialisation, dropout and shuffling per seed; seed 0 is the script's own).
* **divergence stop**: every `CHECK_EVERY` steps the losses are read; a diverged ramp
  (`traindoc.experiments.measures.unstable_at` with factor `DIVERGE`) ends the script like
  ``--max-steps`` does.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from traindoc.experiments.measures import unstable_at
from traindoc.experiments.trial import CHECK_EVERY, DIVERGE, Setting, TargetsPatch
from traindoc.probes.optimizer import group_lr

SEED_STRIDE = 1_000_003


class TrialRun:
    def __init__(self, setting: Setting):
        self.setting = setting
        self.peak: float | None = None
        self._saved: list[float] = []
        self._losses: list[torch.Tensor] = []
        self._read: list[float] = []
        self._last_loss: torch.Tensor | None = None
        self._undo: list[Any] = []
        self._loader: Any = None
        self.batch: Any = None
        self.one_batch_applied = False
        self.targets = TargetsPatch(setting)
        self.schedulers: weakref.WeakSet[Any] = weakref.WeakSet()
        """The script's LR schedulers (a per-step trial steps them)."""
        self._stepping = False

    # ------------------------------------------------------------------ patches
    def install(self) -> None:
        s = self.setting
        self.targets = TargetsPatch(s).__enter__()
        self._undo.append(lambda: self.targets.__exit__(None, None, None))
        if s.seed:
            original = torch.manual_seed

            def manual_seed(seed: int) -> Any:
                return original(int(seed) + s.seed * SEED_STRIDE)

            torch.manual_seed = manual_seed  # type: ignore[assignment]
            torch.random.manual_seed = manual_seed  # type: ignore[assignment]
            self._undo.append(lambda: (setattr(torch, "manual_seed", original),
                                       setattr(torch.random, "manual_seed", original)))
            original(s.seed * SEED_STRIDE)
        if s.scheduler_per_step:
            from torch.optim.lr_scheduler import LRScheduler

            step = LRScheduler.step
            trial = self

            def scheduler_step(sched: Any, *args: Any, **kwargs: Any) -> Any:
                # the constructor's own first step, and the trial's, run; the script's calls do not
                if trial._stepping or getattr(sched, "_step_count", 0) < 1:
                    return step(sched, *args, **kwargs)
                trial.schedulers.add(sched)
                return None

            LRScheduler.step = scheduler_step  # type: ignore[method-assign]
            self._undo.append(lambda: setattr(LRScheduler, "step", step))
        if s.one_batch:
            iterate = DataLoader.__iter__
            trial = self

            def __iter__(loader: DataLoader) -> Any:  # noqa: N807 (the patched method)
                it = iterate(loader)
                if trial._loader is None:
                    trial._loader = weakref.ref(loader)
                if trial._loader() is loader:
                    return trial._repeat_first(it)
                return it

            DataLoader.__iter__ = __iter__  # type: ignore[method-assign]
            self._undo.append(lambda: setattr(DataLoader, "__iter__", iterate))

    def _repeat_first(self, it: Any) -> Iterator[Any]:
        if self.batch is None:
            self.batch = next(iter(it))
        self.one_batch_applied = True
        while True:
            yield self.batch

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # ------------------------------------------------------------------ the watched optimizer's steps
    def before_step(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        s = self.setting
        groups = optimizer.param_groups
        if self.peak is None:
            self.peak = group_lr(groups[0])
        self._saved = [g["lr"] for g in groups]
        if self.peak > 0 and (s.lr is not None or s.warmup or s.lr_end is not None):
            k = s.lr_at(step, self.peak) / self.peak
            for g in groups:
                g["lr"] = g["lr"] * k
        if s.clip is not None:
            params = [p for g in groups for p in g["params"] if p.grad is not None]
            if params:
                torch.nn.utils.clip_grad_norm_(params, s.clip)

    def after_step(self, optimizer: torch.optim.Optimizer, step: int, schedulers: Sequence[Any] = ()) -> bool:
        """Put the script's LRs back (then step its ``schedulers`` when the setting steps them per step,
        and zero the gradients when it adds ``zero_grad``); True when the trial should stop here (a
        diverged ramp)."""
        for g, lr in zip(optimizer.param_groups, self._saved, strict=False):
            g["lr"] = lr
        if self.setting.scheduler_per_step:
            self._stepping = True
            try:
                for sched in schedulers:
                    if getattr(sched, "optimizer", None) is optimizer:
                        sched.step()
            finally:
                self._stepping = False
        if self.setting.zero_grad is True:
            optimizer.zero_grad(set_to_none=True)
        self.targets.end_step()
        if self._last_loss is not None:
            self._losses.append(self._last_loss)
            self._last_loss = None
        if not self.setting.stop_on_divergence or (step + 1) % CHECK_EVERY:
            return False
        if self._losses:
            values = torch.stack([t.float().reshape(()) for t in self._losses]).tolist()
            self._read += [v if math.isfinite(v) else math.nan for v in values]
            self._losses.clear()
        return unstable_at(self._read, DIVERGE) is not None

    def on_loss(self, loss: torch.Tensor) -> None:
        self._last_loss = loss.detach()
