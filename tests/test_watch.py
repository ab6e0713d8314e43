"""`traindoc.watch` on real tiny training loops: what it records, and that a step never syncs."""

from __future__ import annotations

import math
import sys
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import traindoc
from traindoc.findings import Finding, Report
from traindoc.monitor import stats
from traindoc.monitor.clip_patch import ORIGINAL_CLIP, ORIGINAL_CLIP_WITH_NORM, active_listeners
from traindoc.monitor.detectors.base import Detector
from traindoc.monitor.record import StepRecord
from traindoc.rundir import read_run

torch.set_num_threads(1)


class Recorder(Detector):
    """A fake detector: keeps every record it is fed, raises one finding at step 3 and one at the end."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    def update(self, record: StepRecord) -> list[Finding]:
        self.records.append(record)
        if record.step == 3:
            return [Finding("loss-spike", "warning", "fake finding at step 3", {"step": 3})]
        return []

    def finalize(self, end=None) -> list[Finding]:
        return [Finding("loss-plateau", "hint", "fake final finding", {"steps": len(self.records)})]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random inputs and random labels: nothing to learn (the loss stays at ln 3)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def learnable_batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Labels that the inputs decide (a random linear teacher): a run that learns."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(6, 3, generator=g)
    xs = [torch.randn(32, 6, generator=g) for _ in range(n)]
    return [(x, (x @ teacher).argmax(1)) for x in xs]


def test_run_dir_has_every_step_lr_loss_and_report(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    det = Recorder()
    w = traindoc.watch(model, opt, run_dir=tmp_path / "run", every=3, histograms_every=5, flush_every=4,
                       detectors=[det], tensorboard=False)
    lrs, losses = [], []
    for x, y in batches(11):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        w.log(loss=loss, accuracy=(model(x).argmax(1) == y).float().mean())
        losses.append(loss.item())
    report = w.close()

    assert isinstance(report, Report)
    assert report.info["steps"] == 11 and report.info["run_dir"] == str(tmp_path / "run")
    assert set(report.ids) == {"loss-spike", "loss-plateau"}
    run = read_run(tmp_path / "run")
    assert [r["step"] for r in run.scalars] == list(range(11))
    assert [r["lr"] for r in run.scalars] == [[lr] for lr in lrs]
    assert [r["loss"] for r in run.scalars] == pytest.approx(losses, rel=1e-6)
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 for r in run.scalars)
    assert [r["step"] for r in run.layers] == [0, 3, 6, 9]
    assert run.layers[0]["grad_norm"].keys() == {"0", "2", "4"}
    assert all(0 < v < 10 for v in run.layers[1]["update_ratio"].values())
    assert sorted({h["step"] for h in run.histograms}) == [0, 5, 10]
    assert {(h["layer"], h["kind"]) for h in run.histograms if h["step"] == 5} == {
        (layer, kind) for layer in ("0", "2", "4") for kind in ("weight", "grad")}
    assert run.meta["layers"] == ["0", "2", "4"] and run.meta["every"] == 3
    assert run.report is not None and run.report["info"]["steps"] == 11
    assert [f["id"] for f in run.findings] == ["loss-spike", "loss-plateau"]
    assert run.findings[0]["step"] == 3
    # the detector saw every step, in order, with the host-side fields filled
    assert [r.step for r in det.records] == list(range(11))
    assert all(r.backward_calls == 1 for r in det.records)
    # the stale-gradient check runs on the first four steps, then on the layer-stats steps (every 3)
    checked = {0, 1, 2, 3, 6, 9}
    assert [r.grad_was_stale for r in det.records] == [False if s in checked else None for s in range(11)]
    assert all(r.num_classes == 3 and r.extra["train_mode"] == 1.0 for r in det.records)
    assert det.records[3].layer_grad_norm is not None and det.records[4].layer_grad_norm is None
    assert det.records[3].layer_depth == {"0": 0, "2": 1, "4": 2}


def test_grad_norm_is_the_pre_clip_norm_and_clipping_is_recorded(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    det = Recorder()
    returned, manual = [], []
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False) as w:
        for i, (x, y) in enumerate(batches(6)):
            loss = F.cross_entropy(model(x), y) * (10.0 if i % 2 else 1.0)
            loss.backward()
            manual.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
            if i < 4:
                returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5).item())
            opt.step()
            opt.zero_grad()
            w.log(loss=loss)
    recs = det.records
    assert [r.grad_norm for r in recs] == pytest.approx(manual, rel=1e-5)
    assert [r.grad_norm for r in recs[:4]] == pytest.approx(returned, rel=1e-5)
    assert [r.clip_threshold for r in recs] == [0.5] * 4 + [None] * 2
    assert [r.clipped for r in recs] == [m > 0.5 for m in manual[:4]] + [None, None]
    info = w.report.info
    assert info["clip_steps"] == 4
    assert info["clipped_fraction"] == pytest.approx(sum(m > 0.5 for m in manual[:4]) / 4)
    # per-layer gradient norms are the pre-clip ones too
    first = recs[0].layer_grad_norm
    assert math.sqrt(sum(v * v for v in first.values())) == pytest.approx(manual[0], rel=1e-5)


def test_clipping_with_a_norm_computed_by_the_caller_is_recorded(tmp_path):
    """Accelerate (and so the Hugging Face Trainer) computes the norm with ``get_total_norm`` and clips
    with ``clip_grads_with_norm_``: the watch records the threshold and that pre-clip norm, and the
    gradients are clipped exactly as torch clips them."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    det = Recorder()
    totals = []
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False) as w:
        for x, y in batches(3):
            F.cross_entropy(model(x), y).mul(20).backward()
            total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
            totals.append(total.item())
            torch.nn.utils.clip_grads_with_norm_(list(model.parameters()), 0.3, total)
            clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
            assert clipped == pytest.approx(min(0.3, totals[-1]), rel=1e-4)
            opt.step()
            opt.zero_grad()
            w.log(loss=total)
    assert [r.clip_threshold for r in det.records] == [0.3] * 3
    assert [r.grad_norm for r in det.records] == pytest.approx(totals, rel=1e-5)
    assert torch.nn.utils.clip_grads_with_norm_ is ORIGINAL_CLIP_WITH_NORM  # restored at close


