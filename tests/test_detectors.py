"""Each streaming detector fires through the real `traindoc.watch` on a tiny run with its bug, and
stays quiet on the healthy twin.

The runs come from `detector_runs.py`: small models trained for real inside `traindoc.watch` with
the default detectors, so a detector is judged on what the monitor measures (hooks, flushes,
`StepRecord`s), not on statistics a test helper recomputes. Every bug run is one `RunConfig` field
away from its twin; the healthy runs give no finding at all. No detector option is changed: every
default window fits in these runs (the longest, loss-plateau's 300 + 50 steps, in 500 steps).

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
    Run,
    RunConfig,
    bug,
    clip_grad_norm_imported_early,
    run,
)
from traindoc.catalog import CATALOG
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


def check_divergence(f: Finding, r: Run) -> None:
    assert f.evidence["step"] < 10  # SGD at LR 10 blows up at once
    assert f.evidence["value"] > f.evidence["threshold"] > f.evidence["best_median"]
    assert f.evidence["sustained_steps"] == 25


def check_loss_spike(f: Finding, r: Run) -> None:
    assert f.evidence["step"] == SPIKE_AT
    assert f.evidence["value"] > 5 * f.evidence["median"]
    shard = [s["loss"] for s in scalars(r)[SPIKE_AT:SPIKE_AT + 3]]
    assert f.evidence["losses"] == pytest.approx(shard)  # the three batches of the bad shard


def check_loss_plateau(f: Finding, r: Run) -> None:
    assert f.evidence["step"] >= (300 - 1) + (50 - 1)  # 300 losses (patience), then 50 flat steps (sustain)
    assert f.evidence["value"] < 0.9 * math.log(10)  # learned the class prior, then stuck
    assert f.evidence["threshold"] == 0.01 and f.evidence["window"] == 300


def check_loss_at_chance(f: Finding, r: Run) -> None:
    assert f.evidence["step"] >= (300 - 1) + (50 - 1)
    assert f.evidence["num_classes"] == 10  # guessed by the watch from the head's out_features
    assert abs(f.evidence["value"] - math.log(10)) < 0.05 * math.log(10)


def check_vanishing(f: Finding, r: Run) -> None:
    assert f.evidence["step"] % r.config.every == 0  # a step with per-layer statistics
    assert f.evidence["first_layers"][0] == "body.0" and f.evidence["last_layers"][-1] == "head"
    assert f.evidence["first_median_grad_norm"] < 1e-3 * f.evidence["last_median_grad_norm"]
    assert f.evidence["threshold"] == 1e-3 and f.evidence["window"] >= 3


def check_exploding_depth(f: Finding, r: Run) -> None:
    assert f.evidence["basis"] == "per-layer gradient norms across depth"
    assert f.evidence["first_layers"][0] == "body.0"
    assert f.evidence["value"] > f.evidence["threshold"] == 1e3


def check_exploding_time(f: Finding, r: Run) -> None:
    assert f.evidence["basis"] == "global gradient norm over steps"
    step = f.evidence["step"]
    norms = [s["grad_norm"] for s in scalars(r)[step - 9:step + 1]]
    assert f.evidence["value"] == pytest.approx(statistics.median(norms))  # the watch's pre-step norms
    assert f.evidence["value"] > f.evidence["threshold"] == pytest.approx(1e3 * f.evidence["min_median"])


def check_stalled_head(f: Finding, r: Run) -> None:
    assert list(f.evidence["layers"]) == ["head"]
    head = f.evidence["layers"]["head"]
    assert head["median_ratio"] == 0.0 and head["grad_norm"] > 0  # gets gradients, never moves
    assert f.evidence["moving_layers_median_ratio"] > 1e-4
    assert f.evidence["threshold"] == 1e-6 and f.evidence["step"] >= 20
    assert "optimizer" in f.fix


def check_stalled_unused(f: Finding, r: Run) -> None:
    assert list(f.evidence["layers"]) == ["aux"]
    assert f.evidence["layers"]["aux"]["grad_norm"] == 0  # not connected to the loss
    assert "used by the loss" in f.fix


def check_lr_too_low(f: Finding, r: Run) -> None:
    assert f.evidence["lr"] == 1e-5
    assert f.evidence["value"] < f.evidence["threshold"] == 1e-5
    assert abs(f.evidence["loss_progress"]) < 0.01
    assert f.evidence["last_step"] - f.evidence["step"] >= 50


def check_lr_too_high_adam(f: Finding, r: Run) -> None:
    assert f.evidence["reason"] == "weights inflated by large updates"
    assert f.evidence["value"] > f.evidence["threshold"] == 10


def check_lr_too_high_sgd(f: Finding, r: Run) -> None:
    assert f.evidence["reason"] == "update ratio > 0.1"
    assert all(x > 0.1 for x in f.evidence["update_ratios"])
    assert f.evidence["last_step"] - f.evidence["step"] >= 5


def check_missing_zero_grad(f: Finding, r: Run) -> None:
    rows = scalars(r)
    assert rows[0]["grad_was_stale"] is False  # the first step starts from no gradient
    assert all(s["grad_was_stale"] is True for s in rows[1:])
    assert f.evidence["step"] == 1 and f.evidence["threshold"] == 3


def check_missing_zero_grad_unknown(f: Finding, r: Run) -> None:
    assert all(s["grad_was_stale"] is None for s in scalars(r))  # the watch could not tell
    assert f.evidence["step"] == 0 and f.evidence["window"] == 20
    assert f.evidence["rising_fraction"] >= 0.9 and f.evidence["value"] >= f.evidence["threshold"] == 5


def check_scheduler(f: Finding, r: Run) -> None:
    assert f.evidence["drop_step"] <= 5  # 0.5 ** 4 < 0.1
    assert scalars(r)[f.evidence["drop_step"]]["lr"][0] < 0.1 * f.evidence["peak_lr"]
    assert f.evidence["lr_change_fraction_before_drop"] == 1.0
    assert f.evidence["collapse_step"] is not None


def check_clipping(f: Finding, r: Run) -> None:
    rows = scalars(r)[f.evidence["first_step"]:f.evidence["step"] + 1]
    assert len(rows) == f.evidence["window"] == 100
    assert f.evidence["clipped_fraction"] == sum(s["clipped"] for s in rows) / len(rows) > 0.5
    norms = [s["grad_norm"] for s in rows]  # pre-clip, as the watch saw them in clip_grad_norm_
    assert min(norms) <= f.evidence["suggested_clip_threshold"] <= max(norms)
    assert f.evidence["clip_threshold"] == 0.05 and "Lower the learning rate" in f.fix


def check_grad_accum(modal: int) -> Callable[[Finding, Run], None]:
    def check(f: Finding, r: Run) -> None:
        cycle = r.config.accumulation
        assert [s["backward_calls"] for s in scalars(r)] == [cycle[i % len(cycle)] for i in range(r.config.steps)]
        assert f.evidence["modal_backward_calls"] == modal
        assert f.evidence["value"] > f.evidence["threshold"] == 0.35  # summed: norm ~ k^(0.5..1)
    return check


def check_train_mode(f: Finding, r: Run) -> None:
    assert f.evidence["step"] == VALIDATE_EVERY and f.evidence["trained_in_train_mode_before"]
    modes = [s["train_mode"] for s in scalars(r)]
    assert modes == [True] * VALIDATE_EVERY + [False] * (r.config.steps - VALIDATE_EVERY)


def check_repeated_batch(f: Finding, r: Run) -> None:
    rows = scalars(r)
    assert f.evidence["step"] == 0 and f.evidence["repeats"] == f.evidence["threshold"] == 8
    assert len({s["batch_fingerprint"] for s in rows}) == 1  # the watch saw one batch all along


def check_params_outside(f: Finding, r: Run) -> None:
    assert f.evidence["modules"] == ["head"] and f.evidence["steps"] == r.config.steps
    assert set(f.evidence["parameters"]) == set(f.evidence["receiving_gradients"]) == {"head.weight", "head.bias"}


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
    Case("missing-zero-grad", bug(ZERO_GRAD_TWIN, zero_grad=False), ZERO_GRAD_TWIN, "error",
         check_missing_zero_grad),
    Case("missing-zero-grad", bug(STALE_UNKNOWN_TWIN, zero_grad=False), STALE_UNKNOWN_TWIN, "warning",
         check_missing_zero_grad_unknown, "stale-unknown"),
    Case("scheduler-misuse", bug(HEALTHY_COSINE, schedule="steplr-per-batch"), HEALTHY_COSINE, "warning",
         check_scheduler),
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
    assert [x["evidence"]["step"] for x in written] == [f.evidence["step"]]
    case.check(f, r)


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
