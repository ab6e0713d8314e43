"""The hooks a watch puts into PyTorch, and how they are taken out again.

* ``optimizer.register_step_pre_hook`` / ``register_step_post_hook`` -> `StepRecorder.pre_step` /
  `post_step` (before the pre-step, ``before_step`` runs: the watch flushes there when a flush is
  due, outside any user code);
* a gradient hook on the first and the last watched parameter -> `StepRecorder.backward` (backward
  passes per optimizer step), one on the smallest -> `StepRecorder.first_backward`;
* a listener of the ``clip_grad_norm_`` patch (`traindoc.monitor.clip_patch`) -> `StepRecorder.clip`;
* ``scaler.step`` of an AMP GradScaler, when given -> `StepRecorder.skipped_step` when the scaler
  skipped the optimizer step;
* ``optimizer.zero_grad`` and ``model.zero_grad`` (wrapped on the instances) -> `StepRecorder.zero_grad`.

Every hook body runs through the watch's `FailureLog`: an exception inside traindoc is recorded and
the training goes on; the user's own exceptions (in their forward, their clip call) are untouched.
While `paused` (a ``traindoc.check`` or the NaN replay runs forwards and backwards of its own) or
after `remove`, the hooks do nothing.

Nothing global holds a watch strongly: the optimizer's step hooks do (the watch lives as long as the
optimizer it watches), the gradient hooks, the clip listener and the scaler wrapper hold it weakly,
and if the watch is garbage-collected without ``close()`` the gradient hooks and the clip listener
are removed with it, so a forgotten watch (a re-run notebook cell) frees its model.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from traindoc.monitor.clip_patch import add_clip_listener
from traindoc.monitor.failures import FailureLog
from traindoc.monitor.recorder import StepRecorder
from traindoc.setup import unwrap_optimizer


class _ClipListener:
    """What the clip patch calls on each ``clip_grad_norm_`` (holds the hooks weakly)."""

    def __init__(self, hooks: Hooks):
        self._ref = weakref.ref(hooks)

    def __call__(self, params: list[torch.Tensor], norms: torch.Tensor | None, total: torch.Tensor,
                 max_norm: Any) -> None:
        hooks = self._ref()
        if hooks is not None and hooks.active:
            hooks.failures.guard("clip_grad_norm_ hook", hooks.recorder.clip, params, norms, total, max_norm)

    def on_error(self, where: str, text: str) -> None:
        hooks = self._ref()
        if hooks is not None:
            hooks.failures.record_text(where, text)


def _release(handles: list[Any], undo: list[Callable[[], None]]) -> None:
    for h in handles:
        with contextlib.suppress(Exception):
            h.remove()
    for fn in undo:
        with contextlib.suppress(Exception):
            fn()


class Hooks:
    """Installs and removes a watch's hooks (see the module docstring)."""

    def __init__(self, recorder: StepRecorder, optimizer: torch.optim.Optimizer, failures: FailureLog,
                 before_step: Callable[[], None], scaler: Any = None):
        self.recorder = recorder
        self.optimizer = optimizer
        self.failures = failures
        self.before_step = before_step
        self.scaler = scaler
        self.removed = False
        self._paused = 0
        self._handles: list[Any] = []
        self._finalizer: weakref.finalize | None = None

    @property
    def active(self) -> bool:
        return not self.removed and not self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Ignore every event inside the block (traindoc's own passes are not the user's steps)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def install(self) -> None:
        rec, opt = self.recorder, self.optimizer
        self._handles.append(opt.register_step_pre_hook(self._pre_step))
        self._handles.append(opt.register_step_post_hook(self._post_step))
        me = weakref.ref(self)
        params = rec.layout.params
        grad_hooks = [params[i].register_hook(_count_hook(me, slot)) for slot, i in enumerate(rec.count_params)]
        grad_hooks.append(params[rec.stale_param].register_hook(_stale_hook(me)))
        undo = [add_clip_listener(_ClipListener(self))]
        for owner in (opt, rec.model):  # optimizer.zero_grad() or model.zero_grad(): a reset of the gradients
            undo.append(_wrap_zero_grad(owner, me))
        if self.scaler is not None and hasattr(self.scaler, "step"):
            undo.append(_wrap_scaler(self.scaler, me))
        # a watch that is never closed: drop what would outlive it when it is garbage-collected
        self._finalizer = weakref.finalize(self, _release, grad_hooks, undo)

    def remove(self) -> None:
        self.removed = True
        for h in self._handles:
            self.failures.guard("remove hooks", h.remove)
        self._handles.clear()
        if self._finalizer is not None:
            self._finalizer()  # the gradient hooks, the clip listener, the scaler wrapper

    # ------------------------------------------------------------------ hook bodies
    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.active:
            self.failures.guard("flush", self.before_step)
            self.failures.guard("optimizer pre-step hook", self.recorder.pre_step, False)

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.active:
            self.failures.guard("optimizer post-step hook", self.recorder.post_step)

    def skipped(self, optimizer: Any) -> None:
        if self.active and unwrap_optimizer(optimizer) is self.optimizer:
            self.failures.guard("flush", self.before_step)
            self.failures.guard("scaler.step", self.recorder.skipped_step)


def _count_hook(ref: weakref.ref[Hooks], slot: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        hooks = ref()
        if hooks is not None and hooks.active:
            hooks.recorder.backward(slot)

    return hook


def _stale_hook(ref: weakref.ref[Hooks]) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        hooks = ref()
        if hooks is not None and hooks.active:
            hooks.failures.guard("backward hook", hooks.recorder.first_backward)

    return hook


def _wrap_zero_grad(owner: Any, ref: weakref.ref[Hooks]) -> Callable[[], None]:
    """Wrap ``owner.zero_grad`` (on the instance) to tell the recorder the gradients were reset; return
    the undo, which holds neither the owner nor the wrapper strongly (a watch never closed must not
    keep the model alive through it)."""
    had_own = "zero_grad" in vars(owner)
    original = owner.zero_grad

    def zero_grad(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        hooks = ref()
        if hooks is not None and hooks.active:
            hooks.failures.guard("zero_grad hook", hooks.recorder.zero_grad)
        return out

    zero_grad.__wrapped__ = original  # type: ignore[attr-defined]
    object.__setattr__(owner, "zero_grad", zero_grad)
    owner_ref, wrapper_ref = weakref.ref(owner), weakref.ref(zero_grad)

    def undo() -> None:
        o, w = owner_ref(), wrapper_ref()
        if o is None or w is None or vars(o).get("zero_grad") is not w:
            return  # gone, or wrapped again by someone else since: leave it
        if had_own:
            object.__setattr__(o, "zero_grad", w.__wrapped__)  # type: ignore[attr-defined]
        else:
            vars(o).pop("zero_grad", None)

    return undo


def _wrap_scaler(scaler: Any, ref: weakref.ref[Hooks]) -> Callable[[], None]:
    """Wrap ``scaler.step`` to learn when the scaler skipped the optimizer step; return the undo."""
    had_own = "step" in vars(scaler)
    original = scaler.step

    def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        hooks = ref()
        before = hooks.recorder.step if hooks is not None else 0
        out = original(optimizer, *args, **kwargs)
        hooks = ref()
        if hooks is not None and hooks.recorder.step == before:
            hooks.skipped(optimizer)
        return out

    scaler.step = step

    def undo() -> None:
        if had_own:
            scaler.step = original
        else:
            vars(scaler).pop("step", None)

    return undo
