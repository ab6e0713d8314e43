"""One diagnosed script run: the doctor at the first optimizer step, the watch after it, the crash.

At the first optimizer step (before it updates any weight) the session knows what the script built:
the optimizer that is stepping, the model (the module last called on a batch in training mode whose
parameters that optimizer holds), the batch as it entered the model, and the loss (the model's own
output, or the last ``torch.nn.functional`` loss the script computed, with its targets). It runs
`traindoc.check` on them (which restores every weight, gradient, RNG and mode), then opens
`traindoc.watch` on the model and optimizer; every later backward logs its loss, every training
call of the model hands its batch to the watch. A second optimizer (a GAN's) is left alone and
named in ``info``.

When the script crashes, `crash_findings` turns what it captured into a diagnosis: a target out of
the model's classes (``Target 5 is out of bounds``, a CUDA device-side assert) is proved from the
last loss call's targets, with the offending values and samples.

Every finding is placed on the user's line to change (`location_of`): the loss call, the optimizer's
construction, the transformer layer's construction, the ``optimizer.step()`` or ``scheduler.step()``
call, the model call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from traindoc.api import check, watch
from traindoc.errors import TraindocInputError
from traindoc.findings import Finding, Report, internal_failure, listed
from traindoc.probes.optimizer import group_lr
from traindoc.script.capture import Capture, LossCall, ModelCall, Seen
from traindoc.script.distributed import (
    RankMeasures,
    accelerate_state,
    bypass_finding,
    declared_unused,
    parameter_prints,
    set_epoch_findings,
    unused_parameters_finding,
    wrapper_of,
)
from traindoc.script.frames import Location, setting_line, user_location
from traindoc.script.schedules import plan_findings
from traindoc.script.trial import TrialRun
from traindoc.setup import named_tensors


def uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module ``torch.compile`` wraps (``_orig_mod``), or ``module`` itself."""
    while hasattr(module, "_orig_mod") and isinstance(module._orig_mod, torch.nn.Module):
        module = module._orig_mod
    return module


def inner_module(module: torch.nn.Module) -> torch.nn.Module:
    """The model a wrapper trains: through ``torch.compile`` (``_orig_mod``) and DistributedDataParallel /
    DataParallel (``module``), so that the doctor's passes run no collective and no compiled graph."""
    while True:
        module = uncompiled(module)
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        else:
            return module


START_TRIES = 3
"""Optimizer steps at which the doctor and the watch try to start (the model must have been called on a
batch in training mode by then: a loop may call ``optimizer.step()`` before its first forward)."""


class StopScript(BaseException):  # noqa: N818 (not an error: the run reached --max-steps)
    """Raised from the optimizer step hook at ``--max-steps``: unwinds the script like Ctrl-C would,
    past its ``except Exception`` blocks."""


