"""`traindoc run SCRIPT` on the frameworks people train with: a hand-written loop over a Hugging Face
model, Lightning, Accelerate, a GAN with two optimizers, a DataLoader with worker processes. Each
script in tests/scripts/ is healthy by default and takes one argv word that switches one real bug on;
the healthy twin must come out clean with the doctor run, the buggy one with the finding on the
user's line. Known traindoc defects are strict xfails (they start failing once fixed)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from traindoc.cli import main
from traindoc.rundir import read_run

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs a script once per argv under `traindoc run` (in-process), cached for the module:
    name, *args -> (exit code, JSON, the script's stdout, the run directory)."""
    # Every in-process run starts from the state of a process that has used traindoc before (the doctor's
    # main pass imported ahead of the script's hooks), whatever ran earlier in this pytest process: see
    # test_hf_loop_pad_labels_in_process_after_an_earlier_check (what that state once broke).
    import traindoc.probes.main_pass  # noqa: F401

    cache: dict[tuple[str, ...], tuple[int, dict, str, Path]] = {}

    def run(script: str, *args: str) -> tuple[int, dict, str, Path]:
        key = (script, *args)
        if key not in cache:
            base = tmp_path_factory.mktemp(script.removesuffix(".py") + "".join(f"-{a}" for a in args))
            out, run_dir, stdout = base / "findings.json", base / "run", io.StringIO()
            with contextlib.redirect_stdout(stdout):
                code = main(["run", str(SCRIPTS / script), "--run-dir", str(run_dir), "--json", str(out),
                             "--", *args])
            cache[key] = (code, json.loads(out.read_text()), stdout.getvalue(), run_dir)
        return cache[key]

    return run


@pytest.fixture(autouse=True)
def _one_thread_and_a_clean_accelerate():
    """One CPU thread (as the scripts set it), restored after; Accelerate's process-wide singletons
    reset around each test (tests/test_integrations.py does the same)."""
    threads = torch.get_num_threads()

    def reset() -> None:
        with contextlib.suppress(ImportError):
            from accelerate.state import AcceleratorState, GradientState
            AcceleratorState._reset_state(True)
            GradientState._reset_state()

    reset()
    yield
    reset()
    torch.set_num_threads(threads)


def line_of(script: str, code: str) -> int:
    """The first line of the script that starts with ``code`` (indentation aside; not the docstring)."""
    lines = (SCRIPTS / script).read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if ln.strip().startswith(code))


def ids(data: dict, *severities: str) -> list[str]:
    return [f["id"] for f in data["findings"] if not severities or f["severity"] in severities]


def the(data: dict, finding_id: str) -> dict:
    (f,) = [f for f in data["findings"] if f["id"] == finding_id]
    return f


def assert_healthy(code: int, data: dict) -> None:
    assert code == 0 and data["exit_code"] == 0 and data["ok"]
    assert ids(data, "error", "warning") == []
    assert "check" in data["info"] and "watch" in data["info"], data["info"].get("notes")


# ----------------------------------------------------------------------------- 1. a loop over a HF model


def test_hf_loop_healthy_is_clean_and_the_doctor_ran(runs):
    code, data, out, _ = runs("hf_loop.py")
    assert_healthy(code, data)
    assert data["info"]["model"] == "GPT2LMHeadModel" and data["info"]["optimizer"] == "AdamW"
    assert data["info"]["check"]["loss_from"].startswith("output")  # the model's own out.loss
    assert data["info"]["optimizer_steps"] == 30 and out.startswith("done ")


