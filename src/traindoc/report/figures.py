"""Plotly figures of a run directory, one builder per plot of the HTML report.

Each builder takes a `RunData` (and the findings to mark) and returns a ``plotly.graph_objects.Figure``,
or ``None`` when the run holds no data for that plot; the page then says so. The builders only draw
what the run directory holds (computing a percentile or re-binning histograms for display is the
most they do); the judging was done by the detectors.

User-supplied text (module names, finding titles) is HTML-escaped before it goes into a figure:
plotly.js renders a small HTML subset in labels, so ``<b>`` in a module name would otherwise be
drawn bold (and the figure JSON itself is escaped for the ``<script>`` it lives in by `html.py`).

    >>> import tempfile
    >>> from traindoc.rundir import RunDirWriter, read_run
    >>> d = tempfile.mkdtemp()
    >>> w = RunDirWriter(d, meta={"model": "Tiny"})
    >>> for s in range(5):
    ...     w.append("scalars", {"step": s, "loss": 3.0 - 0.1 * s, "lr": [1e-3], "grad_norm": 1.0 + s})
    >>> w.close()
    >>> run = read_run(d)
    >>> grad_norm_percentile(run, 90)
    4.6
    >>> update_ratio_figure(run) is None     # no layers.jsonl in this run
    True
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from traindoc.numbers import finite
from traindoc.rundir import RunData

MAX_HISTOGRAM_LAYERS = 4
"""How many layers get a weight/gradient histogram-over-time plot."""
HISTOGRAM_BINS = 48
"""Common bins a layer's histograms are re-binned to, so that steps line up in one heatmap."""

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")


def esc(text: Any) -> str:
    """User text for a plotly label: HTML-escaped, so plotly draws it literally."""
    return html.escape(str(text), quote=True)


def short_labels(names: Sequence[str], limit: int = 48) -> list[str]:
    """Escaped plot labels for module names, long ones cut in the middle, kept unique.

    >>> short_labels(["a.b", "x" * 60])
    ['a.b', 'xxxxxxxxxxxxxxxxxxxxxxx…xxxxxxxxxxxxxxxxxxxxxxx']
    """
    out: list[str] = []
    seen: set[str] = set()
    half = (limit - 1) // 2
    for name in names:
        label = name if len(name) <= limit else name[:half] + "…" + name[-half:]
        base, k = label, 2
        while label in seen:
            label, k = f"{base} ({k})", k + 1
        seen.add(label)
        out.append(label)
    return [esc(x) for x in out]


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _layout(fig: Any, title: str, x_title: str, y_title: str, height: int = 380) -> None:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        height=height,
        margin={"l": 70, "r": 30, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.18},
        hovermode="closest",
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)


MAX_LINE_POINTS = 20_000
"""Longer series are thinned for drawing, keeping each bucket's minimum and maximum (spikes stay)."""
MAX_HEATMAP_COLUMNS = 1_500
"""Heatmaps over steps keep at most this many (evenly spaced) recorded steps."""


