"""`scheduler-misuse`: the LR decays away early in a run that goes on.

What it computes, per param group, from ``record.lr``: the largest LR seen so far (``peak``) and
the first step ``c`` where the LR fell below ``drop`` = 0.1 x ``peak`` (a 90% decay). It fires
(warning) when the run has gone on to ``step + 1 >= run_factor`` (10) x ``(c + 1)`` and at least
``min_after`` = 20 steps past ``c`` while the LR never came back above 0.1 x peak: the LR lost 90%
within the first ~10% of the run and stayed there. That is the shape of an epoch-based schedule
(``StepLR``, ``ExponentialLR``, ``MultiStepLR`` sized in epochs) stepped once per batch, or of a
per-step schedule built with too few total steps. The evidence has the step of the 90% drop, the
step where the LR fell below ``collapse`` = 1e-3 x peak if it did, the peak and the current LR,
and the fraction of steps during the decay on which the LR changed (~100% for a per-batch
schedule).

Why it stays quiet on healthy schedules: warmup only raises the peak; cosine and linear decay to
~0 reach 10% of the peak in the last ~10-20% of the run, never in the first 10%; cyclic schedules
and warm restarts come back above 10% of the peak. Runs too short to know (``c`` in the last 90%
of what was seen) are not judged.
"""

from __future__ import annotations

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

    def __init__(self, drop: float = 0.1, collapse: float = 1e-3, run_factor: float = 10.0, min_after: int = 20):
        self.drop = drop
        self.collapse = collapse
        self.run_factor = run_factor
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
            if g.drop_step is None and g.last is not None:
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
            g.last = lr
            if (g.drop_step is not None and t + 1 >= self.run_factor * (g.drop_step + 1)
                    and t - g.drop_step >= self.min_after):
                self._fired = True
                return [self._finding(index, g, record, lr)]
        return []

    def _finding(self, index: int, g: _Group, record: StepRecord, lr: float) -> Finding:
        first = self._first_step or 0
        assert g.drop_step is not None
        change_fraction = g.changes / g.steps if g.steps else None
        evidence = {"step": g.drop_step + first, "value": lr, "threshold": self.drop * g.peak,
                    "window": record.step - first + 1, "param_group": index, "peak_lr": g.peak,
                    "peak_step": g.peak_step + first, "lr_now": lr, "drop_step": g.drop_step + first,
                    "collapse_step": None if g.collapse_step is None else g.collapse_step + first,
                    "lr_change_fraction_before_drop": change_fraction, "run_factor": self.run_factor}
        per_batch = change_fraction is not None and change_fraction > 0.9
        how = " (it changed on every step: an epoch schedule stepped per batch?)" if per_batch else ""
        return make_finding(
            "scheduler-misuse", "warning",
            f"LR of group {index} fell below {self.drop:.0%} of its peak {g.peak:.3g} by step "
            f"{g.drop_step + first} and stayed there until step {record.step}{how}", evidence)
