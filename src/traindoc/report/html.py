"""`traindoc report RUN_DIR`: a run directory as one self-contained HTML page that opens offline.

The page holds, in this order: the findings (severity, title, the line to change when the run came
from `traindoc run`, evidence table, fix); the loss curve
with spikes and plateaus marked; the learning rate of each param group; the global gradient norm vs
step and its histogram with the 90th-percentile line (the Tuning Playbook's two plots); the per-layer
update/weight ratio heatmap; weight and gradient histograms over time for a few layers. A section
whose data the run does not hold says so.

plotly.js is inlined once in the page (no network needed); each figure's JSON sits in its own
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as ``\\u003c``...,
so no module name or title can close the script; every piece of user text in the HTML goes through
`html.escape`. A script error while drawing a figure is shown in place of that figure (and listed in
the page's ``data-traindoc-errors`` attribute) rather than blanking the page.

    >>> write_html_report("/no/such/run")
    Traceback (most recent call last):
    ...
    FileNotFoundError: run directory /no/such/run does not exist
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traindoc.rundir import RunData, read_run

EVIDENCE_VALUE_CHARS = 400
"""Longer evidence values are cut (the full value is in report.json)."""


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed; the message says which `pip install` fixes it.

    A `ValueError` too, so the CLI prints the message and exits 2 instead of a traceback."""


