"""``clip_threshold``: a gradient-clipping threshold from the run's own unclipped gradient norms.

The Tuning Playbook: clip at the 90th percentile of the unclipped gradient norms; when more than half
of the steps would be clipped, lower the LR instead. The norms come from what the user has: a list,
a run directory of `traindoc.watch` (its ``grad_norm`` column is the pre-clip norm), or, with a
model and batches, a short unclipped run of a copy at the user's LR. ``threshold`` is their
`PERCENTILE`-th percentile; ``clipped_fraction`` is the share of steps above the user's current
threshold (``current``, or the run directory's ``clip_threshold``) — over `TOO_MANY` of the steps:
``aggressive-clipping`` (warning, "lower the LR instead"). ``histogram`` counts the norms in
`BINS` log-spaced bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from traindoc.experiments.result import ExperimentResult
from traindoc.experiments.trial import Curve, Plan, Setting
from traindoc.findings import Finding

PERCENTILE = 90
TOO_MANY = 0.5
BINS = 20


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default).

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90)
    9.1
    """
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 12)


def clip_threshold(model: nn.Module | None = None, batches: Any = None, *, grad_norms: Sequence[float] | None = None,
                   run_dir: str | Path | None = None, current: float | None = None, optimizer: Any = None,
                   make_optimizer: Callable[[nn.Module], Any] | None = None, forward: Any = None,
                   loss_fn: Any = None, steps: int = 100, seed: int = 0) -> ExperimentResult:
    """The clipping threshold and what it would clip (see the module docstring).

    >>> r = clip_threshold(grad_norms=[1.0] * 9 + [10.0], current=0.5)
    >>> round(r["threshold"], 3), r["clipped_fraction"], r.ids
    (1.9, 1.0, ['aggressive-clipping'])
    """
    curves: dict[str, Curve] = {}
    source = "grad_norms"
    if grad_norms is not None:
        norms = [float(v) for v in grad_norms]
    elif run_dir is not None:
        from traindoc.rundir import read_run

        rows = read_run(run_dir).scalars
        norms = [float(r["grad_norm"]) for r in rows if r.get("grad_norm") is not None]
        if current is None:
            current = next((r["clip_threshold"] for r in rows if r.get("clip_threshold") is not None), None)
        source = f"run directory {run_dir}"
    elif model is not None and batches is not None:
        plan = Plan(model, batches, optimizer=optimizer, make_optimizer=make_optimizer, forward=forward,
                    loss_fn=loss_fn, steps=steps)
        return clip_experiment(plan, steps=steps, current=current, seed=seed)
    else:
        from traindoc.errors import TraindocInputError

        raise TraindocInputError("grad_norms", "pass grad_norms, run_dir, or a model with its batches and optimizer")
    return _threshold(norms, current, source, curves)


def clip_experiment(plan: Any, *, steps: int = 100, current: float | None = None, seed: int = 0) -> ExperimentResult:
    """`clip_threshold` from a short run of a plan (a copy of the model trained unclipped, or a trial run
    of the script, whose own threshold becomes ``current``)."""
    curve = plan.run(Setting(steps=max(10, int(steps)), seed=seed))
    source = f"a run of {curve.steps} steps at lr={plan.base_lr:.3g} (norms before clipping)"
    return _threshold(curve.grad_norms, current if current is not None else curve.clip, source, {"run": curve})


def _threshold(norms: Sequence[float], current: float | None, source: str, curves: dict[str, Curve],
               ) -> ExperimentResult:
    norms = [v for v in norms if math.isfinite(v)]
    if len(norms) < 5:
        from traindoc.errors import TraindocInputError

        raise TraindocInputError("grad_norms", f"needs at least 5 finite gradient norms, got {len(norms)}")
    threshold = percentile(norms, PERCENTILE)
    result: dict[str, Any] = {
        "threshold": threshold, "percentile": PERCENTILE, "steps": len(norms),
        "fraction_above_threshold": sum(v > threshold for v in norms) / len(norms),
        "current": current, "clipped_fraction": (sum(v > current for v in norms) / len(norms)) if current else None,
        "median_norm": percentile(norms, 50), "max_norm": max(norms), "histogram": _histogram(norms),
        "source": source}
    findings = []
    if result["clipped_fraction"] is not None and result["clipped_fraction"] > TOO_MANY:
        findings.append(Finding(
            "aggressive-clipping", "warning",
            f"A threshold of {current:.3g} clips {result['clipped_fraction']:.0%} of the steps: the LR is too high "
            "for the gradients, and clipping is doing the LR's job",
            dict(result), f"Lower the LR instead (`traindoc tune lr`), then clip at about {threshold:.3g} (the "
                          "90th percentile of the unclipped norms)."))
    return ExperimentResult("clip", result, findings, curves, {"source": source})


def _histogram(norms: list[float]) -> dict[str, list[float]]:
    lo, hi = min(norms), max(norms)
    if lo <= 0 or hi <= lo:
        return {"edges": [lo, hi], "counts": [float(len(norms))]}
    edges = [lo * (hi / lo) ** (i / BINS) for i in range(BINS + 1)]
    counts = [0.0] * BINS
    for v in norms:
        i = min(BINS - 1, int(BINS * math.log(v / lo) / math.log(hi / lo)))
        counts[i] += 1
    return {"edges": edges, "counts": counts}