def thin(xs: Sequence[Any], ys: Sequence[float | None], max_points: int = MAX_LINE_POINTS,
         ) -> tuple[list[Any], list[float | None]]:
    """At most ~`max_points` points of a line: per bucket, its lowest and highest point, in order.

    >>> thin([0, 1, 2, 3, 4, 5, 6, 7], [5, 1, 9, 2, 2, 8, 3, 4], max_points=4)
    ([1, 2, 4, 5], [1, 9, 2, 8])
    """
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    size = math.ceil(n / max(1, max_points // 2))
    out_x: list[Any] = []
    out_y: list[float | None] = []
    for start in range(0, n, size):
        idx = [i for i in range(start, min(n, start + size)) if ys[i] is not None]
        if not idx:
            continue
        lo = min(idx, key=lambda i: ys[i])  # type: ignore[arg-type,return-value]
        hi = max(idx, key=lambda i: ys[i])  # type: ignore[arg-type,return-value]
        for i in sorted({lo, hi}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def _even_subset(n: int, limit: int) -> list[int]:
    """Indices of at most `limit` evenly spaced items of `n` (first and last kept)."""
    if n <= limit:
        return list(range(n))
    return sorted({round(k * (n - 1) / (limit - 1)) for k in range(limit)})


def _finite_or_none(v: Any) -> float | None:
    return float(v) if finite(v) else None


def _evidence_steps(evidence: dict[str, Any]) -> list[int]:
    """The step(s) a finding points at: ``step``, ``steps`` or ``spike_steps`` in its evidence."""
    out: list[int] = []
    for key in ("step", "steps", "spike_step", "spike_steps"):
        v = evidence.get(key)
        values = v if isinstance(v, list) else [v]
        out += [int(x) for x in values if finite(x)]
    return out


def _evidence_window(evidence: dict[str, Any], finding_step: Any = None) -> tuple[float, float] | None:
    """The step range of a plateau: ``window`` as ``[start, end]``, ``start_step``/``end_step``,
    ``best_step`` (the last improvement) to ``step``, or ``window`` as a length ending at ``step``.

    >>> _evidence_window({"step": 400, "best_step": 150, "window": 250})
    (150.0, 400.0)
    """
    window = evidence.get("window")
    if isinstance(window, list) and len(window) == 2 and all(finite(x) for x in window):
        return float(window[0]), float(window[1])
    if isinstance(window, dict):
        lo, hi = window.get("start", window.get("start_step")), window.get("end", window.get("end_step"))
        if finite(lo) and finite(hi):
            return float(lo), float(hi)
    lo, hi = evidence.get("start_step", evidence.get("from_step")), evidence.get("end_step", evidence.get("to_step"))
    if finite(lo) and finite(hi):
        return float(lo), float(hi)
    end = evidence.get("step", finding_step)
    if finite(evidence.get("best_step")) and finite(end):
        return float(evidence["best_step"]), float(end)
    if finite(window) and finite(end):
        return float(end) - float(window), float(end)
    return None


def loss_figure(run: RunData, findings: Sequence[dict[str, Any]]) -> Any | None:
    """Loss vs step; spikes (``loss-spike``) as red markers, plateaus (``loss-plateau``,
    ``loss-at-chance``) shaded,
    non-finite losses as crosses on the top edge."""
    steps, losses = [], []
    line_x: list[int] = []
    line_y: list[float | None] = []  # None at a non-finite loss: the line has a gap there
    nonfinite_steps = []
    for r in run.scalars:
        v = r.get("loss")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            line_x.append(r["step"])
            if math.isfinite(v):
                steps.append(r["step"])
                losses.append(float(v))
                line_y.append(float(v))
            else:
                nonfinite_steps.append(r["step"])
                line_y.append(None)
    if not steps and not nonfinite_steps:
        return None
    go = _go()
    fig = go.Figure()
    xs, ys = thin(line_x, line_y)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="loss", line={"color": _COLORS[0], "width": 1.5}))
    by_step = dict(zip(steps, losses, strict=True))
    spike_x, spike_y = [], []
    for f in findings:
        if f.get("id") == "loss-spike":
            for s in _evidence_steps(f.get("evidence") or {}):
                if s in by_step:
                    spike_x.append(s)
                    spike_y.append(by_step[s])
    if spike_x:
        fig.add_trace(go.Scatter(x=spike_x, y=spike_y, mode="markers", name="loss spike",
                                 marker={"color": "#d62728", "size": 11, "symbol": "circle-open", "line": {"width": 2}}))
    top = max(losses) if losses else 1.0
    if nonfinite_steps:
        fig.add_trace(go.Scatter(x=nonfinite_steps, y=[top] * len(nonfinite_steps), mode="markers",
                                 name="non-finite loss", marker={"color": "#d62728", "symbol": "x", "size": 9}))
    for f in findings:
        if f.get("id") in ("loss-plateau", "loss-at-chance"):
            win = _evidence_window(f.get("evidence") or {}, f.get("step"))
            if win is not None:
                fig.add_vrect(x0=win[0], x1=win[1], fillcolor="#ff7f0e", opacity=0.15, line_width=0,
                              annotation_text="plateau", annotation_position="top left")
        if f.get("id") == "divergence":
            for s in _evidence_steps(f.get("evidence") or {})[:1]:
                fig.add_vline(x=s, line_dash="dot", line_color="#d62728", annotation_text="divergence",
                              annotation_position="top right")
    _layout(fig, "Loss", "optimizer step", "loss")
    return fig


def lr_figure(run: RunData) -> Any | None:
    """The learning rate of each param group vs step."""
    groups: dict[int, tuple[list[int], list[float | None]]] = {}
    for r in run.scalars:
        lrs = r.get("lr")
        if finite(lrs):
            lrs = [lrs]
        if not isinstance(lrs, list):
            continue
        for i, v in enumerate(lrs):
            xs, ys = groups.setdefault(i, ([], []))
            xs.append(r["step"])
            ys.append(_finite_or_none(v))
    if not groups:
        return None
    go = _go()
    fig = go.Figure()
    for i, (xs, ys) in sorted(groups.items()):
        xs, ys = thin(xs, ys)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"param group {i}",
                                 line={"color": _COLORS[i % len(_COLORS)]}))
    _layout(fig, "Learning rate (per param group)", "optimizer step", "learning rate")
    fig.update_layout(showlegend=True)
    values = [v for _, ys in groups.values() for v in ys if v is not None]
    if values and min(values) >= 0 and max(values) > 0:
        # from 0, so that a constant LR is drawn at its value (plotly spans a flat line over +-1)
        fig.update_yaxes(range=[0, 1.1 * max(values)], exponentformat="e")
    return fig


