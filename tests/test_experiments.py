"""The guided experiments from Python: each on a healthy setup and on its broken twin, on copies (the
user's model, optimizer and RNG come back bit-identical), reproducible, the same with a process pool."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traindoc
from traindoc.errors import TraindocInputError
from traindoc.experiments import clip_threshold, instability, overfit_batch, tune_lr, tune_warmup, verify_fix
from traindoc.state import fingerprint


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def task(n: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = ((x[:, 0] + x[:, 1] * x[:, 2]) > 0).long() + 2 * (x[:, 3] > 0).long()  # 4 classes
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def ce(out, batch):
    return F.cross_entropy(out, batch[1])


# --------------------------------------------------------------------------- the user's objects


@pytest.mark.parametrize("experiment", ["overfit", "lr", "instability", "warmup", "clip", "fix"])
def test_every_experiment_leaves_the_users_model_optimizer_and_rng_untouched(experiment):
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = task()
    F.cross_entropy(model(batches[0][0]), batches[0][1]).backward()  # a real loop's state: grads and Adam moments
    opt.step()
    model.eval()  # and a mode the experiment must not change
    before, rng = fingerprint(model, opt), torch.get_rng_state()
    run = {
        "overfit": lambda: overfit_batch(model, batches, optimizer=opt, loss_fn=ce, steps=30),
        "lr": lambda: tune_lr(model, batches, optimizer=opt, loss_fn=ce, max_steps=20, trials=3, seeds=1),
        "instability": lambda: instability(model, batches, optimizer=opt, loss_fn=ce, steps=30),
        "warmup": lambda: tune_warmup(model, batches, optimizer=opt, loss_fn=ce, planned_steps=200, max_steps=30),
        "clip": lambda: clip_threshold(model, batches, optimizer=opt, loss_fn=ce, steps=20),
        "fix": lambda: verify_fix(model, batches, optimizer=opt, loss_fn=ce, change={"lr": 1e-2}, steps=20, seeds=1),
    }[experiment]
    result = run()
    assert result.to_dict()["version"] == 1 and result.experiment in experiment
    assert fingerprint(model, opt) == before and torch.equal(torch.get_rng_state(), rng)
    assert not model.training


def test_results_are_reproducible_and_the_same_in_a_process_pool():
    model, batches = mlp(), task()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    runs = [tune_lr(model, batches, optimizer=opt, loss_fn=ce, max_steps=24, trials=4, seeds=2, jobs=jobs)
            for jobs in (1, 1, 2)]
    assert runs[0].result == runs[1].result == runs[2].result


def test_bad_input_is_one_clear_error():
    model = mlp()
    with pytest.raises(TraindocInputError, match="optimizer"):
        tune_lr(model, task(), loss_fn=ce)
    with pytest.raises(TraindocInputError, match="batch"):
        overfit_batch(model, [], optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=ce)
    with pytest.raises(TraindocInputError, match="loss"):
        overfit_batch(model, task(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TraindocInputError, match="change"):
        verify_fix(model, task(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=ce, change={"lrr": 1})


# --------------------------------------------------------------------------- overfit one batch


def test_a_healthy_model_overfits_one_batch_and_says_how_fast():
    model = mlp()
    r = overfit_batch(model, task(), optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), loss_fn=ce)
    assert r["reached"] and 0 < r["steps_to_floor"] < 200 and r.findings == []


class Detached(nn.Module):
    """The classic ``.detach()`` left in forward: no parameter gets a gradient from the loss."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.body(x).detach().requires_grad_()


@pytest.mark.parametrize("broken, diagnosis, severity, cause", [
    ("detached", "broken-setup", "error", "no-grad-params"),
    ("optimizer-of-an-earlier-model", "broken-setup", "error", "params-not-in-optimizer"),
    ("lr-zero", "broken-setup", "error", "the LR is 0"),
    ("lr-huge", None, None, None),
    ("lr-low", "stops-high", "warning", None),
])
def test_a_model_that_cannot_overfit_one_batch_is_diagnosed(broken, diagnosis, severity, cause):
    model = Detached() if broken == "detached" else mlp()
    params = mlp(1).parameters() if broken == "optimizer-of-an-earlier-model" else model.parameters()
    lr = {"lr-zero": 0.0, "lr-huge": 50.0, "lr-low": 3e-3}.get(broken, 3e-3)
    r = overfit_batch(model, task(), optimizer=torch.optim.SGD(params, lr=lr) if broken.startswith("lr")
                      else torch.optim.Adam(params, lr=lr), loss_fn=ce)
    (f,) = r.findings
    assert f.id == "cannot-overfit-batch" and not r["reached"]
    if broken == "lr-huge":  # too high: NaN or oscillation, never "too low"
        assert f.evidence["diagnosis"] in ("turns-nan", "oscillates")
        return
    assert (f.evidence["diagnosis"], f.severity) == (diagnosis, severity)
    if cause:
        assert cause in f.evidence["cause"]


