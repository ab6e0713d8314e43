"""Scoring one tool's runs of the gallery: pure functions of what the tool reported.

A tool's run of a script is an `Outcome`: the problems it reported (catalog ids, each with a severity,
the script line it names and the optimizer step at which it was known). A case is scored from the
run of its buggy script and the run of its healthy twin:

- **found**: how many of the case's expected entries the bug run reported (an entry ``a|b`` is
  found when either id is reported, at any severity: a hint that names the bug names it);
- **line**: whether a reported expected finding names a line marked ``# BUG`` (None when nothing
  was found or the tool names no lines);
- **step**: the earliest optimizer step at which an expected finding was known;
- **false errors**: the ``error`` findings on the healthy twin (a tool without severities: every
  problem it reports on the twin); warnings and hints on the twin are counted apart (a hint such as
  ``weight-decay-on-norms`` is usually true of a healthy script too).

    >>> from pathlib import Path
    >>> from benchmarks.gallery.case import Case
    >>> case = Case(Path("x.py"), "model/x", "model", "t", ["https://e.org"], [("batch-mixing",)], [27])
    >>> bug = Outcome("traindoc", [Reported("batch-mixing", "error", 27, 0), Reported("weight-decay-on-norms", "hint", 39, 0)], 3.0)
    >>> twin = Outcome("traindoc", [Reported("weight-decay-on-norms", "hint", 39, 0)], 2.5)
    >>> s = score_case(case, bug, twin)
    >>> (s.found, s.groups, s.line_ok, s.step, s.twin_errors, s.twin_warnings, s.twin_hints)
    (1, 1, True, 0, [], [], ['weight-decay-on-norms'])
    >>> t = totals([s])
    >>> (t.recall, t.detected, t.false_error_twins, t.warning_twins, t.hint_twins, t.median_step, t.lines_ok)
    (1.0, 1, 0, 0, 1, 0, 1)
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gallery.case import Case

INTERNAL_IDS = frozenset({"probe-failed", "probe-skipped"})
"""A tool saying that it could not answer is not a claim about the training: never a false error."""


@dataclass(frozen=True)
class Reported:
    id: str
    severity: str
    """``error``, ``warning`` or ``hint`` (traindoc); ``flag`` for a tool without severities."""
    line: int | None = None
    step: int | None = None
    file: str | None = None


@dataclass
class Outcome:
    """One tool's run of one script."""

    tool: str
    reported: list[Reported]
    wall_s: float
    error: str = ""
    """The tool could not run or answer (not applicable, crashed, timed out): why."""
    exit_code: int | None = None


@dataclass
class CaseScore:
    case: str
    tool: str
    groups: int
    found: int
    line_ok: bool | None
    step: int | None
    twin_errors: list[str]
    twin_warnings: list[str]
    twin_hints: list[str]
    wall_bug: float
    wall_twin: float
    reported_bug: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def detected(self) -> bool:
        return self.groups > 0 and self.found == self.groups

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_error(r: Reported) -> bool:
    return r.id not in INTERNAL_IDS and r.severity in ("error", "flag")


def score_case(case: Case, bug: Outcome, twin: Outcome) -> CaseScore:
    """The score of one tool on one case (see the module docstring)."""
    found = 0
    lines: list[bool] = []
    steps: list[int] = []
    for group in case.expect:
        hits = [r for r in bug.reported if r.id in group]
        if not hits:
            continue
        found += 1
        steps += [r.step for r in hits if r.step is not None]
        named = [r for r in hits if r.line is not None]
        if named:
            lines.append(any(case.accepts(r.line) and (r.file is None or _same_file(r.file, case))
                             for r in named))
    line_ok = None if not lines else any(lines)
    errors = sorted({r.id for r in twin.reported if _is_error(r)})
    warnings = sorted({r.id for r in twin.reported if r.severity == "warning" and r.id not in INTERNAL_IDS})
    hints = sorted({r.id for r in twin.reported if r.severity == "hint" and r.id not in INTERNAL_IDS})
    error = "; ".join(e for e in (bug.error, twin.error) if e)
    return CaseScore(case.name, bug.tool, len(case.expect), found, line_ok, min(steps) if steps else None,
                     errors, warnings, hints, bug.wall_s, twin.wall_s,
                     sorted({f"{r.id}:{r.severity}" for r in bug.reported}), error)


def _same_file(file: str, case: Case) -> bool:
    try:
        return Path(file).resolve() == case.path
    except OSError:
        return False


@dataclass
class Totals:
    tool: str
    cases: int
    groups: int
    found: int
    detected: int
    false_error_twins: int
    warning_twins: int
    hint_twins: int
    median_step: float | None
    lines_named: int
    lines_ok: int
    wall_s: float
    not_run: int

    @property
    def recall(self) -> float:
        return self.found / self.groups if self.groups else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recall": self.recall}


def totals(scores: list[CaseScore]) -> Totals:
    """One tool's totals over the cases it was scored on."""
    steps = [s.step for s in scores if s.detected and s.step is not None]
    named = [s for s in scores if s.line_ok is not None]
    return Totals(scores[0].tool if scores else "", len(scores), sum(s.groups for s in scores),
                  sum(s.found for s in scores), sum(s.detected for s in scores),
                  sum(bool(s.twin_errors) for s in scores), sum(bool(s.twin_warnings) for s in scores),
                  sum(bool(s.twin_hints) for s in scores),
                  statistics.median(steps) if steps else None, len(named), sum(bool(s.line_ok) for s in named),
                  sum(s.wall_bug + s.wall_twin for s in scores), sum(bool(s.error) for s in scores))
