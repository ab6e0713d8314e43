"""A watched run killed with SIGKILL keeps every step up to its last flush, readable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from traindoc.rundir import read_run

SCRIPT = textwrap.dedent("""
    import sys, time, torch, torch.nn as nn, torch.nn.functional as F, traindoc
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = traindoc.watch(model, opt, run_dir=sys.argv[1], flush_every=3, every=2, histograms_every=4,
                       tensorboard=False)
    step = 0
    while True:  # trains until killed
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        w.log(loss=loss)
        step += 1
        if step >= 10:
            time.sleep(0.01)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_run_keeps_every_flushed_step(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scalars = run_dir / "scalars.jsonl"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if scalars.exists() and scalars.read_text().count("\n") >= 9:
                break
            if proc.poll() is not None:
                pytest.fail(f"training script died: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no flushes within 60 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    run = read_run(run_dir)
    steps = [r["step"] for r in run.scalars]
    assert len(steps) >= 9 and steps == list(range(len(steps)))
    assert len(steps) % 3 == 0  # whole flushes only (flush_every=3)
    assert all(isinstance(r["loss"], float) and r["lr"] == [0.1] for r in run.scalars)
    # layer stats and histograms are written before the scalars of a flush: every flushed step has
    # them; a kill between the two writes may leave those of one more flush (never a torn one)
    n = len(steps)
    layer_steps = [r["step"] for r in run.layers]
    assert layer_steps in ([s for s in range(n) if s % 2 == 0], [s for s in range(n + 3) if s % 2 == 0])
    hist_steps = {h["step"] for h in run.histograms}
    assert hist_steps in ({s for s in range(n) if s % 4 == 0}, {s for s in range(n + 3) if s % 4 == 0})
    assert run.report is None  # never closed
    assert run.meta["flush_every"] == 3