def test_clipping_is_unchanged_by_the_watch(tmp_path):
    """The watched clip_grad_norm_ computes norms once but clips exactly as torch does."""
    results = []
    for watched in (False, True):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        w = traindoc.watch(model, opt, run_dir=tmp_path / str(watched), tensorboard=False,
                           detectors=[]) if watched else None
        for x, y in batches(5):
            F.cross_entropy(model(x), y).mul(20).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
            opt.step()
            opt.zero_grad()
        if w is not None:
            w.close()
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-7)


def test_steady_state_step_never_syncs_and_copies_once_per_flush(tmp_path, monkeypatch):
    """Count every way a tensor value can reach the host; only flush steps may do it."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(12)
    counts = {"n": 0}
    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _orig=original, **k):
            # the NaN flag is read on the host only where it is host memory (CPU); on CUDA it is
            # copied to pinned memory without blocking, so that read is never a sync
            if sys._getframe(1).f_code.co_name != "check_flag":
                counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    w = traindoc.watch(model, opt, run_dir=tmp_path, every=1, histograms_every=1, flush_every=5,
                       detectors=[Recorder()], tensorboard=False)
    copies_before = stats.HOST_COPIES[0]
    per_step = []
    for x, y in data:
        before = counts["n"], stats.HOST_COPIES[0]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        w.log(loss=loss, tokens=torch.tensor(32), acc=(model(x).argmax(1) == y).float().mean())
        per_step.append((counts["n"] - before[0], stats.HOST_COPIES[0] - before[1]))
    monkeypatch.undo()
    w.close()
    # flushes run at the start of a step (the optimizer pre-step hook): densely at first (after steps 1,
    # 2 and 4, the powers of two below flush_every), then every flush_every steps (5, 10)
    flush_steps = {1, 2, 4, 5, 10}
    for i, (syncs, copies) in enumerate(per_step):
        if i in flush_steps:
            assert 1 <= copies <= 3, (i, copies)  # the stats ring, lazy refs (lr/metrics), histograms
            assert syncs > 0  # the counters do see the flush's host reads
        else:
            assert (syncs, copies) == (0, 0), (i, syncs, copies)
    assert stats.HOST_COPIES[0] - copies_before <= 3 * 6  # five flushes in the loop + the one at close
    assert w.report.info["flushes"] == 6


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops that run inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("clip", [False, True])
def test_an_ordinary_step_adds_four_device_ops_whatever_the_model_size(tmp_path, clip):
    """The fixed cost of a watched step, counted in aten ops (seconds are too noisy here): the fused
    gradient norm written into the ring (two ops; none when the user clips: their norms are copied,
    one op), the logged loss kept as a detached copy (two ops: a view, a copy). Layer stats, histograms and the stale-gradient
    check only run every K steps; a flush only every ``flush_every``."""
    counts = {}
    for width in (8, 64):
        model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                              nn.Linear(width, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(4, width), torch.tensor([0, 1, 2, 0])

        def step(w, model=model, opt=opt, x=x, y=y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if w is not None:
                w.log(loss=loss, tokens=4)

        step(None)
        with _OpCounter() as bare:
            step(None)
        w = traindoc.watch(model, opt, run_dir=tmp_path / f"{width}", quiet=True, tensorboard=True)
        for _ in range(77):  # step 77: no flush (every 50), no layer stats (every 10), no stale check
            step(w)
        with _OpCounter() as watched:
            step(w)
        w.close()
        added = watched.ops.copy()
        added.subtract(bare.ops)
        counts[width] = +added
    assert counts[8] == counts[64]  # independent of the model's size
    loss = {"aten.detach.default": 1, "aten.clone.default": 1}
    expected = {**loss, "aten.copy_.default": 1} if clip else \
        {**loss, "aten._foreach_norm.Scalar": 1, "aten.stack.out": 1}
    assert dict(counts[8]) == expected


def test_a_logged_tensor_updated_in_place_later_keeps_its_value_at_log_time(tmp_path):
    """The watch keeps logged tensors until the flush; a running total the user updates in place after
    ``log()`` must not change what was recorded for the earlier steps."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    running = torch.zeros(())
    expected = []
    with traindoc.watch(model, opt, run_dir=tmp_path, flush_every=50, tensorboard=False, quiet=True) as w:
        for x, y in batches(5):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            running += 1.0
            w.log(loss=loss, tokens=running, seen=running)
            expected.append(float(running))
    rows = read_run(tmp_path).scalars
    assert [r["tokens"] for r in rows] == expected == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["metrics"]["seen"] for r in rows] == expected


