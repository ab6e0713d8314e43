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
micro-batches of the first optimizer steps (at most ``_CHECK_STEPS``, until one is decisive) the
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

import contextlib
import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from traindoc.findings import Finding, internal_failure, listed
from traindoc.integrations._common import close_watch, start_watch, summary
from traindoc.rundir import fresh_run_dir

try:
    from transformers import TrainerCallback
except ImportError:  # importable without transformers (docs, doctest collection); unusable until installed
    TrainerCallback = object  # type: ignore[assignment,misc]

_CHECK_STEPS = 3
"""Optimizer steps whose micro-batches the accumulation check inspects at most (until one is decisive)."""
_LOSS_RTOL = 1e-2
"""The returned loss 'equals' a recomputation within this relative tolerance (bf16 logits included)."""
_SCALE_TOL = 0.05
"""The gradient reaching the returned loss 'is' 1 or 1/k within this relative tolerance."""
_MIN_ITEM_RATIO = 1.5
"""num_items_in_batch / the micro-batch's items at least this: a plain mean and a normalised sum differ."""
_CHUNK_ELEMENTS = 1 << 24
"""The recomputed cross-entropy reads at most this many logits at a time (bounded extra memory)."""


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
        self._micro: list[_MicroBatch] = []
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
        self._check_steps_left = 0 if several else _CHECK_STEPS
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
                    found = _item_losses(model, logits.detach(), labels.detach(), kwargs.get("shift_labels"))
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
            mb = _MicroBatch(loss.detach().float().reshape(()).clone(), item_sum, items, num_items, kind, width)
            loss.register_hook(functools.partial(_keep_grad, mb))
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

    def _judge(self, micro: list[_MicroBatch]) -> None:
        k = len(micro)  # micro-batches of this optimizer step: what the Trainer divides by, if it does
        scale = _amp_scale(self._scaler)
        rows = []
        for mb in micro:
            returned, item_sum, items, num_items = torch.stack(
                [t.detach().double().reshape(-1)[0].cpu() for t in (mb.returned, mb.item_sum, mb.items, mb.num_items)]
            ).tolist()
            grad = float(mb.grad) / scale if mb.grad is not None else math.nan
            rows.append(_judge_micro_batch(returned, item_sum, items, num_items, grad, k) | {"loss_kind": mb.kind})
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
            "verdict": verdict, "reason": _REASONS[verdict], "step": step, "micro_batches": rows,
            "gradient_accumulation_steps": self._accumulation, "micro_batches_in_step": k, "amp_scale": scale,
            "step_loss": step_loss, "classes": classes, "chance_loss": chance}
        if verdict in ("too-large", "too-small", "healthy"):
            self._check_steps_left = 0
        if verdict in ("too-large", "too-small"):
            model = self.watch.model
            self.watch.add_finding(_accumulation_finding(verdict, rows, type(model).__name__, k,
                                                         self._accumulation, step, step_loss, classes), step)

    def _check_failed(self, e: Exception) -> None:
        self._check_steps_left, self._micro = 0, []
        self.accumulation_check = {"verdict": "undetermined", "reason": f"the check failed: {type(e).__name__}: {e}"}
        if self.watch is not None:
            self.watch.add_finding(internal_failure("traindoc's Hugging Face accumulation check", e))


@dataclass
class _MicroBatch:
    returned: torch.Tensor  # the loss the model returned (a copy: the Trainer may scale it in place)
    item_sum: torch.Tensor  # its per-item losses, recomputed from the logits and labels, summed
    items: torch.Tensor  # the micro-batch's items (targets not ignored)
    num_items: torch.Tensor  # num_items_in_batch as the Trainer passed it (the whole step's items)
    kind: str
    width: int  # the logits' last dimension (classes, vocabulary)
    grad: torch.Tensor | None = None  # d(backpropagated objective) / d(returned loss), set in the backward


def _keep_grad(mb: _MicroBatch, grad: torch.Tensor) -> None:
    with contextlib.suppress(Exception):  # a backward hook must never raise into the training's backward
        mb.grad = grad.detach().reshape(-1)[0].clone()


