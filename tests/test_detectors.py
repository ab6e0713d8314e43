"""Each streaming detector fires on a real tiny training run with its bug and stays quiet on the twin.

The runs come from `detector_runs.py`: tiny MLPs trained for real, with the monitor's statistics
computed by the test helper itself. Every detector's positive case is a run with one bug switched
on; its negative case is the healthy twin, on which *no* detector may fire at all.
"""

from __future__ import annotations

import json
import math

import pytest

from detector_runs import (
    HEALTHY,
    HEALTHY_ACCUM,
    HEALTHY_CLIPPED,
    HEALTHY_COSINE,
    HEALTHY_LM,
    HEALTHY_NOISY,
    HEALTHY_RUNS,
    RunConfig,
    bug,
    ids,
    judge,
    run,
)
from traindoc.catalog import CATALOG
from traindoc.monitor.detectors import DETECTOR_TYPES, default_detectors

# --------------------------------------------------------------------------- the runs
NAN_BUG = bug(manual_log_softmax=True, lr=0.1)  # log(softmax(x)) underflows to -inf
NAN_TWIN = bug(lr=0.1)  # the same LR with F.cross_entropy (log_softmax inside)
SPIKE_BUG = bug(bad_shard=(150, 153))  # three batches from an un-normalised shard (x30)
DIVERGE_BUG = bug(optimizer="sgd", lr=10.0, activation="tanh")
DIVERGE_TWIN = bug(optimizer="sgd", lr=0.05, activation="tanh")
SGD_TWIN = bug(optimizer="sgd", lr=0.05)
EXPLODE_TIME_BUG = bug(task="regression", depth=0, optimizer="sgd", lr=0.9, steps=100)  # lr > 2 / curvature
EXPLODE_TIME_TWIN = bug(task="regression", depth=0, optimizer="sgd", lr=0.1, steps=100)
PLATEAU_BUG = bug(task="blind", class_prior="skewed", steps=500)  # inputs never reach the model
CHANCE_BUG = bug(task="blind", steps=500)
LONG_TWIN = bug(steps=500, schedule="warmup-cosine", lr=3e-3)
VANISH_BUG = bug(depth=10, hidden=32, activation="sigmoid", steps=150)
DEEP_TWIN = bug(depth=10, hidden=32, steps=150)
EXPLODE_BUG = bug(depth=30, hidden=32, activation="tanh", init_gain=5.0, steps=30)  # chaotic init
EXPLODE_TWIN = bug(depth=30, hidden=32, activation="tanh", init_gain=1.0, steps=30)  # critical init
STALL_BUG = bug(head_outside_optimizer=True)  # the head is in no param group
LM_STALL_BUG = bug(HEALTHY_LM, head_outside_optimizer=True)  # seed 002 on a transformer
LR_LOW_BUG = bug(optimizer="sgd", lr=1e-5)
LR_HIGH_BUG = bug(lr=1.0)  # Adam: the weights inflate ~35x
LR_HIGH_SGD_BUG = bug(optimizer="sgd", lr=1.0)  # SGD: every step moves the weights by > 10%
ZERO_GRAD_BUG = bug(optimizer="sgd", lr=0.01, zero_grad=False)
ZERO_GRAD_UNKNOWN = bug(optimizer="sgd", lr=0.01, zero_grad=False, report_stale=False)
ZERO_GRAD_TWIN = bug(optimizer="sgd", lr=0.01)
SCHED_BUG = bug(schedule="steplr-per-batch")  # StepLR(step_size=1, gamma=0.5) stepped per batch
CLIP_BUG = bug(clip=0.05)
ACCUM_BUG = bug(accumulation=(4, 4, 4, 1), accum_normalization="sum", steps=240)
ACCUM_VAR_BUG = bug(accumulation=(1, 2, 4, 8), accum_normalization="sum", steps=200)
ACCUM_VAR_TWIN = bug(accumulation=(1, 2, 4, 8), accum_normalization="mean", steps=200)

TWINS = {**HEALTHY_RUNS, "nan-twin": NAN_TWIN, "sgd-twin": SGD_TWIN, "long-twin": LONG_TWIN,
         "diverge-twin": DIVERGE_TWIN, "explode-time-twin": EXPLODE_TIME_TWIN, "accum-varying": ACCUM_VAR_TWIN,
         "deep-twin": DEEP_TWIN, "explode-twin": EXPLODE_TWIN, "zero-grad-twin": ZERO_GRAD_TWIN,
         "stale-unknown": bug(report_stale=False), "noisy-stale-unknown": bug(HEALTHY_NOISY, report_stale=False)}

