"""The `traindoc` command line: --version, --help, `report` with --json / --fail-on / --no-html, the
exit statuses, and `python -m traindoc`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traindoc
from traindoc.cli import build_parser, main
from traindoc.findings import Finding, Report
from traindoc.monitor.detectors.base import Detector
from traindoc.rundir import RunDirWriter

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

ERROR = Finding("nan-loss", "error", "loss is NaN at step 4", {"step": 4}, "lower the LR")
WARNING = Finding("loss-spike", "warning", "loss jumped 5x at step 2", {"step": 2}, "add warmup")
HINT = Finding("weight-decay-on-norms", "hint", "weight decay on 2 norm layers", {}, "exclude norms")


def write_run(path: Path, findings: list[Finding], *, closed: bool = True, steps: int = 6) -> Path:
    """A run directory as traindoc.watch writes it; without report.json when not `closed` (killed)."""
    w = RunDirWriter(path, meta={"model": "Tiny", "optimizer": "SGD", "num_params": 10})
    for s in range(steps):
        w.append("scalars", {"step": s, "loss": 2.0 - s / 10, "lr": [0.1], "grad_norm": 1.0})
    for f in findings:
        w.append("findings", {"step": f.evidence.get("step"), **f.to_dict()})
    w.flush()
    if closed:
        w.write_report(Report(findings, {"steps": steps, "run_dir": str(path)}).to_dict())
    w.close()
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----------------------------------------------------------------------------- --version, --help


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"traindoc {version('traindoc')}\n"



def test_version_falls_back_to_the_package_version_when_not_installed(capsys, monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(traindoc, "__version__", "9.9.9-source")
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == "traindoc 9.9.9-source\n"

def test_help_lists_every_subcommand_with_its_purpose_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"demo", "run", "report", "catalog", "tune", "overfit"}
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name in sub.choices:
        assert helps.get(name), f"subcommand {name} has no one-line help"
        assert f"{name} {' '.join(helps[name].split())}" in text
    assert "examples:" in text and "traindoc report" in text and "--fail-on" in text
    assert "does not learn" in text  # the paragraph saying what traindoc is


@pytest.mark.parametrize("command", ["run", "report", "catalog", "overfit", "tune lr", "tune warmup", "tune clip",
                                     "tune instability", "tune fix"])
def test_every_argument_has_help_with_its_default(command):
    parser = build_parser()
    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    for action in parser._actions:
        if action.dest == "help" or action.help == argparse.SUPPRESS:  # the one internal option: --trial
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.option_strings:
            assert "default" in action.help, f"{command} {action.option_strings} does not say its default"


# ----------------------------------------------------------------------------- report --json


def _watched_run(run_dir: Path):
    """A tiny real `traindoc.watch` loop left open: the run directory of a run killed after 6 steps."""

    class SpikeAtStep3(Detector):
        def update(self, record):
            return [WARNING] if record.step == 3 else []

        def finalize(self, end=None):
            return [HINT]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = traindoc.watch(model, opt, run_dir=run_dir, flush_every=2, detectors=[SpikeAtStep3()],
                       tensorboard=False)
    for _ in range(6):
        x = torch.randn(16, 4)
        loss = F.cross_entropy(model(x), x[:, :3].argmax(1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        w.log(loss=loss.detach())
    w.flush()
    return w


def test_report_json_of_a_killed_run_then_of_the_closed_run(tmp_path, capsys):
    run = tmp_path / "run"
    w = _watched_run(run)
    try:
        assert not (run / "report.json").exists()
        rc, out, err = run_cli(capsys, "report", str(run), "--no-html", "--json", str(tmp_path / "killed.json"))
        assert rc == 0, err
        killed = json.loads((tmp_path / "killed.json").read_text())
        assert set(killed) == {"version", "ok", "info", "findings"} and killed["version"] == 1
        assert killed["ok"] is True
        assert [f["id"] for f in killed["findings"]] == ["loss-spike"]  # finalize() never ran
        assert set(killed["findings"][0]) == {"id", "severity", "title", "evidence", "fix"}
        info = killed["info"]
        assert info["complete"] is False and info["steps"] == 6 and info["last_step"] == 5
        assert info["model"] == "Sequential" and info["optimizer"] == "SGD"
        assert "not closed" in out
    finally:
        report = w.close()

    rc, out, err = run_cli(capsys, "report", str(run), "--no-html", "--json", str(tmp_path / "closed.json"))
    assert rc == 0, err
    closed = json.loads((tmp_path / "closed.json").read_text())
    assert closed == report.to_dict() == json.loads((run / "report.json").read_text())
    assert closed["info"]["steps"] == 6 and "complete" not in closed["info"]
    assert [f["id"] for f in closed["findings"]] == ["loss-spike", "weight-decay-on-norms"]


def test_report_json_dash_writes_only_the_json_to_stdout(tmp_path, capsys):
    run = write_run(tmp_path / "r", [WARNING, ERROR], closed=False)
    rc, out, err = run_cli(capsys, "report", str(run), "--no-html", "--json", "-")
    assert rc == 0
    data = json.loads(out)  # nothing but the JSON on stdout
    assert data["ok"] is False and [f["id"] for f in data["findings"]] == ["nan-loss", "loss-spike"]
    assert data["info"]["complete"] is False and data["info"]["steps"] == 6
    assert "2 findings" in err


def test_report_json_refuses_to_overwrite_the_runs_report_json(tmp_path, capsys):
    run = write_run(tmp_path / "r", [WARNING], closed=False)
    rc, _, err = run_cli(capsys, "report", str(run), "--no-html", "--json", str(run / "report.json"))
    assert rc == 2 and "report.json" in err
    assert not (run / "report.json").exists()


# ----------------------------------------------------------------------------- report --fail-on


@pytest.mark.parametrize(("findings", "closed", "fail_on", "expected"), [
    ([ERROR, WARNING, HINT], True, "error", 1),
    ([ERROR, WARNING, HINT], True, "warning", 1),
    ([WARNING, HINT], True, "error", 0),
    ([WARNING, HINT], True, "warning", 1),
    ([HINT], True, "warning", 0),
    ([], True, "error", 0),
    ([ERROR], False, "error", 1),  # a killed run is judged on its findings.jsonl
    ([WARNING], False, "error", 0),
    ([ERROR, WARNING], True, None, 0),  # without --fail-on the findings never set the exit status
])
def test_fail_on_exit_status(tmp_path, capsys, findings, closed, fail_on, expected):
    run = write_run(tmp_path / "r", findings, closed=closed)
    argv = ["report", str(run), "--no-html"] + (["--fail-on", fail_on] if fail_on else [])
    rc, _, err = run_cli(capsys, *argv)
    assert rc == expected
    if expected == 1:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"--fail-on {fail_on}" in lines[0]
        causes = [f for f in findings if f.severity == "error" or (fail_on == "warning" and f.severity == "warning")]
        for f in causes:
            assert f.id in lines[0]
        for f in findings:
            if f not in causes:
                assert f.id not in lines[0]
    else:
        assert err == ""


def test_fail_on_counts_repeated_findings_once_per_id(tmp_path, capsys):
    spikes = [Finding("loss-spike", "warning", f"spike at {s}", {"step": s}, "warmup") for s in (2, 5, 9)]
    run = write_run(tmp_path / "r", spikes, closed=False)
    rc, _, err = run_cli(capsys, "report", str(run), "--no-html", "--fail-on", "warning")
    assert rc == 1 and "3 findings" in err and "loss-spike (warning, 3x)" in err


# ----------------------------------------------------------------------------- report --no-html


def test_no_html_writes_no_page_and_needs_no_plotly(tmp_path, capsys, monkeypatch):
    run = write_run(tmp_path / "r", [WARNING])
    monkeypatch.setitem(sys.modules, "plotly", None)  # `import plotly` raises ImportError
    rc, out, err = run_cli(capsys, "report", str(run), "--no-html", "--json", str(tmp_path / "r.json"))
    assert rc == 0, err
    assert not (run / "report.html").exists() and (tmp_path / "r.json").exists()
    rc, _, err = run_cli(capsys, "report", str(run))  # the page itself does need plotly
    assert rc == 2 and "--no-html" in err and len(err.strip().splitlines()) == 1


def test_html_is_still_written_by_default(tmp_path, capsys):
    pytest.importorskip("plotly")
    run = write_run(tmp_path / "r", [WARNING])
    rc, out, _ = run_cli(capsys, "report", str(run))
    assert rc == 0 and (run / "report.html").exists() and f"wrote {run / 'report.html'}" in out


def test_no_html_and_output_are_exclusive(tmp_path, capsys):
    run = write_run(tmp_path / "r", [])
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run), "--no-html", "-o", str(tmp_path / "x.html")])
    assert exit_info.value.code == 2 and "not allowed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


def _bad_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    (tmp_path / "badmeta").mkdir()
    (tmp_path / "badmeta" / "meta.json").write_text("{not json")
    torn = write_run(tmp_path / "torn", [WARNING], closed=False)
    (torn / "findings.jsonl").write_text('{"step": 1, "id": "loss-spike", "title": "no severity"}\n')
    badrep = write_run(tmp_path / "badrep", [WARNING])
    (badrep / "report.json").write_text('{"version": 7, "findings": []}')
    return {
        "missing": (tmp_path / "missing", "does not exist"),
        "file": (tmp_path / "file.txt", "is a file"),
        "plain": (tmp_path / "plain", "no meta.json"),
        "badmeta": (tmp_path / "badmeta", "badmeta"),
        "torn": (torn, "findings.jsonl record 1"),
        "badrep": (badrep, "unsupported report version"),
    }


@pytest.mark.parametrize("case", ["missing", "file", "plain", "badmeta", "torn", "badrep"])
@pytest.mark.parametrize("options", [[], ["--no-html", "--json", "-", "--fail-on", "warning"]])
def test_bad_run_dir_is_one_message_and_exit_2(tmp_path, capsys, case, options):
    path, expected = _bad_dirs(tmp_path)[case]
    rc, out, err = run_cli(capsys, "report", str(path), *options)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traindoc report: ") and expected in lines[0]
    assert "Traceback" not in err


def test_an_internal_error_in_the_html_renderer_is_one_message(tmp_path, capsys, monkeypatch):
    pytest.importorskip("plotly")
    from traindoc.report import html

    def broken(run):
        raise RuntimeError("figure\nfailed")

    monkeypatch.setattr(html, "render_html", broken)
    run = write_run(tmp_path / "r", [WARNING])
    rc, _, err = run_cli(capsys, "report", str(run), "--fail-on", "warning")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "internal error" in lines[0] and "RuntimeError: figure failed" in lines[0]


# ----------------------------------------------------------------------------- python -m traindoc


def test_python_m_traindoc_is_the_same_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "traindoc", "--version"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout == f"traindoc {version('traindoc')}\n"
    done = subprocess.run([sys.executable, "-m", "traindoc", "report", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"traindoc report: run directory {tmp_path / 'missing'} does not exist"]