def _require_plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(
            "the HTML report needs plotly, which is not installed: pip install 'traindoc[report]'"
        ) from e


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' survive literally."""
    text = obj if isinstance(obj, str) else json.dumps(obj, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _inline_code(escaped: str) -> str:
    """`code` spans of already-escaped text as <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _evidence_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, float) and math.isfinite(value):
        text = f"{value:.6g}"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
    if len(text) > EVIDENCE_VALUE_CHARS:
        text = text[: EVIDENCE_VALUE_CHARS - 1] + "…"
    return text


def run_findings(run: RunData) -> list[dict[str, Any]]:
    """The findings of a run: report.json's when the run was closed, else findings.jsonl's."""
    if run.report is not None and isinstance(run.report.get("findings"), list):
        return [f for f in run.report["findings"] if isinstance(f, dict)]
    return [f for f in run.findings if isinstance(f, dict)]


def _finding_html(i: int, f: dict[str, Any]) -> str:
    from traindoc.catalog import CATALOG

    severity = str(f.get("severity", "hint"))
    sev_class = severity if severity in ("error", "warning", "hint") else "hint"
    fid = str(f.get("id", "?"))
    step = f.get("step")
    if step is None and isinstance(f.get("evidence"), dict):
        step = f["evidence"].get("step")
    parts = [
        f'<article class="finding sev-{sev_class}" id="finding-{i}" data-finding-id="{_esc(fid)}">',
        '<header class="finding-head">',
        f'<span class="badge badge-{sev_class}">{_esc(severity.upper())}</span>',
        f'<code class="fid">{_esc(fid)}</code>',
        f'<span class="ftitle">{_esc(f.get("title", ""))}</span>',
    ]
    if isinstance(step, (int, float)) and not isinstance(step, bool):
        parts.append(f'<span class="fstep">step {_esc(step)}</span>')
    parts.append("</header>")
    where = f.get("location")
    if isinstance(where, dict) and where.get("file"):
        code = f' <code class="where-code">{_esc(where.get("code", ""))}</code>' if where.get("code") else ""
        parts.append(f'<div class="where"><span class="where-label">Line to change</span> '
                     f'<code>{_esc(where["file"])}:{_esc(where.get("line", "?"))}</code>{code}</div>')
    evidence = f.get("evidence")
    if isinstance(evidence, dict) and evidence:
        rows = "".join(
            f"<tr><th>{_esc(k)}</th><td>{_esc(_evidence_text(v))}</td></tr>" for k, v in evidence.items()
        )
        parts.append(f'<table class="evidence"><caption>evidence</caption>{rows}</table>')
    if f.get("fix"):
        parts.append(f'<div class="fix"><span class="fix-label">Fix</span> {_inline_code(_esc(f["fix"]))}</div>')
    entry = CATALOG.get(fid)
    if entry is not None:
        parts.append(
            "<details><summary>What this means and how traindoc knows</summary>"
            f"<p>{_inline_code(_esc(entry.meaning))}</p><p><b>Proof:</b> {_inline_code(_esc(entry.proof))}</p>"
            "</details>"
        )
    parts.append("</article>")
    return "\n".join(parts)


def _findings_section(run: RunData, findings: Sequence[dict[str, Any]]) -> str:
    head = f'<section id="findings"><h2>Findings ({len(findings)})</h2>'
    if not findings:
        if run.report is None and not (run.path / "findings.jsonl").exists():
            msg = ("No findings recorded yet: this run has neither report.json nor findings.jsonl "
                   "(was it closed? <code>watch.close()</code> writes the report).")
        else:
            msg = "No findings: the detectors saw nothing wrong in this run."
        return head + f'<p class="empty" id="no-findings">{msg}</p></section>'
    counts = {s: sum(1 for f in findings if f.get("severity") == s) for s in ("error", "warning", "hint")}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    return head + f'<p class="summary">{_esc(summary)}</p>' + "\n".join(
        _finding_html(i, f) for i, f in enumerate(findings)) + "</section>"


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _table(rows: Sequence[tuple[str, Any]], cls: str) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_evidence_text(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _overview(run: RunData) -> str:
    """The run at a glance (a few rows), then everything in report.info folded away."""
    meta = run.meta
    steps = [r.get("step") for r in run.scalars if isinstance(r.get("step"), int)]
    rows: list[tuple[str, Any]] = [("run directory", str(run.path))]
    for key in ("model", "optimizer", "started", "num_params"):
        if key in meta:
            rows.append((key.replace("_", " "), meta[key]))
    if steps:
        rows.append(("optimizer steps recorded", f"{len(steps)} (steps {min(steps)}–{max(steps)})"))
    groups = meta.get("param_groups")
    if isinstance(groups, list) and groups:
        rows.append(("param groups", "; ".join(
            ", ".join(f"{k}={_fmt(v)}" for k, v in g.items()) if isinstance(g, dict) else str(g) for g in groups)))
    details = ""
    if run.report is not None:
        rows.append(("verdict", "ok (no errors)" if run.report.get("ok") else "not ok (errors found)"))
        info = run.report.get("info")
        if isinstance(info, dict) and info:
            details = ("<details class=\"info\"><summary>What traindoc measured and assumed (report info)</summary>"
                       + _table([(str(k), v) for k, v in info.items()], "overview") + "</details>")
    else:
        rows.append(("verdict", "run not closed (no report.json); findings so far shown"))
    return _table(rows, "overview") + details


class _Page:
    """Collects sections and figures; renders the final HTML."""

    def __init__(self) -> None:
        self.sections: list[str] = []
        self.n_plots = 0

    def plot(self, fig: Any, name: str) -> str:
        pid = f"plot-{self.n_plots}"
        self.n_plots += 1
        return (f'<div class="plot" id="{pid}" data-plot="{_esc(name)}"></div>'
                f'<script type="application/json" id="{pid}-json">{_script_json(fig.to_json())}</script>')

    def section(self, sid: str, title: str, body: str, intro: str = "") -> None:
        intro_html = f'<p class="intro">{intro}</p>' if intro else ""
        self.sections.append(f'<section id="{sid}"><h2>{_esc(title)}</h2>{intro_html}{body}</section>')


def _empty(text: str) -> str:
    return f'<p class="empty">{text}</p>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:1.6em;margin:.4em 0 .2em} h2{font-size:1.25em;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:1.6em}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none} nav{margin:6px 0 10px}
table{border-collapse:collapse;font-size:.92em} th,td{text-align:left;padding:3px 10px;vertical-align:top}
table.overview th{color:#57606a;font-weight:500} table.overview td{font-family:ui-monospace,monospace}
.finding{background:#fff;border:1px solid #d0d7de;border-left:6px solid #999;border-radius:6px;padding:10px 14px;margin:12px 0}
.sev-error{border-left-color:#cf222e}.sev-warning{border-left-color:#d4a72c}.sev-hint{border-left-color:#218bff}
.finding-head{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.badge{font-size:.75em;font-weight:700;padding:2px 7px;border-radius:10px;color:#fff}
.badge-error{background:#cf222e}.badge-warning{background:#bf8700}.badge-hint{background:#218bff}
.fid{font-weight:600} .ftitle{font-weight:600} .fstep{color:#57606a;font-size:.9em}
table.evidence{margin:8px 0;border:1px solid #e1e4e8} table.evidence caption{text-align:left;color:#57606a;font-size:.85em}
table.evidence th{background:#f6f8fa;font-weight:500;white-space:nowrap}
table.evidence td{font-family:ui-monospace,monospace;word-break:break-all}
table.evidence tr+tr th,table.evidence tr+tr td{border-top:1px solid #eaeef2}
.where{margin:6px 0}.where-label{font-weight:700;margin-right:6px}.where-code{background:#f6f8fa}
.fix{background:#eafbea;border-radius:4px;padding:6px 10px;margin-top:6px}.fix-label{font-weight:700;color:#1a7f37;margin-right:6px}
details{margin-top:6px;color:#57606a;font-size:.92em}
code{font-family:ui-monospace,monospace;background:#eff1f3;padding:0 3px;border-radius:3px}
.plot{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:10px 0;min-height:120px}
.empty{color:#57606a;font-style:italic}.intro{color:#57606a}.summary{font-weight:600}
.plot-error{color:#cf222e;padding:10px;font-family:ui-monospace,monospace}
"""

_ERROR_CATCHER = """
window.__traindocErrors=[];
function __traindocRecord(msg){window.__traindocErrors.push(String(msg));
 document.documentElement.setAttribute('data-traindoc-errors',window.__traindocErrors.join(' | '));}
window.addEventListener('error',function(e){__traindocRecord(e.message||e);});
"""

_RENDER = """
(function(){
 var divs=document.querySelectorAll('div.plot');
 for(var i=0;i<divs.length;i++){
  var div=divs[i];
  try{
   var fig=JSON.parse(document.getElementById(div.id+'-json').textContent);
   Plotly.newPlot(div,fig.data,fig.layout||{},{displaylogo:false,responsive:true});
   div.setAttribute('data-rendered','1');
  }catch(err){
   __traindocRecord(div.id+': '+err);
   div.textContent='This plot could not be drawn: '+err;
   div.className+=' plot-error';
  }
 }
 document.documentElement.setAttribute('data-traindoc-plots',String(divs.length));
})();
"""


def render_html(run: RunData) -> str:
    """The report page of a run, as one HTML string (plotly.js inlined)."""
    _require_plotly()
    from plotly.offline import get_plotlyjs

    from traindoc.report import figures

    findings = run_findings(run)
    page = _Page()

    fig = figures.loss_figure(run, findings)
    page.section("loss", "Loss", page.plot(fig, "loss") if fig else _empty(
        "No loss was logged in this run (pass it with <code>watch.log(loss=...)</code>)."),
        "Red circles: steps a <code>loss-spike</code> finding names; shaded: a <code>loss-plateau</code> window.")

    fig = figures.lr_figure(run)
    page.section("lr", "Learning rate schedule", page.plot(fig, "lr") if fig else _empty(
        "No learning rate was recorded in this run."))

    gn = figures.grad_norm_figure(run)
    gh = figures.grad_norm_histogram_figure(run)
    body = (page.plot(gn, "grad-norm") + page.plot(gh, "grad-norm-hist")) if gn and gh else _empty(
        "No finite gradient norm was recorded in this run.")
    page.section("grad-norm", "Gradient norm", body,
                 "The Tuning Playbook's two plots: the L2 norm of the full gradient (before clipping) at "
                 "each step, and its distribution; clipping at the 90th percentile is the threshold to try "
                 "first, and if more than half the steps would be clipped, lower the learning rate instead.")

    fig = figures.update_ratio_figure(run)
    page.section("update-ratio", "Per-layer update / weight ratio", page.plot(fig, "update-ratio") if fig else _empty(
        "No per-layer statistics (layers.jsonl) in this run."),
        "How far each layer's weights move per step relative to their size. A row stuck far below the "
        "others is a layer that does not learn (a tiny gradient, a learning rate too low for it, or a "
        "parameter missing from the optimizer).")

    chosen = figures.chosen_histogram_layers(run, findings)
    hist_plots = []
    for layer in chosen:
        fig = figures.histogram_figure(run, layer)
        if fig is not None:
            hist_plots.append(page.plot(fig, "histogram"))
    page.section("histograms", "Weight and gradient histograms over time", "".join(hist_plots) or _empty(
        "No histograms (histograms.jsonl) in this run."),
        "Layers named by a finding first, then the first, last and middle layers. Each column is one "
        "recorded step; darker means more values in that bin.")

    title = f"traindoc report: {run.meta.get('model', run.path.name)}"
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in (
        ("findings", "Findings"), ("loss", "Loss"), ("lr", "LR"), ("grad-norm", "Gradient norm"),
        ("update-ratio", "Update ratio"), ("histograms", "Histograms")))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_ERROR_CATCHER}</script>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f"<nav>{nav}</nav>",
        _overview(run),
        _findings_section(run, findings),
        *page.sections,
        f"<script>{_RENDER}</script>",
        "</main></body></html>",
    ])


