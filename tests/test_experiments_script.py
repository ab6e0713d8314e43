"""The guided experiments on unmodified scripts (`traindoc tune ...`, `traindoc overfit`): each trial a
bounded `traindoc run` with the setting changed through hooks; the JSON contract; the lines named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traindoc.cli import main

SCRIPTS = Path(__file__).parent / "scripts"


def experiment(tmp_path: Path, *argv: str) -> tuple[int, dict]:
    out = tmp_path / "result.json"
    cut = argv.index("--") if "--" in argv else len(argv)
    code = main([*argv[:cut], "--json", str(out), "--trials-dir", str(tmp_path / "trials"), *argv[cut:]])
    return code, json.loads(out.read_text()) if out.exists() else {}


def line_of(script: str, code: str) -> int:
    return next(i for i, ln in enumerate((SCRIPTS / script).read_text().splitlines(), 1) if ln.startswith(code))


@pytest.mark.slow
def test_tune_lr_on_a_script_with_a_far_too_high_lr(tmp_path):
    code, data = experiment(tmp_path, "tune", "lr", str(SCRIPTS / "accelerate_mlp.py"), "--max-steps", "24",
                            "--trials", "4", "--seeds", "1", "--planned-steps", "48", "--jobs", "2", "--", "lr")
    assert code == 0
    assert data["version"] == 1 and data["experiment"] == "lr"
    r = data["result"]
    assert isinstance(r["suggested_lr"], float) and r["lr_range"][0] <= r["suggested_lr"] <= r["lr_range"][1]
    assert r["unstable_lr"] is not None and r["lr_range"][1] * 3 < 1.0  # the script's AdamW lr=1.0 is far above
    (f,) = data["findings"]
    assert f["id"] == "lr-too-high" and f["location"]["line"] == line_of("accelerate_mlp.py", "opt = torch.optim.AdamW(")
    assert data["info"]["user_lr"] == 1.0 and data["info"]["trial_runs"] == 1 + 6


@pytest.mark.slow
def test_overfit_a_healthy_script_and_its_broken_twin(tmp_path):
    code, healthy = experiment(tmp_path / "a", "overfit", str(SCRIPTS / "overfit_loop.py"), "--max-steps", "120")
    assert code == 0 and healthy["result"]["reached"] and healthy["findings"] == []
    code, broken = experiment(tmp_path / "b", "overfit", str(SCRIPTS / "overfit_loop.py"), "--max-steps", "60",
                              "--", "detach")
    (f,) = broken["findings"]
    assert (f["id"], f["severity"], f["evidence"]["diagnosis"]) == ("cannot-overfit-batch", "error", "broken-setup")
    assert f["evidence"]["proved"] == ["no-grad-params"] and "no gradient" in f["evidence"]["cause"]
    assert f["location"]["line"] == line_of("overfit_loop.py", "        loss = F.cross_entropy(model(xb), yb)")  # the doctor's line


def test_overfit_on_a_script_without_a_dataloader_is_one_clear_message(tmp_path, capsys):
    code, _ = experiment(tmp_path, "overfit", str(SCRIPTS / "overfit_loop.py"), "--max-steps", "5", "--", "nodata")
    assert code == 2
    err = capsys.readouterr().err
    assert "DataLoader" in err and "Traceback" not in err


@pytest.mark.slow
def test_tune_warmup_and_clip_on_a_script(tmp_path):
    code, warm = experiment(tmp_path / "w", "tune", "warmup", str(SCRIPTS / "overfit_loop.py"),
                            "--planned-steps", "100", "--max-steps", "30", "--jobs", "2")
    assert code == 0 and warm["result"]["warmup_steps"] == 0 and warm["result"]["tried"] == [0, 1, 10]
    code, clip = experiment(tmp_path / "c", "tune", "clip", str(SCRIPTS / "overfit_loop.py"), "--max-steps", "30")
    assert code == 0 and clip["result"]["steps"] == 30 and clip["result"]["threshold"] > 0


def test_a_missing_script_is_one_message(tmp_path, capsys):
    assert main(["tune", "lr", str(tmp_path / "nope.py")]) == 2
    assert "not a file" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_fix_verifies_a_setting_on_the_script(tmp_path):
    code, data = experiment(tmp_path, "tune", "fix", str(SCRIPTS / "overfit_loop.py"), "--lr", "0.03",
                            "--max-steps", "40", "--seeds", "1")
    assert code == 0 and data["experiment"] == "fix"
    r = data["result"]
    assert r["change"] == {"lr": 0.03} and r["helped"] and r["loss_after"] < r["loss_before"]
    assert set(data["curves"]) == {"before", "after"}


def test_tune_fix_needs_a_change(tmp_path, capsys):
    assert main(["tune", "fix", str(SCRIPTS / "overfit_loop.py")]) == 2
    assert "--lr" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_fix_ignore_index_scores_both_arms_on_the_real_targets(tmp_path):
    code, data = experiment(tmp_path, "tune", "fix", str(SCRIPTS / "hf_loop.py"), "--ignore-index", "0",
                            "--max-steps", "12", "--seeds", "1", "--jobs", "2", "--", "pad")
    assert code == 0 and data["result"]["change"] == {"ignore_index": 0}
    assert data["result"]["baseline"] == {"score_ignore_index": 0}
    before, after = data["curves"]["before"], data["curves"]["after"]
    assert len(before["losses"]) == len(after["losses"]) == 12
    assert data["result"]["verdict"] in ("helped", "did not help", "made it worse")


@pytest.mark.slow
def test_tune_fix_scheduler_per_step_helps_a_warmup_stepped_per_epoch_and_not_its_healthy_twin(tmp_path):
    verdicts = {}
    for bug in ("sched-epoch", None):
        code, data = experiment(tmp_path / str(bug), "tune", "fix", str(SCRIPTS / "overfit_loop.py"),
                                "--scheduler-per-step", "--max-steps", "40", "--seeds", "1", "--jobs", "2",
                                *(("--", bug) if bug else ()))
        assert code == 0
        verdicts[bug] = data["result"]
    assert verdicts["sched-epoch"]["helped"]
    assert verdicts[None]["verdict"] == "did not help"
    assert verdicts[None]["loss_before"] == pytest.approx(verdicts[None]["loss_after"])