LINE_OF: dict[str, tuple[str, ...]] = {
    # the line each finding's fix changes, in order of preference ("created:" a constructor, else a call)
    "label-out-of-range": ("loss", "model"),
    "padding-in-loss": ("loss", "created:dataloader", "model"),
    "labels-not-shifted": ("loss", "model"),
    "pad-equals-eos": ("created:dataloader", "loss", "model"),
    "class-imbalance": ("created:dataloader", "loss"),
    "loss-at-chance": ("loss", "model"),
    "init-loss-mismatch": ("loss", "model"),
    "double-softmax": ("created:softmax", "loss", "model"),  # the nn.Softmax layer, else the loss call
    "nll-without-log-softmax": ("loss", "model"),
    "loss-broadcast": ("loss", "model"),
    "nan-loss": ("loss", "model"),
    "batch-mixing": ("created:transformer", "model"),
    "causal-leak": ("attention:decoder", "created:transformer", "model"),  # where the mask is passed or forgotten
    "padding-leak": ("attention", "created:transformer", "model"),
    "nan-forward": ("model",),
    "no-grad-params": ("model", "model_no_grad", "created:optimizer"),
    "oom-risk": ("model",),
    "train-mode-off": ("model", "step"),
    "params-not-in-optimizer": ("created:optimizer",),
    "lr-too-high": ("created:optimizer",),
    "lr-too-low": ("created:optimizer",),
    "weight-decay-on-norms": ("created:optimizer",),
    "loss-spike": ("created:optimizer",),
    "divergence": ("created:optimizer",),
    "loss-plateau": ("created:optimizer",),
    "vanishing-gradients": ("created:optimizer", "model"),
    "exploding-gradients": ("created:optimizer", "step"),
    "stalled-layers": ("created:optimizer",),
    "aggressive-clipping": ("clip", "step", "created:optimizer"),
    "missing-zero-grad": ("step", "backward"),
    "scheduler-misuse": ("scheduler_step", "created:scheduler"),
    "grad-accum-normalization": ("backward", "loss"),
    "repeated-batch": ("created:dataloader", "model"),
    "loss-collapse": ("created:dataloader", "loss"),
    "cannot-overfit-batch": ("created:optimizer", "model"),
    "ddp-same-data": ("created:dataloader", "model"),
    "ddp-set-epoch-missing": ("sampler_iter", "created:sampler"),
    "ddp-wrapper-bypassed": ("model",),
    "ddp-replicas-diverged": ("created:ddp", "model"),
    "ddp-unused-parameters": ("created:ddp", "model"),
}


EXPERIMENT_IDS = ("lr-too-high", "lr-too-low", "divergence", "aggressive-clipping", "cannot-overfit-batch")
"""The ids the experiments report on a script; a trial run names the line each would point at."""

SETTING_OF: dict[str, tuple[str, ...]] = {
    # the keyword arguments that hold the setting a finding's fix changes (`setting_line`)
    "lr-too-high": ("lr", "learning_rate"),
    "lr-too-low": ("lr", "learning_rate"),
    "loss-spike": ("lr", "learning_rate"),
    "divergence": ("lr", "learning_rate"),
    "cannot-overfit-batch": ("lr", "learning_rate"),
    "exploding-gradients": ("lr", "learning_rate", "max_grad_norm"),
    "aggressive-clipping": ("max_norm", "max_grad_norm"),
    "weight-decay-on-norms": ("weight_decay",),
    "batch-mixing": ("batch_first",),
    "grad-accum-normalization": ("gradient_accumulation_steps",),
    "padding-in-loss": ("ignore_index",),
    "ddp-unused-parameters": ("find_unused_parameters",),
}


def location_of(finding: Finding, seen: Seen, optimizer: Any = None) -> Location | None:
    """The user's line the finding's fix changes, from what the capture saw (None when unknown): the
    line of the setting itself where the call spells it (`SETTING_OF`, `setting_line`); the
    optimizer's line is the watched optimizer's."""
    kinds = LINE_OF.get(finding.id, ())
    if finding.id == "ddp-same-data" and finding.evidence.get("wrapped_by") == "accelerate":
        kinds = ("created:ddp", *kinds)  # the accelerator.prepare(...) call the DataLoader is missing from
    if finding.id == "double-softmax" and not finding.evidence.get("softmax_modules"):
        kinds = kinds[1:]  # a softmax computed in forward (F.softmax), not by an nn.Softmax layer
    stepped = seen.first_line("scheduler_step")
    if finding.id == "scheduler-misuse" and stepped is not None and ".step(" not in stepped.text:
        kinds = ("created:scheduler", *kinds)  # a framework steps it (Lightning): the fix is where it is built
    for kind in kinds:
        if kind.startswith("created:"):
            loc = seen.created_line(kind[8:], optimizer if kind == "created:optimizer" else None)
        elif kind.startswith("attention"):
            loc = seen.attention_line(decoder=kind == "attention:decoder")
        else:
            loc = seen.first_line(kind)
        if loc is not None:
            keywords = SETTING_OF.get(finding.id)
            return setting_line(loc, keywords) if keywords else loc
    return None


