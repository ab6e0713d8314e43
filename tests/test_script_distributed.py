"""`traindoc run` under torchrun: two gloo processes, one report from rank 0, and the findings that exist
only in distributed training, each with its healthy twin (the same script without ``--bug``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from traindoc.findings import Finding
from traindoc.script.capture import Capture
from traindoc.script.distributed import REPLICA_TOLERANCE, cross_rank_findings, set_epoch_findings
from traindoc.script.ranks import others_findings

SCRIPT = Path(__file__).parent / "scripts" / "ddp_loader.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]  # a free port each


TEARDOWN_ABORT = "terminate called without an active exception"
"""What torch 2.13's gloo prints when a process aborts at exit after the script has finished (about 1 run
in 6 here, with or without traindoc, with or without destroy_process_group): a torch teardown race, so
such a run is started again (at most twice)."""


def launch(command: list[str]) -> subprocess.CompletedProcess:
    for _ in range(3):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
        if TEARDOWN_ABORT not in proc.stderr:
            return proc
    return proc


def line_of(text: str) -> int:
    return next(i for i, ln in enumerate(SCRIPT.read_text().splitlines(), 1) if text in ln)


def traced(tmp_path: Path, *script_args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "f.json"
    proc = launch([*LAUNCH, "-m", "traindoc", "run", str(SCRIPT), "--run-dir", str(tmp_path / "run"),
                   "--json", str(out), "--", *script_args])
    return proc, json.loads(out.read_text())


def done(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.startswith("done")]


@pytest.mark.slow
def test_the_healthy_script_has_no_finding_and_trains_as_it_does_plain(tmp_path):
    """``traindoc run --nproc 2``: rank 0 reports for both ranks; the other rank writes its own run
    directory; the script's result is what it is without traindoc."""
    plain = launch([*LAUNCH, str(SCRIPT)])
    out = tmp_path / "f.json"
    proc = launch([sys.executable, "-m", "traindoc", "run", "--nproc", "2", str(SCRIPT), "--run-dir",
                   str(tmp_path / "run"), "--json", str(out)])
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert done(proc.stdout) == done(plain.stdout) and done(plain.stdout)
    data = json.loads(out.read_text())
    assert data["findings"] == [], data["findings"]
    info = data["info"]
    assert info["rank"] == 0 and info["world_size"] == 2 and info["ranks_gathered"] == [0, 1]
    assert info["model"] == "Net" and "check" in info
    assert (tmp_path / "run-rank1" / "report.json").exists()
    assert proc.stderr.count("optimizer steps;") == 1  # one report, from rank 0


CASES = {
    # bug: (id, severity, the line it is on, exit code)
    "same-data": ("ddp-same-data", "error", "loader = DataLoader(dataset, batch_size=32, shuffle=True)", 0),
    "no-set-epoch": ("ddp-set-epoch-missing", "warning", "for xb, yb in loader:", 0),
    "raw-module": ("ddp-wrapper-bypassed", "error", "logits = model.module(xb)", 0),
    "unused": ("ddp-unused-parameters", "error", "model = net if", 1),
    "no-ddp": ("ddp-replicas-diverged", "warning", "logits = model.module(xb)", 0),  # the model call's line
}


@pytest.mark.slow
@pytest.mark.parametrize("bug", list(CASES))
def test_each_distributed_bug_is_found_on_its_line(tmp_path, bug):
    fid, severity, text, code = CASES[bug]
    proc, data = traced(tmp_path, "--bug", bug)
    assert proc.returncode == code, proc.stderr[-3000:]
    found = [f for f in data["findings"] if f["id"].startswith("ddp-")]
    assert [(f["id"], f["severity"]) for f in found] == [(fid, severity)], data["findings"]
    assert found[0]["location"]["line"] == line_of(text)
    assert data["info"]["ranks_gathered"] == [0, 1]
    evidence = found[0]["evidence"]
    if bug == "raw-module":  # the replicas' weights at the end confirm it
        assert evidence["replicas_at_the_end"]["ranks_differing_from_rank_0"] == [1]
    if bug == "unused":
        assert evidence["parameters"] == ["spare.weight", "spare.bias"]
        assert proc.stderr.count("optimizer step;") == 1  # rank 0 reported before torchrun stopped the job
    if bug == "same-data":
        assert evidence["batches_compared"] == 8 and evidence["samplers"] == ["RandomSampler"]


