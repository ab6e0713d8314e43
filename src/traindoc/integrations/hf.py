"""`TraindocCallback`: `traindoc.watch` inside a Hugging Face ``Trainer``, in one line.

    from traindoc.integrations.hf import TraindocCallback

    cb = TraindocCallback()                       # run dir: <output_dir>/traindoc
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[cb])
    trainer.train()
    cb.report                                     # the Report; printed in short at the end

How it is wired:

* ``on_train_begin``: watches the ``model`` and ``optimizer`` the Trainer passes (the optimizer is
  Accelerate's wrapper; the watch hooks the torch optimizer inside it, so with
  ``gradient_accumulation_steps=N`` one optimizer step is one watched step, and the Trainer's own
  ``clip_grad_norm_`` (``max_grad_norm``) is seen with its pre-clip norm).
* The loss of each micro-batch is read from the model's output (``outputs.loss``, kept on the
  device: no sync) by a forward hook, only while the model is in training mode. The step's loss
  is their mean, or their sum when the Trainer passed ``num_items_in_batch`` (the model then
  divides each micro-batch's token-loss sum by the step's token count, so the sum is the step's
  mean token loss). It is logged in ``on_pre_optimizer_step``. This is the per-step loss with
  non-finite values kept: the Trainer's ``logging_nan_inf_filter`` hides them from its own logs.
* A model whose output holds no loss (a custom ``compute_loss``): the ``loss`` of the Trainer's
  logs is used instead (the mean over ``logging_steps``, attributed to the step it was logged at).
* ``on_train_end``: closes the watch, keeps the `Report` at ``callback.report`` and prints a short
  summary (``print_summary=False`` to silence it).

Only the main process (``state.is_world_process_zero``) watches. traindoc's own failures are
recorded or warned about; they never stop the training.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from traindoc.integrations._common import close_watch, start_watch, summary
from traindoc.rundir import fresh_run_dir

try:
    from transformers import TrainerCallback
except ImportError:  # importable without transformers (docs, doctest collection); unusable until installed
    TrainerCallback = object  # type: ignore[assignment,misc]


class TraindocCallback(TrainerCallback):
    """Watch a Hugging Face Trainer run with `traindoc.watch`; the `Report` ends up in ``self.report``.

    Args:
        run_dir: the run directory (default ``<args.output_dir>/traindoc``, a fresh one per run).
        print_summary: print the findings in short when training ends.
        keep_batch: keep a reference to the latest training batch, replayed through the
            ``nan-forward`` probe if the loss or a gradient turns non-finite.
        **watch_options: passed to `traindoc.watch` (``every``, ``histograms_every``, ...).
    """

    def __init__(self, run_dir: str | Path | None = None, *, print_summary: bool = True, keep_batch: bool = True,
                 **watch_options: Any):
        if TrainerCallback is object:
            raise ImportError("traindoc.integrations.hf needs transformers: pip install 'traindoc[hf]'")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.print_summary = print_summary
        self.keep_batch = keep_batch
        self.watch_options = watch_options
        self.watch: Any = None
        self.report: Any = None
        self._handle: Any = None
        self._pending: list[torch.Tensor] = []
        self._sum_losses = False
        self._model_gives_loss = False

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.watch is not None:  # train() called again: finish the previous run first
            self._finish(state)
        if not getattr(state, "is_world_process_zero", True):
            return
        if model is None or optimizer is None:
            warnings.warn("traindoc TraindocCallback: the Trainer passed no model/optimizer to on_train_begin; "
                          "not watching", RuntimeWarning, stacklevel=2)
            return
        run_dir = self.run_dir if self.run_dir is not None else fresh_run_dir(Path(args.output_dir) / "traindoc")
        self.watch = start_watch(model, optimizer, "TraindocCallback", run_dir=run_dir, **self.watch_options)
        if self.watch is None:
            return
        self._pending, self._model_gives_loss = [], False
        try:
            self._handle = model.register_forward_hook(self._forward_hook, with_kwargs=True)
        except Exception as e:
            warnings.warn(f"traindoc TraindocCallback: no forward hook ({e}); the loss comes from the logs",
                          RuntimeWarning, stacklevel=2)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._log_pending()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._log_pending()  # Trainers without on_pre_optimizer_step: the step just taken

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self.watch is None or self._model_gives_loss or not logs:
            return
        loss = logs.get("loss")
        if isinstance(loss, (int, float, torch.Tensor)) and not isinstance(loss, bool):
            self.watch.log(loss=loss)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish(state)

    # ------------------------------------------------------------------ internals
    def _forward_hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                      output: Any) -> None:
        try:
            if self.watch is None or not module.training or not torch.is_grad_enabled():
                return
            loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self._pending.append(loss.detach().reshape(()))
                self._model_gives_loss = True
                self._sum_losses = kwargs.get("num_items_in_batch") is not None
            if self.keep_batch and not args and kwargs:
                self.watch.watch_batch({k: v for k, v in kwargs.items() if k != "num_items_in_batch"})
        except Exception as e:  # never break the user's forward
            self._disable_hook(e)

    def _disable_hook(self, e: Exception) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        warnings.warn(f"traindoc TraindocCallback: forward hook failed ({type(e).__name__}: {e}); "
                      "the loss now comes from the Trainer's logs", RuntimeWarning, stacklevel=2)
        self._model_gives_loss = False

    def _log_pending(self) -> None:
        if self.watch is None or not self._pending:
            return
        losses, self._pending = self._pending, []
        try:
            stacked = torch.stack([t.float() for t in losses])
            self.watch.log(loss=stacked.sum() if self._sum_losses else stacked.mean())
        except Exception as e:
            warnings.warn(f"traindoc TraindocCallback: could not log the loss ({e})", RuntimeWarning, stacklevel=2)

    def _finish(self, state: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.watch is None:
            return
        self._log_pending()
        w, self.watch = self.watch, None
        self.report = close_watch(w, "TraindocCallback")
        if self.report is not None and self.print_summary and getattr(state, "is_world_process_zero", True):
            print(summary(self.report, w.run_dir))