def batch_of(call: ModelCall) -> tuple[Any, Callable[[torch.nn.Module, Any], Any]]:
    """The batch as the model took it, and the call that gives it back to the model."""
    if not call.kwargs:
        if len(call.args) == 1:
            return call.args[0], lambda m, b: m(b)
        return tuple(call.args), lambda m, b: m(*b)
    if not call.args:
        return dict(call.kwargs), lambda m, b: m(**b)
    return (tuple(call.args), dict(call.kwargs)), lambda m, b: m(*b[0], **b[1])


def replay_of(call: ModelCall) -> tuple[torch.nn.Module, Any, Callable[[torch.nn.Module, Any], Any]]:
    """The model the call trained (`inner_module`), the batch it took, and the call that gives it back."""
    batch, forward = batch_of(call)
    return inner_module(call.module), batch, forward


def loss_fn_of(call: LossCall | None) -> Callable[[Any, Any], torch.Tensor] | None:
    """The script's loss as a function of the model's output: the last ``torch.nn.functional`` loss it
    called, on the output reshaped as the script did (``logits.view(-1, V)``), with the same targets
    and options. None when the output cannot be matched to that call's input."""
    if call is None or not isinstance(call.input, torch.Tensor):
        return None
    shape = call.input.shape

    def loss_fn(output: Any, batch: Any) -> torch.Tensor:
        x = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if x is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            x = output[0]
        if not isinstance(x, torch.Tensor) or x.numel() != call.input.numel():
            raise ValueError(f"the model's output does not match the input of the script's {call.name} call")
        return call.function(x.reshape(shape), call.target, *call.args, **call.kwargs)

    return loss_fn


_OUT_OF_BOUNDS = re.compile(r"out of bounds|device-side assert|t >= 0 && t < n_classes|cur_target >= 0", re.I)
_NONFINITE = re.compile(r"\bnan\b|\binf\b|non-?finite", re.I)
_OOM = re.compile(r"out of memory|can't allocate memory|DefaultCPUAllocator", re.I)
_NO_GRAPH = re.compile(r"does not require grad and does not have a grad_fn", re.I)


def crash_findings(error: BaseException, seen: Seen) -> list[Finding]:
    """What a crash proves: targets out of the classes (from the captured loss call), a NaN/Inf (the
    first module that makes one, on the last batch), an out-of-memory error (what to change), DDP's
    unused parameters, or a loss no parameter reaches (the model called under ``torch.no_grad()``)."""
    text = str(error)
    if isinstance(error, torch.OutOfMemoryError) or _OOM.search(text):
        return [_oom_finding(error, seen)]
    unused = unused_parameters_finding(error, seen)
    if unused is not None:
        return [unused]
    if _NO_GRAPH.search(text):
        return [_no_graph_finding(error, seen)]
    if _NONFINITE.search(text) and seen.model_call is not None:
        return _nonfinite_findings(seen)
    call = seen.loss_call
    if call is None or not _OUT_OF_BOUNDS.search(str(error)) or call.name not in ("cross_entropy", "nll_loss"):
        return []
    target, logits = call.target, call.input
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or logits.dim() < 1:
        return []
    classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    ignore = call.kwargs.get("ignore_index", -100)
    t = target.detach().cpu()
    bad = ((t < 0) | (t >= classes)) & (t != ignore)
    if not bool(bad.any()):
        return []
    values = sorted(set(t[bad].tolist()))
    rows = sorted(set(bad.nonzero()[:, 0].tolist())) if t.dim() >= 1 else []
    evidence = {"num_classes": classes, "bad_values": listed(values), "bad_count": int(bad.sum()),
                "targets": int(t.numel()), "samples": listed(rows), "ignore_index": ignore,
                "loss": f"F.{call.name}", "error": str(error).strip().splitlines()[0][:200]}
    if call.location is not None:
        evidence["loss_line"] = call.location.short()
    return [Finding(
        "label-out-of-range", "error",
        f"Targets {listed(values)} are outside the model's {classes} classes (0..{classes - 1}): "
        f"{int(bad.sum())} of {t.numel()} targets, in samples {listed(rows)}",
        evidence,
        f"Make the output layer as wide as the number of labels (at least {max(values) + 1} classes), or map the "
        f"labels into 0..{classes - 1}; for padding targets pass `ignore_index` to the loss.")]


