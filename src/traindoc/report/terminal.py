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


def print_report(report: Any, console: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel

    console = console or Console()
    info = report.info
    if info:
        parts = [f"{k}={v}" for k, v in info.items() if not isinstance(v, (dict, list))]
        console.print("[dim]traindoc " + escape(", ".join(parts)) + "[/dim]")
    if not report.findings:
        console.print("[bold green]No findings: every probe passed.[/bold green]")
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
