"""Every probe, in the order `traindoc.check` runs them: one explicit list.

A probe is a function ``probe(ctx: ProbeContext) -> list[Finding]``: a small experiment on the
user's objects that reads the shared facts of `ProbeContext` (it never computes a shared fact
itself, and keeps no state). Data probes come first, then the model, the optimizer and resources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from traindoc.findings import Finding
from traindoc.probes import (
    data_view,
    dependency,
    labels,
    loss,
    memory,
    nan_forward,
    optimizer,
    padding,
    params,
)
from traindoc.probes.context import ProbeContext

ProbeFn = Callable[[ProbeContext], list[Finding]]


@dataclass(frozen=True)
class Probe:
    name: str
    category: str  # data | model | optimizer | resources
    fn: ProbeFn


PROBES: list[Probe] = [
    Probe("label-out-of-range", "data", labels.label_out_of_range),
    Probe("pad-equals-eos", "data", padding.pad_equals_eos),
    Probe("padding-in-loss", "data", padding.padding_in_loss),
    Probe("labels-not-shifted", "data", labels.labels_not_shifted),
    Probe("class-imbalance", "data", labels.class_imbalance),
    Probe("data-view", "data", data_view.data_view),
    Probe("batch-mixing", "model", dependency.batch_mixing),
    Probe("causal-leak", "model", dependency.causal_leak),
    Probe("padding-leak", "model", dependency.padding_leak),
    Probe("nan-forward", "model", nan_forward.nan_forward),
    Probe("init-loss-mismatch", "model", loss.init_loss_mismatch),
    Probe("double-softmax", "model", loss.double_softmax),
    Probe("nll-without-log-softmax", "model", loss.nll_without_log_softmax),
    Probe("loss-broadcast", "model", loss.loss_broadcast),
    Probe("no-grad-params", "model", params.no_grad_params),
    Probe("params-not-in-optimizer", "model", params.params_not_in_optimizer),
    Probe("lr-too-high", "optimizer", optimizer.lr_too_high),
    Probe("weight-decay-on-norms", "optimizer", optimizer.weight_decay_on_norms),
    Probe("oom-risk", "resources", memory.oom_risk),
]
"""Every probe, in order (each name is the finding id it emits, except ``data-view``)."""
