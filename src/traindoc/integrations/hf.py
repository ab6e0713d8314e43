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

The accumulation check (``grad-accum-normalization``, error). The Trainer divides each micro-batch
loss by the accumulation count *unless* it counts the loss as already scaled: by default when the
model's forward accepts ``**kwargs`` (``model_accepts_loss_kwargs``) and it passed
``num_items_in_batch``, trusting the model to sum its per-item losses and divide by the whole step's
item count. A model that ignores ``num_items_in_batch`` and returns a plain mean (transformers 5.x
``BertForSequenceClassification``) then gets every gradient ``k`` times too large. On the
micro-batches of the first optimizer steps (at most ``CHECK_STEPS``, until one is decisive) the
forward hook recomputes, from the output's ``logits`` and the ``labels`` (-100 ignored), the sum of
the per-item losses the way the model's loss defines them (cross-entropy over samples or tokens,
shifted for causal LMs; MSE for regression; BCE for multi-label) and the item count, and a hook on
the returned loss records the gradient that reaches it in the backward (1 if the Trainer
backpropagated it as returned, ``1/k`` if it divided; an AMP scaler's scale is divided out). At the
step's ``on_pre_optimizer_step`` (one small host copy) each micro-batch is judged: the returned loss
equals the plain mean and not ``sum / num_items_in_batch``, with ``num_items_in_batch`` at least
1.5x the micro-batch's items, and the Trainer did not divide: proved, the gradient is ``k`` times
too large. The reverse (a loss normalised by ``num_items_in_batch`` that the Trainer divided again)
is ``k`` times too small. The first step's loss against ``k x ln C`` (a fresh C-class head starts at
``ln C`` per micro-batch) is added as independent evidence. What was measured stays at
``callback.accumulation_check``. The check is skipped with several processes or GPUs, and never
touches the training: its failures become a ``probe-failed`` hint. The same measurement tells how
the Trainer combined the micro-batch losses, so the logged step loss is what it backpropagated
(the sum when it did not divide, the mean when it did).