# --------------------------------------------------------------------------- the learning rate


def test_lr_in_the_range_has_no_finding_and_far_below_or_above_it_does():
    model, batches = mlp(), task()
    results = {lr: tune_lr(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=lr), loss_fn=ce,
                           max_steps=60, trials=5, seeds=2) for lr in (1e-4, 100.0)}
    low = results[1e-4]
    lo, hi = low["lr_range"]
    assert lo <= low["suggested_lr"] <= hi and (low["unstable_lr"] is None or low["unstable_lr"] > hi)
    assert low.ids == ["lr-too-low"]
    assert results[100.0].ids == ["lr-too-high"]
    good = tune_lr(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=low["suggested_lr"]),
                   loss_fn=ce, max_steps=60, trials=5, seeds=2)
    assert good.ids == []
    assert set(good.curves) >= {"ramp"} and good.info["trials"] == 1 + 7 * 2


def test_the_horizon_is_measured_and_explained_not_extrapolated():
    model, batches = mlp(), task()
    r = tune_lr(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=ce,
                max_steps=60, trials=5, seeds=1, planned_steps=6000)
    assert r["suggested_lr"] == r["short_run_lr"] and list(r["best_lr_by_steps"]) == ["15", "30", "60"]
    assert "6000" in r["horizon_note"] or "did not fall" in r["horizon_note"]


# --------------------------------------------------------------------------- stability, warmup, clipping


def test_instability_early_sudden_and_stable():
    model, batches = mlp(), task()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    assert instability(model, batches, optimizer=opt, loss_fn=ce, steps=60).findings == []
    early = instability(model, batches, optimizer=opt, loss_fn=ce, lr=200.0, steps=60)
    assert early["kind"] == "early" and early.ids == ["divergence"]
    # a batch at step 10 with inputs 1000x larger: the run breaks mid-way, warmup would not have helped
    shocked = batches[:10] + [(batches[10][0] * 1000, batches[10][1])] + batches[11:]
    sudden = instability(model, shocked, optimizer=opt, loss_fn=ce, lr=0.5, steps=60, seed=0)
    assert sudden["kind"] == "sudden" and sudden["unstable_at_step"] >= 10 and sudden.ids == ["divergence"]


def test_warmup_sweep_over_orders_of_magnitude():
    model, batches = mlp(), task()
    stable = tune_warmup(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=ce,
                         planned_steps=300, max_steps=60)
    assert stable["tried"] == [0, 1, 3, 30] and stable["warmup_steps"] == 0 and stable.findings == []
    hopeless = tune_warmup(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=500.0), loss_fn=ce,
                           planned_steps=300, max_steps=60)
    assert hopeless["warmup_steps"] is None and hopeless.ids == ["divergence"]


def test_clip_threshold_from_norms_a_run_directory_and_a_short_run(tmp_path):
    model, batches = mlp(), task()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with traindoc.watch(model, opt, run_dir=tmp_path, tensorboard=False, quiet=True) as w:
        for x, y in batches * 2:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # clips every step
            opt.step()
            opt.zero_grad()
            w.log(loss=loss)
    from_dir = clip_threshold(run_dir=tmp_path)
    assert from_dir["current"] == 1e-3 and from_dir["clipped_fraction"] == 1.0 and from_dir.ids == ["aggressive-clipping"]
    fresh = mlp()
    short = clip_threshold(fresh, batches, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.05), loss_fn=ce, steps=40)
    assert short.findings == [] and short["fraction_above_threshold"] == pytest.approx(0.1, abs=0.05)
    assert math.isclose(sum(short["histogram"]["counts"]), 40)


