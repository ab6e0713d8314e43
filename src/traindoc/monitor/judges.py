"""The detectors, fed in one place: `start` once, `update` per step record, `finalize` at close.

A detector that raises is traindoc's bug: it is recorded in the watch's `FailureLog`, dropped for the
rest of the run, and the other detectors and the training go on. Every finding goes to ``report``
(the watch writes it to the run directory and keeps it for the final `Report`); a finding a
detector takes back (`Detector.withdraw`: what it learned later proves it wrong, or a stronger
finding replaces it) goes to ``withdraw``, before the findings of the same call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector
from traindoc.monitor.failures import FailureLog
from traindoc.monitor.record import RunEnd, RunStart, StepRecord


class Judges:
    def __init__(self, detectors: Sequence[Detector], failures: FailureLog,
                 report: Callable[[Finding, int | None], None],
                 withdraw: Callable[[Finding], None] | None = None):
        self.detectors = list(detectors)
        self.failures = failures
        self.report = report
        self.withdraw = withdraw

    @property
    def names(self) -> list[str]:
        return [type(d).__name__ for d in self.detectors]

    def _ask(self, det: Detector, question: Callable[[], list[Finding] | None], step: int | None) -> None:
        try:
            found = question() or []
        except Exception as e:
            self._drop(det, e)
            return
        self._deliver(det, found, step)

    def _drop(self, det: Detector, e: Exception) -> None:
        self.failures.record(f"detector {type(det).__name__}", e)
        if det in self.detectors:
            self.detectors.remove(det)

    def _deliver(self, det: Detector, found: list[Finding], step: int | None) -> None:
        take = getattr(det, "take_withdrawn", None)  # a duck-typed detector may lack it: it withdraws nothing
        for f in take() if take is not None else []:
            if self.withdraw is not None:
                self.withdraw(f)
        for f in found:
            self.report(f, step)

    def start(self, run: RunStart) -> None:
        for det in list(self.detectors):
            self._ask(det, lambda det=det: det.start(run), None)

    def update(self, record: StepRecord) -> None:
        """Every detector judges the record (the per-step path: no closure, and the withdrawals are
        looked for only where a detector keeps some)."""
        for det in list(self.detectors):
            try:
                found = det.update(record)
            except Exception as e:
                self._drop(det, e)
                continue
            if found or getattr(det, "__dict__", {}).get("_withdrawn") or not isinstance(det, Detector):
                self._deliver(det, found or [], record.step)

    def finalize(self, end: RunEnd) -> None:
        for det in list(self.detectors):
            self._ask(det, lambda det=det: det.finalize(end), None)