def test_loss_logged_before_or_after_the_step_lands_on_the_same_step(tmp_path):
    out = []
    for after in (False, True):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        det = Recorder()
        w = traindoc.watch(model, opt, run_dir=tmp_path / str(after), detectors=[det], tensorboard=False,
                           flush_every=3)
        for x, y in batches(7):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if not after:
                w.log(loss=loss)
            opt.step()
            opt.zero_grad()
            if after:
                w.log(loss=loss)
        w.close()
        out.append([r.loss for r in det.records])
    assert len(out[0]) == 7 and out[0] == out[1]


def test_gradient_accumulation_counts_backward_calls_and_averages_losses(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    det = Recorder()
    data = batches(12)
    micro_losses = []
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False) as w:
        for i, (x, y) in enumerate(data):
            loss = F.cross_entropy(model(x), y) / 3
            loss.backward()
            w.log(loss=loss)
            micro_losses.append(loss.item())
            if i % 3 == 2:
                opt.step()
                opt.zero_grad()
    assert [r.backward_calls for r in det.records] == [3, 3, 3, 3]
    expected = [sum(micro_losses[k:k + 3]) / 3 for k in range(0, 12, 3)]
    assert [r.loss for r in det.records] == pytest.approx(expected, rel=1e-6)


def test_missing_zero_grad_and_eval_mode_are_recorded(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    det = Recorder()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False):
        for i, (x, y) in enumerate(batches(6)):
            if i == 4:
                model.eval()
            F.cross_entropy(model(x), y).backward()
            opt.step()  # no zero_grad: gradients accumulate across steps
    assert [r.grad_was_stale for r in det.records] == [False] + [True] * 3 + [None] * 2  # checked: 0-3, 10, ...
    assert [r.extra["train_mode"] for r in det.records] == [1.0] * 4 + [0.0] * 2


