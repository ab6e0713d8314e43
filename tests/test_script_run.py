"""`traindoc run SCRIPT`: unmodified scripts, healthy and with one real bug each, diagnosed with the line
to change; the script's own behaviour (argv, output, exit code) is kept; bad input is one message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from traindoc.cli import main
from traindoc.rundir import read_run

SCRIPTS = Path(__file__).parent / "scripts"


def run(tmp_path: Path, script: str, *args: str, extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    out = tmp_path / "findings.json"
    code = main(["run", str(SCRIPTS / script), "--run-dir", str(tmp_path / "run"), "--json", str(out), *extra,
                 "--", *args])
    return code, json.loads(out.read_text())


def line_of(script: str, text: str) -> int:
    lines = (SCRIPTS / script).read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if text in ln)


def test_a_healthy_loop_runs_to_its_end_with_no_finding(tmp_path, capsys):
    code, data = run(tmp_path, "classify.py")
    assert code == 0 and data["ok"] and data["findings"] == []
    assert data["version"] == 1 and data["exit_code"] == 0 and not data["stopped_at_max_steps"]
    assert data["info"]["optimizer_steps"] == 40 and data["info"]["model"] == "Sequential"
    assert "check" in data["info"] and "watch" in data["info"]  # the doctor ran, then the monitor
    assert "done" in capsys.readouterr().out  # the script's own output is untouched
    assert torch.optim.Optimizer.__init__.__qualname__ == "Optimizer.__init__"  # every hook taken out again


def test_a_label_outside_the_classes_crashes_and_is_proved_on_the_loss_line(tmp_path, capsys):
    code, data = run(tmp_path, "classify.py", "label")
    err = capsys.readouterr().err
    assert code == 1  # the script's exit status: an uncaught exception
    assert "Traceback (most recent call last)" in err and "Target 4 is out of bounds" in err
    assert "traindoc/script" not in err  # traindoc's wrappers are not in the user's traceback
    (f,) = [f for f in data["findings"] if f["id"] == "label-out-of-range"]
    assert f["severity"] == "error" and f["evidence"]["bad_values"] == [4] and f["evidence"]["num_classes"] == 4
    assert f["location"]["line"] == line_of("classify.py", "F.cross_entropy") and not data["ok"]


def test_a_loop_without_zero_grad_is_found_at_its_optimizer_step(tmp_path):
    code, data = run(tmp_path, "classify.py", "nozero")
    assert code == 0
    (f,) = [f for f in data["findings"] if f["id"] == "missing-zero-grad"]
    assert f["severity"] == "error" and f["location"]["line"] == line_of("classify.py", "opt.step()")
    # the monitor knew it at an early flush (after steps 1, 2, 4, ...), not at the end of the 40 steps
    assert 1 <= f["step"] <= 4 < data["info"]["optimizer_steps"]


def test_batch_first_left_false_is_found_at_the_transformer_line(tmp_path):
    _, healthy = run(tmp_path / "a", "seq2seq.py")
    assert healthy["findings"] == []
    _, data = run(tmp_path / "b", "seq2seq.py", "bug")
    (f,) = [f for f in data["findings"] if f["id"] == "batch-mixing"]
    assert f["location"]["line"] == line_of("seq2seq.py", "nn.Transformer(")
    assert f["step"] == 0  # proved by the one-batch doctor, before the first update
    report = read_run(tmp_path / "b" / "run").final_report()  # the run directory's report has it too
    assert "batch-mixing" in report.ids
    from traindoc.report.html import write_html_report

    page = write_html_report(tmp_path / "b" / "run").read_text()
    assert "Line to change" in page and f"seq2seq.py:{f['location']['line']}" in page


def test_a_model_trained_in_eval_mode_from_the_start_is_still_diagnosed(tmp_path):
    """No call in training mode ever: the model called in eval mode with gradients on, whose parameters
    the optimizer holds, is the one diagnosed (after a few steps), and the monitor says it is in eval mode."""
    code, data = run(tmp_path, "classify.py", "eval")
    assert code == 0 and "check" in data["info"] and data["info"]["model"] == "Sequential"
    (f,) = [f for f in data["findings"] if f["id"] == "train-mode-off"]
    assert f["severity"] == "warning" and f["step"] < data["info"]["optimizer_steps"]
    _, healthy = run(tmp_path / "healthy", "classify.py")
    assert healthy["findings"] == []


def test_a_decoder_without_its_causal_mask_is_named_where_the_transformer_is_called(tmp_path):
    _, data = run(tmp_path, "seq2seq.py", "nomask")
    (f,) = [f for f in data["findings"] if f["id"] == "causal-leak"]
    # the call that must pass tgt_mask, not the constructor (which takes no mask)
    assert f["location"]["line"] == line_of("seq2seq.py", "h = self.tf(") and f["step"] == 0


def test_max_steps_stops_the_script_cleanly_and_still_reports(tmp_path, capsys):
    code, data = run(tmp_path, "classify.py", "nozero", extra=("--max-steps", "5"))
    assert code == 0 and data["stopped_at_max_steps"] and data["info"]["optimizer_steps"] == 5
    assert "missing-zero-grad" in [f["id"] for f in data["findings"]]
    assert "done" not in capsys.readouterr().out


def test_the_scripts_own_exit_code_is_kept(tmp_path):
    code, data = run(tmp_path, "classify.py", "exit")
    assert code == 3 and data["exit_code"] == 3


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    ("def broken(:\n", "syntax error"),
])
def test_a_script_that_cannot_run_is_one_message_and_status_2(tmp_path, capsys, content, message):
    script = tmp_path / "train.py"
    if content is not None:
        script.write_text(content)
    assert main(["run", str(script)]) == 2
    err = capsys.readouterr().err
    assert message in err and "traindoc/" not in err.replace(str(script), "")


def test_a_script_with_no_optimizer_step_says_so(tmp_path, capsys):
    script = tmp_path / "nostep.py"
    script.write_text("import torch\nprint(torch.ones(2).sum().item())\n")
    assert main(["run", str(script)]) == 0
    assert "0 optimizer steps; no findings" in capsys.readouterr().err


def test_python_dash_m_runs_it_too(tmp_path):
    out = tmp_path / "f.json"
    proc = subprocess.run([sys.executable, "-m", "traindoc", "run", str(SCRIPTS / "classify.py"), "--run-dir",
                           str(tmp_path / "run"), "--json", str(out), "--max-steps", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["info"]["optimizer_steps"] == 3


def test_an_amp_scaled_loss_is_logged_unscaled(tmp_path):
    code, data = run(tmp_path, "amp_scaled.py")
    assert code == 0 and data["findings"] == []
    losses = [r["loss"] for r in read_run(tmp_path / "run").scalars]
    assert len(losses) >= 10 and all(0.1 < v < 3.0 for v in losses)  # ~ln(3), not 1024 times it


def test_a_nan_crash_names_the_line_where_the_nan_is_born(tmp_path, capsys):
    code, data = run(tmp_path, "nan_crash.py")
    assert code == 1 and "loss is nan" in capsys.readouterr().err
    (f,) = [f for f in data["findings"] if f["id"] == "nan-forward"]
    assert f["location"]["line"] == line_of("nan_crash.py", "torch.log(")  # in the model's forward


@pytest.mark.parametrize("bug, expected", [(None, None), ("softmax", "double-softmax"), ("label", "label-out-of-range"),
                                           ("nll", "nll-without-log-softmax")])
def test_a_loss_module_called_after_the_model_does_not_hide_the_model(tmp_path, bug, expected):
    """``criterion = nn.CrossEntropyLoss()`` is a module too, called after the model: it has no parameters,
    so the model the optimizer trains stays the one diagnosed."""
    code, data = run(tmp_path, "criterion_loop.py", *((bug,) if bug else ()))
    assert data["info"]["model"] == "Sequential" and "check" in data["info"] and "watch" in data["info"]
    if expected is None:
        assert code == 0 and [f["id"] for f in data["findings"] if f["severity"] != "hint"] == []
        return
    (f,) = [f for f in data["findings"] if f["id"] == expected]
    # the fix of a second softmax is the nn.Softmax layer's line; the others change the loss call
    line = line_of("criterion_loop.py", "nn.Softmax(" if bug == "softmax" else "loss = criterion(")
    assert f["severity"] == "error" and f["location"]["line"] == line


def test_a_loop_that_steps_before_its_first_forward_is_still_diagnosed(tmp_path):
    """The first optimizer step comes before any model call: the doctor and the monitor start at the next
    step, once the model has been called on a batch."""
    _, data = run(tmp_path, "criterion_loop.py", "step-first")
    assert data["info"]["model"] == "Sequential" and "check" in data["info"] and "watch" in data["info"]
    assert not data["info"].get("notes")


def test_a_forward_under_no_grad_crashes_backward_and_names_the_model_call(tmp_path):
    code, data = run(tmp_path, "criterion_loop.py", "no-grad")
    assert code == 1
    (f,) = [f for f in data["findings"] if f["id"] == "no-grad-params"]
    assert f["severity"] == "error" and f["evidence"]["model_called_under_no_grad"]
    assert f["location"]["line"] == line_of("criterion_loop.py", "outputs = model(x[i:i + 32])")


def test_an_exception_inside_traindocs_hooks_is_reported_and_the_script_goes_on(tmp_path, monkeypatch, capsys):
    import traindoc.script.capture as capture

    def broken(*args, **kwargs):
        raise RuntimeError("boom inside traindoc")

    monkeypatch.setattr(capture, "user_location", broken)
    code, data = run(tmp_path, "classify.py")
    assert code == 0 and "done" in capsys.readouterr().out  # the script ran to its end
    failed = [f for f in data["findings"] if f["id"] == "probe-failed"]
    assert failed and all(f["severity"] == "hint" for f in failed)
    assert any("boom inside traindoc" in json.dumps(f["evidence"]) + f["message"] for f in failed)
    assert data["info"]["optimizer_steps"] == 40 and "check" in data["info"]  # the doctor still ran


def test_an_out_of_memory_crash_says_what_to_change_and_other_errors_do_not():
    from traindoc.script.capture import ModelCall, Seen
    from traindoc.script.session import crash_findings

    model = torch.nn.Linear(4, 2)
    seen = Seen(model_call=ModelCall(model, (torch.randn(3, 4),), {}, None))
    (f,) = crash_findings(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), seen)
    assert f.id == "oom-risk" and f.evidence["batch_shapes"] == {"batch": [3, 4]} and "batch size" in f.fix
    assert crash_findings(ValueError("shapes do not match"), seen) == []


def test_a_per_step_schedule_stepped_per_epoch_is_scheduler_misuse_at_its_step_line(tmp_path):
    script = tmp_path / "onecycle.py"
    script.write_text(
        "import sys\nimport torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(4, 2)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=5 * 20)\n"
        "x, y = torch.randn(80, 4), torch.randint(0, 2, (80,))\n"
        "for epoch in range(5):\n"
        "    for i in range(0, 80, 4):\n"
        "        loss = torch.nn.functional.cross_entropy(model(x[i:i + 4]), y[i:i + 4])\n"
        "        opt.zero_grad()\n"
        "        loss.backward()\n"
        "        opt.step()\n"
        "        if 'fixed' in sys.argv:\n"
        "            sched.step()\n"
        "    if 'fixed' not in sys.argv:\n"
        "        sched.step()\n")
    out = tmp_path / "f.json"
    main(["run", str(script), "--run-dir", str(tmp_path / "run"), "--json", str(out)])
    (f,) = [f for f in json.loads(out.read_text())["findings"] if f["id"] == "scheduler-misuse"]
    assert f["evidence"]["planned_steps"] == 100 and f["evidence"]["scheduler_steps"] == 5
    assert f["location"]["line"] == 17  # the per-epoch sched.step()
    main(["run", str(script), "--run-dir", str(tmp_path / "run2"), "--json", str(out), "--", "fixed"])
    assert json.loads(out.read_text())["findings"] == []
