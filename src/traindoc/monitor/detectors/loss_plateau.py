"""`loss-plateau` and `loss-at-chance`: the loss stopped improving while the LR is not ~0.

What it computes: the last ``patience`` = 300 finite losses, split in two halves of 150 steps (two
rolling windows, O(patience) memory). With ``old`` and ``new`` the medians of the earlier and the
later half, the loss is *not improving* when ``old - new < rel_improvement * |old|``
(``rel_improvement`` = 1%). Comparing the medians of two long blocks, rather than tracking the
lowest median ever seen, keeps mini-batch noise from producing fake "new bests" that reset the
clock. A plateau is that condition on ``sustain`` = 50 consecutive steps, with the LR not ~0: the
largest param-group LR is at least ``lr_floor`` = 1e-2 x the largest LR seen in the run (a schedule
that has annealed the LR is expected to flatten the loss). A loss that has already fallen below
``converged`` = 5% of the first loss is treated as converged, not stuck, and is not reported.
A run that sits at the noise floor of a constant LR is a plateau by this definition too; the
warning is then still useful (decay the LR, or stop).

When the record carries ``num_classes`` = C and the plateau median is within ``chance_tol`` = 5%
of ln(C) (the loss of uniform guessing), ``loss-at-chance`` is reported *instead* (the more
specific finding: the model has learned nothing from its inputs); otherwise ``loss-plateau``.
Both are warnings, reported once.
"""

from __future__ import annotations

import math
from collections import deque

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, RollingWindow, finite, make_finding, max_lr
from traindoc.monitor.record import StepRecord


class LossPlateauDetector(Detector):
    ids = ("loss-plateau", "loss-at-chance")

    def __init__(self, patience: int = 300, rel_improvement: float = 0.01, sustain: int = 50,
                 lr_floor: float = 1e-2, chance_tol: float = 0.05, converged: float = 0.05):
        half = max(1, patience // 2)
        self.old = RollingWindow(half)
        self.new = RollingWindow(half)
        self.patience = patience
        self.rel_improvement = rel_improvement
        self.sustain = sustain
        self.lr_floor = lr_floor
        self.chance_tol = chance_tol
        self.converged = converged
        self._fifo: deque[float] = deque()
        self._first: float | None = None
        self._lr_max = 0.0
        self._flat = 0
        self._flat_since: int | None = None
        self._num_classes: int | None = None
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        lr = max_lr(record)
        if lr is not None:
            self._lr_max = max(self._lr_max, lr)
        if record.num_classes:
            self._num_classes = record.num_classes
        loss = record.loss
        if self._fired or not finite(loss):
            return []
        if self._first is None:
            self._first = loss
        self._fifo.append(loss)  # type: ignore[arg-type]
        self.new.push(loss)  # type: ignore[arg-type]
        if len(self._fifo) > self.new.size:
            self.old.push(self._fifo.popleft())
        if not self.old.full:
            return []
        old, new = self.old.median(), self.new.median()
        improving = old - new >= self.rel_improvement * abs(old)
        lr_off = lr is not None and lr < self.lr_floor * self._lr_max
        if improving or lr_off or abs(new) < self.converged * abs(self._first):  # type: ignore[arg-type]
            self._flat = 0
            return []
        if self._flat == 0:
            self._flat_since = record.step
        self._flat += 1
        if self._flat < self.sustain:
            return []
        self._fired = True
        since = (self._flat_since or 0) - self.patience
        evidence = {"step": record.step, "value": new, "earlier_median": old,
                    "improvement": (old - new) / abs(old) if old else None,
                    "threshold": self.rel_improvement, "window": self.patience, "sustain": self.sustain,
                    "flat_since_step": max(0, since), "lr": lr, "max_lr": self._lr_max,
                    "first_loss": self._first}
        C = self._num_classes
        if C and C >= 2:
            chance = math.log(C)
            evidence.update(num_classes=C, chance_loss=chance)
            if abs(new - chance) <= self.chance_tol * chance:
                evidence["chance_tol"] = self.chance_tol
                return [make_finding(
                    "loss-at-chance", "warning",
                    f"Loss stuck at chance level: {new:.4g} ~ ln({C}) = {chance:.4g} (no progress over "
                    f"the last {self.patience + self._flat} steps)", evidence)]
        return [make_finding(
            "loss-plateau", "warning",
            f"Loss plateau at {new:.4g}: improved {(old - new) / abs(old) if old else 0:.1%} (< "
            f"{self.rel_improvement:.0%}) between the last two {self.new.size}-step blocks "
            f"(LR {lr if lr is not None else 'unknown'})", evidence,
            "If this level is far above what the task allows, something blocks learning (a wrong batch "
            "layout, missing attention masks: `traindoc.check` on one batch proves those). If the model is right, it has converged "
            "at this LR: decay the LR, stop earlier, or give it more capacity or data.")]
