"""`loss-collapse`: early in the run, the loss falls far below any sensible value on new data.

A model that copies its input gets a loss near 0 within tens or hundreds of steps: a causal LM whose
targets are its inputs at the same positions (labels not shifted), or whose attention sees later
positions (no causal mask). Nothing else in the monitor's records says so: the loss only looks
excellent. This detector says it, and says what it cannot know.

What it computes: with ``num_classes`` = C >= 2 (the width of the logits: classes or vocabulary),
``ln C`` is the loss of uniform guessing. It judges runs that start near chance: the median of the
first 3 losses (before a leak has pulled them down) is at least ``start_frac`` = 0.5 x ln C (a
cross-entropy of a model that starts by guessing; a pretrained model, or a loss that is no
cross-entropy over C classes, is not judged). It fires, once, when the rolling median of the last ``window`` = 20 losses falls below ``collapse`` =
1% of ln C within the first ``within`` = 500 steps. Why these numbers: language models stay far
above 1% of ln V on real text (strong ones at ~1.8 nats per token for a 50k vocabulary, ~17% of ln
V; ~0.7 nats per byte, ~14% of ln 128), and a classifier learning a real task from scratch is still
at a few percent of ln C after 500 steps of new data (MNIST's batch losses are around 0.05-0.1,
2-4% of ln 10, after its first epoch); a model that copies its targets gets below 1% in tens to a
few hundred steps.

What it cannot know, and so how sure it is: the same collapse comes from a task that really is this
easy (deterministic synthetic data) and from memorising a few batches (overfitting one batch on
purpose). The batches' fingerprints (``watch.log(batch=...)``) tell memorising apart:

* most of the logged batches had been seen before (more than ``seen_max`` = half of the steps):
  memorising explains the collapse; nothing is reported;
* the batches were logged and mostly new: warning (the model predicts data it never saw almost
  perfectly);
* no batch was logged: hint (it cannot tell fresh data from memorised).

Evidence: the step the collapse was seen, the rolling median, the threshold, ln C and C, the first
losses' median, and how many logged batches were new.
"""

from __future__ import annotations

import math

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, RollingWindow, finite, make_finding, median
from traindoc.monitor.record import StepRecord

_FIRST = 3


class LossCollapseDetector(Detector):
    ids = ("loss-collapse",)

    def __init__(self, collapse: float = 0.01, window: int = 20, within: int = 500, start_frac: float = 0.5,
                 seen_max: float = 0.5):
        self.collapse = collapse
        self.window = RollingWindow(window)
        self.within = within
        self.start_frac = start_frac
        self.seen_max = seen_max
        self._first: list[float] = []
        self._steps = 0
        self._fingerprints: set[float] = set()
        self._logged = 0
        self._repeats = 0
        self._num_classes: int | None = None
        self._done = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._done:
            return []
        self._steps += 1
        if self._steps > self.within:
            self._done = True  # O(within) memory: the fingerprints are dropped with the judgement
            self._fingerprints.clear()
            return []
        if record.num_classes:
            self._num_classes = record.num_classes
        fp = record.batch_fingerprint
        if fp is not None:
            self._logged += 1
            if fp in self._fingerprints:
                self._repeats += 1
            else:
                self._fingerprints.add(fp)
        if not finite(record.loss):
            return []
        self.window.push(record.loss)  # type: ignore[arg-type]
        if len(self._first) < _FIRST:
            self._first.append(record.loss)  # type: ignore[arg-type]
        C = self._num_classes
        if not C or C < 2 or not self.window.full:
            return []
        chance = math.log(C)
        start = median(self._first)
        if start < self.start_frac * chance:
            self._done = True  # not an untrained model's cross-entropy over C classes: out of scope
            return []
        level = self.window.median()
        if level >= self.collapse * chance:
            return []
        self._done = True
        seen_before = self._repeats / self._logged if self._logged else None
        if seen_before is not None and seen_before > self.seen_max:
            return []  # memorising batches it had seen: expected
        fresh = self._logged >= self._steps / 2
        evidence = {"step": record.step, "value": level, "threshold": self.collapse * chance,
                    "window": self.window.size, "num_classes": C, "chance_loss": chance, "first_loss": start,
                    "fraction_of_chance": level / chance, "batches_logged": self._logged,
                    "batches_seen_before": self._repeats, "steps": self._steps}
        where = ("on batches it had not seen before" if fresh else
                 "(no batches logged: the monitor cannot tell new data from memorised)")
        return [make_finding(
            "loss-collapse", "warning" if fresh else "hint",
            f"Loss collapsed to {level:.3g} by step {record.step}, {level / chance:.1%} of chance "
            f"(ln {C} = {chance:.3g}), {where}: the model may be seeing its targets in its inputs",
            evidence,
            "A model this good this early usually sees its targets in its inputs. Run "
            "`traindoc.check(model, batch)` on one batch: it proves or rules out targets equal to the inputs "
            "at the same positions (`labels-not-shifted`) and attention that sees later positions "
            "(`causal-leak`). If it finds neither and the task really is this easy (deterministic synthetic "
            "data), or you overfit a few batches on purpose, nothing is wrong.")]