def test_several_param_groups_and_frozen_params(tmp_path):
    model = mlp()
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW([{"params": model[2].parameters(), "lr": 1e-3},
                             {"params": model[4].parameters(), "lr": 1e-2, "weight_decay": 0.0}])
    det = Recorder()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False, every=1) as w:
        for x, y in batches(3):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    info = w.report.info
    assert info["frozen_params"] == 2 and info["watched_params"] == 4 and info["param_groups"] == 2
    assert "frozen" in info["frozen_note"]
    assert all(r.lr == [1e-3, 1e-2] for r in det.records)
    assert set(det.records[0].layer_grad_norm) == {"2", "4"}
    meta = read_run(tmp_path).meta
    assert [g["num_params"] for g in meta["param_groups"]] == [2, 2]


def test_nonfinite_gradient_names_the_first_parameter_even_when_clipped(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    det = Recorder()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False) as w:
        for i, (x, y) in enumerate(batches(5)):
            F.cross_entropy(model(x), y).backward()
            if i == 2:
                model[2].bias.grad[3] = float("nan")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # spreads the NaN to every grad
            opt.step()
            opt.zero_grad()
    rec = det.records[2]
    assert rec.first_nonfinite_param == "2.bias" and rec.nonfinite_grads == 16
    assert math.isnan(rec.grad_norm)
    assert det.records[1].nonfinite_grads == 0 and det.records[1].first_nonfinite_param is None
    assert w.report.info["first_nonfinite_step"] == 2
    assert read_run(tmp_path).scalars[2]["first_nonfinite_param"] == "2.bias"


def test_python_float_loss_and_tensor_tokens(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    det = Recorder()
    losses = []
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False, flush_every=2) as w:
        for x, y in batches(4):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            w.log(loss=losses[-1], tokens=torch.tensor([10, 22]), temperature=0.7)
    assert [r.loss for r in det.records] == pytest.approx(losses)
    assert all(r.extra["tokens"] == 32 and r.extra["temperature"] == pytest.approx(0.7) for r in det.records)
    scalars = read_run(tmp_path).scalars
    assert [s["tokens"] for s in scalars] == [32.0] * 4
    assert scalars[1]["tokens_per_s"] > 0 and scalars[3]["tokens_per_s"] > 0


def test_histograms_match_the_weights(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    w0 = torch.cat([model[4].weight.detach().reshape(-1), model[4].bias.detach()]).clone()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False, histograms_every=1,
                        histogram_samples=0, histogram_bins=8):
        F.cross_entropy(model(x), y).backward()
        g0 = torch.cat([model[4].weight.grad.reshape(-1), model[4].bias.grad]).clone()
        opt.step()
    hist = {(h["layer"], h["kind"]): h for h in read_run(tmp_path).histograms}
    for values, kind in ((w0, "weight"), (g0, "grad")):
        h = hist[("4", kind)]
        assert h["edges"][0] == pytest.approx(values.min().item(), abs=1e-6)
        assert h["edges"][-1] == pytest.approx(values.max().item(), abs=1e-6)
        expected = torch.histc(values, bins=8, min=values.min().item(), max=values.max().item())
        assert h["counts"] == expected.long().tolist()


