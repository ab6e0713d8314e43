"""`traindoc.watch` never damages training: contained failures, user errors untouched, odd setups."""

from __future__ import annotations

import gc
import sys
import types
import warnings
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoc
from traindoc.findings import Finding
from traindoc.monitor import stats
from traindoc.monitor.clip_patch import ORIGINAL_CLIP, active_listeners
from traindoc.monitor.detectors.base import Detector
from traindoc.monitor.record import StepRecord
from traindoc.rundir import read_run

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def train(model, opt, w=None, n=6, clip=None):
    for x, y in batches(n):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
        if w is not None:
            w.log(loss=loss)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class Records(Detector):
    def __init__(self):
        self.records: list[StepRecord] = []

    def update(self, record):
        self.records.append(record)
        return []

def test_exception_inside_a_hook_is_recorded_and_training_goes_on(tmp_path, monkeypatch):
    reference_model = mlp()
    reference = train(reference_model, torch.optim.SGD(reference_model.parameters(), lr=0.1), clip=1.0)

    def broken(self, params, weight_norms):
        raise RuntimeError("boom inside traindoc")

    monkeypatch.setattr(stats.LayerSample, "snapshot", broken)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False, every=1)
    watched = train(model, opt, w, clip=1.0)
    report = w.close()
    assert torch.equal(watched, reference)  # training was not affected at all
    failed = report.get("probe-failed")
    assert failed and failed[0].severity == "hint"
    ev = failed[0].evidence
    assert ev["where"] == "optimizer pre-step hook" and ev["count"] == 6
    assert "boom inside traindoc" in ev["exception"] and any("snapshot" in ln for ln in ev["traceback"])
    assert report.info["steps"] == 6  # steps are still counted
    assert read_run(tmp_path).report["findings"][0]["id"] == "probe-failed"


def test_failing_detector_is_dropped_and_reported(tmp_path):
    class Broken(Detector):
        def update(self, record):
            raise ZeroDivisionError("detector bug")

    good = Records()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = traindoc.watch(model, opt, run_dir=tmp_path, detectors=[Broken(), good], tensorboard=False, flush_every=2)
    train(model, opt, w)
    report = w.close()
    assert len(good.records) == 6
    (failed,) = report.get("probe-failed")
    assert "detector Broken" in failed.evidence["where"] and failed.evidence["count"] == 1


def test_failing_clip_fast_path_falls_back_to_torch(tmp_path, monkeypatch):
    import traindoc.monitor.clip_patch as hooks

    def broken(*a, **k):
        raise RuntimeError("fast path bug")

    monkeypatch.setattr(hooks, "_fast_norms", broken)
    ref_model = mlp()
    reference = train(ref_model, torch.optim.SGD(ref_model.parameters(), lr=0.1), clip=0.2)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Records()
    w = traindoc.watch(model, opt, run_dir=tmp_path, detectors=[rec], tensorboard=False)
    watched = train(model, opt, w, clip=0.2)
    report = w.close()
    assert torch.equal(watched, reference)
    assert "probe-failed" in report.ids
    assert all(r.clip_threshold == 0.2 and r.grad_norm > 0 for r in rec.records)


def test_users_own_exceptions_propagate_and_the_run_is_still_closed(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyError, match="user bug"), traindoc.watch(model, opt, run_dir=tmp_path, detectors=[],
                                                                    tensorboard=False) as w:
        train(model, opt, w, n=2)
        raise KeyError("user bug")
    assert w.report is not None and w.report.info["steps"] == 2
    assert (tmp_path / "report.json").exists()
    assert active_listeners() == 0