# (finding id, bug run, healthy twin, expected severity)
CASES = [
    ("nan-loss", NAN_BUG, NAN_TWIN, "error"),
    ("loss-spike", SPIKE_BUG, HEALTHY, "warning"),
    ("divergence", DIVERGE_BUG, DIVERGE_TWIN, "warning"),
    ("divergence", NAN_BUG, NAN_TWIN, "error"),
    ("loss-plateau", PLATEAU_BUG, LONG_TWIN, "warning"),
    ("loss-at-chance", CHANCE_BUG, LONG_TWIN, "warning"),
    ("vanishing-gradients", VANISH_BUG, DEEP_TWIN, "warning"),
    ("exploding-gradients", EXPLODE_BUG, EXPLODE_TWIN, "warning"),
    ("exploding-gradients", EXPLODE_TIME_BUG, EXPLODE_TIME_TWIN, "warning"),
    ("stalled-layers", STALL_BUG, HEALTHY, "warning"),
    ("stalled-layers", LM_STALL_BUG, HEALTHY_LM, "warning"),
    ("lr-too-low", LR_LOW_BUG, SGD_TWIN, "warning"),
    ("lr-too-high", LR_HIGH_BUG, HEALTHY, "warning"),
    ("lr-too-high", LR_HIGH_SGD_BUG, SGD_TWIN, "warning"),
    ("missing-zero-grad", ZERO_GRAD_BUG, ZERO_GRAD_TWIN, "error"),
    ("missing-zero-grad", ZERO_GRAD_UNKNOWN, bug(ZERO_GRAD_TWIN, report_stale=False), "warning"),
    ("scheduler-misuse", SCHED_BUG, HEALTHY_COSINE, "warning"),
    ("aggressive-clipping", CLIP_BUG, HEALTHY_CLIPPED, "warning"),
    ("grad-accum-normalization", ACCUM_BUG, HEALTHY_ACCUM, "warning"),
    ("grad-accum-normalization", ACCUM_VAR_BUG, ACCUM_VAR_TWIN, "warning"),
]


def _case_id(case) -> str:
    return f"{case[0]}-{case[3]}"


def _only(found, finding_id):
    hits = [f for f in found if f.id == finding_id]
    assert len(hits) == 1, f"{finding_id}: expected exactly one finding, got {[f.title for f in hits]}"
    return hits[0]


# ------------------------------------------------------------------ positive and negative
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fires_on_the_bug(case):
    finding_id, bad, _, severity = case
    f = _only(judge(run(bad)), finding_id)
    assert f.severity == severity
    for key in ("step", "value", "threshold", "window"):
        assert key in f.evidence, f"{finding_id} evidence lacks {key}: {f.evidence}"
    assert f.fix and f.title
    json.dumps(f.to_dict(), allow_nan=False)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_quiet_on_the_healthy_twin(case):
    finding_id, _, twin, _ = case
    assert finding_id not in ids(judge(run(twin)))


@pytest.mark.parametrize("name", sorted(TWINS))
def test_no_detector_fires_on_a_healthy_run(name):
    found = judge(run(TWINS[name]))
    assert found == [], [f"{f.id}: {f.title}" for f in found]


# ------------------------------------------------------------------ what the evidence says
def test_nan_loss_names_the_first_step_and_parameter():
    records = run(NAN_BUG)
    first_bad = next(r for r in records if r.nonfinite_grads or not math.isfinite(r.loss))
    f = _only(judge(records), "nan-loss")
    assert f.evidence["step"] == first_bad.step
    assert f.evidence["first_nonfinite_param"] == first_bad.first_nonfinite_param == "0.weight"
    assert f.evidence["count"] == first_bad.nonfinite_grads > 0


def test_loss_spike_points_at_the_bad_shard():
    f = _only(judge(run(SPIKE_BUG)), "loss-spike")
    assert f.evidence["step"] == 150
    assert f.evidence["value"] > 5 * f.evidence["median"]


