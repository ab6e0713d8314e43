"""Unit checks of the detectors' building blocks and edge rules, on hand-built `StepRecord`s.

The behaviour on real training runs is tested in test_detectors.py; these pin down the rules that
a tiny CPU run cannot produce (AMP overflow steps) and the streaming statistics themselves.
"""

from __future__ import annotations

import random
import statistics

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
    flat = [StepRecord(step=i, loss=1.7 + 0.01 * ((i * 7) % 5), lr=[1e-3 if i < 50 else 1e-6])
            for i in range(600)]
    assert _feed(LossPlateauDetector(), flat) == []
    same_with_lr = [StepRecord(step=r.step, loss=r.loss, lr=[1e-3]) for r in flat]
    (f,) = _feed(LossPlateauDetector(), same_with_lr)
    assert f.id == "loss-plateau"


def test_scheduler_recovering_cycles_are_not_misuse():
    # cyclic LR between 1e-4 and 1e-2, 20-step cycles: falls below 10% of the peak early, comes back
    cyc = [StepRecord(step=i, lr=[1e-4 + (1e-2 - 1e-4) * abs((i % 20) - 10) / 10]) for i in range(400)]
    assert _feed(SchedulerMisuseDetector(), cyc) == []
    # the same LR collapse but the run stops early: not judged (no evidence it was early in the run)
    short = [StepRecord(step=i, lr=[1e-2 * 0.5 ** i]) for i in range(30)]
    assert _feed(SchedulerMisuseDetector(), short) == []


def test_clipping_short_runs_are_judged_at_close():
    recs = [StepRecord(step=i, grad_norm=2.0 + i / 10, clip_threshold=1.0, clipped=True) for i in range(30)]
    (f,) = _feed(AggressiveClippingDetector(), recs)
    assert f.evidence["window"] == 30 and f.evidence["clipped_fraction"] == 1.0
    assert abs(f.evidence["suggested_clip_threshold"] - quantile([r.grad_norm for r in recs], 0.9)) < 1e-12
    assert _feed(AggressiveClippingDetector(), recs[:10]) == []  # too few steps to say


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