def cli(tmp_path: Path, script: str, *args: str) -> tuple[int, dict]:
    """``python -m traindoc run SCRIPT -- ARGS`` in a fresh process, as a user runs it."""
    out = tmp_path / "findings.json"
    proc = subprocess.run([sys.executable, "-m", "traindoc", "run", str(SCRIPTS / script), "--run-dir",
                           str(tmp_path / "run"), "--json", str(out), "--", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.is_file(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


def assert_padding_in_loss_at_the_model_call(code: int, data: dict) -> None:
    assert code == 0 and not data["ok"]
    f = the(data, "padding-in-loss")
    assert f["severity"] == "error"  # proved from the user's attention_mask
    assert f["evidence"]["padding_from"] == "attention_mask" and f["evidence"]["target_tensor"] == "labels"
    assert f["evidence"]["pad_targets_in_loss"] > 0
    # the loss is computed inside transformers: the user's line is the model call that returns it
    assert f["location"]["line"] == line_of("hf_loop.py", "out = model(**batch)")
    assert f["location"]["file"].endswith("hf_loop.py")
    assert ids(data, "error", "warning") == ["padding-in-loss"]


@pytest.mark.parametrize("bug", [False, True], ids=["healthy", "pad"])
def test_hf_loop_from_the_command_line(tmp_path, bug):
    code, data = cli(tmp_path, "hf_loop.py", *(["pad"] if bug else []))
    if bug:
        assert_padding_in_loss_at_the_model_call(code, data)
    else:
        assert_healthy(code, data)


def test_hf_loop_pad_labels_in_process_after_an_earlier_check(runs):
    code, data, _, _ = runs("hf_loop.py", "pad")
    assert_padding_in_loss_at_the_model_call(code, data)


# ----------------------------------------------------------------------------- 2. Lightning


def test_lightning_healthy_runs_to_its_end_without_findings(runs):
    code, data, out, _ = runs("lightning_mlp.py")
    assert code == 0 and data["ok"] and ids(data, "error", "warning") == []
    assert data["info"]["optimizer_steps"] == 32 and out.startswith("done ")


def test_lightning_healthy_the_doctor_and_the_monitor_ran(runs):
    _, data, _, _ = runs("lightning_mlp.py")
    assert "check" in data["info"] and "watch" in data["info"], data["info"].get("notes")
    # Lightning backpropagates `loss / 1` (its accumulation count): the script's loss is still replayed
    assert data["info"]["check"]["loss_from"] == "loss_fn"


def test_lightning_head_only_optimizer_is_params_not_in_optimizer(runs):
    _, data, _, _ = runs("lightning_mlp.py", "head")
    f = the(data, "params-not-in-optimizer")
    assert f["severity"] == "error"
    assert f["location"]["line"] == line_of("lightning_mlp.py", "return torch.optim.Adam(")


def test_lightning_manual_optimization_healthy_is_clean_and_the_doctor_ran(runs):
    code, data, _, _ = runs("lightning_mlp.py", "manual")
    assert_healthy(code, data)
    assert data["info"]["model"] == "Classifier" and data["info"]["optimizer_steps"] == 32


def test_lightning_manual_optimization_head_only_is_found_at_configure_optimizers(runs):
    code, data, _, _ = runs("lightning_mlp.py", "manual", "head")
    assert code == 0 and not data["ok"]
    found = [f for f in data["findings"] if f["id"] == "params-not-in-optimizer"]
    assert found and all(f["severity"] == "error" for f in found)  # the doctor's and the monitor's
    assert any("body" in f["message"] for f in found)
    line = line_of("lightning_mlp.py", "return torch.optim.Adam(")
    assert all(f["location"]["line"] == line and f["location"]["function"] == "configure_optimizers"
               for f in found)
    assert ids(data, "error", "warning") == ["params-not-in-optimizer"] * len(found)


def test_lightning_head_only_fix_is_valid_python(runs):
    _, data, _, _ = runs("lightning_mlp.py", "manual", "head")
    for f in data["findings"]:
        if f["id"] == "params-not-in-optimizer":
            for code in f["fix"].split("`")[1::2]:
                if "add_param_group" in code:
                    compile(code, "fix", "exec")


# ----------------------------------------------------------------------------- 3. Accelerate


def test_accelerate_healthy_is_clean_and_counts_real_updates(runs):
    code, data, out, _ = runs("accelerate_mlp.py")
    assert_healthy(code, data)
    # 3 epochs x 32 micro-batches, accumulated 2 by 2: the real optimizer steps 48 times
    assert data["info"]["optimizer_steps"] == 48 and data["info"]["watch"]["steps"] == 48
    assert out.startswith("done ")


def test_accelerate_lr_one_is_lr_too_high_at_the_optimizer_line(runs):
    code, data, _, _ = runs("accelerate_mlp.py", "lr")
    assert code == 0
    line = line_of("accelerate_mlp.py", "opt = torch.optim.AdamW(")
    f = the(data, "lr-too-high")
    assert f["severity"] == "warning" and f["evidence"]["lr"] == 1.0
    assert f["location"]["line"] == line
    d = the(data, "divergence")  # the loss it drives up, on the same line
    assert d["severity"] == "warning" and d["location"]["line"] == line
    assert set(ids(data, "error", "warning")) == {"lr-too-high", "divergence"}


def test_accelerate_the_monitor_logs_the_scripts_loss_not_the_scaled_one(runs):
    _, _, _, run_dir = runs("accelerate_mlp.py")
    first = read_run(run_dir).scalars[0]["loss"]
    assert first > 1.2  # cross-entropy over 4 classes at init: ~ln 4; 0.5 x that when scaled


# ----------------------------------------------------------------------------- 3b. the Hugging Face Trainer


def test_hf_trainer_healthy_fine_tuning_is_clean(runs):
    code, data, out, _ = runs("hf_trainer.py")
    assert_healthy(code, data)
    assert data["info"]["optimizer_steps"] == 16 and "trained 16 steps" in out


def test_hf_trainer_lr_too_high_is_on_the_learning_rate_line_of_its_arguments(runs):
    """The Trainer builds the optimizer inside ``trainer.train()``: the line to change is the
    ``learning_rate=`` argument of the script's TrainingArguments."""
    code, data, _, _ = runs("hf_trainer.py", "lr")
    assert code == 0
    f = the(data, "lr-too-high")
    assert f["severity"] == "warning" and f["evidence"]["lr"] == 1e-3
    assert f["location"]["line"] == line_of("hf_trainer.py", "learning_rate=")
    assert ids(data, "error") == []


def test_hf_trainer_label_outside_the_classes_crashes_and_is_proved(runs):
    code, data, _, _ = runs("hf_trainer.py", "label")
    assert code == 1 and data["exit_code"] == 1
    f = the(data, "label-out-of-range")
    assert f["severity"] == "error" and f["evidence"]["bad_values"] == [3] and f["evidence"]["num_classes"] == 3


# ----------------------------------------------------------------------------- 4. a GAN, two optimizers


def test_gan_runs_to_its_end_and_names_the_unwatched_optimizer(runs):
    code, data, out, _ = runs("gan.py")
    assert code == 0 and data["exit_code"] == 0 and out.startswith("done ")
    info = data["info"]
    assert info["other_optimizers_not_watched"] == 1
    assert "check" in info and "watch" in info
    assert info["optimizer_steps"] == 60  # the watched optimizer's steps only


def test_gan_healthy_has_no_error_finding(runs):
    _, data, _, _ = runs("gan.py")
    assert ids(data, "error") == [] and data["ok"]


def test_gan_healthy_has_no_warning(runs):
    _, data, _, _ = runs("gan.py")
    assert ids(data, "warning") == []


def test_gan_a_finding_about_the_watched_optimizer_is_on_its_line(runs):
    code, data, _, _ = runs("gan.py", "adamw")
    assert code == 0 and data["info"]["optimizer"] == "AdamW"
    f = the(data, "weight-decay-on-norms")
    assert f["location"]["line"] == line_of("gan.py", "opt_d = ")


# ----------------------------------------------------------------------------- 5. DataLoader workers


@pytest.mark.parametrize("args", [(), ("spawn",)], ids=["fork", "spawn"])
def test_a_dataloader_with_two_workers_runs_and_reports_normally(runs, args):
    code, data, out, _ = runs("workers.py", *args)
    assert_healthy(code, data)
    assert data["findings"] == [] and data["info"]["optimizer_steps"] == 24 and out.startswith("done ")
    (loader,) = data["info"]["created"]["dataloader"]
    assert loader.endswith(f"workers.py:{line_of('workers.py', 'loader = ')}")


# ----------------------------------------------------------------------------- across the frameworks


def test_findings_from_the_doctor_and_the_monitor_each_keep_their_own_line(runs):
    _, data, _, _ = runs("adamw_loop.py", "nozero")
    assert the(data, "missing-zero-grad")["location"]["line"] == line_of("adamw_loop.py", "opt.step()")
    assert the(data, "weight-decay-on-norms")["location"]["line"] == line_of("adamw_loop.py", "opt = torch.optim")


def test_adamw_loop_healthy_has_only_the_weight_decay_hint(runs):
    code, data, _, _ = runs("adamw_loop.py")
    assert_healthy(code, data)
    assert ids(data) == ["weight-decay-on-norms"]
    f = the(data, "weight-decay-on-norms")
    assert f["location"]["line"] == line_of("adamw_loop.py", "opt = torch.optim")


@pytest.mark.parametrize("script, args", [
    ("hf_loop.py", ("pad",)),
    ("lightning_mlp.py", ("manual", "head")),
    ("accelerate_mlp.py", ("lr",)),
    ("gan.py", ()),
])
def test_the_scripts_own_output_is_what_python_prints(runs, script, args):
    """The doctor restores weights, gradients and RNG, and the hooks change nothing: the script ends
    with the same numbers as under plain ``python SCRIPT.py``."""
    _, _, out, _ = runs(script, *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                           timeout=300, env=env, cwd=SCRIPTS.parent)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert out.splitlines()[-1] == plain.stdout.splitlines()[-1]