def test_users_error_inside_clip_grad_norm_reaches_the_user(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False) as w:
        x, y = batches(1)[0]
        (F.cross_entropy(model(x), y) * float("inf")).backward()
        with pytest.raises(RuntimeError, match="non-finite"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
    assert "probe-failed" not in w.report.ids


def test_second_watch_on_the_same_optimizer_warns_and_closes_the_first(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = traindoc.watch(model, opt, run_dir=tmp_path / "a", detectors=[], tensorboard=False)
    train(model, opt, first, n=2)
    with pytest.warns(UserWarning, match="already watched"):
        second = traindoc.watch(model, opt, run_dir=tmp_path / "b", detectors=[], tensorboard=False)
    assert first.report is not None and first.report.info["steps"] == 2  # closed, report written
    assert (tmp_path / "a" / "report.json").exists()
    train(model, opt, second, n=3)
    assert second.close().info["steps"] == 3
    assert len(opt._optimizer_step_pre_hooks) == 0 and active_listeners() == 0


def test_two_optimizers_watched_separately(tmp_path):
    torch.manual_seed(0)
    enc, head = nn.Linear(6, 16), nn.Linear(16, 3)
    opt_a = torch.optim.SGD(enc.parameters(), lr=0.1)
    opt_b = torch.optim.Adam(head.parameters(), lr=1e-3)
    model = nn.Sequential(enc, nn.Tanh(), head)
    rec_a, rec_b = Records(), Records()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # different optimizers: no warning
        wa = traindoc.watch(model, opt_a, run_dir=tmp_path / "a", detectors=[rec_a], tensorboard=False)
        wb = traindoc.watch(model, opt_b, run_dir=tmp_path / "b", detectors=[rec_b], tensorboard=False)
    for i, (x, y) in enumerate(batches(6)):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 0.1)  # clips only B's parameters
        opt_b.step()
        if i % 2 == 0:
            opt_a.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
        wa.log(loss=loss)
        wb.log(loss=loss)
    ra = wa.close()  # closed in creation order: the clip patch must survive until the last one
    assert torch.nn.utils.clip_grad_norm_ is not ORIGINAL_CLIP
    rb = wb.close()
    assert torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP
    assert ra.info["steps"] == 3 and rb.info["steps"] == 6
    assert ra.info["params_not_in_optimizer"] == 2 and rb.info["params_not_in_optimizer"] == 2
    assert all(r.clip_threshold is None for r in rec_a.records)
    assert all(r.clip_threshold == 0.1 for r in rec_b.records)
    assert read_run(tmp_path / "a").meta["params"] == ["0.weight", "0.bias"]
    assert read_run(tmp_path / "b").meta["params"] == ["2.weight", "2.bias"]


def test_amp_grad_scaler_skipped_steps_and_scale(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    rec = Records()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[rec], tensorboard=False, scaler=scaler) as w:
        for i, (x, y) in enumerate(batches(5)):
            loss = F.cross_entropy(model(x), y)
            if i == 2:
                loss = loss * float("inf")  # overflow: the scaler skips this step
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            w.log(loss=loss)
    assert [r.step for r in rec.records] == [0, 1, 2, 3, 4]
    assert [r.skipped for r in rec.records] == [False, False, True, False, False]
    assert [r.scaler_scale for r in rec.records] == [1024.0, 1024.0, 1024.0, 512.0, 512.0]
    assert rec.records[2].nonfinite_grads > 0 and rec.records[2].first_nonfinite_param == "0.weight"
    assert w.report.info["skipped_steps"] == 1
    assert "step" not in vars(scaler)  # the scaler's own step is back


def test_nonfinite_loss_replays_the_saved_batch_once(tmp_path, monkeypatch):
    calls = []

    def locate_nonfinite(model, batch, forward=None):
        calls.append((batch, forward, model.training))
        out = model(batch[0])  # the probe may run the model; grads and RNG must be restored
        out.sum().backward()
        return [Finding("nan-forward", "error", "first non-finite output at module 2", {"module": "2"})]

    fake = types.ModuleType("traindoc.probes.nan_forward")
    fake.locate_nonfinite = locate_nonfinite
    monkeypatch.setitem(sys.modules, "traindoc.probes.nan_forward", fake)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(6)
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False, flush_every=2) as w:
        for i, (x, y) in enumerate(data):
            if i == 3:
                x = x * float("nan")
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            w.log(loss=loss, batch=(x, y))
            opt.step()
            opt.zero_grad()
    # the batch of the NaN step itself, replayed before that step changed the weights (CPU)
    assert len(calls) == 1 and torch.isnan(calls[0][0][0]).all()
    assert "nan-forward" in w.report.ids, w.report.to_json()
    assert w.report.info["nan_replay"] == {"step": 3, "replayed": True, "batch_step": 3, "findings": 1}
    assert "probe-failed" not in w.report.ids


