"""Loss curves, drawn: a compact terminal chart (rich) and a self-contained HTML file (plotly).

Rendering only -- the numbers come from the caller; the one reduction done here is averaging steps
into the columns of the terminal chart.

    >>> c = Curve("fixed", list(range(8)), [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    >>> sparkline(c.y, lo=1.0, hi=8.0, width=8)
    '█▇▆▅▄▃▂▁'
    >>> bucket_means([1.0, 3.0, 5.0, 7.0], 2)
    [2.0, 6.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass
class Curve:
    """One line of a chart: a name, x values (steps) and y values; `dash` draws it dashed in HTML."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    dash: bool = False
    color: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def bucket_means(values: Sequence[float], n: int) -> list[float]:
    """Average `values` into at most `n` consecutive buckets (non-finite values skipped)."""
    if not values:
        return []
    n = max(1, min(n, len(values)))
    out = []
    for i in range(n):
        chunk = [v for v in values[i * len(values) // n:(i + 1) * len(values) // n] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def sparkline(values: Sequence[float], lo: float, hi: float, width: int = 60) -> str:
    """One text row of block characters, scaled between `lo` and `hi` (shared across curves)."""
    cols = bucket_means(values, width)
    span = (hi - lo) or 1.0
    chars = []
    for v in cols:
        if not math.isfinite(v):
            chars.append(" ")
            continue
        k = round((min(max(v, lo), hi) - lo) / span * (len(_BLOCKS) - 1))
        chars.append(_BLOCKS[k])
    return "".join(chars)


def print_curves(curves: Sequence[Curve], console: Any = None, title: str = "training loss",
                 width: int = 60, marks: int = 5, smooth: int | None = None) -> None:
    """Print every curve as a sparkline on one shared scale, then a table of its values at `marks`
    evenly spaced points, each the mean of the ``2 * smooth + 1`` points around it (default: a
    window of 1/20 of the curve; ``smooth=0`` prints the raw values)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    finite = [v for c in curves for v in c.y if math.isfinite(v)]
    if not finite:
        console.print(f"[dim]{title}: no finite values to draw[/dim]")
        return
    lo, hi = min(finite), max(finite)
    name_w = max(len(c.name) for c in curves)
    console.print(f"[bold]{title}[/bold] [dim](scale {lo:.2f} .. {hi:.2f}, left = first step)[/dim]")
    for c in curves:
        line = sparkline(c.y, lo, hi, width)
        console.print(f"  {c.name:<{name_w}} " + (f"[{c.color}]{line}[/]" if c.color else line))
    n = max(len(c.y) for c in curves)
    half = n // 40 if smooth is None else smooth
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("step" + (f" (±{half})" if half else ""), justify="right", style="dim")
    for c in curves:
        table.add_column(c.name, justify="right")
    points = sorted({round(k * (n - 1) / max(marks - 1, 1)) for k in range(marks)})
    for i in points:
        longest = max(curves, key=lambda c: len(c.x))
        row = [f"{longest.x[i]:g}"]
        for c in curves:
            window = [v for v in c.y[max(0, i - half): i + half + 1] if math.isfinite(v)]
            row.append(f"{sum(window) / len(window):.3f}" if window else "-")
        table.add_row(*row)
    console.print(table)


def write_curves_html(path: str | Path, panels: Sequence[tuple[str, Sequence[Curve]]],
                      title: str = "traindoc", notes: Sequence[str] = ()) -> Path:
    """Write one HTML file with a plotly chart per panel (``(panel title, curves)``), plotly.js
    embedded so it opens offline. Returns the path."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[p[0] for p in panels],
                        vertical_spacing=0.12)
    for row, (_, curves) in enumerate(panels, start=1):
        for c in curves:
            line: dict[str, Any] = {"dash": "dash" if c.dash else "solid"}
            if c.color:
                line["color"] = c.color
            fig.add_trace(go.Scatter(x=list(c.x), y=[v if math.isfinite(v) else None for v in c.y],
                                     mode="lines+markers" if len(c.y) <= 30 else "lines",
                                     name=c.name, line=line, legendgroup=c.name), row=row, col=1)
        fig.update_xaxes(title_text="step", row=row, col=1)
        fig.update_yaxes(title_text="loss", row=row, col=1)
    subtitle = "<br>".join(notes)
    fig.update_layout(title={"text": title + (f"<br><sub>{subtitle}</sub>" if subtitle else "")},
                      height=380 * len(panels) + 120, template="plotly_white")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out), include_plotlyjs=True, full_html=True)
    return out