def grad_norm_percentile(run: RunData, q: float) -> float | None:
    """The q-th percentile (linear interpolation) of the finite global gradient norms."""
    import numpy as np

    _, values = run.series("grad_norm")
    kept = [v for v in values if math.isfinite(v)]
    if not kept:
        return None
    return round(float(np.percentile(kept, q)), 6)


def _clip_thresholds(run: RunData) -> list[float]:
    return sorted({float(r["clip_threshold"]) for r in run.scalars if finite(r.get("clip_threshold"))})


def grad_norm_figure(run: RunData) -> Any | None:
    """Global gradient L2 norm (before clipping) vs step, with the p90 and the user's clip threshold."""
    steps, values = run.series("grad_norm")
    pairs = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    if not pairs:
        return None
    go = _go()
    fig = go.Figure()
    xs, ys = thin([p[0] for p in pairs], [p[1] for p in pairs])
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines",
                             name="gradient norm", line={"color": _COLORS[2], "width": 1.2}))
    p90 = grad_norm_percentile(run, 90)
    if p90 is not None:
        fig.add_hline(y=p90, line_dash="dash", line_color="#d62728",
                      annotation_text=f"p90 = {p90:.4g}", annotation_position="top left")
    for t in _clip_thresholds(run):
        fig.add_hline(y=t, line_dash="dot", line_color="#555", annotation_text=f"clip max_norm = {t:.4g}",
                      annotation_position="bottom right")
    vals = [p[1] for p in pairs if p[1] > 0]
    _layout(fig, "Gradient L2 norm (before clipping)", "optimizer step", "‖g‖₂")
    if vals and max(vals) / min(vals) > 100:
        fig.update_yaxes(type="log")
    return fig


