"""`TraindocCallback`: `traindoc.watch` inside a Lightning ``Trainer``, in one line.

    from traindoc.integrations.lightning import TraindocCallback

    cb = TraindocCallback()                       # run dir: <default_root_dir>/traindoc
    trainer = lightning.pytorch.Trainer(max_epochs=3, callbacks=[cb])
    trainer.fit(module, loader)
    cb.report                                     # the Report; printed in short at the end

How it is wired:

* ``on_train_start`` (the optimizers exist by then): watches the LightningModule with each
  optimizer of ``trainer.optimizers`` (with several optimizers, one run directory per optimizer:
  ``RUN_DIR/optimizer0``, ``RUN_DIR/optimizer1``, ...). Lightning's ``gradient_clip_val`` is seen
  with its pre-clip norm.
* Lightning calls ``optimizer.step(closure)`` and the closure runs ``training_step`` and
  ``backward`` *inside* the step, after the optimizer's step pre-hooks have fired: traindoc would
  measure the previous step's gradients. While watched, the optimizer's ``step`` therefore runs the
  closure first and then steps without it, which is exactly what Adam, SGD and the other
  single-evaluation optimizers do themselves (it is also how Lightning's own mixed-precision
  plugin calls them). ``LBFGS``, which re-evaluates the closure, is left alone (its gradient
  statistics are then one step late, and a warning says so).
* ``on_train_batch_end``: logs ``outputs["loss"]`` (a tensor: no sync), multiplied back by
  ``accumulate_grad_batches`` because Lightning divides it; the watch averages the micro-batches
  of an optimizer step.
* ``on_train_end`` (or ``on_fit_end``, ``on_exception``): closes, keeps the `Report` at ``callback.report`` and
  prints a short summary (``print_summary=False`` to silence it).

Only global rank 0 watches.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

try:
    from lightning.pytorch import Callback
except ImportError:
    try:  # the standalone package
        from pytorch_lightning import Callback  # type: ignore[no-redef]
    except ImportError:  # importable without Lightning (docs, doctest collection); unusable until installed
        Callback = object  # type: ignore[assignment,misc]

from traindoc.integrations._common import close_watch, start_watch, summary
from traindoc.rundir import fresh_run_dir
from traindoc.setup import unwrap_optimizer


def run_closure_first(optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
    """Make ``optimizer.step(closure)`` evaluate the closure, then step without it; return the undo.

    Returns None (and changes nothing) for LBFGS, which needs the closure inside its step.

    >>> p = torch.nn.Parameter(torch.ones(2)); opt = torch.optim.SGD([p], lr=0.5)
    >>> order = []
    >>> h = opt.register_step_pre_hook(lambda *a: order.append("pre-hook"))
    >>> def closure():
    ...     order.append("closure"); opt.zero_grad(); loss = (p ** 2).sum(); loss.backward()
    ...     return loss.detach()
    >>> undo = run_closure_first(opt)
    >>> float(opt.step(closure)), order, p.tolist()
    (2.0, ['closure', 'pre-hook'], [0.0, 0.0])
    >>> undo(); "step" in vars(opt)
    False
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        return None
    had_own = "step" in vars(optimizer)
    original = optimizer.step

    def step(closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if closure is None:
            return original(**kwargs)
        with torch.enable_grad():
            result = closure()
        original(**kwargs)
        return result

    optimizer.step = step  # type: ignore[method-assign]

    def undo() -> None:
        if had_own:
            optimizer.step = original  # type: ignore[method-assign]
        else:
            vars(optimizer).pop("step", None)

    return undo


class TraindocCallback(Callback):
    """Watch a Lightning run with `traindoc.watch`; the `Report` ends up in ``self.report``.

    Args:
        run_dir: the run directory (default ``<trainer.default_root_dir>/traindoc``, fresh per fit).
        print_summary: print the findings in short when training ends.
        **watch_options: passed to `traindoc.watch` (``every``, ``histograms_every``, ...).
    """

    def __init__(self, run_dir: str | Path | None = None, *, print_summary: bool = True, **watch_options: Any):
        if Callback is object:
            raise ImportError("traindoc.integrations.lightning needs Lightning: pip install 'traindoc[lightning]'")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.print_summary = print_summary
        self.watch_options = watch_options
        self.watches: list[Any] = []
        self.reports: list[Any] = []
        self.report: Any = None
        self._undo: list[Callable[[], None]] = []

    @property
    def watch(self) -> Any:
        """The watch of the first optimizer (None when not watching)."""
        return self.watches[0] if self.watches else None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.watches:
            self._finish(trainer)
        if not getattr(trainer, "is_global_zero", True):
            return
        optimizers = [unwrap_optimizer(o) for o in trainer.optimizers]
        if not optimizers:
            warnings.warn("traindoc TraindocCallback: the trainer has no optimizer; not watching",
                          RuntimeWarning, stacklevel=2)
            return
        base = self.run_dir if self.run_dir is not None else fresh_run_dir(Path(trainer.default_root_dir) / "traindoc")
        for i, opt in enumerate(optimizers):
            run_dir = base if len(optimizers) == 1 else base / f"optimizer{i}"
            w = start_watch(pl_module, opt, "TraindocCallback", run_dir=run_dir, **self.watch_options)
            if w is None:
                continue
            self.watches.append(w)
            undo = run_closure_first(w.optimizer)
            if undo is None:
                warnings.warn("traindoc TraindocCallback: LBFGS evaluates its closure inside step(); gradient "
                              "statistics are recorded one step late", RuntimeWarning, stacklevel=2)
            else:
                self._undo.append(undo)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.watches:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        loss = loss.detach()
        if getattr(pl_module, "automatic_optimization", True):
            accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
            if accumulate != 1:
                loss = loss * accumulate  # Lightning divided it before backward
        for w in self.watches:
            w.log(loss=loss)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(trainer)  # a no-op when on_train_end already closed

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish(trainer)

    def _finish(self, trainer: Any) -> None:
        for undo in self._undo:
            with contextlib.suppress(Exception):
                undo()
        self._undo.clear()
        watches, self.watches = self.watches, []
        if not watches:
            return
        self.reports = [close_watch(w, "TraindocCallback") for w in watches]
        self.report = self.reports[0]
        if self.print_summary:
            for w, report in zip(watches, self.reports, strict=True):
                if report is not None:
                    print(summary(report, w.run_dir))
