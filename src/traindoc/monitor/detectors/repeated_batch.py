"""`repeated-batch`: the same batch is fed to the model step after step.

What it computes: the monitor fingerprints the batch logged for each step (``watch.log(batch=...)``
or ``watch.watch_batch``; `traindoc.monitor.recorder.BatchFingerprint`: equal batches give equal
fingerprints, different batches different ones). The detector counts consecutive optimizer steps
whose fingerprints are equal. It fires (warning) once ``repeats`` = 8 consecutive steps saw the same
batch: the shape of a DataLoader re-created inside the loop without shuffling
(``next(iter(loader))`` always returns the first batch) or of an iterator that is never advanced
(``batch = next(it)`` outside the loop). The model then fits one batch and the loss falls while
nothing general is learned.

Why it stays quiet on healthy runs: several epochs over a small dataset repeat each batch once per
epoch, never on consecutive steps unless the dataset is a single batch; a shuffling loader changes
the order of the samples in every batch, and so the fingerprint. Why a warning and not an error:
training on the whole dataset as one batch (full-batch gradient descent) is the one healthy setup
with the same signal; the evidence says so. Steps without a logged batch break a streak.

    >>> from traindoc.monitor.record import StepRecord
    >>> d = RepeatedBatchDetector(repeats=3)
    >>> found = [f for s in range(5) for f in d.update(StepRecord(step=s, batch_fingerprint=1.5))]
    >>> [(f.id, f.evidence["step"], f.evidence["repeats"]) for f in found]
    [('repeated-batch', 0, 3)]
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, make_finding
from traindoc.monitor.record import StepRecord


class RepeatedBatchDetector(Detector):
    ids = ("repeated-batch",)

    def __init__(self, repeats: int = 8):
        self.repeats = repeats
        self._last: float | None = None
        self._since = 0
        self._count = 0
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        fp = record.batch_fingerprint
        if self._fired:
            return []
        if fp is None:
            self._last, self._count = None, 0
            return []
        if fp == self._last:
            self._count += 1
        else:
            self._last, self._since, self._count = fp, record.step, 1
        if self._count < self.repeats:
            return []
        self._fired = True
        evidence = {"step": self._since, "value": self._count, "threshold": self.repeats, "window": self._count,
                    "repeats": self._count, "last_step": record.step, "batch_fingerprint": fp,
                    "loss": record.loss}
        return [make_finding(
            "repeated-batch", "warning",
            f"The same batch was fed on {self._count} consecutive steps (from step {self._since}): the loader "
            "is re-created inside the loop or its iterator is not advanced", evidence,
            "Create the DataLoader (and its iterator) once, before the loop, and take a new batch every step: "
            "`for batch in loader:` per epoch, or `batch = next(it)` inside the loop. Nothing to do if you "
            "train on the whole dataset as one batch on purpose.")]
