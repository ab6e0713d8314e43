"""Detectors judged through the real `traindoc.watch` on tiny training runs (bug -> finding, healthy
twin -> nothing): a head that never moves, eval mode left on, a schedule stepped per batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traindoc


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.body(x))


def data(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 3, generator=g)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=g)
        yield x, (x @ w).argmax(1)


def train(tmp_path, *, head_after_optimizer=False, eval_after=None, head_lr=None, sched=None, steps=60):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Classifier()
    if head_after_optimizer:  # the optimizer was built before the head was replaced
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.head = nn.Linear(32, 3)
    elif head_lr is not None:
        opt = torch.optim.AdamW([{"params": model.body.parameters()},
                                 {"params": model.head.parameters(), "lr": head_lr}], lr=3e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = sched(opt) if sched else None
    with traindoc.watch(model, opt, run_dir=tmp_path / "run", every=5, flush_every=20) as w:
        model.train()
        for step, (x, y) in enumerate(data(steps)):
            if eval_after is not None and step == eval_after:
                model.eval()  # "validation" ... and no model.train() afterwards
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler:
                scheduler.step()
            w.log(loss=loss.detach())
    return w.report


def test_healthy_run_is_quiet(tmp_path):
    report = train(tmp_path)
    assert [f.id for f in report if f.severity != "hint"] == [], report.findings


def test_head_built_after_the_optimizer_never_moves(tmp_path):
    report = train(tmp_path, head_after_optimizer=True)
    f = report.get("params-not-in-optimizer")
    assert f and f[0].severity == "error"
    assert f[0].evidence["modules"] == ["head"]
    assert set(f[0].evidence["receiving_gradients"]) == {"head.weight", "head.bias"}


def test_head_with_a_vanishing_lr_is_reported_as_stalled(tmp_path):
    report = train(tmp_path, head_lr=1e-9)
    stalled = report.get("stalled-layers")
    assert stalled, report.findings
    assert "head" in str(stalled[0].evidence)


@pytest.mark.parametrize("eval_after", [None, 10])
def test_eval_mode_left_on(tmp_path, eval_after):
    report = train(tmp_path, eval_after=eval_after)
    assert ("train-mode-off" in report) == (eval_after is not None)
    if eval_after is not None:
        ev = report.get("train-mode-off")[0].evidence
        assert ev["step"] == eval_after and ev["trained_in_train_mode_before"]


def test_epoch_schedule_stepped_every_batch(tmp_path):
    report = train(tmp_path, sched=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), steps=100)
    assert "scheduler-misuse" in report
    healthy = train(tmp_path / "h", sched=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=100), steps=100)
    assert "scheduler-misuse" not in healthy