class _FirstNonfinite(TorchFunctionMode):
    """Notes the user's line of the first op whose output is NaN/Inf while all its inputs are finite."""

    def __init__(self) -> None:
        super().__init__()
        self.found: tuple[str, Location | None] | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.found is None and isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() \
                and not bool(torch.isfinite(out).all()):
            inputs = [a for a in list(args) + list((kwargs or {}).values())
                      if isinstance(a, torch.Tensor) and a.is_floating_point()]
            if all(bool(torch.isfinite(a).all()) for a in inputs):
                self.found = (getattr(func, "__name__", str(func)), user_location())
        return out


def nonfinite_line(seen: Seen) -> Location | None:
    """The user's line of the first operation that turns finite values into NaN/Inf, replaying the
    model's last batch without gradients (`torch.log` of a negative value, a division by zero)."""
    call = seen.model_call
    if call is None:
        return None
    model, batch, forward = replay_of(call)
    mode = _FirstNonfinite()
    training = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                mode:
            forward(model, batch)
    except Exception:
        return None
    finally:
        for m, flag in training:
            m.training = flag
    return mode.found[1] if mode.found is not None else None


def _nonfinite_findings(seen: Seen) -> list[Finding]:
    """The NaN/Inf replayed on the batch the model last took: the ``nan-forward`` probe names the first
    module whose output is non-finite (or the weights that already are)."""
    call = seen.model_call
    assert call is not None
    model, batch, forward = replay_of(call)
    report = check(model, batch, forward=forward, loss_fn=loss_fn_of(seen.loss_call) if not call.returns_loss
                   else None, probes=["nan-forward"])
    return [f for f in report.findings if f.id == "nan-forward"]


def _no_graph_finding(error: BaseException, seen: Seen) -> Finding:
    """``loss.backward()`` on a tensor no parameter reaches: the model ran under ``torch.no_grad()`` (the
    line, when a training-mode call was seen there) or its output was cut from the graph."""
    no_grad = seen.lines.get("model_no_grad")
    cause = (f"the model was called under torch.no_grad() ({no_grad.short()})" if no_grad is not None else
             "the model's output was cut from the graph (`.detach()`, `.item()`, `.numpy()`, or a new tensor "
             "built from its values)")
    return Finding(
        "no-grad-params", "error",
        f"loss.backward() failed: the loss reaches no trainable parameter, because {cause}",
        {"error": str(error).strip().splitlines()[0][:200], "model_called_under_no_grad": no_grad is not None},
        "Run the training forward with gradients: call the model outside `torch.no_grad()` (keep no_grad for "
        "evaluation) and compute the loss from its output tensor, not from `.item()`/`.detach()`.")


def _oom_finding(error: BaseException, seen: Seen) -> Finding:
    call = seen.model_call
    shapes: dict[str, Any] = {}
    if call is not None:
        batch, _ = batch_of(call)
        shapes = {name: list(t.shape) for name, t in list(named_tensors(batch).items())[:8]}
    params = sum(p.numel() for p in call.module.parameters()) if call is not None else None
    return Finding(
        "oom-risk", "error",
        "The script ran out of memory" + (f" with a batch of shapes {shapes}" if shapes else ""),
        {"error": str(error).strip().splitlines()[0][:200], "batch_shapes": shapes, "model_params": params},
        "Lower the batch size and keep the effective batch with gradient accumulation (divide each micro-batch "
        "loss by the number of micro-batches), shorten the sequences, train in bf16 autocast, or enable "
        "activation checkpointing (`model.gradient_checkpointing_enable()` for Hugging Face models).")


