"""Rich terminal rendering of a `Report`: errors first, each with its evidence and fix."""

from __future__ import annotations

import json
from typing import Any

_STYLE = {"error": "bold red", "warning": "bold yellow", "hint": "bold cyan"}


def _evidence_lines(evidence: dict[str, Any], limit: int = 12) -> list[str]:
    lines = []
    for key, value in list(evidence.items())[:limit]:
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > 160:
            text = text[:157] + "..."
        lines.append(f"{key}: {text}")
    if len(evidence) > limit:
        lines.append(f"... {len(evidence) - limit} more (see --json)")
    return lines


def _print_info(info: dict[str, Any], console: Any) -> None:
    """What traindoc inferred and measured: scalars on one line, dicts as key=value, lists of records
    (e.g. the decoded samples) as a table."""
    from rich.markup import escape
    from rich.table import Table

    scalars = [f"{k}={v}" for k, v in info.items() if not isinstance(v, (dict, list))]
    if scalars:
        console.print("[dim]traindoc " + escape(", ".join(scalars)) + "[/dim]")
    for key, value in info.items():
        if isinstance(value, dict) and isinstance(value.get("summary"), str):
            console.print(f"[dim]{escape(key)}: {escape(value['summary'])}[/dim]")
        elif isinstance(value, dict):
            console.print(f"[dim]{escape(key)}: " + escape(", ".join(f"{k}={v}" for k, v in value.items())) + "[/dim]")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            table = Table(title=key, title_justify="left", show_lines=False, expand=True)
            for c in columns:
                table.add_column(escape(str(c)), overflow="fold")
            for row in value:
                table.add_row(*(escape(str(row.get(c, ""))) for c in columns))
            console.print(table)


def print_report(report: Any, console: Any = None) -> None:
    """Print a `Report` in the terminal (rich): what traindoc inferred, then each finding with its
    evidence and fix, errors first.

    >>> from traindoc import Finding, Report
    >>> from rich.console import Console
    >>> print_report(Report([Finding("loss-spike", "warning", "Loss spike at step 7")]),
    ...              Console(width=60, color_system=None))  # doctest: +ELLIPSIS
    ╭──...
    │ WARNING loss-spike  Loss spike at step 7 ...
    ...
    1 finding(s), 0 error(s): ok (no errors)
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel

    console = console or Console()
    _print_info(report.info, console)
    if not report.findings:
        console.print("[bold green]No findings.[/bold green]")
        return
    for f in report.findings:
        body = [f"[{_STYLE[f.severity]}]{f.severity.upper()}[/] [bold]{escape(f.id)}[/bold]  {escape(f.title)}"]
        ev = _evidence_lines(f.evidence)
        if ev:
            body.append("[dim]evidence[/dim]")
            body += ["  " + escape(line) for line in ev]
        if f.fix:
            body.append("[green]fix[/green] " + escape(f.fix))
        console.print(Panel("\n".join(body), border_style=_STYLE[f.severity].split()[-1], expand=True))
    n_err = sum(f.severity == "error" for f in report.findings)
    verdict = "[bold red]not ok[/]" if n_err else "[bold green]ok[/] (no errors)"
    console.print(f"{len(report.findings)} finding(s), {n_err} error(s): {verdict}")
