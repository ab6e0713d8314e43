"""`scheduler-misuse`: the LR decays away early in a run that goes on.

What it computes, per param group, from ``record.lr``: the largest LR seen so far (``peak``), the
first step ``d`` where the LR fell below ``drop`` = 0.1 x ``peak`` (a 90% decay) and the first step
``c`` where it fell below ``collapse`` = 1e-3 x ``peak`` (three orders of magnitude: no training
happens at that LR). Steps count from the first step the monitor saw. Two rules, each reported
(warning) once:

* **collapsed**: the LR has stayed below 1e-3 x peak for ``max(min_after, after_frac x (c + 1))``
  steps (``min_after`` = 5, ``after_frac`` = 0.25), i.e. training went on at an LR of ~0 for a
  quarter as long again as it took to get there. An epoch schedule stepped per batch
  (``StepLR(step_size=1, gamma=0.5)`` reaches 1e-3 in 10 steps) is reported ~5 steps after its
  collapse; a per-step schedule built with too few total steps, once the run has gone on a quarter
  past its end.
* **decayed early**: the LR lost 90% at ``d`` and the run has gone on to ``step + 1 >= run_factor``
  (10) x ``(d + 1)`` and at least ``min_after_drop`` = 20 steps past ``d`` while the LR never came
  back above 0.1 x peak: the LR lost 90% within the first ~10% of the run and stayed there (the
  same misuse, with a gentler schedule).

Why healthy schedules stay quiet: the monitor does not know the planned end of the run, but what
comes after the collapse tells it. Cosine decay to 0 falls below 1e-3 x peak only in the last ~2%
of its run, linear decay in the last 0.1%, and the run then stops: the steps after the collapse are
far fewer than a quarter of those before it. Step decays by 10x per milestone (ImageNet's 30/60/90
epochs) reach 1e-3 x peak only at the third milestone, if at all, near the end. Warmup only raises
the peak; cyclic schedules and warm restarts come back above 0.1 x peak, which resets both rules.

The evidence has the step of the 90% drop, the step of the collapse if any, the peak and the
current LR, which rule fired, and the fraction of steps during the decay on which the LR changed
(~100% for a per-batch schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, finite, make_finding
from traindoc.monitor.record import StepRecord


@dataclass
class _Group:
    peak: float = 0.0
    peak_step: int = 0
    last: float | None = None
    drop_step: int | None = None
    collapse_step: int | None = None
    changes: int = 0
    steps: int = 0


class SchedulerMisuseDetector(Detector):
    ids = ("scheduler-misuse",)

    def __init__(self, drop: float = 0.1, collapse: float = 1e-3, run_factor: float = 10.0,
                 min_after_drop: int = 20, after_frac: float = 0.25, min_after: int = 5):
        self.drop = drop
        self.collapse = collapse
        self.run_factor = run_factor
        self.min_after_drop = min_after_drop
        self.after_frac = after_frac
        self.min_after = min_after
        self._groups: list[_Group] = []
        self._first_step: int | None = None
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._fired or not record.lr:
            return []
        if self._first_step is None:
            self._first_step = record.step
        t = record.step - self._first_step
        while len(self._groups) < len(record.lr):
            self._groups.append(_Group())
        for index, lr in enumerate(record.lr):
            g = self._groups[index]
            if not finite(lr):
                continue
            if g.collapse_step is None and g.last is not None:
                g.steps += 1
                g.changes += lr != g.last
            if lr > g.peak:
                g.peak, g.peak_step = lr, t
            if g.drop_step is not None and lr > self.drop * g.peak:
                g.drop_step = g.collapse_step = None  # came back: a cycle or a restart
                g.changes = g.steps = 0
            if g.drop_step is None and g.peak > 0 and lr < self.drop * g.peak:
                g.drop_step = t
            if g.drop_step is not None and g.collapse_step is None and lr < self.collapse * g.peak:
                g.collapse_step = t
            elif g.collapse_step is not None and lr >= self.collapse * g.peak:
                g.collapse_step = None  # out of the collapse, still below 10%: only the slow rule holds
            g.last = lr
            if g.collapse_step is not None and t - g.collapse_step >= max(
                    self.min_after, math.ceil(self.after_frac * (g.collapse_step + 1))):
                self._fired = True
                return [self._finding(index, g, record, lr, "collapsed")]
            if (g.drop_step is not None and t + 1 >= self.run_factor * (g.drop_step + 1)
                    and t - g.drop_step >= self.min_after_drop):
                self._fired = True
                return [self._finding(index, g, record, lr, "decayed early")]
        return []

    def _finding(self, index: int, g: _Group, record: StepRecord, lr: float, rule: str) -> Finding:
        first = self._first_step or 0
        assert g.drop_step is not None
        change_fraction = g.changes / g.steps if g.steps else None
        collapsed = rule == "collapsed"
        step = (g.collapse_step if collapsed and g.collapse_step is not None else g.drop_step) + first
        evidence = {"step": step, "value": lr, "threshold": (self.collapse if collapsed else self.drop) * g.peak,
                    "window": record.step - first + 1, "rule": rule, "param_group": index, "peak_lr": g.peak,
                    "peak_step": g.peak_step + first, "lr_now": lr, "drop_step": g.drop_step + first,
                    "collapse_step": None if g.collapse_step is None else g.collapse_step + first,
                    "lr_change_fraction_before_drop": change_fraction, "run_factor": self.run_factor,
                    "after_frac": self.after_frac}
        per_batch = change_fraction is not None and change_fraction > 0.9
        if collapsed:
            title = (f"LR of group {index} collapsed to {lr:.3g}, {lr / g.peak:.1e} of its peak {g.peak:.3g}, "
                     f"by step {step} and training went on at it until step {record.step}")
        else:
            title = (f"LR of group {index} fell below {self.drop:.0%} of its peak {g.peak:.3g} by step "
                     f"{g.drop_step + first} and stayed there until step {record.step}")
        if per_batch:
            title += " (it changed on every step: an epoch schedule stepped per batch?)"
            fix = ("The LR changed on every step: an epoch-based scheduler (StepLR, ExponentialLR, MultiStepLR "
                   "sized in epochs) is stepped once per batch. Call `scheduler.step()` once per epoch, after "
                   "the batch loop, or size the schedule in optimizer steps (`step_size`, `milestones`, "
                   "`T_max` x batches per epoch).")
        else:
            fix = ("Build the schedule with the number of optimizer steps the run really takes "
                   "(`get_linear_schedule_with_warmup(opt, warmup, total_steps)` with total_steps = epochs x "
                   "batches per epoch / accumulation), or step an epoch-based scheduler once per epoch.")
        return make_finding("scheduler-misuse", "warning", title, evidence, fix)