# --------------------------------------------------------------------------- the judges, on records


def record(batches, start, end, *, steps=10, ddp=True, crashed=False, **more):
    return {"batches": batches, "params_start": start, "params_end": end, "steps": steps, "ddp": ddp,
            "crashed": crashed, "process_group": True, "wrapped_by": "torch", **more}


W0 = {"w": [1.0, 2.0, 4.0], "b": [0.5, 0.5, 1.0]}
W1 = {"w": [1.1, 2.05, 4.0], "b": [0.5, 0.5, 1.0]}


def test_equal_batches_on_every_rank_are_same_data_and_different_ones_are_not():
    same = cross_rank_findings({0: record([1.0, 2.0, 3.0], W0, W0), 1: record([1.0, 2.0, 3.0], W0, W0)},
                               bypassed=None)
    assert [f.id for f in same] == ["ddp-same-data"] and same[0].evidence["batches_compared"] == 3
    one_equal = {0: record([1.0, 2.0, 3.0], W0, W0), 1: record([1.0, 2.5, 3.5], W0, W0)}
    assert cross_rank_findings(one_equal, bypassed=None) == []
    too_few = {0: record([1.0], W0, W0), 1: record([1.0], W0, W0)}
    assert cross_rank_findings(too_few, bypassed=None) == []


def test_the_same_data_fix_follows_what_the_processes_did():
    def fix(**how):
        ranks = {0: record([1.0, 2.0], W0, W0, **how), 1: record([1.0, 2.0], W0, W0, **how)}
        (f,) = cross_rank_findings(ranks, bypassed=None)
        return f.fix

    assert "DistributedSampler(dataset" in fix()
    assert "accelerator.prepare" in fix(wrapped_by="accelerate")  # the DataLoader left out of prepare
    assert "ACCELERATE_USE_CPU" in fix(wrapped_by="", accelerate={"distributed_type": "NO", "num_processes": 1})
    assert "init_process_group" in fix(process_group=False, wrapped_by="")


def test_replicas_that_drift_apart_are_an_error_under_ddp_and_a_warning_without_it():
    ranks = {0: record([1.0, 2.0], W0, W0), 1: record([3.0, 4.0], W0, W1)}
    (f,) = cross_rank_findings(ranks, bypassed=None)
    assert (f.id, f.severity) == ("ddp-replicas-diverged", "error")
    assert list(f.evidence["largest_relative_differences"]) == ["w"]
    ranks[0]["ddp"] = False
    assert cross_rank_findings(ranks, bypassed=None)[0].severity == "warning"


def test_replicas_are_not_judged_when_they_started_different_ran_different_steps_or_crashed():
    started_apart = {0: record([1.0, 2.0], W0, W0), 1: record([3.0, 4.0], W1, W1)}  # tensor-parallel shards
    assert cross_rank_findings(started_apart, bypassed=None) == []
    other_steps = {0: record([1.0, 2.0], W0, W0), 1: record([3.0, 4.0], W0, W1, steps=9)}
    assert cross_rank_findings(other_steps, bypassed=None) == []
    crashed = {0: record([1.0, 2.0], W0, W0), 1: record([3.0, 4.0], W0, W1, crashed=True)}
    assert cross_rank_findings(crashed, bypassed=None) == []
    within = {"w": [1.0 + REPLICA_TOLERANCE, 2.0, 4.0], "b": [0.5, 0.5, 1.0]}  # rounding, not drift
    assert cross_rank_findings({0: record([1.0, 2.0], W0, W0), 1: record([3.0, 4.0], W0, within)},
                               bypassed=None) == []


