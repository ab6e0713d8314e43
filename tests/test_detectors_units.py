"""Unit checks of the detectors' building blocks and edge rules, on hand-built `StepRecord`s.

The behaviour on real training runs is tested in test_detectors.py; these pin down the rules that
a tiny CPU run cannot produce (AMP overflow steps) and the streaming statistics themselves.
"""

from __future__ import annotations

import random
import statistics

import pytest

from traindoc.monitor.detectors import (
    AggressiveClippingDetector,
    LossPlateauDetector,
    NanLossDetector,
    RollingWindow,
    SchedulerMisuseDetector,
    StalledLayersDetector,
)
from traindoc.monitor.detectors.base import quantile
from traindoc.monitor.record import StepRecord


def _feed(detector, records):
    found = []
    for r in records:
        found += detector.update(r)
    return found + detector.finalize()


def test_rolling_window_matches_statistics_module():
    rng = random.Random(0)
    w = RollingWindow(17)
    seen: list[float] = []
    for _ in range(300):
        x = rng.choice([rng.gauss(0, 1), 3.0, 3.0])  # ties too
        w.push(x)
        seen.append(x)
        last = seen[-17:]
        m = statistics.median(last)
        assert w.median() == m
        assert w.mad() == statistics.median(abs(v - m) for v in last)
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == 4.6


def test_amp_overflow_steps_are_not_nan_loss_but_a_stuck_scaler_is():
    def amp(step, bad):
        return StepRecord(step=step, loss=1.0, nonfinite_grads=5 if bad else 0, skipped=bad,
                          scaler_scale=2.0 ** (16 - step), first_nonfinite_param="w" if bad else None)

    calibrating = [amp(i, bad=i in (0, 1, 2, 50)) for i in range(100)]  # GradScaler finding its scale
    assert _feed(NanLossDetector(), calibrating) == []
    stuck = [amp(i, bad=i >= 10) for i in range(40)]  # every step overflows from step 10 on
    (f,) = _feed(NanLossDetector(), stuck)
    assert f.id == "nan-loss" and f.evidence["first_skipped_step"] == 10 and f.evidence["amp_skipped_steps"] == 20
    no_scaler = [StepRecord(step=i, loss=1.0, nonfinite_grads=int(i == 3), first_nonfinite_param="w")
                 for i in range(10)]
    (f,) = _feed(NanLossDetector(), no_scaler)
    assert f.severity == "error" and f.evidence["step"] == 3


def test_plateau_is_not_judged_while_the_lr_is_annealed():
    flat = [StepRecord(step=i, loss=1.7 + 0.01 * ((i * 7) % 5), lr=[1e-3 if i < 20 else 1e-6])
            for i in range(600)]
    assert _feed(LossPlateauDetector(), flat) == []
    same_with_lr = [StepRecord(step=r.step, loss=r.loss, lr=[1e-3]) for r in flat]
    (f,) = _feed(LossPlateauDetector(), same_with_lr)
    assert (f.id, f.severity) == ("loss-plateau", "warning")  # flat where it started: nothing learned
    assert f.evidence["last_step"] < 100  # a smooth loss needs no long window (the fixed ones took 350 steps)


def test_plateau_windows_scale_with_the_noise_and_a_low_level_is_a_hint():
    """The same flat tail at 0.8 after a fall from 2.3: smooth, it is judged soon (a hint: converged at a
    constant LR); as noisy as batches of 32 make it, the blocks cannot resolve 5% and nothing is said."""
    rng = random.Random(0)

    def run(noise: float, lr=lambda i: 1e-3):
        return _feed(LossPlateauDetector(), [
            StepRecord(step=i, loss=0.8 + 1.5 * 0.97 ** i + rng.gauss(0, noise), lr=[lr(i)]) for i in range(600)])

    (f,) = run(0.005)
    assert (f.id, f.severity) == ("loss-plateau", "hint") and f.evidence["fraction_of_start"] < 2 / 3
    assert "decay the LR" in f.fix and "something blocks learning" not in f.fix
    assert run(0.2) == []
    assert run(0.005, lr=lambda i: 1e-3 * (1 - i / 700)) == []  # a decaying LR: the schedule's business


def test_scheduler_recovering_cycles_are_not_misuse():
    # cyclic LR between 1e-4 and 1e-2, 20-step cycles: falls below 10% of the peak early, comes back
    cyc = [StepRecord(step=i, lr=[1e-4 + (1e-2 - 1e-4) * abs((i % 20) - 10) / 10]) for i in range(400)]
    assert _feed(SchedulerMisuseDetector(), cyc) == []
    # the same fast collapse at the end of the run (a decay to 0 at its planned end): not judged
    end = [StepRecord(step=i, lr=[1e-2 * 0.5 ** max(0, i - 100)]) for i in range(112)]
    assert _feed(SchedulerMisuseDetector(), end) == []
    # ... but training going on at the collapsed LR is reported within a few steps
    (f,) = _feed(SchedulerMisuseDetector(), [StepRecord(step=i, lr=[1e-2 * 0.5 ** i]) for i in range(30)])
    assert f.evidence["rule"] == "collapsed" and f.evidence["collapse_step"] == 10
    assert f.evidence["window"] - 1 == 15  # max(5, a quarter of the 11 steps it took) steps later