def test_replay_without_a_batch_says_why(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False) as w:
        for x, y in batches(2):
            (F.cross_entropy(model(x), y) * float("nan")).backward()
            opt.step()
            opt.zero_grad()
    assert w.report.info["nan_replay"] == {"step": 0, "replayed": False,
                                           "reason": "no batch given (w.log(batch=...))"}


def test_routine_amp_overflow_does_not_trigger_the_nan_replay(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("traindoc.probes.nan_forward")
    fake.locate_nonfinite = lambda model, batch, forward=None: calls.append(batch) or []
    monkeypatch.setitem(sys.modules, "traindoc.probes.nan_forward", fake)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the scaled loss overflows at first
    rec = Records()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[rec], tensorboard=False, scaler=scaler) as w:
        for x, y in batches(4):
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss * 4).backward()  # 4 * loss * 2**127 overflows float32
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            w.log(loss=loss, batch=(x, y))
    assert rec.records[0].skipped and rec.records[0].nonfinite_grads > 0
    assert all(r.loss is not None and r.loss < 10 for r in rec.records)
    assert calls == [] and "nan_replay" not in w.report.info


def test_optimizer_wrappers_are_unwrapped(tmp_path):
    model = mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)

    class Wrapped(torch.optim.Optimizer):  # like Accelerate's AcceleratedOptimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer
            self.param_groups = optimizer.param_groups
            self.defaults = optimizer.defaults
            self._optimizer_step_pre_hooks = {}
            self._optimizer_step_post_hooks = {}

        def step(self, closure=None):
            return self.optimizer.step(closure)

    wrapped = Wrapped(inner)
    with traindoc.watch(model, wrapped, run_dir=tmp_path, detectors=[], tensorboard=False) as w:
        for x, y in batches(3):
            F.cross_entropy(model(x), y).backward()
            wrapped.step()
            inner.zero_grad()
    assert w.optimizer is inner and w.report.info["steps"] == 3


class RowNormalize(nn.Module):
    """x / ||x|| per row: fine for real inputs, 0/0 = NaN for an all-zero row."""

    def forward(self, x):
        return x / x.norm(dim=1, keepdim=True)


def test_real_nan_forward_probe_names_the_module_of_the_bad_batch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), RowNormalize(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False, flush_every=4) as w:
        for i, (x, y) in enumerate(batches(6)):
            if i == 2:
                x = x.clone()
                x[5] = 0.0
                model[0].bias.data.zero_()  # so that the first layer's output row is exactly zero
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            w.log(loss=loss, batch=x)
            opt.step()
            opt.zero_grad()
            if i == 2:
                break
    assert w.report.info["nan_replay"]["batch_step"] == 2
    found = w.report.get("nan-forward")
    assert found, w.report.to_json()
    assert found[0].evidence["first_module"] == "1" and found[0].evidence["samples"] == [5]


@pytest.mark.parametrize("tensorboard", [False, True])
def test_a_watch_never_closed_frees_its_model_and_the_clip_patch(tmp_path, tensorboard):
    """A re-run notebook cell must not leak the previous model: nothing global holds a watch."""
    if tensorboard:
        pytest.importorskip("tensorboard")

    def cell() -> list[weakref.ref]:
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        w = traindoc.watch(model, opt, run_dir=tmp_path / f"tb{tensorboard}", tensorboard=tensorboard, every=1,
                           flush_every=2)
        train(model, opt, w, clip=1.0)
        assert active_listeners() == 1
        return [weakref.ref(model), weakref.ref(opt), weakref.ref(w)]

    refs = cell()
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert active_listeners() == 0 and torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP
