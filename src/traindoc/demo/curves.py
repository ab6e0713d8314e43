"""The demo's loss curves, drawn: a compact terminal chart (rich) and an HTML file that opens offline
(plotly).

    >>> sparkline([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], lo=1.0, hi=8.0, width=8)
    '█▇▆▅▄▃▂▁'
    >>> bucket_means([1.0, 3.0, 5.0, 7.0], 2)
    [2.0, 6.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass
class Curve:
    """One line of a chart: x values (steps), y values (losses), a colour; `dash` draws it dashed in HTML."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    dash: bool = False


def bucket_means(values: Sequence[float], n: int) -> list[float]:
    """Average `values` into at most `n` consecutive buckets (non-finite values skipped)."""
    n = max(1, min(n, len(values)))
    out = []
    for i in range(n):
        chunk = [v for v in values[i * len(values) // n:(i + 1) * len(values) // n] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def sparkline(values: Sequence[float], lo: float, hi: float, width: int = 60) -> str:
    """One text row of block characters, scaled between `lo` and `hi` (shared across curves)."""
    span = (hi - lo) or 1.0
    return "".join(BLOCKS[round((min(max(v, lo), hi) - lo) / span * (len(BLOCKS) - 1))] if math.isfinite(v) else " "
                   for v in bucket_means(values, width))


def print_curves(console: Any, curves: Sequence[Curve], title: str, width: int = 60, rows: int = 5,
                 smooth: int = 0) -> None:
    """Print every curve as a sparkline on one shared scale, then a table of the curves at `rows`
    evenly spaced points, each value the mean of the ``2 * smooth + 1`` points around it."""
    from rich.table import Table

    finite = [v for c in curves for v in c.y if math.isfinite(v)]
    if not finite:
        console.print(f"[dim]{title}: no finite values to draw[/dim]")
        return
    lo, hi = min(finite), max(finite)
    name_width = max(len(c.name) for c in curves)
    console.print(f"[bold]{title}[/bold] [dim](scale {lo:.2f} .. {hi:.2f}, left = first step)[/dim]")
    for c in curves:
        console.print(f"  {c.name:<{name_width}} [{c.color}]{sparkline(c.y, lo, hi, width)}[/]")
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("step" + (f" (±{smooth})" if smooth else ""), justify="right", style="dim")
    for c in curves:
        table.add_column(c.name, justify="right")
    n = len(curves[0].x)
    for i in sorted({round(k * (n - 1) / max(rows - 1, 1)) for k in range(rows)}):
        cells = []
        for c in curves:
            window = [v for v in c.y[max(0, i - smooth): i + smooth + 1] if math.isfinite(v)]
            cells.append(f"{sum(window) / len(window):.3f}" if window else "-")
        table.add_row(f"{curves[0].x[i]:g}", *cells)
    console.print(table)


def write_curves_html(path: Path, panels: Sequence[tuple[str, Sequence[Curve]]], title: str,
                      notes: Sequence[str] = ()) -> Path:
    """One HTML file with a plotly chart per ``(panel title, curves)``, plotly.js embedded so that it
    opens offline. Returns the path."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[p[0] for p in panels], vertical_spacing=0.12)
    for row, (_, curves) in enumerate(panels, start=1):
        for c in curves:
            fig.add_trace(go.Scatter(x=list(c.x), y=[v if math.isfinite(v) else None for v in c.y],
                                     mode="lines+markers" if len(c.y) <= 30 else "lines", name=c.name,
                                     line={"color": c.color, "dash": "dash" if c.dash else "solid"}),
                          row=row, col=1)
        fig.update_xaxes(title_text="step", row=row, col=1)
        fig.update_yaxes(title_text="loss", row=row, col=1)
    subtitle = "<br>".join(notes)
    fig.update_layout(title={"text": title + (f"<br><sub>{subtitle}</sub>" if subtitle else "")},
                      height=380 * len(panels) + 120, template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path