def test_a_bypassed_wrapper_takes_the_divergence_as_its_evidence():
    bypassed = Finding("ddp-wrapper-bypassed", "error", "t", {}, "f")
    ranks = {0: record([1.0, 2.0], W0, W0, ddp=False), 1: record([3.0, 4.0], W0, W1, ddp=False)}
    assert cross_rank_findings(ranks, bypassed=bypassed) == []
    assert bypassed.evidence["replicas_at_the_end"]["parameters_differing"] == 1


def test_findings_only_another_rank_proved_are_added_with_their_rank():
    f = Finding("label-out-of-range", "error", "Targets [7] are outside", {}, "fix")
    g = Finding("loss-spike", "warning", "spike", {}, "fix")
    records = {0: {"findings": []}, 1: {"findings": [{"finding": f.to_dict(), "location": ["/x/t.py", 3, "m", "c"]},
                                                     {"finding": g.to_dict(), "location": None}]}}
    added = others_findings(records, {("loss-spike", "spike")})
    assert [(a.id, a.evidence["rank"], loc) for a, loc in added] == [("label-out-of-range", 1, ["/x/t.py", 3, "m", "c"])]


def test_a_distributed_sampler_iterated_twice_at_one_epoch_is_found_and_set_epoch_clears_it():
    data = TensorDataset(torch.arange(16.0))

    def epochs(call_set_epoch: bool, shuffle: bool = True) -> list[Finding]:
        capture = Capture(on_step=lambda o: None, on_step_end=lambda o: None, on_backward=lambda t: None,
                          on_batch=lambda c: None)
        capture.install()
        try:
            sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=shuffle)
            loader = DataLoader(data, batch_size=4, sampler=sampler)
            for epoch in range(2):
                if call_set_epoch:
                    sampler.set_epoch(epoch)
                for _ in loader:
                    pass
        finally:
            capture.remove()
        return set_epoch_findings(capture.seen)

    (f,) = epochs(False)
    assert (f.id, f.severity, f.evidence["iterations"]) == ("ddp-set-epoch-missing", "warning", 2)
    assert epochs(True) == []
    assert epochs(False, shuffle=False) == []  # no shuffle: one order is what it asks for


def test_a_loop_calling_a_part_of_the_wrapped_model_bypasses_ddp():
    """``ddp.module.encoder(x)``: the model trained is a submodule of what DDP wraps; its wrapper is found
    and the call is the bypass."""
    from traindoc.script.capture import Seen
    from traindoc.script.distributed import bypass_finding, wrapper_of

    inner = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    wrapper = torch.nn.Module()
    wrapper.module = inner  # what DistributedDataParallel holds
    seen = Seen()
    seen.created["ddp"] = [(lambda: wrapper, None)]
    assert wrapper_of(inner[0], seen) is wrapper and wrapper_of(torch.nn.Linear(4, 4), seen) is None
    assert bypass_finding(inner[0], inner[0], seen).id == "ddp-wrapper-bypassed"
    assert bypass_finding(inner, wrapper, seen) is None  # the wrapper itself was called


@pytest.mark.parametrize("declared", [True, False])
def test_find_unused_parameters_declares_the_unused_ones(declared):
    from traindoc.script.distributed import declared_unused

    wrapper = torch.nn.Module()
    wrapper.find_unused_parameters = declared
    unused = Finding("no-grad-params", "error", "2 of 12 trainable parameters get no gradient from the loss",
                     {"gradient": "None (not reached by the loss's graph)"})
    zero = Finding("no-grad-params", "error", "all-zero gradient", {"gradient": "exactly zero everywhere"})
    out = declared_unused([unused, zero], wrapper)
    assert [f.severity for f in out] == (["hint", "error"] if declared else ["error", "error"])
    assert declared_unused([unused], None) == [unused]