def _amp_scale(scaler: Any) -> float:
    """The loss scale of the AMP ``GradScaler`` Accelerate keeps on its optimizer (1 without one)."""
    if scaler is None or (hasattr(scaler, "is_enabled") and not scaler.is_enabled()):
        return 1.0
    return float(scaler.get_scale())


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (rows, classes) logits, -100 ignored, a chunk of rows at a time."""
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    for i in range(0, logits.shape[0], rows):
        total += F.cross_entropy(logits[i:i + rows].float(), targets[i:i + rows], ignore_index=-100, reduction="sum")
    return total


def _loss_shifts_labels(model: Any) -> bool:
    """The model's loss is transformers' causal-LM loss (predictions at i target label i+1)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss

        return getattr(model, "loss_function", None) is ForCausalLMLoss
    except Exception:
        return False


def _item_losses(model: Any, logits: torch.Tensor, labels: torch.Tensor,
                 shift_labels: Any) -> tuple[str, torch.Tensor, torch.Tensor, int] | None:
    """``(kind, sum of the per-item losses, item count, logits width)`` as the model's loss defines
    them (transformers' heads and `loss_utils`), or None when this is not a loss mirrored here."""
    labels = labels.to(logits.device)
    width = int(logits.shape[-1]) if logits.dim() else 0
    if logits.dim() == 2 and labels.dim() >= 1 and labels.shape[0] == logits.shape[0]:  # one prediction per sample
        problem = getattr(getattr(model, "config", None), "problem_type", None)
        if problem is None:  # as the sequence-classification heads decide it
            problem = ("regression" if width == 1 else "single_label_classification"
                       if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
        if problem == "single_label_classification" and not labels.is_floating_point():
            targets = labels.reshape(-1)
            if targets.numel() != logits.shape[0]:
                return None
            return "cross-entropy over samples", _ce_sum(logits, targets), targets.ne(-100).sum(), width
        if problem == "regression":
            pred, target = (logits.squeeze(), labels.squeeze()) if width == 1 else (logits, labels)
            if pred.shape != target.shape:
                return None
            diff = pred.float() - target.float()
            return ("squared error over label values", diff.square().sum(),
                    torch.tensor(diff.numel(), device=logits.device), width)
        if problem == "multi_label_classification" and labels.shape == logits.shape:
            bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
            return "binary cross-entropy over label values", bce, torch.tensor(labels.numel(), device=logits.device), width
        return None
    if logits.dim() == 3 and not labels.is_floating_point():  # one prediction per token
        kind = "cross-entropy over tokens"
        if isinstance(shift_labels, torch.Tensor):
            targets, kind = shift_labels.to(logits.device), kind + " (shift_labels)"
        elif _loss_shifts_labels(model):
            targets, kind = F.pad(labels, (0, 1), value=-100)[..., 1:], kind + " (shifted: causal LM)"
        else:
            targets = labels
        if targets.shape != logits.shape[:-1]:
            return None
        targets = targets.reshape(-1)
        return kind, _ce_sum(logits.reshape(-1, width), targets), targets.ne(-100).sum(), width
    return None


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def _judge_micro_batch(returned: float, item_sum: float, items: float, num_items: float, grad: float,
                       k: int) -> dict[str, Any]:
    """One micro-batch: which loss the model returned, whether the Trainer divided it, the verdict."""
    mean = item_sum / items if items > 0 else math.nan
    normalised = item_sum / num_items if num_items > 0 else math.nan
    is_mean, is_normalised = _close(returned, mean, _LOSS_RTOL), _close(returned, normalised, _LOSS_RTOL)
    not_divided = _close(grad, 1.0, _SCALE_TOL)
    divided = k > 1 and _close(grad * k, 1.0, _SCALE_TOL)
    apart = items > 0 and num_items / items >= _MIN_ITEM_RATIO
    if apart and is_mean and not is_normalised and not_divided:
        verdict = "too-large"
    elif apart and is_normalised and not is_mean and divided:
        verdict = "too-small"
    elif not apart and is_mean and is_normalised:
        verdict = "no-accumulation"
    elif (is_normalised and not_divided) or (is_mean and divided):
        verdict = "healthy"
    else:
        verdict = "undetermined"
    # the factor on the gradient against the step's mean over all its items (1 when right)
    coefficient = (1 / items if is_mean and not is_normalised else 1 / num_items if is_normalised else math.nan)
    return {"returned_loss": returned, "plain_mean": mean, "sum_over_num_items_in_batch": normalised,
            "item_loss_sum": item_sum, "items": items, "num_items_in_batch": num_items,
            "returned_is": ("plain mean (num_items_in_batch ignored)" if is_mean and not is_normalised else
                            "sum / num_items_in_batch" if is_normalised and not is_mean else
                            "both (equal here)" if is_mean else "neither"),
            "loss_gradient_scale": grad,
            "trainer_divided": True if divided else False if not_divided else None,
            "gradient_factor": grad * coefficient * num_items, "verdict": verdict}


_REASONS = {
    "too-large": "the model returned a plain mean, ignoring num_items_in_batch, and the Trainer did not divide it "
                 "by the accumulation count",
    "too-small": "the model normalised its loss by num_items_in_batch and the Trainer divided it again",
    "healthy": "the Trainer's division and the model's normalisation agree",
    "no-accumulation": "num_items_in_batch equals the micro-batch's own items: a plain mean and a normalised sum "
                       "coincide",
    "undetermined": "the returned loss or the gradient reaching it matched no known normalisation",
}


def _accumulation_finding(verdict: str, rows: list[dict[str, Any]], model_name: str, k: int, accumulation: int,
                          step: int, step_loss: float, classes: int | None) -> Finding:
    r = next(r for r in rows if r["verdict"] == verdict)
    factor = r["gradient_factor"]
    evidence: dict[str, Any] = {
        "model": model_name, "step": step, "gradient_accumulation_steps": accumulation,
        "micro_batches_in_step": k, "loss_kind": r["loss_kind"],
        "returned_loss": r["returned_loss"], "plain_mean": r["plain_mean"],
        "sum_over_num_items_in_batch": r["sum_over_num_items_in_batch"], "items": r["items"],
        "num_items_in_batch": r["num_items_in_batch"], "returned_is": r["returned_is"],
        "loss_gradient_scale": r["loss_gradient_scale"], "trainer_divided": r["trainer_divided"],
        "gradient_factor": factor, "step_loss": step_loss,
        "micro_batches": listed({kk: v for kk, v in row.items() if kk != "loss_kind"} for row in rows)}
    try:
        import transformers

        evidence["transformers_version"] = transformers.__version__
        has_switch = hasattr(transformers.Trainer, "loss_is_scaled_for_ga")
    except Exception:
        has_switch = False
    if verdict == "too-large":
        chance_text = ""
        if classes is not None:
            chance = math.log(classes)
            evidence.update({"classes": classes, "chance_loss": chance, "accumulation_times_chance": k * chance,
                             "step_loss_over_chance": step_loss / chance})
            chance_text = (f"; step {step}'s loss {step_loss:.4g} is {step_loss / chance:.2f} x ln {classes}, "
                           "where a fresh head starts at 1 x")
        title = (f"{model_name} ignores num_items_in_batch, so gradient_accumulation_steps={k} multiplies every "
                 f"gradient and loss by {factor:.2f}: it returned the plain mean {r['returned_loss']:.4g} (not "
                 f"sum / num_items_in_batch = {r['sum_over_num_items_in_batch']:.4g}) and the Trainer did not "
                 f"divide it by {k}{chance_text}")
        switch = "`trainer.loss_is_scaled_for_ga = False` before `trainer.train()`, or " if has_switch else ""
        fix = (f"This model's loss is a per-batch mean, so the Trainer must divide it by the accumulation count: set "
               f"{switch}`model.accepts_loss_kwargs = False` before building the Trainer (it then neither passes "
               "num_items_in_batch nor relies on it). Or train a model whose loss sums its per-item losses and "
               "divides by `num_items_in_batch` (transformers' causal-LM loss does). A lower LR is not the fix: "
               "the logged loss and the clipping at max_grad_norm stay k times off.")
        return Finding("grad-accum-normalization", "error", title, evidence, fix)
    title = (f"The Trainer divided a loss already normalised by num_items_in_batch by "
             f"gradient_accumulation_steps={k}: every gradient is {1 / factor:.2f} times too small "
             f"(gradient reaching the loss {r['loss_gradient_scale']:.3g}, expected 1)")
    fix = ("The model already sums its per-item losses and divides by num_items_in_batch (the whole step's items): "
           "let the Trainer use the loss as it is (remove `loss_is_scaled_for_ga = False`, or the division by "
           "the accumulation steps in your `training_step`/`compute_loss`).")
    return Finding("grad-accum-normalization", "error", title, evidence, fix)
