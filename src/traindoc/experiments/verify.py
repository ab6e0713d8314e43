"""``verify_fix``: does a fix that is a setting help this model? A seeded A/B from the same start.

Two arms train copies from the same initial weights, on the same batches in the same order, for the
same number of steps, with the same seeds: **before** (the user's setup, or ``baseline``) and
**after** (with ``change`` applied). A change is one or more of: ``lr`` (a new peak LR), ``warmup``
(steps), ``clip`` (a threshold), ``zero_grad`` (True: the fix for a loop that never zeroes its
gradients; the before arm then accumulates them, as the loop did), ``ignore_index`` (a target
value cross-entropy should skip: the fix for pads counted in the loss; both arms are then scored on
the cross-entropy of the other targets, recorded beside the loss at each step, since their own
losses count different targets), ``scheduler_per_step`` (on a script: its LR schedulers step after
every optimizer step, the fix for a per-step schedule stepped once per epoch). Each arm's score is `traindoc.experiments.measures.final_loss`,
averaged over the seeds. The fix **helped** when the
after arm's score is lower by more than the noise: half the seed spread of either arm, or `NOISE`
of the before score, whichever is larger. A fix that did not help says so; the result holds both
curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from traindoc.errors import TraindocInputError
from traindoc.experiments.jobs import run_trials
from traindoc.experiments.measures import final_loss
from traindoc.experiments.result import ExperimentResult
from traindoc.experiments.trial import Plan, Setting

NOISE = 0.01
CHANGES = ("lr", "warmup", "clip", "zero_grad", "ignore_index", "scheduler_per_step")


def verify_fix(model: nn.Module, batches: Any, *, change: dict[str, Any], baseline: dict[str, Any] | None = None,
               optimizer: Any = None, make_optimizer: Callable[[nn.Module], Any] | None = None, forward: Any = None,
               loss_fn: Any = None, steps: int = 100, seeds: int = 2, jobs: int = 1,
               backend: str = "pool") -> ExperimentResult:
    """Train before and after ``change`` and compare (see the module docstring).

    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(128, 8); y = (x[:, 0] > 0).long()
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    >>> r = verify_fix(model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)], change={"lr": 0.1},
    ...                optimizer=torch.optim.SGD(model.parameters(), lr=1e-4), steps=40, seeds=1,
    ...                loss_fn=lambda out, b: torch.nn.functional.cross_entropy(out, b[1]))
    >>> r["helped"]
    True
    """
    plan = Plan(model, batches, optimizer=optimizer, make_optimizer=make_optimizer, forward=forward,
                loss_fn=loss_fn, steps=steps)
    return fix_experiment(plan, change=change, baseline=baseline, steps=steps, seeds=seeds, jobs=jobs,
                          backend=backend)


def fix_experiment(plan: Any, *, change: dict[str, Any], baseline: dict[str, Any] | None = None, steps: int = 100,
                   seeds: int = 2, jobs: int = 1, backend: str = "pool") -> ExperimentResult:
    """`verify_fix` on a plan: copies of a model, or trial runs of a script (whose before arm is the script
    as it is: a missing ``zero_grad`` is the script's own, and the after arm adds one)."""
    unknown = sorted((set(change) | set(baseline or {})) - set(CHANGES))
    if unknown or not change:
        raise TraindocInputError("change", f"must set some of {', '.join(CHANGES)}; got {sorted(change) or 'nothing'}")
    if change.get("scheduler_per_step") and isinstance(plan, Plan):
        raise TraindocInputError("change", "scheduler_per_step is verified on a script (`traindoc tune fix SCRIPT "
                                           "--scheduler-per-step`): a copy's trial has no scheduler")
    before_kw = dict(baseline or {})
    if change.get("zero_grad") is True and isinstance(plan, Plan):
        before_kw.setdefault("zero_grad", False)  # a copy reproduces the loop without it
    after_kw = {**before_kw, **change}
    if change.get("ignore_index") is not None:  # both arms scored on the same targets: the real ones
        before_kw["score_ignore_index"] = after_kw["score_ignore_index"] = change["ignore_index"]
    settings = [Setting(steps=steps, seed=s, **kw) for kw in (before_kw, after_kw) for s in range(seeds)]
    curves = run_trials(plan, settings, jobs=jobs, backend=backend)
    before, after = curves[:seeds], curves[seeds:]

    def arm(cs: list[Any]) -> tuple[float, float]:
        values = [final_loss(c.compared) for c in cs]
        spread = (max(values) - min(values)) / 2 if all(math.isfinite(v) for v in values) else 0.0
        return sum(values) / len(values), spread

    (b, b_spread), (a, a_spread) = arm(before), arm(after)
    noise = max(b_spread, a_spread, NOISE * abs(b) if math.isfinite(b) else 0.0)
    helped = (a < b - noise) if math.isfinite(a) else False
    result = {"change": change, "baseline": before_kw, "steps": steps, "seeds": seeds, "loss_before": b,
              "loss_after": a, "noise": noise, "helped": helped,
              "verdict": "helped" if helped else ("made it worse" if a > b + noise else "did not help")}
    return ExperimentResult("fix", result, [], {"before": before[0], "after": after[0]},
                            {"training_steps": sum(c.steps for c in curves)})
