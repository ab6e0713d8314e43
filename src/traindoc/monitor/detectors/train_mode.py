"""`train-mode-off`: the model was in eval mode at optimizer steps.

The monitor records ``model.training`` at every optimizer step (``record.extra["train_mode"]``,
1.0 or 0.0). In eval mode dropout is off and BatchNorm neither uses batch statistics nor updates its
running ones, so the model trains as a different network from the one it was meant to be — the
usual cause is a ``model.eval()`` for validation without the ``model.train()`` after it.

Fires (severity warning: freezing BatchNorm or dropout on purpose by ``model.eval()`` is a real,
if rare, choice) once the model has been in eval mode for ``steps`` = 3 consecutive optimizer steps.
The evidence gives the first such step and whether the run had trained in train mode before (the
classic "forgot model.train() after evaluation" shape).

    >>> from traindoc.monitor.record import StepRecord
    >>> d = TrainModeOffDetector()
    >>> found = [f for s in range(6) for f in d.update(StepRecord(step=s, extra={"train_mode": float(s < 2)}))]
    >>> [(f.id, f.evidence["step"]) for f in found]
    [('train-mode-off', 2)]
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, make_finding
from traindoc.monitor.record import StepRecord


class TrainModeOffDetector(Detector):
    ids = ("train-mode-off",)

    def __init__(self, steps: int = 3):
        self.steps = steps
        self._run = 0
        self._since: int | None = None
        self._seen_train = False
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        mode = record.extra.get("train_mode")
        if self._fired or mode is None:
            return []
        if mode:
            self._seen_train = True
            self._run = 0
            return []
        if self._run == 0:
            self._since = record.step
        self._run += 1
        if self._run < self.steps:
            return []
        self._fired = True
        after = " after training in train mode before (a model.eval() for validation not undone?)" \
            if self._seen_train else ""
        evidence = {"step": self._since, "value": 0, "threshold": self.steps, "window": self._run,
                    "trained_in_train_mode_before": self._seen_train}
        fix = ("Call `model.train()` right after each evaluation (or at the start of every training epoch)."
               if self._seen_train else
               "Call `model.train()` before the training loop. To keep BatchNorm or dropout fixed on purpose, "
               "put only those modules in eval mode (`module.eval()`), not the whole model.")
        return [make_finding(
            "train-mode-off", "warning",
            f"The model is in eval mode at optimizer steps from step {self._since}{after}: dropout is off "
            "and BatchNorm does not learn its statistics", evidence, fix)]