def test_noisy_minibatch_outliers_are_not_spikes():
    """Batches of 4 have single-step outliers far above the median; none lasts 3 steps."""
    losses = [r.loss for r in run(HEALTHY_NOISY)]
    assert max(losses) > 2 * sorted(losses)[len(losses) // 2]  # the run really is noisy
    assert "loss-spike" not in ids(judge(run(HEALTHY_NOISY)))


def test_stalled_layers_names_the_head_with_its_numbers():
    f = _only(judge(run(STALL_BUG)), "stalled-layers")
    assert list(f.evidence["layers"]) == ["4"]  # the Linear head, last module of the Sequential
    head = f.evidence["layers"]["4"]
    assert head["median_ratio"] == 0.0 and head["grad_norm"] > 0  # gets gradients, never moves
    assert f.evidence["moving_layers_median_ratio"] > 1e-4
    assert "optimizer" in f.fix


def test_chance_and_plateau_levels():
    chance = _only(judge(run(CHANCE_BUG)), "loss-at-chance")
    assert abs(chance.evidence["value"] - math.log(10)) < 0.05 * math.log(10)
    plateau = _only(judge(run(PLATEAU_BUG)), "loss-plateau")
    assert plateau.evidence["value"] < 0.9 * math.log(10)  # learned the class prior, then stuck
    assert "loss-at-chance" not in ids(judge(run(PLATEAU_BUG)))


def test_scheduler_misuse_reports_the_collapse_early():
    f = _only(judge(run(SCHED_BUG)), "scheduler-misuse")
    assert f.evidence["drop_step"] <= 5  # 0.5 ** 4 < 0.1
    assert f.evidence["lr_change_fraction_before_drop"] == 1.0
    assert f.evidence["collapse_step"] is not None


def test_aggressive_clipping_suggests_the_p90():
    records = run(CLIP_BUG)
    f = _only(judge(records), "aggressive-clipping")
    assert f.evidence["clipped_fraction"] > 0.5
    window = [r.grad_norm for r in records][-f.evidence["window"]:]
    assert min(window) <= f.evidence["suggested_clip_threshold"] <= max(window)
    assert "Lower the learning rate" in f.fix


def test_grad_accum_slope_separates_sum_from_mean():
    f = _only(judge(run(ACCUM_BUG)), "grad-accum-normalization")
    assert f.evidence["value"] > 0.5  # summed: norm ~ k^(0.5..1)
    assert f.evidence["modal_backward_calls"] == 4


def test_lr_too_high_says_which_rule_fired():
    adam = _only(judge(run(LR_HIGH_BUG)), "lr-too-high")
    assert adam.evidence["reason"] == "weights inflated by large updates" and adam.evidence["value"] > 10
    sgd = _only(judge(run(LR_HIGH_SGD_BUG)), "lr-too-high")
    assert sgd.evidence["reason"] == "update ratio > 0.1"
    assert all(r > 0.1 for r in sgd.evidence["update_ratios"])
    low = _only(judge(run(LR_LOW_BUG)), "lr-too-low")
    assert low.evidence["value"] < 1e-5 and abs(low.evidence["loss_progress"]) < 0.01


def test_vanishing_evidence_orders_layers_by_depth():
    f = _only(judge(run(VANISH_BUG)), "vanishing-gradients")
    assert f.evidence["first_layers"][0] == "0"
    assert f.evidence["first_median_grad_norm"] < 1e-3 * f.evidence["last_median_grad_norm"]


# ------------------------------------------------------------------ contract and robustness
def test_every_id_is_in_the_catalog_and_fires_at_most_once():
    for cls in DETECTOR_TYPES.values():
        assert cls.ids and all(i in CATALOG for i in cls.ids)
    for case in CASES:
        found = ids(judge(run(case[1])))
        assert len(found) == len(set(found)), found


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


def test_detectors_accept_sparse_records():
    """No loss, no LR, no grad norm, no layers on most steps: nothing breaks, nothing fires."""
    from traindoc.monitor.record import StepRecord

    records = [StepRecord(step=i) for i in range(400)]
    records += [StepRecord(step=400 + i, loss=1.0, lr=[], layer_grad_norm={}, layer_update_ratio={},
                           layer_weight_norm={}) for i in range(10)]
    assert judge(records) == []


def test_healthy_noisy_run_is_actually_noisy_and_learning():
    losses = [r.loss for r in run(HEALTHY_NOISY)]
    first, last = sorted(losses[:50])[25], sorted(losses[-50:])[25]
    assert last < 0.7 * first


def test_cosine_twin_has_warmup_and_decays_to_zero():
    lrs = [r.lr[0] for r in run(HEALTHY_COSINE)]
    assert lrs[0] < lrs[29] and lrs[-1] < 0.01 * max(lrs)


def test_run_config_defaults_are_the_healthy_run():
    assert RunConfig() == HEALTHY
