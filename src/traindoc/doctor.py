"""`traindoc.check`: the one-batch doctor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from traindoc.errors import TraindocInputError
from traindoc.findings import Finding, Report, internal_failure
from traindoc.setup import ForwardFn, LossFn, Setup
from traindoc.state import preserved


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
    from traindoc.probes.registry import all_probes

    setup = Setup.build(model, batch, forward=forward, loss_fn=loss_fn, optimizer=optimizer,
                        tokenizer=tokenizer, task=task)
    selected = all_probes()
    if probes is not None:
        known = {p.name for p in selected}
        unknown = set(probes) - known
        if unknown:
            raise TraindocInputError("probes", f"unknown probe(s) {sorted(unknown)}; known: {sorted(known)}")
        selected = [p for p in selected if p.name in probes]

    findings: list[Finding] = []
    with preserved(setup.model, setup.optimizer):
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
            findings.append(Finding(
                "probe-skipped", "hint",
                "No loss to check: the model returned no `loss` and no loss_fn was given, so the loss, "
                "label and gradient probes had nothing to examine",
                evidence={"output_type": type(ctx.main.output).__name__,
                          "batch_keys": list(setup.tensors)},
                fix="Pass the labels the model expects (Hugging Face: a `labels` entry in the batch) or "
                    "`loss_fn=lambda output, batch: ...` computing the loss as your loop does."))
        task_name, task_reason = ctx.task
        info = {
            "task": task_name,
            "task_inferred_from": task_reason,
            "loss_from": ctx.main.loss_source,
            "batch_size": setup.batch_size,
            "device": str(setup.device),
            "passes": dict(ctx.passes),
            "probes": [p.name for p in selected],
        }
        info.update(ctx.notes)
        del ctx
    return Report(findings, info=info)