class Session:
    """Drives the doctor and the watch from the capture's events (see the module docstring)."""

    def __init__(self, *, max_steps: int | None, run_dir: str | Path | None, quiet: bool = False,
                 distributed: bool = False, trial: TrialRun | None = None):
        self.max_steps = max_steps
        self.run_dir = run_dir
        self.quiet = quiet
        self.capture = Capture(on_step=self._on_step, on_step_end=self._on_step_end,
                               on_backward=self._on_backward, on_batch=self._on_batch)
        self.optimizer: torch.optim.Optimizer | None = None
        self.model: torch.nn.Module | None = None
        self.watch: Any = None
        self.check_report: Report | None = None
        self.steps = 0
        self.notes: list[str] = []
        self.failures: list[Finding] = []
        self.other_optimizers = 0
        self._others: set[int] = set()
        self._waiting = False
        self._tries = 0
        self.ranks = RankMeasures() if distributed else None
        """This rank's measures for the cross-rank findings (``torchrun``), None in one process."""
        self.bypassed: Finding | None = None
        self.trial = trial
        """An experiment's trial (`traindoc.script.trial`): its setting applied to the watched optimizer."""
        self.base_lr: float | None = None
        self.doctor_step = 0
        self.found_at: dict[tuple[str, str], int] = {}
        """(id, title) -> optimizer steps the script had taken when traindoc had the finding (filled by
        `finish`): the doctor's at the step it ran, the monitor's at the flush that raised them, the
        rest (a crash, what is judged at the end) at the last step."""

    # ------------------------------------------------------------------ events
    def _on_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is None:
            self.optimizer = optimizer
            self.base_lr = group_lr(optimizer.param_groups[0])
        if optimizer is self.optimizer:
            if self.watch is None and self._tries < START_TRIES:
                self._start(optimizer, after_step=False)
        elif id(optimizer) not in self._others:
            self._others.add(id(optimizer))
            self.other_optimizers += 1
        if self.trial is not None and optimizer is self.optimizer:
            self.trial.before_step(optimizer, self.steps)

    def _on_step_end(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self.optimizer:
            return
        if self._waiting:  # optimizer.step(closure): the closure called the model inside the step
            self._start(optimizer, after_step=True)
        diverged = False
        if self.trial is not None:  # this hook is not contained by the capture (it raises StopScript): contain it here
            try:
                diverged = self.trial.after_step(optimizer, self.steps, self._schedulers())
            except Exception as e:
                self.failures.append(internal_failure("traindoc run (trial setting after the step)",
                                                      f"{type(e).__name__}: {e}"))
        self.steps += 1
        if diverged or (self.max_steps is not None and self.steps >= self.max_steps):
            raise StopScript()

    def _schedulers(self) -> list[Any]:
        """The LR schedulers the script built, alive."""
        return [s for s in (ref() for ref, _ in self.capture.seen.created.get("scheduler", [])) if s is not None]

    def _start(self, optimizer: torch.optim.Optimizer, *, after_step: bool) -> None:
        """The doctor and the watch, at the first step's pre-hook; or, when the model is called inside
        the step (``optimizer.step(closure)``, as Lightning does), at its post-hook."""
        self._waiting = False
        try:
            started = self._first_step(optimizer)
        except Exception as e:  # traindoc's own failure: reported, the script goes on
            self.failures.append(internal_failure("traindoc run (first optimizer step)", f"{type(e).__name__}: {e}"))
            self._tries = START_TRIES  # tried once and failed: not at every step again
            return
        if not started:
            if not after_step:
                self._waiting = True
                return
            self._tries += 1  # a loop that steps before it calls the model: the next steps try again
            if self._tries >= START_TRIES:
                self.notes.append(f"no model was seen called on a batch in training mode whose parameters the "
                                  f"optimizer holds by its optimizer step {START_TRIES}: the one-batch doctor and "
                                  "the monitor did not run")

    def _on_backward(self, loss: torch.Tensor) -> None:
        if self.watch is not None:
            self.watch.log(loss=loss)
        if self.trial is not None:
            self.trial.on_loss(loss)

    def _on_batch(self, call: ModelCall) -> None:
        if self.watch is not None and inner_module(call.module) is self.model:
            batch, _ = batch_of(call)
            self.watch.watch_batch(batch)
            if self.ranks is not None:
                self.ranks.take_batch(batch)

    # ------------------------------------------------------------------ the first step
    def _first_step(self, optimizer: torch.optim.Optimizer) -> bool:
        seen = self.capture.seen
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}

        def trained(c: ModelCall | None) -> bool:
            return c is not None and any(id(p) in held for p in c.module.parameters())

        call = seen.model_call
        if not trained(call):
            # never called in training mode: a model trained in eval mode (the train-mode-off monitor says so)
            call = seen.eval_call if trained(seen.eval_call) and self._tries + 1 >= START_TRIES else None
        if call is None:
            return False
        self.capture.narrow_to(call.module)
        model, batch, forward = replay_of(call)
        self.model = model
        if self.ranks is not None:  # several processes; measured before the doctor and this step's update
            self.bypassed = bypass_finding(model, uncompiled(call.module), seen)
            self.ranks.params_start = parameter_prints(model)
            wrapper = wrapper_of(model, seen)
            self.ranks.ddp = self.bypassed is None and wrapper is not None
            built = seen.created_line("ddp", wrapper) if wrapper is not None else None
            self.ranks.wrapped_by = built.via if built is not None else ""
            self.ranks.process_group = torch.distributed.is_available() and torch.distributed.is_initialized()
            self.ranks.accelerate = accelerate_state()
            self.ranks.samplers = self.sampler_types()
            self.ranks.take_batch(batch)
        # a model that returns its loss (output.loss, (logits, loss)): `check` finds it in the output; a
        # loss that is not the last loss call alone (a sum of terms) is not replayed from that call
        loss_fn = None if call.returns_loss or not seen.loss_is_last_call else loss_fn_of(seen.loss_call)
        self.doctor_step = self.steps
        with self.capture.paused():
            try:
                try:
                    self.check_report = check(model, batch, forward=forward, loss_fn=loss_fn, optimizer=optimizer)
                except TraindocInputError as e:
                    if loss_fn is None or not str(e).startswith("loss_fn"):
                        raise
                    # the script's loss takes a selection of the output (`logits[mask]`), which cannot be
                    # replayed from the output alone: the probes that need no loss still run
                    self.check_report = check(model, batch, forward=forward, optimizer=optimizer)
                    self.notes.append("the script's loss could not be replayed on the model's output (its input is "
                                      "not the output reshaped): the doctor's loss probes were skipped")
            except Exception as e:  # an input the doctor cannot take: say so, go on with the watch
                self.notes.append(f"the one-batch doctor could not run: {type(e).__name__}: {e}")
        if self.check_report is not None:
            self.check_report = Report(declared_unused(self.check_report.findings, wrapper_of(model, seen)),
                                       self.check_report.info)
        self.watch = watch(model, optimizer, run_dir=self.run_dir, quiet=self.quiet)
        if seen.loss is not None:
            self.watch.log(loss=seen.loss)
        self.watch.watch_batch(batch)
        return True

    # ------------------------------------------------------------------ the end
    def finish(self, error: BaseException | None) -> tuple[Report, list[Location | None]]:
        """Close the watch and return the combined report and each finding's line."""
        self.capture.remove()
        if self.ranks is not None and self.model is not None:
            try:
                self.ranks.params_end = parameter_prints(self.model)
            except Exception as e:  # a model left on a device that is gone: no replica comparison
                self.failures.append(internal_failure("traindoc run (replica fingerprints)", f"{type(e).__name__}: {e}"))
        findings: list[Finding] = []
        info: dict[str, Any] = {"optimizer_steps": self.steps, "steps": self.steps}
        if self.check_report is not None:
            findings += self.check_report.findings
            info["check"] = self.check_report.info
        if self.bypassed is not None:
            findings.append(self.bypassed)
        found_at = {(f.id, f.title): self.doctor_step for f in findings}
        findings += set_epoch_findings(self.capture.seen)
        if self.optimizer is not None and error is None:
            try:
                findings += plan_findings(self._schedulers(), self.steps)
            except Exception as e:  # a scheduler traindoc cannot read: the run's report still comes
                findings.append(internal_failure("traindoc run (the schedule's plan)", f"{type(e).__name__}: {e}"))
        if self.watch is not None:
            watched = self.watch.close()
            proved = {f.id for f in findings if f.severity == "error"}  # the doctor's, on the first batch
            confirmed = sorted({f.id for f in watched.findings if f.id in proved})
            findings += [f for f in watched.findings if f.id not in proved]
            found_at = {**self.watch.found_at, **found_at}
            info["watch"] = watched.info
            if confirmed:
                info["also_found_by_the_monitor"] = confirmed
            info["run_dir"] = str(self.watch.run_dir)
        if error is not None:
            try:
                findings += crash_findings(error, self.capture.seen)
            except Exception as e:  # the diagnosis failed: the user still has their traceback
                findings.append(internal_failure("traindoc run (crash diagnosis)", f"{type(e).__name__}: {e}"))
        findings += self.failures
        findings += [internal_failure(f"traindoc run ({where})", text)
                     for where, text in self.capture.errors.items()]
        unique: list[Finding] = []
        keys: set[tuple[str, str]] = set()
        for f in findings:
            if (f.id, f.title) not in keys:
                keys.add((f.id, f.title))
                unique.append(f)
        if self.model is not None:
            info["model"] = type(self.model).__name__
        if self.optimizer is not None:
            info["optimizer"] = type(self.optimizer).__name__
            info["lr"] = self.base_lr
        if self.trial is not None:
            info["trial"] = {"setting": dict(vars(self.trial.setting)), "peak_lr": self.trial.peak,
                             "one_batch_applied": self.trial.one_batch_applied,
                             "scores": self.trial.targets.scores()}
            if self.trial.setting.one_batch and not self.trial.one_batch_applied:
                self.notes.append("the script reads no data through a torch DataLoader: it could not be held to "
                                  "one batch")
        if self.other_optimizers:
            info["other_optimizers_not_watched"] = self.other_optimizers
        if self.optimizer is None:
            self.notes.append("no optimizer step was seen: the script trained nothing traindoc could diagnose")
        if self.notes:
            info["notes"] = list(self.notes)
        seen = self.capture.seen
        info["lines"] = {kind: loc.short() for kind, loc in seen.lines.items()}
        info["created"] = {kind: [loc.short() for _, loc in items if loc is not None][:5]
                           for kind, items in seen.created.items()}
        if self.trial is not None:  # where an experiment's findings on this script would point
            info["trial"]["lines"] = {fid: loc.to_dict() for fid in EXPERIMENT_IDS
                                      if (loc := self.locate(Finding(fid, "hint", "", {}, ""))) is not None}
        self.found_at = {(f.id, f.title): found_at.get((f.id, f.title), self.steps) for f in unique}
        report = Report(unique, info)  # sorted by severity: the lines follow its order
        locations = [self.locate(f) for f in report.findings]
        if any(f.id in ("nan-forward", "nan-loss") for f in report.findings):
            try:
                born = nonfinite_line(seen)
            except Exception:  # the replay failed: the finding keeps the model call's line
                born = None
            if born is not None:
                locations = [born if f.id in ("nan-forward", "nan-loss") else loc
                             for f, loc in zip(report.findings, locations, strict=True)]
        return report, locations

    def locate(self, finding: Finding) -> Location | None:
        """The user's line that ``finding``'s fix changes (`location_of`)."""
        return location_of(finding, self.capture.seen, self.optimizer)

    def sampler_types(self) -> list[str]:
        """The sampler classes of the DataLoaders the script built (evidence for ``ddp-same-data``)."""
        names = set()
        for ref, _ in self.capture.seen.created.get("dataloader", []):
            loader = ref()
            if loader is not None:
                names.add(type(getattr(loader, "sampler", None)).__name__)
        return sorted(names)
