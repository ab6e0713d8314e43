"""The HTML report (`traindoc report RUN_DIR`): content, escaping, errors, and a headless-Chromium load.

The run directory is written with `RunDirWriter` from synthetic data shaped like a real run: a noisy
decaying loss with one spike and a late plateau, warmup + cosine LR on two param groups, log-normal
gradient norms, per-layer statistics every 10 steps and histograms every 50 steps. One layer and one
finding carry hostile text (``</script><script>...``, ``<img onerror=...>``) to prove it is escaped.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from traindoc.findings import Finding, Report
from traindoc.rundir import RunDirWriter

pytest.importorskip("plotly")

from traindoc.report.html import MissingExtraError, render_html, write_html_report  # noqa: E402

EVIL_LAYER = "</script><script>document.title='PWNED';document.documentElement.setAttribute('data-pwned','1')</script>"
EVIL_TITLE = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','2')\"> loss <b>spiked</b>"
LAYERS = ["embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", EVIL_LAYER, "head"]
STEPS = 300
SPIKE_STEP = 150
PLATEAU = [200, 299]


def _lr(step: int, peak: float) -> float:
    warmup = 30
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / (STEPS - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def _histogram(rng: random.Random, std: float, bins: int = 30) -> tuple[list[float], list[int]]:
    values = [rng.gauss(0.0, std) for _ in range(2000)]
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return [lo + i * width for i in range(bins + 1)], counts


def make_run(path: Path, *, findings: bool = True, close: bool = True) -> Path:
    """A realistic run directory at `path`."""
    rng = random.Random(0)
    w = RunDirWriter(path, meta={"model": "TinyGPT", "num_params": 123_456, "layers": LAYERS,
                                 "param_groups": [{"lr": 3e-4, "weight_decay": 0.1, "num_params": 120_000},
                                                  {"lr": 3e-4, "weight_decay": 0.0, "num_params": 3_456}]})
    for s in range(STEPS):
        base = 2.0 + 8.0 * math.exp(-s / 40) if s < PLATEAU[0] else 2.0 + 8.0 * math.exp(-PLATEAU[0] / 40)
        loss = base + rng.gauss(0, 0.08)
        if s == SPIKE_STEP:
            loss += 4.0
        gn = math.exp(rng.gauss(0.0, 0.4)) * (6.0 if s == SPIKE_STEP else 1.0)
        w.append("scalars", {"step": s, "loss": loss if s != 250 else float("nan"),
                             "lr": [_lr(s, 3e-4), _lr(s, 3e-4) * 0.1], "grad_norm": gn,
                             "clip_threshold": 1.0, "clipped": gn > 1.0, "nonfinite_grads": 0})
        if s % 10 == 0:
            w.append("layers", {
                "step": s,
                "grad_norm": {n: gn / len(LAYERS) * (i + 1) for i, n in enumerate(LAYERS)},
                "weight_norm": {n: 10.0 + i for i, n in enumerate(LAYERS)},
                "update_ratio": {n: (1e-7 if n == "blocks.1.mlp" else 10 ** rng.uniform(-3.5, -2.5))
                                 for n in LAYERS},
            })
        if s % 50 == 0:
            for n in ("embed", "blocks.1.mlp", EVIL_LAYER, "head"):
                for kind, std in (("weight", 0.02 * (1 + s / STEPS)), ("grad", 1e-3 / (1 + s / 50))):
                    edges, counts = _histogram(rng, std)
                    w.append("histograms", {"step": s, "layer": n, "kind": kind, "edges": edges, "counts": counts})
        if s % 50 == 49:
            w.flush()
    found = []
    if findings:
        found = [
            Finding("loss-spike", "warning", EVIL_TITLE,
                    {"step": SPIKE_STEP, "value": 12.3, "median": 4.1, "mad": 0.1, "threshold": 6.0},
                    "Add LR warmup, or clip gradients at the 90th percentile: `clip_grad_norm_(params, 1.2)`."),
            Finding("loss-plateau", "warning", "Loss has not improved for 100 steps at 2.05",
                    {"window": PLATEAU, "best": 2.03, "lr": 1e-4}, "Raise the LR or check the data."),
            Finding("stalled-layers", "warning", "1 layer barely moves: blocks.1.mlp",
                    {"layers": ["blocks.1.mlp", EVIL_LAYER], "update_ratio": 1e-7, "threshold": 1e-5},
                    "Check that `blocks.1.mlp` is in the optimizer."),
        ]
        for f in found:
            w.append("findings", {"step": f.evidence.get("step"), **f.to_dict()})
    w.flush()
    if close:
        w.write_report(Report(found, info={"steps": STEPS}).to_dict())
    w.close()
    return path


# ----------------------------------------------------------------------------- content and escaping


def test_sections_in_order_with_findings_first(tmp_path: Path) -> None:
    out = write_html_report(make_run(tmp_path / "run"))
    assert out == tmp_path / "run" / "report.html"
    text = out.read_text(encoding="utf-8")
    positions = [text.index(f'<section id="{sid}">') for sid in
                 ("findings", "loss", "lr", "grad-norm", "update-ratio", "histograms")]
    assert positions == sorted(positions)
    for fid in ("loss-spike", "loss-plateau", "stalled-layers"):
        assert f'data-finding-id="{fid}"' in text
    # one figure each for loss, lr, grad norm, its histogram, update ratio; histograms for 4 layers
    assert len(re.findall(r'<div class="plot" id="plot-\d+"', text)) == 5 + 4
    assert text.count("<script") == text.count("</script>")
    assert not re.search(r"<script[^>]*\bsrc=", text) and "<link" not in text  # nothing to fetch


def test_user_text_is_escaped_everywhere(tmp_path: Path) -> None:
    from traindoc.rundir import read_run

    text = render_html(read_run(make_run(tmp_path / "r")))
    # the raw hostile strings never appear; only their escaped forms
    assert EVIL_LAYER not in text
    assert "<img src=x" not in text and "<b>spiked</b>" not in text
    assert "&lt;img src=x onerror=" in text
    # exactly our own scripts: the error catcher, plotly.js, the figure JSON blocks and the renderer
    n_plots = len(re.findall(r'<div class="plot" id="plot-\d+"', text))
    assert len(re.findall(r"<script\b", text)) == 3 + n_plots
    # every figure's JSON parses back and still holds the layer name, literally escaped for plotly
    blocks = re.findall(r'<script type="application/json" id="plot-\d+-json">(.*?)</script>', text, re.S)
    assert len(blocks) == n_plots
    figs = [json.loads(b) for b in blocks]
    heatmap = next(f for f in figs if f["data"][0]["type"] == "heatmap" and "update" in f["layout"]["title"]["text"].lower())
    hover_names = {row[0] for row in heatmap["data"][0]["customdata"]}
    assert "&lt;/script&gt;&lt;script&gt;document.title=&#x27;PWNED&#x27;" in "".join(hover_names)
    assert all("<" not in label for label in heatmap["data"][0]["y"])


def test_spike_and_plateau_are_marked(tmp_path: Path) -> None:
    from traindoc.report import figures
    from traindoc.report.html import run_findings
    from traindoc.rundir import read_run

    run = read_run(make_run(tmp_path / "r"))
    fig = figures.loss_figure(run, run_findings(run))
    spikes = [t for t in fig.data if t.name == "loss spike"]
    assert len(spikes) == 1 and list(spikes[0].x) == [SPIKE_STEP]
    assert [t for t in fig.data if t.name == "non-finite loss"][0].x == (250,)
    assert fig.data[0].y[250] is None and fig.data[0].y[249] is not None  # a gap in the line, not a bridge
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [tuple(float(x) for x in PLATEAU)]


def test_p90_line_on_gradient_norm_histogram(tmp_path: Path) -> None:
    import numpy as np

    from traindoc.report import figures
    from traindoc.rundir import read_run

    run = read_run(make_run(tmp_path / "r"))
    _, norms = run.series("grad_norm")
    fig = figures.grad_norm_histogram_figure(run)
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1
    assert lines[0].x0 == pytest.approx(float(np.percentile(norms, 90)), rel=1e-5)
    assert len(fig.data[0].x) == STEPS


def test_histogram_layers_named_by_findings_come_first(tmp_path: Path) -> None:
    from traindoc.report import figures
    from traindoc.report.html import run_findings
    from traindoc.rundir import read_run

    run = read_run(make_run(tmp_path / "r"))
    chosen = figures.chosen_histogram_layers(run, run_findings(run))
    assert chosen[:2] == ["blocks.1.mlp", EVIL_LAYER]
    assert set(chosen) == {"embed", "blocks.1.mlp", EVIL_LAYER, "head"}
    fig = figures.histogram_figure(run, "embed")
    assert len(fig.data) == 2 and fig.data[0].type == "heatmap"
    assert len(fig.data[0].x) == STEPS // 50  # one column per recorded step
    # re-binning keeps every count
    assert sum(sum(10 ** z - 1 for z in row) for row in fig.data[0].z) == pytest.approx(2000 * (STEPS // 50), rel=1e-6)


def test_empty_run_says_so_per_section(tmp_path: Path) -> None:
    RunDirWriter(tmp_path / "empty", meta={"model": "M"}).close()
    text = write_html_report(tmp_path / "empty", tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert 'id="no-findings"' in text and "neither report.json nor findings.jsonl" in text
    assert "No loss was logged" in text and "No learning rate" in text
    assert "No finite gradient norm" in text and "No per-layer statistics" in text and "No histograms" in text
    assert '<div class="plot"' not in text


def test_unclosed_run_uses_findings_jsonl(tmp_path: Path) -> None:
    text = write_html_report(make_run(tmp_path / "r", close=False)).read_text(encoding="utf-8")
    assert "run not closed" in text
    assert text.count('class="finding sev-warning"') == 3


def test_missing_or_invalid_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_html_report(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a traindoc run directory"):
        write_html_report(tmp_path / "file.txt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        write_html_report(tmp_path / "plain")


def test_cli_report_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from traindoc.cli import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = make_run(tmp_path / "r", findings=False)
    assert main(["report", str(run), "-o", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").stat().st_size > 1_000_000  # plotly.js is inlined


def test_missing_plotly_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    run = make_run(tmp_path / "r", findings=False)
    monkeypatch.setitem(sys.modules, "plotly", None)  # makes `import plotly` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'traindoc\[report\]'"):
        write_html_report(run)
    from traindoc.cli import main

    assert main(["report", str(run)]) == 2
    assert "pip install 'traindoc[report]'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- headless Chromium


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); the browser test is skipped")
    out = write_html_report(make_run(tmp_path / "run"))
    n_plots = len(re.findall(r'<div class="plot" id="plot-\d+"', out.read_text(encoding="utf-8")))
    artifacts = Path(os.environ.get("TRAINDOC_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    dom = _run_chromium(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000",
                        "--hide-scrollbars", "--dump-dom", out.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_dom = dom.stdout
    console_errors = [line for line in dom.stderr.splitlines()
                      if "Uncaught" in line or ("CONSOLE" in line and "error" in line.lower())]
    assert not console_errors, console_errors
    root = re.search(r"<html[^>]*>", html_dom).group(0)  # the page records script errors on <html>
    assert "data-traindoc-errors" not in root, root
    assert f'data-traindoc-plots="{n_plots}"' in root
    assert html_dom.count('data-rendered="1"') == n_plots
    # every plot div holds a plotly SVG
    assert html_dom.count('class="main-svg"') >= n_plots
    for fid in ("loss-spike", "loss-plateau", "stalled-layers"):
        assert f'data-finding-id="{fid}"' in html_dom
    # the hostile layer name and title ran no script
    assert "data-pwned" not in root and "<title>PWNED" not in html_dom
    # the screenshot (a test artifact: TRAINDOC_TEST_ARTIFACTS=dir keeps it there)
    assert shot.exists() and shot.stat().st_size > 20_000


EVIL_MODULE = "</script><script>document['title']='PWNED'</script>"  # a legal module name (no dots)


def _watched_run(run_dir: Path) -> Path:
    """A real tiny run through `traindoc.watch`: an MLP classifier with warmup, a clip, and one bad batch."""
    import torch

    import traindoc

    torch.manual_seed(0)
    torch.set_num_threads(1)
    from collections import OrderedDict

    model = torch.nn.Sequential(OrderedDict([
        ("inp", torch.nn.Linear(16, 32)), ("act1", torch.nn.ReLU()),
        (EVIL_MODULE, torch.nn.Linear(32, 32)), ("act2", torch.nn.ReLU()), ("head", torch.nn.Linear(32, 4))]))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 3e-3},
                             {"params": list(model[2].parameters()) + list(model[4].parameters()), "lr": 1e-3}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    x = torch.randn(512, 16)
    y = (x[:, :4].argmax(dim=1))
    with traindoc.watch(model, opt, run_dir=run_dir, every=2, histograms_every=10, flush_every=16,
                        tensorboard=False) as w:
        for step in range(40):
            idx = torch.randint(0, 512, (32,))
            xb = x[idx] * (30.0 if step == 30 else 1.0)  # one wild batch
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            w.log(loss=loss)
    return run_dir


def test_report_from_a_real_watched_run(tmp_path: Path) -> None:
    run_dir = _watched_run(tmp_path / "run")
    text = write_html_report(run_dir).read_text(encoding="utf-8")
    for empty in ("No loss was logged", "No learning rate", "No finite gradient norm", "No per-layer statistics",
                  "No histograms"):
        assert empty not in text, empty
    plots = re.findall(r'<div class="plot" id="plot-\d+" data-plot="([a-z-]+)"', text)
    assert plots[:5] == ["loss", "lr", "grad-norm", "grad-norm-hist", "update-ratio"]
    assert plots[5:] and set(plots[5:]) == {"histogram"}
    lr_fig = next(json.loads(b) for b in re.findall(
        r'<script type="application/json" id="plot-1-json">(.*?)</script>', text, re.S))
    assert len(lr_fig["data"]) == 2  # one line per param group
    assert EVIL_MODULE not in text
    blocks = re.findall(r'<script type="application/json" id="plot-\d+-json">(.*?)</script>', text, re.S)
    decoded = json.dumps([json.loads(b) for b in blocks])  # the labels plotly gets: escaped for its HTML subset
    assert "&lt;/script&gt;&lt;script&gt;document[&#x27;title&#x27;]" in decoded
    browser = _chromium()
    if browser is None:
        return
    dom = _run_chromium(browser, tmp_path / "profile", "--dump-dom", (run_dir / "report.html").resolve().as_uri())
    root = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert "data-traindoc-errors" not in root and f'data-traindoc-plots="{len(plots)}"' in root
    assert dom.stdout.count('data-rendered="1"') == len(plots)
    assert "<title>PWNED" not in dom.stdout and "<title>traindoc report: Sequential</title>" in dom.stdout


def test_long_run_is_thinned_but_keeps_its_spike(tmp_path: Path) -> None:
    from traindoc.report import figures
    from traindoc.rundir import read_run

    w = RunDirWriter(tmp_path / "long", meta={"model": "M"})
    n = 50_000
    for s in range(n):
        w.append("scalars", {"step": s, "loss": 100.0 if s == 31_337 else 2.0 + math.sin(s / 500),
                             "lr": [1e-3], "grad_norm": 1.0})
    w.close()
    run = read_run(tmp_path / "long")
    fig = figures.loss_figure(run, [])
    xs, ys = list(fig.data[0].x), list(fig.data[0].y)
    assert len(xs) <= figures.MAX_LINE_POINTS + 2 and xs == sorted(xs)
    assert max(ys) == 100.0 and xs[ys.index(100.0)] == 31_337
    assert min(ys) == pytest.approx(1.0, abs=1e-4)
