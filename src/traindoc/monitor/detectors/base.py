"""The `Detector` base class and the small streaming statistics the detectors share.

A detector is a pure judge over host-side records: `start(run)` is called once when the run starts
(after its first optimizer step, before the first record), with what is known then (`RunStart`);
`update(record)` once per optimizer step, in step
order, returning the findings that became certain at that step; `finalize(end)` once at close, with
what the monitor measured over the whole run (`RunEnd`), returning findings that need the whole run. Detectors keep
O(window) memory and report each id at most once (a few detectors, once per distinct layer set), so
a broken run produces a handful of findings, not a flood. A detector whose early claim is proved
wrong later, or replaced by a stronger one, takes it back with `Detector.withdraw` (the final
`Report` then holds only the later one).

A finding's fix is said once: the detector's own advice, complete and specific to what it proved,
when it has one; the catalog's generic fix only when it has none (`make_finding`).

    >>> w = RollingWindow(5)
    >>> for x in [1.0, 2.0, 3.0, 100.0, 4.0, 5.0]:
    ...     w.push(x)
    >>> w.median(), w.mad(), len(w)
    (4.0, 1.0, 5)
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

from traindoc.catalog import entry
from traindoc.findings import Finding, Severity
from traindoc.monitor.record import RunEnd, RunStart, StepRecord
from traindoc.numbers import finite, median, quantile

__all__ = ["Detector", "RollingWindow", "accumulation_note", "finite", "make_finding", "max_lr", "median",
           "quantile"]


def max_lr(record: StepRecord) -> float | None:
    """The largest finite LR of the record's param groups, None when no LR was recorded."""
    lrs = [x for x in record.lr if finite(x)]
    return max(lrs) if lrs else None


def accumulation_note(backward_calls: int) -> str:
    """What a fix for too large updates must add when each step accumulates several micro-batches: a
    loss summed over them, not averaged, makes the gradient that many times larger.

    >>> accumulation_note(1)
    ''
    >>> accumulation_note(4)[:60]
    ' Each step accumulates 4 backward passes: if the micro-batch'
    """
    if backward_calls <= 1:
        return ""
    return (f" Each step accumulates {backward_calls} backward passes: if the micro-batch losses are summed "
            f"(not divided by {backward_calls}), the gradient is {backward_calls}x too large; divide each "
            f"micro-batch loss by {backward_calls} first.")


class RollingWindow:
    """The last `size` values, kept sorted too, for O(size) rolling median and MAD."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def push(self, value: float) -> None:
        self._fifo.append(value)
        bisect.insort(self._sorted, value)
        if len(self._fifo) > self.size:
            old = self._fifo.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def __len__(self) -> int:
        return len(self._fifo)

    @property
    def full(self) -> bool:
        return len(self._fifo) >= self.size

    def values(self) -> list[float]:
        return list(self._fifo)

    def median(self) -> float:
        s, n = self._sorted, len(self._sorted)
        if n == 0:
            raise ValueError("median of an empty window")
        mid = n // 2
        return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])

    def mad(self) -> float:
        """Median absolute deviation from the median (multiply by 1.4826 for a Gaussian sigma)."""
        m = self.median()
        return median(abs(x - m) for x in self._sorted)

    def clear(self) -> None:
        self._fifo.clear()
        self._sorted.clear()


class Detector:
    """Base class of the streaming detectors (see the module docstring for the contract).

    Subclasses set `ids`: every finding id they may emit (`id` is the first).
    """

    ids: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.ids[0]

    def start(self, run: RunStart) -> list[Finding]:
        return []

    def update(self, record: StepRecord) -> list[Finding]:
        return []

    def finalize(self, end: RunEnd | None = None) -> list[Finding]:
        return []

    def withdraw(self, finding: Finding) -> None:
        """Take back a finding this detector returned earlier (see the module docstring)."""
        self.__dict__.setdefault("_withdrawn", []).append(finding)

    def take_withdrawn(self) -> list[Finding]:
        """The findings withdrawn since the last call (the judges ask after every call)."""
        return self.__dict__.pop("_withdrawn", [])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ids={self.ids})"


def make_finding(finding_id: str, severity: Severity, title: str, evidence: dict[str, Any],
                 fix: str = "") -> Finding:
    """A finding whose fix is the detector's specific advice when it gives one (complete on its own:
    it is not followed by the generic text), else the catalog's fix for the id.

    >>> make_finding("missing-zero-grad", "error", "t", {}, "Call `opt.zero_grad()`.").fix
    'Call `opt.zero_grad()`.'
    >>> make_finding("missing-zero-grad", "error", "t", {}).fix == entry("missing-zero-grad").fix
    True
    """
    return Finding(finding_id, severity, title, evidence, fix.strip() or entry(finding_id).fix)