def test_close_is_idempotent_and_removes_every_hook(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=False)
    assert active_listeners() == 1 and torch.nn.utils.clip_grad_norm_ is not ORIGINAL_CLIP
    assert len(opt._optimizer_step_pre_hooks) == 1
    first = w.close()
    assert w.close() is first
    assert active_listeners() == 0 and torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP
    assert len(opt._optimizer_step_pre_hooks) == 0 and len(opt._optimizer_step_post_hooks) == 0
    assert all(not p._backward_hooks for p in model.parameters())
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    w.log(loss=1.0)  # after close: ignored, harmless
    assert w.steps == 0


def test_default_detectors_judge_a_nan_run(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False, flush_every=4) as w:
        for i, (x, y) in enumerate(batches(8)):
            loss = F.cross_entropy(model(x), y)
            if i == 5:
                loss = loss * float("nan")
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.log(loss=loss)
    assert w.report.info["detectors"]  # the real detectors ran
    assert "nan-loss" in w.report.ids
    nan = w.report.get("nan-loss")[0]
    assert nan.evidence["step"] == 5


def test_default_detectors_stay_quiet_on_a_short_healthy_run(tmp_path):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False) as w:
        for x, y in batches(30):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.log(loss=loss)
    assert [f for f in w.report if f.severity != "hint"] == []
    assert "probe-failed" not in w.report.ids


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[], tensorboard=True, flush_every=3,
                        every=2, histograms_every=2, tensorboard_every=4) as w:
        for x, y in batches(6):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.log(loss=loss)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("loss")] == list(range(6))
    assert "lr/group0" in tags["scalars"] and "grad_norm" in tags["scalars"]
    assert "layer_update_ratio/2" in tags["scalars"]
    assert "weights/0" in tags["histograms"] and "grads/4" in tags["histograms"]
    # per-layer data on multiples of tensorboard_every only; the run directory has every one
    assert [e.step for e in acc.Histograms("weights/0")] == [0, 4]
    assert sorted({h["step"] for h in read_run(tmp_path).histograms}) == [0, 2, 4]
    assert w.report.info["tensorboard"] == str(tmp_path / "tb")


