"""Each streaming detector fires through the real `traindoc.watch` on a tiny run with its bug, and
stays quiet on the healthy twin.

The runs come from `detector_runs.py`: small models trained for real inside `traindoc.watch` with
the default detectors, so a detector is judged on what the monitor measures (hooks, flushes,
`StepRecord`s), not on statistics a test helper recomputes. Every bug run is one `RunConfig` field
away from its twin; the healthy runs give no finding at all. No detector option is changed: every
default window fits in these runs. Each finding's fix is checked on the setup it was proved on:
the advice that is right for it is there, the advice that is wrong for it is not, and nothing is
said twice.

Where the monitor does not give a detector what it needs, the test says how it should behave and is
marked ``xfail(strict=True)`` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from detector_runs import (
    HEALTHY,
    HEALTHY_ACCUM,
    HEALTHY_CLIPPED,
    HEALTHY_COSINE,
    HEALTHY_DEEP,
    HEALTHY_EPOCHS,
    HEALTHY_LM,
    HEALTHY_LONG,
    HEALTHY_NOISY,
    HEALTHY_RUNS,
    HEALTHY_TEXT_LM,
    Run,
    RunConfig,
    bug,
    clip_grad_norm_imported_early,
    run,
)
from traindoc.catalog import CATALOG, entry
from traindoc.findings import Finding
from traindoc.monitor.detectors import DETECTOR_TYPES, default_detectors

# --------------------------------------------------------------------------- twins and bugs
NAN_AT = 60
SPIKE_AT = 150
VALIDATE_EVERY = 20
DIVERGE_TWIN = bug(optimizer="sgd", lr=0.05, activation="tanh")
SGD_TWIN = bug(optimizer="sgd", lr=0.05)
EXPLODE_TWIN = bug(depth=30, hidden=32, activation="tanh", init_gain=1.0, steps=30)  # critical init
REGRESSION_TWIN = bug(task="regression", depth=0, optimizer="sgd", lr=0.1, steps=100)  # linear regression
ZERO_GRAD_TWIN = bug(optimizer="sgd", lr=0.01)
STALE_UNKNOWN_TWIN = bug(ZERO_GRAD_TWIN, unused_scalar=True)  # the watch's staleness probe never fires
ACCUM_VARYING_TWIN = bug(accumulation=(1, 2, 4, 8), steps=120)
VALIDATED_TWIN = bug(validate_every=VALIDATE_EVERY)

NAN_BUG = bug(nan_at=NAN_AT)  # one batch holds a NaN; Adam spreads it into every weight
LR_LOW_BUG = bug(SGD_TWIN, lr=1e-5)
LR_HIGH_SGD_BUG = bug(SGD_TWIN, lr=2.0)  # every step rewrites > 10% of the weights
SGD_ACCUM_TWIN = bug(SGD_TWIN, lr=0.3, accumulation=(8,))  # 8 micro-batches per step, each loss divided by 8
SCHEDULE_TWIN = bug(schedule="warmup-cosine", warmup=20)  # 200 steps: warmup, then cosine to 0 at the end


@dataclass(frozen=True)
class Case:
    id: str
    bug: RunConfig
    twin: RunConfig
    severity: str
    check: Callable[[Finding, Run], None]
    name: str = ""

    def __str__(self) -> str:
        return f"{self.id}-{self.name}" if self.name else self.id


def scalars(r: Run) -> list[dict]:
    rows = r.data.scalars
    assert [s["step"] for s in rows] == list(range(r.config.steps))  # one line per step, in order
    return rows


# ------------------------------------------------------------- what each finding's evidence says
def check_nan_loss(f: Finding, r: Run) -> None:
    rows = scalars(r)
    assert f.evidence["step"] == NAN_AT
    assert math.isfinite(rows[NAN_AT - 1]["loss"]) and rows[NAN_AT - 1]["nonfinite_grads"] == 0
    assert math.isnan(rows[NAN_AT]["loss"])
    assert f.evidence["count"] == rows[NAN_AT]["nonfinite_grads"] > 0
    assert f.evidence["first_nonfinite_param"] == rows[NAN_AT]["first_nonfinite_param"] == "body.0.weight"


def check_divergence_nonfinite(f: Finding, r: Run) -> None:
    assert f.evidence["step"] == NAN_AT  # the NaN weights never recover
    assert f.evidence["window"] == f.evidence["threshold"] == 10
    # a NaN batch, not the LR: the weights must be restored, lowering the LR repairs nothing
    assert f"checkpoint taken before step {NAN_AT}" in f.fix and "Lower the LR" not in f.fix


def check_divergence(f: Finding, r: Run) -> None:
    assert f.evidence["step"] < 10  # SGD at LR 10 blows up at once
    assert f.evidence["value"] > f.evidence["threshold"] > f.evidence["best_median"]
    assert f.evidence["sustained_steps"] == 25
    assert f.fix.startswith("Lower the LR from 10 to ~1,") and "checkpoint" not in f.fix


def check_loss_spike(f: Finding, r: Run) -> None:
    assert f.evidence["step"] == SPIKE_AT
    assert f.evidence["value"] > 5 * f.evidence["median"]
    shard = [s["loss"] for s in scalars(r)[SPIKE_AT:SPIKE_AT + 3]]
    assert f.evidence["losses"] == pytest.approx(shard)  # the three batches of the bad shard
    assert f.fix.startswith(f"Look at the batches of steps {SPIKE_AT}-{SPIKE_AT + 2} first")


def check_loss_plateau(f: Finding, r: Run) -> None:
    ev = f.evidence
    assert ev["value"] < 0.9 * math.log(10)  # learned the class prior, then stuck
    assert ev["fraction_of_start"] >= 2 / 3 and ev["threshold"] == 0.05
    assert ev["window"] == 2 * ev["block"] and ev["block"] >= ev["steps_seen"] // 4  # the last half, at least
    start = ev["blocks_start"]
    assert ev["step"] <= start and ev["last_step"] == start + ev["window"] - 1  # flat since, and the last blocks
    losses = [s["loss"] for s in scalars(r)][start:start + ev["window"]]  # the two blocks it judged
    old, new = statistics.median(losses[:ev["block"]]), statistics.median(losses[ev["block"]:])
    assert (old, new) == pytest.approx((ev["earlier_median"], ev["value"]))
    assert (old - new) * ev["steps_seen"] / ev["block"] < 0.05 * old
    assert ev["last_step"] < 300  # the fixed 300 + 50-step windows needed until step ~364


def check_loss_at_chance(f: Finding, r: Run) -> None:
    assert f.evidence["num_classes"] == 10  # guessed by the watch from the head's out_features
    assert abs(f.evidence["value"] - math.log(10)) < 0.05 * math.log(10)
    assert f.evidence["step"] >= r.config.warmup  # never judged during the LR warmup
    assert f.evidence["last_step"] <= 100  # a blind model is named within ~100 steps (it was 348)
    assert "traindoc.check" in f.fix


def check_vanishing(f: Finding, r: Run) -> None:
    assert f.evidence["step"] % r.config.every == 0  # a step with per-layer statistics
    assert f.evidence["first_layers"][0] == "body.0" and f.evidence["last_layers"][-1] == "head"
    assert f.evidence["first_median_grad_norm"] < 1e-3 * f.evidence["last_median_grad_norm"]
    assert f.evidence["threshold"] == 1e-3 and f.evidence["window"] >= 3
    assert "non-saturating activation" in f.fix and "LR" not in f.fix


def check_exploding_depth(f: Finding, r: Run) -> None:
    assert f.evidence["basis"] == "per-layer gradient norms across depth"
    assert f.evidence["first_layers"][0] == "body.0"
    assert f.evidence["value"] > f.evidence["threshold"] == 1e3
    # the init (gain 5) amplifies the signal through depth: an init fix, not an LR or clipping one
    assert "variance-preserving init" in f.fix and "LR" not in f.fix and "clipping would only hide it" in f.fix


def check_exploding_time(f: Finding, r: Run) -> None:
    assert f.evidence["basis"] == "global gradient norm over steps"
    step = f.evidence["step"]
    norms = [s["grad_norm"] for s in scalars(r)[step - 9:step + 1]]
    assert f.evidence["value"] == pytest.approx(statistics.median(norms))  # the watch's pre-step norms
    assert f.evidence["value"] > f.evidence["threshold"] == pytest.approx(1e3 * f.evidence["min_median"])
    assert "Lower it from 0.9 to ~0.09" in f.fix and "init" not in f.fix


def check_stalled_head(f: Finding, r: Run) -> None:
    assert list(f.evidence["layers"]) == ["head"]
    head = f.evidence["layers"]["head"]
    assert head["median_ratio"] == 0.0 and head["grad_norm"] > 0  # gets gradients, never moves
    assert f.evidence["moving_layers_median_ratio"] > 1e-4
    assert f.evidence["threshold"] == 1e-6 and f.evidence["step"] >= 20
    assert head["param_groups"] == [1] and head["lr"] == 0.0
    assert "param group 1 of the optimizer has LR 0" in f.fix and "give it a real LR" in f.fix
    assert "no gradient" not in f.fix  # it gets one


def check_stalled_unused(f: Finding, r: Run) -> None:
    assert list(f.evidence["layers"]) == ["aux"]
    assert f.evidence["layers"]["aux"]["grad_norm"] == 0  # not connected to the loss
    assert "used by the loss" in f.fix
    assert " LR" not in f.fix  # no LR makes a layer with no gradient move


def check_lr_too_low(f: Finding, r: Run) -> None:
    assert f.evidence["lr"] == 1e-5
    assert f.evidence["value"] < f.evidence["threshold"] == 1e-5
    assert abs(f.evidence["loss_progress"]) < 0.01
    assert f.evidence["last_step"] - f.evidence["step"] >= 50
    assert f.fix.startswith("Raise the LR from 1e-05") and "Lower" not in f.fix


def check_lr_too_high_adam(f: Finding, r: Run) -> None:
    assert f.evidence["reason"] == "weights inflated by large updates"
    assert f.evidence["value"] > f.evidence["threshold"] == 10
    assert f.fix.startswith("Lower the LR from 1: try 0.1 (10x lower)")  # the LR it saw, and the one to try
    assert "fine-tuning" not in f.fix  # a model trained from scratch
    assert "backward passes" not in f.fix  # no accumulation here


def check_lr_too_high_summed_accumulation(f: Finding, r: Run) -> None:
    assert f.evidence["lr"] == 0.3 and all(s["backward_calls"] == 8 for s in scalars(r))
    # the right fix first: dividing the summed loss by 8 gives the twin, which trains fine at this LR
    assert f.fix.startswith("Each step accumulates 8 backward passes")
    assert "divide each micro-batch loss by 8" in f.fix and "Otherwise: lower the LR from 0.3" in f.fix


def check_lr_too_high_sgd(f: Finding, r: Run) -> None:
    assert f.evidence["reason"] == "update ratio > 0.1"
    assert all(x > 0.1 for x in f.evidence["update_ratios"])
    assert f.evidence["last_step"] - f.evidence["step"] >= 5


def check_missing_zero_grad(f: Finding, r: Run) -> None:
    rows = scalars(r)
    assert rows[0]["grad_was_stale"] is False  # the first step starts from no gradient
    checked = [s["grad_was_stale"] for s in rows[1:] if s["grad_was_stale"] is not None]
    assert len(checked) >= 3 and all(checked)  # every checked step (the first ones, then every K-th)
    assert f.evidence["step"] == 1 and f.evidence["threshold"] == 3
    assert f.fix.count("zero_grad") == 1  # said once


def check_missing_zero_grad_unknown(f: Finding, r: Run) -> None:
    assert all(s["grad_was_stale"] is None for s in scalars(r))  # the watch could not tell
    assert f.evidence["step"] == 0 and f.evidence["window"] == 20
    assert f.evidence["rising_fraction"] >= 0.9 and f.evidence["value"] >= f.evidence["threshold"] == 5


def check_scheduler(f: Finding, r: Run) -> None:
    ev = f.evidence
    lrs = [s["lr"][0] for s in scalars(r)]
    peak_at = r.config.warmup if r.config.schedule == "warmup-steplr-per-batch" else 0
    assert ev["peak_step"] == peak_at - (peak_at > 0) and ev["peak_lr"] == max(lrs)
    assert ev["drop_step"] == peak_at + 4  # 0.5 ** 4 < 0.1
    assert ev["rule"] == "collapsed" and ev["step"] == ev["collapse_step"] == peak_at + 10  # 0.5 ** 10 < 1e-3
    assert lrs[ev["collapse_step"]] < 1e-3 * ev["peak_lr"] <= lrs[ev["collapse_step"] - 1]
    reported_at = ev["window"] - 1
    assert reported_at - ev["collapse_step"] <= 10  # within a few steps of the collapse
    assert ev["lr_change_fraction_before_drop"] > 0.9  # the LR changes on (almost) every step
    assert "once per epoch" in f.fix


def check_clipping(f: Finding, r: Run) -> None:
    rows = scalars(r)[f.evidence["first_step"]:f.evidence["step"] + 1]
    assert len(rows) == f.evidence["window"] == 100 and f.evidence["first_step"] == 10  # the first 10 left out
    hard = [s["grad_norm"] > 1.25 * s["clip_threshold"] for s in rows]  # clipped by more than 20%
    assert f.evidence["clipped_fraction"] == sum(hard) / len(rows) > 0.5
    norms = [s["grad_norm"] for s in rows]  # pre-clip, as the watch saw them in clip_grad_norm_
    assert min(norms) <= f.evidence["suggested_clip_threshold"] <= max(norms)
    assert f.evidence["clip_threshold"] == 0.05 and "Lower the learning rate" in f.fix
    assert f.fix.count("Lower the learning rate") == 1


def check_grad_accum(modal: int) -> Callable[[Finding, Run], None]:
    def check(f: Finding, r: Run) -> None:
        cycle = r.config.accumulation
        assert [s["backward_calls"] for s in scalars(r)] == [cycle[i % len(cycle)] for i in range(r.config.steps)]
        assert f.evidence["modal_backward_calls"] == modal
        assert f.evidence["value"] > f.evidence["threshold"] == 0.35  # summed: norm ~ k^(0.5..1)
        assert f.fix.startswith("Divide each micro-batch loss by the number of micro-batches")
        assert "Lower" not in f.fix  # the LR is not the problem
    return check


def check_train_mode(f: Finding, r: Run) -> None:
    assert f.evidence["step"] == VALIDATE_EVERY and f.evidence["trained_in_train_mode_before"]
    modes = [s["train_mode"] for s in scalars(r)]
    assert modes == [True] * VALIDATE_EVERY + [False] * (r.config.steps - VALIDATE_EVERY)
    assert f.fix.startswith("Call `model.train()` right after each evaluation")


def check_repeated_batch(f: Finding, r: Run) -> None:
    rows = scalars(r)
    assert f.evidence["step"] == 0 and f.evidence["repeats"] == f.evidence["threshold"] == 8
    assert len({s["batch_fingerprint"] for s in rows}) == 1  # the watch saw one batch all along


def check_params_outside(f: Finding, r: Run) -> None:
    assert f.evidence["modules"] == ["head"] and f.evidence["steps"] == r.config.steps
    assert set(f.evidence["parameters"]) == set(f.evidence["receiving_gradients"]) == {"head.weight", "head.bias"}
    # said at the first flush, after one step, as a warning; proved at close, replacing it
    early, final = [x for x in r.data.findings if x["id"] == "params-not-in-optimizer"]
    assert (early["severity"], early["evidence"]["step"], early["evidence"]["checked_steps"]) == ("warning", 0, 1)
    assert (final["severity"], f.evidence["first_reported_step"]) == ("error", 0)
    assert r.report.info["withdrawn_findings"] == ["params-not-in-optimizer"]
    assert "add_param_group({'params': model.head.parameters()})" in f.fix


def check_loss_collapse(f: Finding, r: Run) -> None:
    ev = f.evidence
    losses = [s["loss"] for s in scalars(r)]
    assert ev["value"] == pytest.approx(statistics.median(losses[ev["step"] - 19:ev["step"] + 1]))
    assert ev["value"] < ev["threshold"] == pytest.approx(0.01 * math.log(128))
    assert statistics.median(losses[:3]) > 0.5 * math.log(128)  # it started near chance
    assert ev["step"] < 100 and ev["batches_logged"] == ev["steps"] and ev["batches_seen_before"] == 0
    assert "traindoc.check" in f.fix and "labels-not-shifted" in f.fix


CASES = [
    Case("repeated-batch", bug(HEALTHY_EPOCHS, epoch_batches=1), HEALTHY_EPOCHS, "warning", check_repeated_batch),
    Case("params-not-in-optimizer", bug(head_outside_optimizer=True), HEALTHY, "error", check_params_outside),
    Case("nan-loss", NAN_BUG, HEALTHY, "error", check_nan_loss),
    Case("divergence", NAN_BUG, HEALTHY, "error", check_divergence_nonfinite, "nonfinite"),
    Case("divergence", bug(DIVERGE_TWIN, lr=10.0), DIVERGE_TWIN, "warning", check_divergence, "loss-rising"),
    Case("loss-spike", bug(bad_shard=(SPIKE_AT, SPIKE_AT + 3)), HEALTHY, "warning", check_loss_spike),
    Case("loss-plateau", bug(HEALTHY_LONG, task="blind-skewed"), HEALTHY_LONG, "warning", check_loss_plateau),
    Case("loss-at-chance", bug(HEALTHY_LONG, task="blind"), HEALTHY_LONG, "warning", check_loss_at_chance),
    Case("vanishing-gradients", bug(HEALTHY_DEEP, activation="sigmoid"), HEALTHY_DEEP, "warning",
         check_vanishing),
    Case("exploding-gradients", bug(EXPLODE_TWIN, init_gain=5.0), EXPLODE_TWIN, "warning",
         check_exploding_depth, "depth"),
    Case("exploding-gradients", bug(REGRESSION_TWIN, lr=0.9), REGRESSION_TWIN, "warning",  # lr > 2 / curvature
         check_exploding_time, "time"),
    Case("stalled-layers", bug(head_lr=0.0), HEALTHY, "warning", check_stalled_head, "head-lr-0"),
    Case("stalled-layers", bug(unused_layer=True), HEALTHY, "warning", check_stalled_unused, "unused"),
    Case("stalled-layers", bug(HEALTHY_LM, head_lr=0.0), HEALTHY_LM, "warning", check_stalled_head, "transformer"),
    Case("lr-too-low", LR_LOW_BUG, SGD_TWIN, "warning", check_lr_too_low),
    Case("lr-too-high", bug(lr=1.0), HEALTHY, "warning", check_lr_too_high_adam, "adam"),
    Case("lr-too-high", LR_HIGH_SGD_BUG, SGD_TWIN, "warning", check_lr_too_high_sgd, "sgd"),
    Case("lr-too-high", bug(SGD_ACCUM_TWIN, accum_normalization="sum"), SGD_ACCUM_TWIN, "warning",
         check_lr_too_high_summed_accumulation, "summed-accumulation"),
    Case("missing-zero-grad", bug(ZERO_GRAD_TWIN, zero_grad=False), ZERO_GRAD_TWIN, "error",
         check_missing_zero_grad),
    Case("missing-zero-grad", bug(STALE_UNKNOWN_TWIN, zero_grad=False), STALE_UNKNOWN_TWIN, "warning",
         check_missing_zero_grad_unknown, "stale-unknown"),
    Case("scheduler-misuse", bug(HEALTHY_COSINE, schedule="steplr-per-batch"), HEALTHY_COSINE, "warning",
         check_scheduler),
    Case("scheduler-misuse", bug(SCHEDULE_TWIN, schedule="warmup-steplr-per-batch"), SCHEDULE_TWIN, "warning",
         check_scheduler, "after-warmup"),
    Case("loss-collapse", bug(HEALTHY_TEXT_LM, leak_targets=True), HEALTHY_TEXT_LM, "warning", check_loss_collapse),
    Case("aggressive-clipping", bug(HEALTHY_CLIPPED, clip=0.05), HEALTHY_CLIPPED, "warning", check_clipping),
    Case("grad-accum-normalization", bug(HEALTHY_ACCUM, accum_normalization="sum"), HEALTHY_ACCUM, "warning",
         check_grad_accum(modal=4), "short-last-group"),
    Case("grad-accum-normalization", bug(ACCUM_VARYING_TWIN, accum_normalization="sum"), ACCUM_VARYING_TWIN,
         "warning", check_grad_accum(modal=1), "varying"),
    Case("train-mode-off", bug(VALIDATED_TWIN, train_after_validation=False), VALIDATED_TWIN, "warning",
         check_train_mode),
]


# ------------------------------------------------------------------ positive and negative
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fires_on_the_bug(case):
    r = run(case.bug)
    f = r.only(case.id)
    assert f.severity == case.severity
    for key in ("step", "value", "threshold", "window"):
        assert key in f.evidence, f"{case.id} evidence lacks {key}: {f.evidence}"
    assert f.fix and f.title
    json.dumps(f.to_dict(), allow_nan=False)
    written = [x for x in r.data.findings if x["id"] == case.id]  # findings.jsonl in the run directory
    assert (written[-1]["evidence"]["step"], written[-1]["severity"]) == (f.evidence["step"], f.severity)
    assert len(written) - 1 == r.report.info.get("withdrawn_findings", []).count(case.id)  # earlier ones replaced
    case.check(f, r)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_fix_is_said_once(case):
    """The detector's own fix alone when it has one (not followed by the catalog's generic text), and
    no sentence of it twice."""
    f = run(case.bug).only(case.id)
    sentences = [x.strip() for x in f.fix.replace("; ", ". ").split(". ") if x.strip()]
    assert len(sentences) == len(set(sentences)), f.fix
    generic = entry(case.id).fix
    assert f.fix == generic or generic not in f.fix


@pytest.mark.parametrize("case", CASES, ids=str)
def test_quiet_on_the_healthy_twin(case):
    assert case.id not in run(case.twin).ids


@pytest.mark.parametrize("name", sorted(HEALTHY_RUNS))
def test_no_finding_at_all_on_a_healthy_run(name):
    report = run(HEALTHY_RUNS[name]).report
    assert report.findings == [], [f"{f.id}: {f.title}" for f in report]


@pytest.mark.parametrize("twin", [STALE_UNKNOWN_TWIN, bug(HEALTHY_NOISY, unused_scalar=True)],
                         ids=["sgd", "noisy-sgd"])
def test_stale_unknown_twins_learn_and_only_the_unused_scalar_is_reported(twin):
    """The twins of the heuristic missing-zero-grad case: the watch cannot tell staleness (its probe
    parameter never gets a gradient), the gradient norm of fresh mini-batches goes up and down."""
    r = run(twin)
    assert all(s["grad_was_stale"] is None for s in scalars(r))
    assert r.ids == ["stalled-layers"] and list(r.only("stalled-layers").evidence["layers"]) == ["(root)"]


def test_every_detector_id_has_a_case():
    ids = {i for cls in DETECTOR_TYPES.values() for i in cls.ids}
    assert {c.id for c in CASES} == ids
    assert all(i in CATALOG for i in ids)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_bug_is_one_field_away_from_its_twin(case):
    changed = [f.name for f in dataclasses.fields(RunConfig)
               if getattr(case.bug, f.name) != getattr(case.twin, f.name)]
    assert len(changed) == 1, changed


def test_each_id_is_reported_at_most_once_per_run():
    for case in CASES:
        found = run(case.bug).ids
        assert len(found) == len(set(found)), (str(case), found)


# ------------------------------------------------------------------ the twins are what they claim
def test_noisy_twin_is_noisy_and_learning_and_has_no_spike():
    """Batches of 4 have single-step outliers far above the median; none lasts 3 steps."""
    losses = [s["loss"] for s in scalars(run(HEALTHY_NOISY))]
    median = statistics.median(losses)
    assert max(losses) > 2 * median  # the run really is noisy
    assert statistics.median(losses[-50:]) < 0.7 * statistics.median(losses[:50])  # and learns
    assert "loss-spike" not in run(HEALTHY_NOISY).ids


def test_cosine_twin_has_warmup_and_decays_to_zero():
    lrs = [s["lr"][0] for s in scalars(run(HEALTHY_COSINE))]
    assert lrs[0] < lrs[29] and lrs[-1] < 0.01 * max(lrs)


def test_memorising_a_small_dataset_collapses_the_loss_and_is_not_a_leak():
    """Cycling 4 batches, the healthy model memorises them: its loss collapses below 1% of ln 10, and the
    batches' fingerprints say why (each was seen ~50 times). Without them the monitor cannot tell
    memorising from a leak, and says so in a hint."""
    losses = [s["loss"] for s in scalars(run(HEALTHY_EPOCHS))]
    assert statistics.median(losses[150:170]) < 0.01 * math.log(10)
    assert "loss-collapse" not in run(HEALTHY_EPOCHS).ids
    f = run(bug(HEALTHY_EPOCHS, log_batch=False)).only("loss-collapse")
    assert f.severity == "hint" and f.evidence["batches_logged"] == 0 and "cannot tell" in f.title
    leak = run(bug(HEALTHY_TEXT_LM, leak_targets=True, log_batch=False)).only("loss-collapse")
    assert leak.severity == "hint"


def test_clipping_that_barely_shrinks_the_update_is_not_aggressive():
    """max_norm just under this LM's typical gradient norm (as a Hugging Face run's 1.03 against the
    default 1.0): torch clips most steps, by a few percent; the monitor stays quiet."""
    norms = sorted(s["grad_norm"] for s in scalars(run(HEALTHY_LM))[10:])
    max_norm = round(statistics.median(norms) / 1.03, 3)
    r = run(bug(HEALTHY_LM, clip=max_norm))
    rows = scalars(r)[10:]
    assert sum(s["clipped"] for s in rows) > 0.5 * len(rows)  # torch clipped most steps
    assert statistics.median(s["grad_norm"] / max_norm for s in rows) < 1.1  # by a few percent
    assert "aggressive-clipping" not in r.ids
    assert "aggressive-clipping" in run(bug(HEALTHY_LM, clip=0.05)).ids


def test_a_converged_run_at_a_constant_lr_gets_at_most_a_hint():
    """600 steps of the healthy run at Adam's constant LR: the loss sits at its noise floor from step
    ~100 (the old fixed windows called that a plateau warning at step 573)."""
    r = run(bug(steps=600))
    losses = [s["loss"] for s in scalars(r)]
    assert abs(statistics.median(losses[300:450]) - statistics.median(losses[450:])) < 0.05  # flat
    assert [f.id for f in r.report if f.severity != "hint"] == []


def test_a_layer_frozen_during_training_is_not_stalled():
    assert "stalled-layers" not in run(bug(freeze_first_layer_at=50)).ids


@pytest.mark.xfail(strict=True, reason="the watch's layer_depth is the order in which parameters were "
                   "registered, not the order of the forward pass: a head built before the body counts as the "
                   "layer nearest the input")
def test_vanishing_gradients_orders_layers_by_the_forward_pass():
    f = run(bug(HEALTHY_DEEP, activation="sigmoid", head_registered_first=True)).only("vanishing-gradients")
    assert f.evidence["first_layers"][0] == "body.0" and f.evidence["last_layers"][-1] == "head"


def test_clip_imported_early_is_torchs_own_function():
    assert not getattr(clip_grad_norm_imported_early, "__traindoc_wrapper__", False)


@pytest.mark.xfail(strict=True, reason="the watch sees clipping only through torch.nn.utils.clip_grad_norm_ "
                   "looked up at call time; a `from torch.nn.utils import clip_grad_norm_` taken before "
                   "watch() bypasses the patch, so the records carry no clip threshold")
def test_aggressive_clipping_with_clip_grad_norm_imported_by_name():
    assert "aggressive-clipping" in run(bug(clip=0.05, clip_imported_early=True)).ids


# ------------------------------------------------------------------ options
def test_default_detectors_options():
    names = {type(d).__name__ for d in default_detectors()}
    assert len(names) == len(DETECTOR_TYPES)
    kept = default_detectors(disable=["loss-at-chance", "scheduler"], loss_spike=False)
    assert not any({"loss-at-chance", "scheduler-misuse", "loss-spike"} & set(d.ids) for d in kept)
    assert [d for d in default_detectors(loss_spike={"k": 3.0}) if d.id == "loss-spike"][0].k == 3.0
    from traindoc.errors import TraindocInputError

    with pytest.raises(TraindocInputError):
        default_detectors(loss_spikes={})
    with pytest.raises(TraindocInputError):
        default_detectors(loss_spike={"nope": 1})
    with pytest.raises(TraindocInputError):
        default_detectors(disable=["no-such-id"])
