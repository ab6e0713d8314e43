"""`traindoc.check` leaves the user's training bit-identical (weights, buffers, grads, optimizer state
and groups, RNG state of torch/random/numpy, train/eval flags); bad input gets one clear message
naming the argument; a probe that fails internally becomes a ``probe-failed`` hint."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import model_zoo as z
import traindoc
from traindoc.probes import registry
from traindoc.state import fingerprint

torch.set_num_threads(1)


def _train_steps(model, batch, fwd, loss_fn, opt, steps=3):
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(fwd(model, batch), batch).backward()
        opt.step()


def setup_dropout_bn_adamw():
    """Dropout + BatchNorm in train mode, AdamW with non-empty state, grads present before the check."""
    model = z.MLPWithBN(p=0.3)
    batch = z.classification_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    _train_steps(model, batch, z.xy_forward, z.ce_loss, opt)
    z.ce_loss(z.xy_forward(model, batch), batch).backward()  # grads left in place
    return model, batch, dict(forward=z.xy_forward, loss_fn=z.ce_loss, optimizer=opt)


def setup_eval_with_one_train_submodule():
    model = z.MLPWithBN(p=0.3)
    model.eval()
    model.net[1].train()  # BatchNorm alone in train mode
    batch = z.classification_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, batch, z.xy_forward, z.ce_loss, opt, steps=2)
    return model, batch, dict(forward=z.xy_forward, loss_fn=z.ce_loss, optimizer=opt)


def setup_lm_with_scheduler():
    model = z.TinyLM()
    batch = z.lm_batch()
    opt = z.no_decay_adamw(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    model.train()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        z.lm_loss(z.lm_forward(model, batch), batch).backward()
        opt.step()
        sched.step()
    return model, batch, dict(forward=z.lm_forward, loss_fn=z.lm_loss, optimizer=opt)


def setup_hf_bert_adamw():
    model, batch = z.hf_bert_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model, batch, dict(optimizer=opt)


def setup_nan_model():
    """The nan-forward replay path (a second forward) must restore state too."""
    model = z.NaNMLP()
    model.train()
    batch = z.classification_batch()
    return model, batch, dict(forward=z.xy_forward, loss_fn=z.ce_loss)


SETUPS = {
    "dropout-bn-adamw-grads": setup_dropout_bn_adamw,
    "eval-with-train-submodule": setup_eval_with_one_train_submodule,
    "lm-adamw-scheduler": setup_lm_with_scheduler,
    "hf-bert-adamw": setup_hf_bert_adamw,
    "nan-replay": setup_nan_model,
}


@pytest.mark.parametrize("name", list(SETUPS))
def test_check_leaves_everything_bit_identical(name):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    model, batch, kw = SETUPS[name]()
    modes = {n: m.training for n, m in model.named_modules()}
    before = fingerprint(model, kw.get("optimizer"))
    grads_before = {n: p.grad for n, p in model.named_parameters()}
    report = traindoc.check(model, batch, **kw)
    assert report.info["passes"]["forward"] >= 1  # the probes really ran on this model
    assert fingerprint(model, kw.get("optimizer")) == before
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all((p.grad is None) == (grads_before[n] is None) for n, p in model.named_parameters())
    # the RNG stream continues exactly where it was
    assert torch.rand(1).item() == _rng_after_seed_then_setup(name)


def _rng_after_seed_then_setup(name: str) -> float:
    """The first torch.rand after the same seeding and set-up, without any check in between."""
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    SETUPS[name]()
    return torch.rand(1).item()


def test_check_changes_nothing_that_training_then_sees():
    """After a check, a training step gives exactly the same weights as without the check."""
    results = []
    for do_check in (False, True):
        torch.manual_seed(7)
        model, batch, kw = setup_dropout_bn_adamw()
        if do_check:
            traindoc.check(model, batch, **kw)
        torch.manual_seed(99)
        kw["optimizer"].zero_grad()
        z.ce_loss(z.xy_forward(model, batch), batch).backward()  # dropout draws from the RNG
        kw["optimizer"].step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


# ------------------------------------------------------------------ bad input
def _raise_in_forward(model, batch):
    raise RuntimeError("boom")


def _raise_in_loss(output, batch):
    raise ValueError("bad loss")


@pytest.mark.parametrize("kwargs, argument", [
    (dict(model=z.MLP(), batch="not a batch"), "batch"),
    (dict(model=z.MLP(), batch=42), "batch"),
    (dict(model=z.MLP(), batch=torch.zeros(0, 8)), "batch"),
    (dict(model=z.MLP(), batch={}), "batch"),
    (dict(model=nn.ReLU(), batch=torch.randn(4, 8)), "model"),
    (dict(model="model", batch=torch.randn(4, 8)), "model"),
    (dict(model=z.MLP(), batch=z.classification_batch(), forward=_raise_in_forward), "forward"),
    (dict(model=z.MLP(), batch=torch.randn(4, 3)), "batch"),  # the default call fails: pass forward=
    (dict(model=z.MLP(), batch=z.classification_batch(), forward=z.xy_forward, loss_fn=_raise_in_loss), "loss_fn"),
    (dict(model=z.MLP(), batch=z.classification_batch(), optimizer="adam"), "optimizer"),
])
def test_bad_input_names_the_argument(kwargs, argument):
    model = kwargs["model"]
    before = fingerprint(model) if isinstance(model, nn.Module) else None
    with pytest.raises(traindoc.TraindocInputError) as info:
        traindoc.check(kwargs.pop("model"), kwargs.pop("batch"), **kwargs)
    assert info.value.argument == argument
    assert str(info.value).startswith(f"{argument}:")
    if before is not None:
        assert fingerprint(model) == before


# ------------------------------------------------------------------ internal failure of a probe
def test_failing_probe_becomes_a_hint_and_state_is_restored(monkeypatch):

    def broken(ctx):
        # disturb everything a probe could, then fail: the check must still restore all of it
        model = ctx.setup.model
        model.train()
        torch.rand(3)
        random.random()
        for p in model.parameters():
            p.grad = torch.ones_like(p)
            p.requires_grad_(False)
        for b in model.buffers():
            b.add_(1)
        ctx.setup.optimizer.param_groups[0]["lr"] = 123.0
        raise ZeroDivisionError("probe bug")

    monkeypatch.setattr(registry, "PROBES", [*registry.PROBES, registry.Probe("broken-probe", "model", broken)])
    model, batch, kw = setup_dropout_bn_adamw()
    before = fingerprint(model, kw["optimizer"])
    report = traindoc.check(model, batch, probes=["broken-probe", "no-grad-params", "oom-risk"], **kw)
    failed = report.get("probe-failed")
    assert len(failed) == 1 and failed[0].severity == "hint"
    assert failed[0].evidence["probe"] == "broken-probe" and failed[0].evidence["exception"] == "ZeroDivisionError"
    assert "memory" in report.info  # the other probes still ran
    assert fingerprint(model, kw["optimizer"]) == before


def test_a_forward_that_writes_its_weights_is_reported_not_hidden():
    """Weights, grads and optimizer state are not copied (a model filling most of a GPU must be
    checkable): a forward that writes them in eval mode is caught by checksum and named."""

    class SelfNormalising(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 3)

        def forward(self, x):
            with torch.no_grad():
                self.lin.weight.mul_(0.5)
            return self.lin(x)

    model = SelfNormalising()
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    report = traindoc.check(model, (x, y), forward=lambda m, b: m(b[0]),
                            loss_fn=lambda out, b: nn.functional.cross_entropy(out, b[1]))
    (changed,) = [f for f in report.get("probe-failed") if f.severity == "warning"]
    assert changed.evidence["changed"] == ["lin.weight"]
    healthy = traindoc.check(z.MLP(), z.classification_batch(), forward=z.xy_forward, loss_fn=z.ce_loss)
    assert "probe-failed" not in healthy


def test_the_snapshot_holds_buffers_only():
    """The memory a check needs beyond its passes: copies of the buffers, never of the weights."""
    model, batch, kw = setup_dropout_bn_adamw()
    report = traindoc.check(model, batch, **kw)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert report.info["snapshot_bytes"] == buffers < weights


def test_monkeypatched_real_probe_failure(monkeypatch):
    from traindoc.probes import memory

    def explode(ctx):
        raise RuntimeError("estimate failed")

    monkeypatch.setattr(memory, "memory_estimate", explode)
    report = traindoc.check(z.MLP(), z.classification_batch(), forward=z.xy_forward, loss_fn=z.ce_loss,
                            probes=["oom-risk", "double-softmax"])
    assert report.ids == ["probe-failed"] and report.findings[0].evidence["probe"] == "oom-risk"
    assert report.ok

