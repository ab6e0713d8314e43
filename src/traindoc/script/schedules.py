"""``scheduler-misuse`` from the schedule's own plan: a scheduler built for N optimizer steps but stepped
far less often (once per epoch), so its warmup never ends or its decay never comes.

The monitor's detector judges the LR it sees (a collapse to ~0); a per-step schedule stepped per epoch
leaves the LR near its starting value, which looks like a constant LR. The plan is in the scheduler:

==========================================  =========================================================
scheduler                                   planned length (its own steps)
==========================================  =========================================================
``OneCycleLR``                              ``total_steps``
``LinearLR``                                ``total_iters``
``LambdaLR`` from transformers' schedules   ``num_training_steps`` of its ``lr_lambda`` (a partial)
==========================================  =========================================================

Rule (judged at the end of the run, from what it did): the run took ``M`` optimizer steps, at least
half the plan ``N`` (``M >= N / 2``: the run is as long as the schedule was built for), while the
scheduler took ``S`` steps with ``S <= N / 5`` and ``M >= 5 S`` (stepped at most every fifth optimizer
step). The schedule then covered under 20% of its plan over a run that covered half of it or more:
it counts epochs, not steps. Schedules whose length is not a step count (``StepLR``,
``CosineAnnealingLR(T_max=epochs)``) are not judged here.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    >>> for _ in range(100):
    ...     opt.step()
    >>> for _ in range(4):
    ...     sched.step()
    >>> [(f.id, f.evidence["planned_steps"], f.evidence["scheduler_steps"]) for f in plan_findings([sched], 100)]
    [('scheduler-misuse', 100, 4)]
"""

from __future__ import annotations

from typing import Any

from traindoc.findings import Finding

_LENGTH_ATTRIBUTE = {"OneCycleLR": "total_steps", "LinearLR": "total_iters"}


def planned_steps(scheduler: Any) -> int | None:
    """The number of steps the scheduler was built for, where it says (see the table above)."""
    attr = _LENGTH_ATTRIBUTE.get(type(scheduler).__name__)
    if attr is not None and isinstance(getattr(scheduler, attr, None), int):
        return getattr(scheduler, attr)
    for fn in getattr(scheduler, "lr_lambdas", None) or []:
        n = (getattr(fn, "keywords", None) or {}).get("num_training_steps")
        if isinstance(n, int):
            return n
    return None


def plan_findings(schedulers: list[Any], optimizer_steps: int) -> list[Finding]:
    """``scheduler-misuse`` for each scheduler stepped far less often than it was planned (module docstring)."""
    found = []
    m = optimizer_steps
    for s in schedulers:
        n = planned_steps(s)
        taken = int(getattr(s, "last_epoch", 0))  # the constructor's own step sets it to 0
        if not n or m < n / 2 or taken > n / 5 or m < 5 * max(taken, 1):
            continue
        lrs = [float(v) for v in getattr(s, "get_last_lr", list)()]
        name = type(s).__name__
        found.append(Finding(
            "scheduler-misuse", "warning",
            f"{name} was built for {n} steps but stepped {taken} times in {m} optimizer steps: it is stepped once "
            f"per epoch, so the schedule covered {taken / n:.0%} of its plan (its warmup or decay never came)",
            {"scheduler": name, "planned_steps": n, "scheduler_steps": taken, "optimizer_steps": m,
             "lr_now": lrs[:4], "reason": "per-step schedule stepped per epoch"},
            f"Step {name} after every optimizer step (`scheduler.step()` inside the batch loop; in Lightning return "
            "`{'scheduler': scheduler, 'interval': 'step'}` from configure_optimizers), or build it for the number "
            "of times you step it."))
    return found