# --------------------------------------------------------------------------- verified fixes


def test_a_fix_that_helps_says_so_and_one_that_does_not_says_that():
    model, batches = mlp(), task()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    helped = verify_fix(model, batches, optimizer=opt, loss_fn=ce, change={"lr": 0.05}, steps=60)
    assert helped["helped"] and helped["loss_after"] < helped["loss_before"]
    same = verify_fix(model, batches, optimizer=opt, loss_fn=ce, change={"lr": 1e-4}, steps=30)
    assert not same["helped"] and same["verdict"] == "did not help"


def test_adding_the_missing_zero_grad_is_verified_against_the_loop_without_it():
    model, batches = mlp(), task()
    r = verify_fix(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=ce,
                   change={"zero_grad": True}, steps=60)
    assert r["baseline"] == {"zero_grad": False} and r["helped"]


def test_an_experiment_renders_as_a_page_with_its_plots(tmp_path):
    pytest.importorskip("plotly")
    from traindoc.report.html import write_experiment_html

    model, batches = mlp(), task()
    r = tune_lr(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=1e-4), loss_fn=ce, max_steps=20,
                trials=3, seeds=1)
    page = write_experiment_html(r.to_dict(), tmp_path / "lr.html").read_text()
    assert 'data-plot="lr"' in page and 'data-plot="curves"' in page and "lr-too-low" in page
    clip = clip_threshold(grad_norms=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], current=2.5)
    assert 'data-plot="clip"' in write_experiment_html(clip.to_dict(), tmp_path / "clip.html").read_text()


def test_trials_on_a_local_ray_instance_give_the_same_answer():
    """``backend="ray"``: each trial a Ray task on a local instance the test starts; the plan travels
    through Ray's object store (lambdas and all), and the answer is the one the local run gives."""
    ray = pytest.importorskip("ray")
    model, batches = mlp(), task()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = lambda out, b: F.cross_entropy(out, b[1])  # noqa: E731 (travels by value; this test module does not)
    local = tune_lr(model, batches, optimizer=opt, loss_fn=loss, max_steps=20, trials=3, seeds=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = tune_lr(model, batches, optimizer=opt, loss_fn=loss, max_steps=20, trials=3, seeds=2, backend="ray")
        fixed = verify_fix(model, batches, optimizer=opt, loss_fn=loss, change={"lr": 1e-5}, steps=20, seeds=1,
                           backend="ray")
    finally:
        ray.shutdown()
    assert remote.result == local.result
    assert fixed["verdict"] in ("made it worse", "did not help")


def test_pads_counted_in_the_loss_are_ab_tested_on_the_real_targets():
    """``change={"ignore_index": PAD}``: the after arm's cross-entropy skips the pads; both arms are
    scored on the targets that are not pads (recorded beside each step's loss), since their own
    losses count different targets."""
    torch.manual_seed(0)
    emb = nn.Sequential(nn.Embedding(20, 32), nn.Linear(32, 20))
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(8):
        ids = torch.randint(2, 20, (16, 12), generator=g)
        ids[:, 6:] = 0  # half of every row is padding, left in the targets
        batches.append(ids)

    def lm_loss(out, ids):
        return F.cross_entropy(out[:, :-1].reshape(-1, 20), ids[:, 1:].reshape(-1))

    r = verify_fix(emb, batches, optimizer=torch.optim.Adam(emb.parameters(), lr=1e-2), forward=lambda m, b: m(b),
                   loss_fn=lm_loss, change={"ignore_index": 0}, steps=30, seeds=1)
    before, after = r.curves["before"], r.curves["after"]
    assert after.scores == pytest.approx(after.losses, rel=1e-5)  # the fixed loss is the score itself
    assert before.scores[-1] > before.losses[-1]  # pads are easy targets once learned: counting them lowers the loss
    assert math.isfinite(r["loss_before"]) and math.isfinite(r["loss_after"]) and r["verdict"]
    assert F.cross_entropy is not None and F.cross_entropy.__module__ == "torch.nn.functional"  # restored


def test_a_scheduler_fix_is_verified_on_a_script_not_on_a_copy():
    model = mlp()
    with pytest.raises(TraindocInputError, match="script"):
        verify_fix(model, task(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=ce,
                   change={"scheduler_per_step": True})