def test_bad_arguments_are_input_errors(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(traindoc.TraindocInputError, match="every"):
        traindoc.watch(model, opt, run_dir=tmp_path, every=-1)
    with pytest.raises(traindoc.TraindocInputError, match="flush_every"):
        traindoc.watch(model, opt, run_dir=tmp_path, flush_every=0)
    with pytest.raises(traindoc.TraindocInputError, match="optimizer"):
        traindoc.watch(model, "adam", run_dir=tmp_path)
    frozen = mlp().requires_grad_(False)
    with pytest.raises(traindoc.TraindocInputError, match="trainable"):
        traindoc.watch(frozen, torch.optim.SGD(frozen.parameters(), lr=0.1), run_dir=tmp_path)
    with pytest.raises(traindoc.TraindocInputError, match="evry: is not an argument of traindoc.watch; did you mean 'every'"):
        traindoc.watch(model, opt, run_dir=tmp_path, evry=5)
    with pytest.raises(traindoc.TraindocInputError, match="loss_spikes: unknown detector option"):
        traindoc.watch(model, opt, run_dir=tmp_path, detector_options={"loss_spikes": {}})
    assert active_listeners() == 0


def test_layer_stats_and_histograms_can_be_switched_off(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    det = Recorder()
    with traindoc.watch(model, opt, run_dir=tmp_path, detectors=[det], tensorboard=False, every=0,
                        histograms_every=0):
        for x, y in batches(3):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    run = read_run(tmp_path)
    assert run.layers == [] and run.histograms == [] and len(run.scalars) == 3
    assert all(r.layer_grad_norm is None and r.grad_norm > 0 for r in det.records)


@pytest.mark.parametrize("bug, expected", [("no-zero-grad", "missing-zero-grad"),
                                           ("clip-too-tight", "aggressive-clipping"),
                                           ("random-labels", "loss-at-chance"),
                                           ("healthy", None)])
def test_default_detectors_judge_what_the_watch_measured(tmp_path, bug, expected):
    """End to end: the real detectors, fed by the watch, name the bug and stay quiet on the twin (a
    learnable task: on random labels, the loss at ln 3 is loss-at-chance, rightly)."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False) as w:
        for x, y in (batches if bug == "random-labels" else learnable_batches)(120):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if bug == "clip-too-tight":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            opt.step()
            if bug != "no-zero-grad":
                opt.zero_grad()
            w.log(loss=loss)
    if expected is None:
        assert [f.id for f in w.report if f.severity != "hint"] == []
    else:
        assert expected in w.report.ids
    assert "probe-failed" not in w.report.ids


# ------------------------------------------------------------------ findings when they happen
def _train(model, opt, w, data, *, zero_grad=True, also=None):
    for i, (x, y) in enumerate(data):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if also is not None:
            also(i)
        if zero_grad:
            opt.zero_grad()
        w.log(loss=loss)


def test_a_finding_proved_on_the_first_steps_is_written_and_printed_before_close(tmp_path, capsys):
    """No zero_grad: proved at step 3, on disk and on stderr by step 4, long before the first steady
    flush (50): a run killed at step 10 keeps it."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False)
    _train(model, opt, w, batches(5), zero_grad=False)  # steps 0-4: flushed after steps 1, 2 and 4
    written = read_run(tmp_path).findings  # never closed
    assert [(f["id"], f["severity"], f["evidence"]["step"]) for f in written] == [("missing-zero-grad", "error", 1)]
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("traindoc:")] == [
        f"traindoc: ERROR missing-zero-grad at step 1: {written[0]['title']}"]
    w.close()
    assert capsys.readouterr().err.count("missing-zero-grad") == 0  # said once, not again at close


def test_quiet_keeps_stderr_clean(tmp_path, capsys):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False, quiet=True) as w:
        _train(model, opt, w, batches(5), zero_grad=False)
    assert "missing-zero-grad" in w.report.ids
    assert "traindoc:" not in capsys.readouterr().err


def test_flushes_are_dense_at_the_start_and_every_flush_every_later(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    flushed_at = []
    w = traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False, detectors=[], flush_every=10)
    original = w._flush

    def flush():
        flushed_at.append(w.recorder.step)
        original()

    w._flush = flush
    _train(model, opt, w, batches(31))
    w.close()
    assert flushed_at == [1, 2, 4, 8, 10, 20, 30, 31]  # 31: at close
    assert len(read_run(tmp_path).scalars) == 31


# ------------------------------------------------------------------ parameters outside the optimizer
def _two_part_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def test_params_outside_are_warned_at_the_first_step_and_proved_at_close(tmp_path, capsys):
    model = _two_part_model()
    opt = torch.optim.Adam(model[0].parameters(), lr=1e-3)  # the head is in no param group
    w = traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False, every=0)
    _train(model, opt, w, batches(3))
    early = read_run(tmp_path).findings
    assert [(f["id"], f["severity"]) for f in early] == [("params-not-in-optimizer", "warning")]
    assert early[0]["evidence"]["parameters"] == ["2.weight", "2.bias"] and not early[0]["evidence"]["proved"]
    assert "traindoc: WARNING params-not-in-optimizer at step 0: 2 trainable parameter(s) in 2" in capsys.readouterr().err
    report = w.close()
    (f,) = report.get("params-not-in-optimizer")  # one finding: the proof replaced the warning
    assert f.severity == "error" and f.evidence["proved"] and f.evidence["first_reported_step"] == 0
    assert report.info["withdrawn_findings"] == ["params-not-in-optimizer"]


