"""``overfit_batch``: can the model learn one batch by heart? (the Hugging Face course's first check)

Algorithm. Of the first 8 batches, the one with the most distinct targets is taken (all classes
present where possible) and a copy of the model is trained on it alone for ``steps`` steps with the
user's optimizer and LR. The task's loss floor is `FLOOR` of the first loss (cross-entropy and
squared errors go to 0 on a memorised batch). Reached: the number of steps it took. Not reached,
the curve says why (`traindoc.experiments.measures`):

* a non-finite loss at step t: "turns NaN" (error);
* the one-batch doctor proves an error on the setup (`doctor_errors`: `traindoc.check` on a copy with
  the batch, or for a script the doctor's findings at its first step: parameters without a gradient
  or outside the optimizer, samples mixing in attention, labels out of range...), or the LR is ~0
  (below `ZERO_LR`): "broken-setup" (error), with the doctor's ids and its first error as the cause;
* the loss moved less than `STILL` of its first value: "does not move" (warning: the updates are too
  small to show at this LR);
* `oscillating`: "oscillates" (warning: the LR is too high for this batch);
* otherwise "moves, then stops high" (warning: the LR is too low for this many steps, or the model
  cannot represent the batch).

Finding ``cannot-overfit-batch`` with the curve's numbers; nothing when the floor is reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from traindoc.experiments.measures import oscillating
from traindoc.experiments.result import ExperimentResult
from traindoc.experiments.trial import Plan, Setting
from traindoc.findings import Finding

FLOOR = 0.02
STILL = 0.01
ZERO_LR = 1e-8


def overfit_batch(model: nn.Module, batches: Any, *, optimizer: Any = None,
                  make_optimizer: Callable[[nn.Module], Any] | None = None, forward: Any = None,
                  loss_fn: Any = None, steps: int = 200, lr: float | None = None, seed: int = 0) -> ExperimentResult:
    """Train a copy on one batch (see the module docstring); ``lr`` replaces the optimizer's own.

    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.randn(16, 8), torch.arange(16) % 4
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    >>> r = overfit_batch(model, (x, y), optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
    ...                   loss_fn=lambda out, b: torch.nn.functional.cross_entropy(out, b[1]))
    >>> r["reached"], r.findings
    (True, [])
    """
    plan = Plan(model, batches, optimizer=optimizer, make_optimizer=make_optimizer, forward=forward,
                loss_fn=loss_fn, steps=8)
    return overfit_experiment(plan, steps=steps, lr=lr, seed=seed)


def overfit_experiment(plan: Any, *, steps: int = 200, lr: float | None = None, seed: int = 0) -> ExperimentResult:
    """`overfit_batch` on a plan (copies of a model, or trial runs of a script held to one batch)."""
    curve = plan.run(Setting(steps=max(1, int(steps)), lr=lr, one_batch=True, seed=seed))
    losses = curve.losses
    first = losses[0]
    floor = FLOOR * first if math.isfinite(first) else math.nan
    reached_at = next((i for i, v in enumerate(losses) if math.isfinite(v) and v <= floor), None)
    finite = [v for v in losses if math.isfinite(v)]
    result: dict[str, Any] = {"reached": reached_at is not None, "steps_to_floor": reached_at,
                              "floor": floor, "first_loss": first, "final_loss": losses[-1],
                              "min_loss": min(finite) if finite else None, "steps": len(losses),
                              "lr": curve.lrs[0] if curve.lrs else None}
    findings = [] if reached_at is not None else [_diagnose(plan, losses, curve.lrs[0], result)]
    result["diagnosis"] = findings[0].evidence["diagnosis"] if findings else None
    return ExperimentResult("overfit", result, findings, {"one batch": curve}, {"training_steps": len(losses)})


def _diagnose(plan: Plan, losses: list[float], lr: float, result: dict[str, Any]) -> Finding:
    first, steps = losses[0], len(losses)
    evidence: dict[str, Any] = {k: result[k] for k in ("first_loss", "final_loss", "min_loss", "floor", "steps", "lr")}
    nan_at = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    fix_common = " Run `traindoc check` on this batch to see which part of the setup is wrong."
    if nan_at is not None:
        evidence["diagnosis"] = "turns-nan"
        evidence["nan_step"] = nan_at
        return Finding("cannot-overfit-batch", "error",
                       f"Training on one batch, the loss turns NaN at step {nan_at}",
                       evidence, "Lower the LR, clip gradients, and look at the module nan-forward names." + fix_common)
    moved = (first - result["min_loss"]) / abs(first) if first else 0.0
    evidence["moved"] = moved
    proved = doctor_errors(plan)
    if proved or lr < ZERO_LR:
        first_error = proved[0] if proved else None
        why = (f"the one-batch doctor proves {', '.join(dict.fromkeys(f['id'] for f in proved))} on this setup "
               f"({first_error['message']})" if first_error else f"the LR is {lr:.3g}")
        evidence["diagnosis"] = "broken-setup"
        evidence["cause"] = why
        evidence["proved"] = list(dict.fromkeys(f["id"] for f in proved))
        if first_error is not None and first_error.get("location"):
            evidence["location"] = first_error["location"]
        fix = (first_error["fix"] + " Then run the experiment again." if first_error else
               "Set a learning rate above 0 (and check the scheduler does not keep it at 0).")
        return Finding("cannot-overfit-batch", "error",
                       f"Training on one batch for {steps} steps, the loss only goes from {first:.4g} to "
                       f"{result['min_loss']:.4g}: {why}", evidence, fix)
    if moved < STILL:
        evidence["diagnosis"] = "does-not-move"
        return Finding("cannot-overfit-batch", "warning",
                       f"Training on one batch for {steps} steps, the loss does not move ({first:.4g} -> "
                       f"{losses[-1]:.4g}): the updates at lr={lr:.3g} are too small to change it", evidence,
                       "Raise the LR (try `traindoc tune lr`).")
    if oscillating(losses):
        evidence["diagnosis"] = "oscillates"
        return Finding("cannot-overfit-batch", "warning",
                       f"Training on one batch, the loss oscillates around {sum(losses[-10:]) / 10:.4g} instead of "
                       f"falling to {result['floor']:.3g}: the LR ({lr:.3g}) is too high for it",
                       evidence, "Lower the LR (try `traindoc tune lr`), or add warmup and gradient clipping.")
    evidence["diagnosis"] = "stops-high"
    return Finding("cannot-overfit-batch", "warning",
                   f"Training on one batch for {steps} steps, the loss falls from {first:.4g} to {result['min_loss']:.4g} "
                   f"but not to {result['floor']:.3g}: the LR ({lr:.3g}) is too low for this many steps, or the model "
                   "cannot represent the batch", evidence,
                   "Raise the LR (try `traindoc tune lr`) or train longer on the batch; if it still stops high, the "
                   "model is too small or its inputs do not carry the targets (check the data and the model's "
                   "output size)." + fix_common)


def doctor_errors(plan: Any) -> list[dict[str, Any]]:
    """The errors the one-batch doctor proves on the plan's setup, as ``{"id", "message", "fix",
    "location"}``: `traindoc.check` on a copy of the model with the batch (for a script: the doctor's
    findings at its first optimizer step, which the trial ran)."""
    if not isinstance(plan, Plan):
        return [f for f in plan.findings if f["severity"] == "error"]
    from traindoc.api import check

    model, opt = plan.copies()
    model.train()
    forward = plan.forward if plan.setup.user_forward else None
    report = check(model, plan.richest_batch(), forward=forward, loss_fn=plan.loss_fn, optimizer=opt)
    return [{"id": f.id, "message": f.title, "fix": f.fix, "location": None}
            for f in report.findings if f.severity == "error"]
