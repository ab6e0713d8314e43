"""The gallery's tables, in Markdown (docs/benchmark.md) and as plain text for the terminal.

    >>> from benchmarks.gallery.score import CaseScore, totals
    >>> s = CaseScore("model/x", "traindoc", 1, 1, True, 0, [], [], [], 3.0, 2.5, ["batch-mixing:error"])
    >>> print(summary_table({"traindoc": totals([s])}, {"traindoc": "0.1"}))
    | tool | version | recall (expected ids) | bugs fully diagnosed | false errors on healthy twins | twins with a warning | twins with a hint | median steps to detect | bug line named | not run | wall time |
    |---|---|---|---|---|---|---|---|---|---|---|
    | traindoc | 0.1 | **100%** (1/1) | 1/1 | 0/1 | 0/1 | 0/1 | 0 | 1/1 | 0 | 6 s |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from benchmarks.gallery.case import Case
from benchmarks.gallery.score import CaseScore, Totals


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "—"


def summary_table(all_totals: Mapping[str, Totals], versions: Mapping[str, str]) -> str:
    head = ("| tool | version | recall (expected ids) | bugs fully diagnosed | false errors on healthy twins | "
            "twins with a warning | twins with a hint | median steps to detect | bug line named | not run | wall time |")
    rows = [head, "|" + "---|" * 11]
    for tool, t in all_totals.items():
        step = "—" if t.median_step is None else f"{t.median_step:g}"
        lines = f"{t.lines_ok}/{t.lines_named}" if t.lines_named else "names no line"
        rows.append(f"| {tool} | {versions.get(tool, '')} | **{_pct(t.found, t.groups)}** ({t.found}/{t.groups}) | "
                    f"{t.detected}/{t.cases} | {t.false_error_twins}/{t.cases} | {t.warning_twins}/{t.cases} | "
                    f"{t.hint_twins}/{t.cases} | "
                    f"{step} | {lines} | {t.not_run} | {t.wall_s:.0f} s |")
    return "\n".join(rows)


def _cell(s: CaseScore | None) -> str:
    if s is None:
        return ""
    if s.error and not s.found:
        return "n/a" if "not supported" in s.error or "cannot" in s.error else "failed"
    mark = "✓" if s.detected else ("½" if s.found else "✗")
    if s.twin_errors:
        mark += " (twin: " + ", ".join(s.twin_errors) + ")"
    return mark


def case_table(cases: Sequence[Case], scores: Mapping[str, Mapping[str, CaseScore]], tools: Sequence[str]) -> str:
    """One row per case: the expected ids, traindoc's verdict (found, line, step, twin) and each peer's."""
    peers = [t for t in tools if t != "traindoc"]
    head = "| case | expected | traindoc | line | step | twin (traindoc) | wall s (bug/twin) |"
    head += "".join(f" {p} |" for p in peers)
    rows = [head, "|" + "---|" * (7 + len(peers))]
    for case in cases:
        s = scores["traindoc"].get(case.name)
        expect = ", ".join("\\|".join(g) for g in case.expect)
        if s is None:
            continue
        found = "✓" if s.detected else ("½" if s.found else "✗ " + (s.error[:60] if s.error else ""))
        line = {None: "—", True: "✓", False: "✗"}[s.line_ok]
        step = "—" if s.step is None else str(s.step)
        twin = ", ".join(f"**{e}** (error)" for e in s.twin_errors) or "clean"
        if s.twin_warnings:
            twin += " · " + ", ".join(f"{w} (warning)" for w in s.twin_warnings)
        if s.twin_hints:
            twin += " · " + ", ".join(f"{h} (hint)" for h in s.twin_hints)
        row = (f"| [{case.name}](../benchmarks/gallery/cases/{case.name}.py) | {expect} | {found} | {line} | {step} "
               f"| {twin} | {s.wall_bug:.0f}/{s.wall_twin:.0f} |")
        row += "".join(f" {_cell(scores.get(p, {}).get(case.name))} |" for p in peers)
        rows.append(row)
    return "\n".join(rows)


def misses(cases: Sequence[Case], scores: Mapping[str, CaseScore]) -> list[str]:
    """traindoc's misses, wrong lines and false errors, one line each (the doc explains each)."""
    out = []
    for case in cases:
        s = scores.get(case.name)
        if s is None:
            continue
        if not s.detected:
            want = ", ".join("|".join(g) for g in case.expect)
            got = ", ".join(s.reported_bug) or "nothing"
            out.append(f"- `{case.name}`: expected {want}; reported {got}" + (f" ({s.error})" if s.error else ""))
        elif s.line_ok is False:
            out.append(f"- `{case.name}`: found, but the line named is not the bug's line {case.bug_lines}")
        if s.twin_errors:
            out.append(f"- `{case.name}` (healthy twin): false error {', '.join(s.twin_errors)}")
    return out
