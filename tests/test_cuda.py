"""The CUDA paths: a watched step never synchronises with the host, the NaN flag travels through pinned
memory, peak memory is recorded, and `check` measures activations and restores state on the GPU.
Skipped where no GPU is present (see conftest.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traindoc
from traindoc.rundir import read_run
from traindoc.state import fingerprint

pytestmark = pytest.mark.cuda


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).cuda()


def batches(n: int, nan_at: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator(device="cuda").manual_seed(1)
    out = []
    for i in range(n):
        x = torch.randn(128, 64, device="cuda", generator=g)
        if i == nan_at:
            x[0, 0] = float("nan")
        out.append((x, torch.randint(0, 10, (128,), device="cuda", generator=g)))
    return out


def test_an_ordinary_watched_step_never_synchronises(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    w = traindoc.watch(model, opt, run_dir=tmp_path, flush_every=10, every=5, histograms_every=5,
                       tensorboard=False)
    data = batches(25)
    tokens = torch.tensor(128, device="cuda")
    for step, (x, y) in enumerate(data):
        # the first 12 steps build the watch's cached index tensors (one host-to-device copy each);
        # the pre-step hook of steps 10 and 20 flushes: one copy to the host, a sync by design
        ordinary = step >= 12 and step != 20
        torch.cuda.set_sync_debug_mode("error" if ordinary else 0)
        try:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            w.log(loss=loss.detach(), batch=(x, y), tokens=tokens)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    report = w.close()
    assert not report.get("probe-failed"), [f.title for f in report]
    rows = read_run(tmp_path).scalars
    assert len(rows) == 25 and all(r["grad_norm"] > 0 for r in rows)
    assert "peak_memory_bytes" in rows[-1] and rows[-1]["peak_memory_bytes"] > 0


def test_nan_flag_goes_through_pinned_memory_and_replays_once(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = traindoc.watch(model, opt, run_dir=tmp_path, flush_every=50, tensorboard=False,
                       forward=lambda m, b: m(b[0]))
    for x, y in batches(12, nan_at=5):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        w.log(loss=loss.detach(), batch=(x, y))
    report = w.close()
    assert report.info["nan_replay"]["replayed"] and report.info["nan_replay"]["step"] == 5
    (nan,) = report.get("nan-forward")
    assert nan.evidence.get("batch_tensors") or nan.evidence.get("first_module")


def test_check_on_cuda_measures_activations_and_restores_everything():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    before = fingerprint(model, opt)
    allocated = torch.cuda.memory_allocated()
    report = traindoc.check(model, (x, y), forward=lambda m, b: m(b[0]),
                            loss_fn=lambda out, b: F.cross_entropy(out, b[1]), optimizer=opt)
    assert fingerprint(model, opt) == before
    mem = report.info["memory"]
    assert mem["device"].startswith("cuda") and "minus what it was before" in mem["activations_from"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 0 < mem["activations"] < 4 * weights  # the pass's own graph, not the weights again
    assert report.info["snapshot_bytes"] == 0  # no buffers here, and no copy of the weights
    assert torch.cuda.memory_allocated() <= allocated + 1024  # nothing of the check stays on the device


def test_an_ordinary_watched_step_adds_a_handful_of_kernel_launches(tmp_path):
    """On the GPU the monitor's fixed cost is host time spent launching kernels: count, with the
    profiler, the CUDA kernels an ordinary watched step launches beyond the bare step (the fused
    gradient norm and its stack into the ring, the copy of the logged loss)."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(prof) -> int:
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batches(1)[0]

    def step(w=None):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if w is not None:
            w.log(loss=loss)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as bare:
        step()
        torch.cuda.synchronize()
    w = traindoc.watch(model, opt, flush_every=50, every=10, histograms_every=100, tensorboard=False, quiet=True,
                       run_dir=tmp_path)
    for _ in range(13):  # step 13: no flush, no layer stats, no stale-gradient check
        step(w)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as watched:
        step(w)
        torch.cuda.synchronize()
    report = w.close()
    added = kernels(watched) - kernels(bare)
    print(f"kernels per ordinary step: bare {kernels(bare)}, watched {kernels(watched)}, added {added}")
    assert not report.get("probe-failed")
    assert 0 < added <= 6
