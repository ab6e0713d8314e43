"""traindoc's own failures during a watched run: contained, counted, reported — never raised.

Every hook body, detector call and write of the monitor runs through `FailureLog.guard`. An
exception there is traindoc's bug, not the user's: it is recorded (where, the exception, the last
lines of its traceback, how often, the first step) and the training goes on. At close each place
that failed becomes one ``probe-failed`` hint (`traindoc.findings.internal_failure`). At most
``MAX_PLACES`` places are kept apart; further ones are counted under ``"other"``.

    >>> log = FailureLog(step=lambda: 3)
    >>> log.guard("flush", lambda: 1 / 0)
    >>> [(f.id, f.evidence["where"], f.evidence["first_step"]) for f in log.findings()]
    [('probe-failed', 'flush', 3)]
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from traindoc.findings import Finding, internal_failure

MAX_PLACES = 10


class FailureLog:
    """Records the monitor's internal exceptions by place (see the module docstring)."""

    def __init__(self, step: Callable[[], int]):
        self._step = step
        self.places: dict[str, dict[str, Any]] = {}

    def guard(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None after recording the exception it raised."""
        try:
            return fn(*args)
        except Exception as e:  # traindoc's own failure: record it, never break the user's training
            self.record(where, e)
            return None

    def record(self, where: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.record_text(where, text, f"{type(exc).__name__}: {exc}")

    def record_text(self, where: str, text: str, summary: str | None = None) -> None:
        entry = self.places.get(where)
        if entry is None and len(self.places) >= MAX_PLACES:
            where = "other"
            entry = self.places.get(where)
        if entry is None:
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            self.places[where] = {"where": where, "exception": summary or (lines[-1] if lines else ""),
                                  "traceback": lines[-12:], "count": 1, "first_step": self._step()}
        else:
            entry["count"] += 1

    def findings(self) -> list[Finding]:
        return [internal_failure(f"traindoc's monitor ({e['where']})", e["exception"], count=e["count"], evidence=e)
                for e in self.places.values()]