@pytest.mark.parametrize("second", ["watched", "unwatched-every-step", "unwatched-late"])
def test_params_another_optimizer_trains_are_not_reported(tmp_path, second):
    """A GAN-like split: the second optimizer holds the head. Watched too, it judges the head itself;
    unwatched and stepping from the first step, the head has moved by the first flush; unwatched and
    stepping only from step 4 on, the early warning is taken back at close (the head moved)."""
    model = _two_part_model()
    opt_a = torch.optim.SGD(model[0].parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model[2].parameters(), lr=0.1)
    wa = traindoc.watch(model, opt_a, run_dir=tmp_path / "a", tensorboard=False, every=0)
    wb = traindoc.watch(model, opt_b, run_dir=tmp_path / "b", tensorboard=False, every=0) \
        if second == "watched" else None
    first_b = 4 if second == "unwatched-late" else 0

    def step_b(i):
        if i >= first_b:
            opt_b.step()
        opt_b.zero_grad()

    _train(model, opt_a, wa, batches(8), also=step_b)
    ra = wa.close()
    rb = wb.close() if wb is not None else None
    assert "params-not-in-optimizer" not in ra.ids and (rb is None or "params-not-in-optimizer" not in rb.ids)
    early = [f["severity"] for f in read_run(tmp_path / "a").findings if f["id"] == "params-not-in-optimizer"]
    assert early == (["warning"] if second == "unwatched-late" else [])
    assert ra.info.get("withdrawn_findings", []) == (["params-not-in-optimizer"] if early else [])
    assert ra.info["params_held_by_other_watches"] == (2 if second == "watched" else 0)


# ------------------------------------------------------------------ tied weights
def test_a_tied_parameter_is_named_by_both_of_its_names(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # GPT-2 ties them
    assert "lm_head.weight" not in dict(model.named_parameters())  # and named_parameters() hides one
    tied = "transformer.wte.weight (also lm_head.weight)"
    # the embedding (so the head) left out of the optimizer: the evidence names it both ways
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n != "transformer.wte.weight"], lr=1e-3)
    ids = torch.randint(0, 64, (2, 8))
    with traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False, every=1) as w:
        for _ in range(3):
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    (f,) = w.report.get("params-not-in-optimizer")
    assert f.evidence["parameters"] == [tied] and f.evidence["modules"] == ["transformer.wte"]
    assert "model.transformer.wte.parameters()" in f.fix
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with traindoc.watch(model, opt, run_dir=tmp_path / "all", tensorboard=False, detectors=[]):
        model(ids, labels=ids).loss.backward()
        opt.step()
    meta = read_run(tmp_path / "all").meta
    assert meta["params"][0] == tied and meta["param_layers"][0] == "transformer.wte"


@pytest.mark.parametrize("replace_head", [True, False])
def test_a_head_replaced_after_the_optimizer_was_built_is_said_at_close(tmp_path, replace_head):
    """A first phase trains model[2]; then a new head takes its place while the old optimizer is kept:
    the new head's parameters are in no param group (a warning: not fingerprinted at the start)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    w = traindoc.watch(model, opt, run_dir=tmp_path / "run", quiet=True, tensorboard=False)
    for step in range(12):
        if step == 6 and replace_head:
            model[2] = nn.Linear(16, 3)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        w.log(loss=loss)
        opt.step()
    report = w.close()
    found = report.get("params-not-in-optimizer")
    if not replace_head:
        assert found == []
        return
    (f,) = found
    assert f.severity == "warning" and f.evidence["added_after_start"]
    assert f.evidence["parameters"] == ["2.weight", "2.bias"] and f.evidence["receiving_gradients"] == ["2.weight", "2.bias"]
