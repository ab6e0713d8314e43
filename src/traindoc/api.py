"""traindoc's two entry points, where the layers are wired together: `check` (the probes on one batch)
and `watch` (the monitor, with the ``nan-forward`` probe as its NaN replay).

`traindoc.check` and `traindoc.watch` are these functions.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from traindoc.errors import TraindocInputError
from traindoc.findings import Finding, Report, internal_failure
from traindoc.setup import ForwardFn, LossFn, Setup, describe_output
from traindoc.state import preserved

if TYPE_CHECKING:
    from traindoc.monitor.watch import Watch


def _unknown_arguments_are_input_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A misspelt keyword argument gets the same one clear message as every other bad input
    (`TraindocInputError`, with the nearest real name), not a bare TypeError."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            unknown = [k for k in kwargs if k not in signature.parameters]
            if not unknown:
                raise TraindocInputError("arguments", f"{fn.__name__}(): {e}") from None
            near = difflib.get_close_matches(unknown[0], list(signature.parameters), n=1)
            raise TraindocInputError(unknown[0], f"is not an argument of traindoc.{fn.__name__}"
                                     + (f"; did you mean {near[0]!r}?" if near else "")) from None
        return fn(*args, **kwargs)

    return wrapper


@_unknown_arguments_are_input_errors
def check(
    model: nn.Module,
    batch: Any,
    *,
    forward: ForwardFn | None = None,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    tokenizer: Any = None,
    task: str | None = None,
    probes: Sequence[str] | None = None,
) -> Report:
    """Diagnose a training setup on one real batch and return a `Report`.

    Args:
        model: the model exactly as the loop trains it (on its own device and dtype).
        batch: one batch exactly as the loop feeds it: a dict of tensors (Hugging Face), a tuple/list,
            or a tensor.
        forward: ``forward(model, batch) -> output`` when the loop does not call ``model(**batch)`` /
            ``model(*batch)`` / ``model(batch)``.
        loss_fn: ``loss_fn(output, batch) -> scalar`` when the loss is computed outside the model;
            default: the model's own ``output.loss``.
        optimizer: the optimizer, to check which parameters it updates and how.
        tokenizer: to decode the batch and learn the pad/eos ids.
        task: ``causal-lm``, ``seq2seq``, ``classification``, ``masked-lm`` or
            ``token-classification``; inferred when None (the report's ``info`` says how).
        probes: run only these probes (names as in `traindoc.probes.registry`); default all.

    Every probe costs a fixed number of forward/backward passes (``report.info["passes"]``), and the
    model, its buffers and grads, the optimizer, the RNG state and train/eval modes are left exactly
    as they were. A probe that fails internally becomes a ``probe-failed`` hint, never an exception.
    Bad input raises `TraindocInputError` naming the argument to fix.

    >>> import torch, traindoc
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> x, y = torch.randn(32, 8), torch.tensor([0, 1, 2, 3] * 8)        # label 3 >= 3 classes
    >>> report = traindoc.check(model, (x, y), forward=lambda m, b: m(b[0]),
    ...                         loss_fn=lambda out, b: torch.nn.functional.cross_entropy(out, b[1]))
    >>> report.ok, "label-out-of-range" in report
    (False, True)
    """
    from traindoc.probes.context import ProbeContext
    from traindoc.probes.registry import PROBES

    setup = Setup.build(model, batch, forward=forward, loss_fn=loss_fn, optimizer=optimizer,
                        tokenizer=tokenizer, task=task)
    selected = list(PROBES)
    if probes is not None:
        known = {p.name for p in selected}
        unknown = set(probes) - known
        if unknown:
            raise TraindocInputError("probes", f"unknown probe(s) {sorted(unknown)}; known: {sorted(known)}")
        selected = [p for p in selected if p.name in probes]

    findings: list[Finding] = []
    with _open_watches_paused(), preserved(setup.model, setup.optimizer) as state:
        ctx = ProbeContext(setup)
        _ = ctx.main  # bad input (a forward that raises) surfaces here, as TraindocInputError
        for p in selected:
            try:
                findings.extend(p.fn(ctx))
            except TraindocInputError:
                raise
            except Exception as e:
                findings.append(internal_failure(f"probe {p.name!r}", e, evidence={"probe": p.name}))
        if ctx.main.loss is None:
            seen = describe_output(ctx.main.output)
            findings.append(Finding(
                "probe-skipped", "hint",
                f"No loss to check: the model returned {seen}, with no `loss` and no single scalar that "
                "requires grad, and no loss_fn was given, so the loss, label and gradient probes had nothing "
                "to examine",
                evidence={"output": seen, "model_called_as": setup.called_as, "batch_keys": list(setup.tensors)},
                fix="Pass the labels the model expects (Hugging Face: a `labels` entry in the batch) or "
                    "`loss_fn=lambda output, batch: ...` computing the loss as your loop does."))
        task_name, task_reason = ctx.task
        info = {
            "task": task_name,
            "task_inferred_from": task_reason,
            "model_called_as": setup.called_as,
            "loss_from": ctx.main.loss_source,
            "batch_size": setup.batch_size,
            "device": str(setup.device),
            "passes": dict(ctx.passes),
            "probes": [p.name for p in selected],
        }
        info.update(ctx.notes)
        info["snapshot_bytes"] = state.nbytes
        del ctx
        changed = state.changed()
        if changed:  # no probe writes these; the user's forward or loss_fn did, and no copy covers them
            findings.append(Finding(
                "probe-failed", "warning",
                f"{len(changed)} weight/gradient/optimizer-state tensor(s) changed during the check, which "
                f"traindoc does not copy and cannot put back: {', '.join(changed[:5])}"
                + ("..." if len(changed) > 5 else ""),
                evidence={"changed": changed[:50], "count": len(changed)},
                fix="No probe writes these: your forward or loss_fn did, in eval mode. Check a copy instead: "
                    "`traindoc.check(copy.deepcopy(model), batch, ...)`."))
    return Report(findings, info=info)


def _open_watches_paused() -> Any:
    """An open `watch` must not count the check's own forwards and backwards as training steps."""
    monitor = sys.modules.get("traindoc.monitor.watch")  # not imported: no watch can be open
    return monitor.paused_watches() if monitor is not None else nullcontext()


@_unknown_arguments_are_input_errors
def watch(model: nn.Module, optimizer: Any, *, run_dir: str | Path | None = None, every: int = 10,
          histograms_every: int = 100, flush_every: int = 50, histogram_bins: int = 32,
          histogram_layers: Sequence[str] | None = None, histogram_samples: int | None = None,
          scaler: Any = None, detectors: Sequence[Any] | None = None,
          detector_options: dict[str, Any] | None = None, tensorboard: bool | None = None,
          tensorboard_every: int = 10, num_classes: int | None = None,
          forward: Callable[[nn.Module, Any], Any] | None = None, replay_nonfinite: bool = True,
          quiet: bool = False) -> Watch:
    """Watch a training run: call once before the loop; ``close()`` (or leaving ``with``) returns the
    `Report`, also kept at ``w.report``.

    Args:
        model: the model being trained.
        optimizer: its optimizer (a wrapper with ``.optimizer``, e.g. Accelerate's, is unwrapped).
        run_dir: where the run directory goes (default ``./runs/<timestamp>``).
        every: per-layer gradient norm, weight norm and update/weight ratio every K steps (0: never;
            those steps copy the weights once, transiently, to measure the update).
        histograms_every: weight and gradient histograms every H steps (0: never).
        flush_every: copy the statistics to the host, judge them and write them every N steps (the
            steady cadence; the first flushes come sooner, after steps 1, 2, 4, 8, ... below N, so
            that what the first steps prove is reported at once).
        histogram_bins: bins per histogram.
        histogram_layers: names of the layers (modules owning parameters) to draw histograms of;
            default: every layer, or 64 spread over depth.
        histogram_samples: values sampled per layer and kind (weight, gradient) for the histograms;
            default 2048 on CPU, 65536 on CUDA; 0: all.
        scaler: the AMP ``GradScaler``, to record its scale and the steps it skipped.
        detectors: a list of detectors replacing the defaults (`traindoc.monitor.detectors`).
        detector_options: options of the default detectors, by module name, e.g.
            ``{"loss_spike": {"k": 8}, "disable": ["scheduler-misuse"]}``.
        tensorboard: write TensorBoard events to ``RUN_DIR/tb`` (default: when tensorboard is installed).
        tensorboard_every: per-layer scalars and histograms go to TensorBoard on steps that are
            multiples of it (the run directory keeps every step).
        num_classes: width of the logits, for ``loss-at-chance`` (default: guessed from the model).
        forward: ``forward(model, batch)``, how to call the model on a logged batch for the NaN
            replay (default ``model(**batch)`` / ``model(*batch)`` / ``model(batch)``).
        replay_nonfinite: when a NaN/Inf appears, replay the logged batch through the
            ``nan-forward`` probe to name the module where it was born.
        quiet: do not print each new finding as it is raised (one line on stderr,
            ``traindoc: WARNING loss-spike at step 57: ...``); the run directory and the final
            `Report` hold them either way.

    Bad arguments raise `TraindocInputError`, naming the argument.

    >>> import torch, tempfile, traindoc
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with traindoc.watch(model, opt, run_dir=tempfile.mkdtemp(), tensorboard=False, detectors=[]) as w:
    ...     for _ in range(3):
    ...         loss = model(torch.randn(8, 4)).pow(2).mean()
    ...         loss.backward(); opt.step(); opt.zero_grad()
    ...         w.log(loss=loss)
    >>> w.report.info["steps"]
    3
    """
    from traindoc.monitor.watch import Watch
    from traindoc.probes.nan_forward import locate_nonfinite

    return Watch(model, optimizer, run_dir=run_dir, every=every, histograms_every=histograms_every,
                 flush_every=flush_every, histogram_bins=histogram_bins, histogram_layers=histogram_layers,
                 histogram_samples=histogram_samples, scaler=scaler, detectors=detectors,
                 detector_options=detector_options, tensorboard=tensorboard, tensorboard_every=tensorboard_every,
                 num_classes=num_classes, forward=forward, replay_nonfinite=replay_nonfinite, quiet=quiet,
                 locate=locate_nonfinite)