def grad_norm_histogram_figure(run: RunData) -> Any | None:
    """Histogram of the global gradient norms with the 90th-percentile line (the Tuning Playbook's
    clipping threshold)."""
    _, values = run.series("grad_norm")
    kept = [v for v in values if math.isfinite(v)]
    if not kept:
        return None
    go = _go()
    fig = go.Figure(go.Histogram(x=kept, nbinsx=min(60, max(10, len(kept) // 5)), name="steps",
                                 marker={"color": _COLORS[2]}))
    p90 = grad_norm_percentile(run, 90)
    if p90 is not None:
        fig.add_vline(x=p90, line_dash="dash", line_color="#d62728",
                      annotation_text=f"p90 = {p90:.4g} (clip threshold to try)", annotation_position="top right")
    _layout(fig, "Distribution of gradient norms", "‖g‖₂", "steps")
    fig.update_layout(showlegend=False, bargap=0.05)
    return fig


def _layer_order(run: RunData, seen: Iterable[str]) -> list[str]:
    """Layers in model order (meta["layers"]), then any others in first-seen order."""
    seen = list(dict.fromkeys(seen))
    meta_layers = [str(x) for x in run.meta.get("layers", []) if isinstance(x, str)]
    seen_set = set(seen)
    ordered = [x for x in meta_layers if x in seen_set]
    ordered_set = set(ordered)
    return ordered + [x for x in seen if x not in ordered_set]


def update_ratio_figure(run: RunData) -> Any | None:
    """Heatmap of log10 ‖Δw‖/‖w‖ per layer (rows, model order) and step (columns)."""
    rows = [r for r in run.layers if isinstance(r.get("update_ratio"), dict) and r["update_ratio"]]
    if not rows:
        return None
    rows = [rows[i] for i in _even_subset(len(rows), MAX_HEATMAP_COLUMNS)]
    layers = _layer_order(run, (name for r in rows for name in r["update_ratio"]))
    steps = [r["step"] for r in rows]
    z: list[list[float | None]] = []
    raw: list[list[str]] = []
    for name in layers:
        zr, rr = [], []
        for r in rows:
            v = r["update_ratio"].get(name)
            if finite(v) and v > 0:
                zr.append(math.log10(v))
                rr.append(f"{v:.3g}")
            else:
                zr.append(None)
                rr.append("n/a" if v is None else str(v))
        z.append(zr)
        raw.append(rr)
    go = _go()
    labels = short_labels(layers)
    fig = go.Figure(go.Heatmap(
        x=steps, y=labels, z=z, customdata=[[esc(name)] * len(steps) for name in layers], text=raw,
        colorscale="Viridis", zmin=-7, zmax=-1, colorbar={"title": {"text": "log10 ratio"}},
        hovertemplate="step %{x}<br>%{customdata}<br>‖Δw‖/‖w‖ = %{text}<extra></extra>",
    ))
    _layout(fig, "Update / weight ratio ‖Δw‖/‖w‖ per layer (log10; ~-3 is healthy for Adam)",
            "optimizer step", "", height=min(1400, 160 + 22 * len(layers)))
    fig.update_yaxes(type="category", autorange="reversed", automargin=True)
    return fig


def _mentioned_layers(findings: Sequence[dict[str, Any]], candidates: Sequence[str]) -> list[str]:
    """Candidates that a finding names (in its evidence), in candidate order."""
    text = " ".join(str(f.get("evidence", "")) + " " + str(f.get("title", "")) for f in findings)
    return [c for c in candidates if c and c in text]


def chosen_histogram_layers(run: RunData, findings: Sequence[dict[str, Any]],
                            limit: int = MAX_HISTOGRAM_LAYERS) -> list[str]:
    """The layers whose histograms are drawn: those the findings name first, then the first, the last
    and the middle layers (model order), at most `limit`."""
    layers = _layer_order(run, (str(h.get("layer")) for h in run.histograms if h.get("layer") is not None))
    chosen = _mentioned_layers(findings, layers)
    for idx in (0, len(layers) - 1, len(layers) // 2):
        if 0 <= idx < len(layers):
            chosen.append(layers[idx])
    for name in layers:
        chosen.append(name)
    return list(dict.fromkeys(chosen))[:limit]


def _rebin(edges: Sequence[float], counts: Sequence[float], lo: float, hi: float, bins: int) -> list[float]:
    """Counts moved to `bins` equal bins over [lo, hi], each source bin spread over the target bins it
    overlaps in proportion to the overlap (a zero-width source bin goes to the bin holding it).

    >>> _rebin([0.0, 1.0, 2.0], [4, 2], 0.0, 2.0, 4)
    [2.0, 2.0, 1.0, 1.0]
    """
    out = [0.0] * bins
    width = (hi - lo) / bins if hi > lo else 1.0

    def index(x: float) -> int:
        return min(bins - 1, max(0, int((x - lo) / width)))

    for i, c in enumerate(counts):
        if i + 1 >= len(edges) or not finite(c) or not c:
            continue
        a, b = edges[i], edges[i + 1]
        if not (finite(a) and finite(b)):
            continue
        a, b = min(a, b), max(a, b)
        if b - a <= 0:
            out[index(a)] += float(c)
            continue
        parts = {j: min(b, lo + (j + 1) * width) - max(a, lo + j * width) for j in range(index(a), index(b) + 1)}
        parts = {j: o for j, o in parts.items() if o > 0} or {index(a): 1.0}
        total = sum(parts.values())  # == b - a up to rounding at the ends
        for j, o in parts.items():
            out[j] += float(c) * o / total
    return out


def histogram_figure(run: RunData, layer: str) -> Any | None:
    """Weight and gradient histograms of one layer over time: a heatmap of log counts (rows = value
    bins, columns = steps), weights on the left and gradients on the right (TensorBoard's view)."""
    from plotly.subplots import make_subplots

    go = _go()
    panels = []
    for kind in ("weight", "grad"):
        hs = [h for h in run.histograms if h.get("layer") == layer and h.get("kind") == kind
              and isinstance(h.get("edges"), list) and isinstance(h.get("counts"), list)]
        edges_all = [e for h in hs for e in h["edges"] if finite(e)]
        if not hs or not edges_all:
            panels.append(None)
            continue
        lo, hi = min(edges_all), max(edges_all)
        if hi <= lo:
            hi = lo + 1e-12
        width = (hi - lo) / HISTOGRAM_BINS
        centres = [lo + (i + 0.5) * width for i in range(HISTOGRAM_BINS)]
        hs.sort(key=lambda h: h.get("step", 0))
        hs = [hs[i] for i in _even_subset(len(hs), MAX_HEATMAP_COLUMNS // 4)]
        cols = [_rebin(h["edges"], h["counts"], lo, hi, HISTOGRAM_BINS) for h in hs]
        z = [[math.log10(1 + cols[j][i]) for j in range(len(cols))] for i in range(HISTOGRAM_BINS)]
        panels.append((kind, [h.get("step") for h in hs], centres, z))
    if all(p is None for p in panels):
        return None
    titles = [("weights" if k == "weight" else "gradients") + ("" if p else " (no data)")
              for k, p in zip(("weight", "grad"), panels, strict=True)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.1)
    for col, p in enumerate(panels, start=1):
        if p is None:
            continue
        kind, steps, centres, z = p
        fig.add_trace(go.Heatmap(
            x=steps, y=centres, z=z, colorscale="Blues", showscale=(col == 2),
            colorbar={"title": {"text": "log10(1+n)"}},
            hovertemplate="step %{x}<br>value %{y:.3g}<br>log10(1+count) %{z:.2f}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
        fig.update_yaxes(title_text="value", row=1, col=col)
    fig.update_layout(title={"text": f"Histograms over time: {short_labels([layer], 90)[0]}", "x": 0.01}, template="plotly_white",
                      height=360, margin={"l": 70, "r": 30, "t": 70, "b": 50})
    return fig


# ----------------------------------------------------------------------------- experiments


def experiment_curves_figure(data: dict[str, Any]) -> Any | None:
    """The loss of each trial of an experiment against its step (one line per trial)."""
    curves = data.get("curves") or {}
    if not curves:
        return None
    go = _go()
    fig = go.Figure()
    for name, c in curves.items():
        ys = [_finite_or_none(v) for v in c.get("losses", [])]
        if any(v is not None for v in ys):
            xs, ys = thin(list(range(len(ys))), ys)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=esc(name)))
    _layout(fig, "Loss of each trial", "optimizer step", "loss")
    return fig


def lr_scores_figure(data: dict[str, Any]) -> Any | None:
    """The LR experiment's score (final loss) against the LR tried, with the suggestion, the range and
    the LR where training turned unstable marked."""
    result = data.get("result") or {}
    scores = result.get("scores") or {}
    points = sorted((float(k), _finite_or_none(v)) for k, v in scores.items())
    if not points:
        return None
    go = _go()
    fig = go.Figure(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                               name="final loss after the short run"))
    lo, hi = result.get("lr_range") or (None, None)
    if lo and hi:
        fig.add_vrect(x0=lo, x1=hi, fillcolor="#2da44e", opacity=0.15, line_width=0)
    for key, color in (("suggested_lr", "#2da44e"), ("short_run_lr", "#0969da"), ("unstable_lr", "#cf222e")):
        v = result.get(key)
        if isinstance(v, (int, float)) and v > 0:
            fig.add_vline(x=v, line_color=color, line_dash="dash", annotation_text=key.replace("_", " "))
    _layout(fig, "Short runs: final loss by learning rate", "learning rate", "final loss")
    fig.update_xaxes(type="log")
    return fig


def clip_histogram_figure(data: dict[str, Any]) -> Any | None:
    """The clipping experiment's histogram of gradient norms, with the threshold and the current one."""
    result = data.get("result") or {}
    hist = result.get("histogram") or {}
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    if len(edges) != len(counts) + 1 or not counts:
        return None
    go = _go()
    centers = [(a * b) ** 0.5 if a > 0 and b > 0 else (a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    fig = go.Figure(go.Bar(x=centers, y=counts, name="steps"))
    for key, color in (("threshold", "#2da44e"), ("current", "#cf222e")):
        v = result.get(key)
        if isinstance(v, (int, float)) and v > 0:
            fig.add_vline(x=v, line_color=color, line_dash="dash", annotation_text=key)
    _layout(fig, "Gradient norm before clipping", "global gradient norm", "steps")
    fig.update_xaxes(type="log")
    return fig