def write_html_report(run_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> Path:
    """Render the run directory `run_dir` as one self-contained HTML file; return its path.

    `output` defaults to ``RUN_DIR/report.html``. Raises FileNotFoundError when `run_dir` is not a
    traindoc run directory, and `MissingExtraError` (an ImportError) when plotly is not installed.
    """
    p = Path(run_dir)
    if not p.exists():
        raise FileNotFoundError(f"run directory {p} does not exist")
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is a file, not a traindoc run directory")
    _require_plotly()
    run = read_run(p)
    text = render_html(run)
    out = Path(output) if output is not None else p / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def render_experiment_html(data: dict[str, Any]) -> str:
    """An experiment's result (`traindoc.experiments.result.ExperimentResult.to_dict`) as one HTML page:
    its findings, its numbers, the loss of each trial, and the experiment's own plot (final loss by LR,
    the gradient-norm histogram)."""
    _require_plotly()
    from plotly.offline import get_plotlyjs

    from traindoc.report import figures

    page = _Page()
    kind = str(data.get("experiment", "?"))
    findings = [{**f, "title": f.get("message", "")} for f in data.get("findings", []) if isinstance(f, dict)]
    body = "".join(_finding_html(i, f) for i, f in enumerate(findings)) or _empty("No findings.")
    page.section("findings", "Findings", body)
    rows = [(k, v) for k, v in (data.get("result") or {}).items() if k not in ("histogram", "scores")]
    page.section("result", "Result", _table(rows, "overview"))
    own = {"lr": figures.lr_scores_figure, "clip": figures.clip_histogram_figure}.get(kind)
    fig = own(data) if own is not None else None
    if fig is not None:
        page.section("experiment", "The experiment", page.plot(fig, kind))
    fig = figures.experiment_curves_figure(data)
    page.section("curves", "Trials", page.plot(fig, "curves") if fig else _empty("No trial curves."))
    title = f"traindoc {kind} experiment" + (f": {data['info']['script']}" if (data.get("info") or {}).get("script")
                                              else "")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>", f"<style>{_CSS}</style>", f"<script>{_ERROR_CATCHER}</script>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body><main>",
        f"<h1>{_esc(title)}</h1>", *page.sections, f"<script>{_RENDER}</script>", "</main></body></html>"])


def write_experiment_html(data: dict[str, Any], output: str | os.PathLike[str]) -> Path:
    """Write `render_experiment_html` to ``output``; return its path."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_experiment_html(data), encoding="utf-8")
    return out