Only the main process (``state.is_world_process_zero``) watches. traindoc's own failures are
recorded or warned about; they never stop the training.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from traindoc.findings import internal_failure
from traindoc.integrations._common import close_watch, start_watch, summary
from traindoc.integrations.hf_accumulation import (
    CHECK_STEPS,
    REASONS,
    MicroBatch,
    accumulation_finding,
    amp_scale,
    item_losses,
    judge_micro_batch,
    keep_grad,
)
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

    After a run, ``self.accumulation_check`` holds what the accumulation check measured (see the
    module docstring): its ``verdict`` (``too-large``, ``too-small``, ``healthy``,
    ``no-accumulation``, ``undetermined``, ``not-checked``), ``reason`` and the micro-batches' numbers.
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
        self.accumulation_check: dict[str, Any] | None = None
        self._handle: Any = None
        self._pending: list[torch.Tensor] = []
        self._sum_losses = False
        self._model_gives_loss = False
        self._micro: list[MicroBatch] = []
        self._check_steps_left = 0
        self._divided: bool | None = None
        self._accumulation = 1
        self._scaler: Any = None

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
        self._micro, self._divided, self._scaler = [], None, getattr(optimizer, "scaler", None)
        self._accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        several = int(getattr(args, "world_size", 1) or 1) > 1 or int(getattr(args, "n_gpu", 1) or 1) > 1
        self._check_steps_left = 0 if several else CHECK_STEPS
        self.accumulation_check = ({"verdict": "not-checked", "reason": "several processes or GPUs"} if several
                                   else None)
        try:
            self._handle = model.register_forward_hook(self._forward_hook, with_kwargs=True)
        except Exception as e:
            warnings.warn(f"traindoc TraindocCallback: no forward hook ({e}); the loss comes from the logs",
                          RuntimeWarning, stacklevel=2)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._judge_step()
        self._log_pending()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._judge_step()
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
                if self._check_steps_left > 0 and self._sum_losses and loss.requires_grad:
                    self._record_micro_batch(module, output, loss, kwargs)
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
        # what the Trainer backpropagated: the sum when it did not divide by the accumulation count
        # (measured by the accumulation check; until then, when the model was given num_items_in_batch)
        use_sum = (not self._divided) if self._divided is not None else self._sum_losses
        try:
            stacked = torch.stack([t.float() for t in losses])
            self.watch.log(loss=stacked.sum() if use_sum else stacked.mean())
        except Exception as e:
            warnings.warn(f"traindoc TraindocCallback: could not log the loss ({e})", RuntimeWarning, stacklevel=2)

    def _finish(self, state: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.watch is None:
            return
        self._judge_step()
        self._log_pending()
        w, self.watch = self.watch, None
        self.report = close_watch(w, "TraindocCallback")
        if self.report is not None and self.print_summary and getattr(state, "is_world_process_zero", True):
            print(summary(self.report, w.run_dir))

    # ------------------------------------------------------------------ the accumulation check
    def _record_micro_batch(self, model: torch.nn.Module, output: Any, loss: torch.Tensor,
                            kwargs: dict[str, Any]) -> None:
        """The device side, in the forward hook: no host sync."""
        try:
            logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
            labels = kwargs.get("labels")
            found = None
            if isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor):
                with torch.no_grad():
                    found = item_losses(model, logits.detach(), labels.detach(), kwargs.get("shift_labels"))
            if found is None:  # the same for every micro-batch of the run: stop trying
                self._check_steps_left = 0
                shapes = (f"logits {list(logits.shape)}, labels {list(labels.shape)} {labels.dtype}"
                          if isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)
                          else "no logits or labels")
                self.accumulation_check = {"verdict": "undetermined", "reason": f"no mirror of this loss ({shapes})"}
                return
            kind, item_sum, items, width = found
            n = kwargs["num_items_in_batch"]
            num_items = n.detach() if isinstance(n, torch.Tensor) else torch.tensor(float(n))
            mb = MicroBatch(loss.detach().float().reshape(()).clone(), item_sum, items, num_items, kind, width)
            loss.register_hook(functools.partial(keep_grad, mb))
            self._micro.append(mb)
        except Exception as e:
            self._check_failed(e)

    def _judge_step(self) -> None:
        """The host side, once per inspected optimizer step (a few small copies)."""
        micro, self._micro = self._micro, []
        if not micro or self._check_steps_left <= 0 or self.watch is None:
            return
        self._check_steps_left -= 1
        try:
            self._judge(micro)
        except Exception as e:
            self._check_failed(e)

    def _judge(self, micro: list[MicroBatch]) -> None:
        k = len(micro)  # micro-batches of this optimizer step: what the Trainer divides by, if it does
        scale = amp_scale(self._scaler)
        rows = []
        for mb in micro:
            returned, item_sum, items, num_items = torch.stack(
                [t.detach().double().reshape(-1)[0].cpu() for t in (mb.returned, mb.item_sum, mb.items, mb.num_items)]
            ).tolist()
            grad = float(mb.grad) / scale if mb.grad is not None else math.nan
            rows.append(judge_micro_batch(returned, item_sum, items, num_items, grad, k) | {"loss_kind": mb.kind})
        for r in rows:  # how the Trainer combined the micro-batch losses, for the logged step loss
            if r["trainer_divided"] is not None:
                self._divided = r["trainer_divided"]
                break
        verdicts = [r["verdict"] for r in rows]
        verdict = next((v for v in ("too-large", "too-small", "healthy", "no-accumulation") if v in verdicts),
                       "undetermined")
        step = self.watch.steps
        step_loss = sum(r["returned_loss"] for r in rows) / (k if self._divided else 1)  # as the Trainer logs it
        classes = micro[0].width if micro[0].kind.startswith("cross-entropy") and micro[0].width > 1 else None
        chance = math.log(classes) if classes else None
        self.accumulation_check = {
            "verdict": verdict, "reason": REASONS[verdict], "step": step, "micro_batches": rows,
            "gradient_accumulation_steps": self._accumulation, "micro_batches_in_step": k, "amp_scale": scale,
            "step_loss": step_loss, "classes": classes, "chance_loss": chance}
        if verdict in ("too-large", "too-small", "healthy"):
            self._check_steps_left = 0
        if verdict in ("too-large", "too-small"):
            model = self.watch.model
            self.watch.add_finding(accumulation_finding(verdict, rows, type(model).__name__, k,
                                                         self._accumulation, step, step_loss, classes), step)

    def _check_failed(self, e: Exception) -> None:
        self._check_steps_left, self._micro = 0, []
        self.accumulation_check = {"verdict": "undetermined", "reason": f"the check failed: {type(e).__name__}: {e}"}
        if self.watch is not None:
            self.watch.add_finding(internal_failure("traindoc's Hugging Face accumulation check", e))