def test_scheduler_cosine_and_linear_decay_to_zero_at_the_end_are_quiet():
    import math

    for n in (50, 200, 1000, 5000):
        cosine = [StepRecord(step=i, lr=[1e-3 * 0.5 * (1 + math.cos(math.pi * i / (n - 1)))]) for i in range(n)]
        linear = [StepRecord(step=i, lr=[1e-3 * (1 - i / (n - 1))]) for i in range(n)]
        assert _feed(SchedulerMisuseDetector(), cosine) == [] and _feed(SchedulerMisuseDetector(), linear) == []


def test_clipping_short_runs_are_judged_at_close():
    recs = [StepRecord(step=i, grad_norm=2.0 + i / 10, clip_threshold=1.0, clipped=True) for i in range(30)]
    (f,) = _feed(AggressiveClippingDetector(), recs)
    assert f.evidence["window"] == 20 and f.evidence["first_step"] == 10  # the first 10 steps left out
    assert f.evidence["clipped_fraction"] == 1.0
    assert abs(f.evidence["suggested_clip_threshold"] - quantile([r.grad_norm for r in recs[10:]], 0.9)) < 1e-12
    assert _feed(AggressiveClippingDetector(), recs[:25]) == []  # too few steps to say


def test_clipping_counts_only_steps_it_shrinks_materially_and_leaves_warmup_out_of_short_runs():
    def recs(norms, threshold=1.0):
        return [StepRecord(step=i, grad_norm=g, clip_threshold=threshold, clipped=g > threshold)
                for i, g in enumerate(norms)]

    assert _feed(AggressiveClippingDetector(), recs([1.03] * 300)) == []  # clipped by 3% on every step
    assert len(_feed(AggressiveClippingDetector(), recs([1.3] * 300))) == 1  # by 23%: a habit
    # a 100-step run clipped hard on 55 steps, 25 of them its warmup: 35 of the 80 steps after the first
    # fifth are, not a habit; the same run with a calm warmup and hard clipping after it is one
    later = ([5.0] * 2 + [0.5] * 3) * 15
    assert _feed(AggressiveClippingDetector(), recs([5.0] * 25 + later)) == []
    (f,) = _feed(AggressiveClippingDetector(), recs([0.5] * 25 + [5.0] * 75))
    assert f.evidence["first_step"] == 20 and f.evidence["window"] == 80  # after the first fifth


def test_stalled_layers_waits_for_a_window_and_names_late_stalls_once_at_close():
    def rec(step, frozen):
        ratios = {"a": 1e-3, "b": 2e-3, "c": 1e-3, "d": 1e-3}
        ratios.update({name: 0.0 for name in frozen})
        return StepRecord(step=step, layer_update_ratio=ratios, layer_grad_norm={n: 1.0 for n in ratios})

    det = StalledLayersDetector()
    early = [rec(s, ["c"]) for s in range(0, 100, 10)]
    late = [rec(s, ["c", "d"]) for s in range(100, 200, 10)]
    found = _feed(det, early + late)
    assert [list(f.evidence["layers"]) for f in found] == [["c"], ["d"]]
    assert found[0].evidence["step"] == 40  # 5 samples spanning >= 20 steps: steps 0..40
    assert _feed(StalledLayersDetector(), early[:4]) == []


def test_memory_stays_bounded_on_a_long_run():
    """Streaming: 10x more steps must not mean 10x more memory (O(window) state per detector)."""
    import tracemalloc

    from traindoc.monitor.detectors import default_detectors

    def records(n):
        rng = random.Random(1)
        for i in range(n):
            layers = i % 5 == 0
            yield StepRecord(
                step=i, loss=2.0 + rng.random(), lr=[1e-3], grad_norm=1.0 + rng.random(),
                clip_threshold=10.0, clipped=False, backward_calls=rng.choice([1, 2, 4]), num_classes=10,
                grad_was_stale=False,
                layer_grad_norm={f"l{j}": 1.0 + rng.random() for j in range(8)} if layers else None,
                layer_weight_norm={f"l{j}": 5.0 for j in range(8)} if layers else None,
                layer_update_ratio={f"l{j}": 1e-3 * (1 + rng.random()) for j in range(8)} if layers else None,
                layer_depth={f"l{j}": j for j in range(8)} if layers else None)

    def retained(n):
        detectors = default_detectors()
        tracemalloc.start()
        for r in records(n):
            for d in detectors:
                d.update(r)
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return size

    small, large = retained(1_000), retained(10_000)
    assert large < small + 64 * 1024, (small, large)  # a list of 9k more floats alone is ~290 KB


@pytest.mark.parametrize("loss_falls", [False, True])
def test_weights_that_grow_while_the_loss_falls_tenfold_are_fitted_not_inflated(loss_falls):
    """lr-too-high by inflation: weight norms 15x their first value after large steps. With the loss
    stuck it is a random walk; with the loss 100x lower the weights were fitted to large targets (a
    regression onto values ~10 from a small init)."""
    from traindoc.monitor.detectors import LearningRateDetector

    det = LearningRateDetector()
    found = []
    for i in range(60):
        layers = i % 5 == 0
        grow = 1 + 14 * i / 59
        loss = 100.0 * (0.9 ** i if loss_falls else 1.0)
        found += det.update(StepRecord(
            step=i, loss=loss, lr=[0.1],
            layer_weight_norm={"w": 0.5 * grow, "b": 0.3 * grow} if layers else None,
            layer_update_ratio={"w": 0.05, "b": 0.05} if layers else None))
    ids = [f.id for f in found]
    assert ids == ([] if loss_falls else ["lr-too-high"]), found
