"""The integrations train a tiny model through the real library (CPU, a handful of steps, no network)
and must leave a run directory with one record per optimizer step, the right losses and a Report."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from traindoc.findings import Report
from traindoc.rundir import read_run

torch.set_num_threads(1)


def _losses(run_dir: Path) -> list[float | None]:
    return [r.get("loss") for r in read_run(run_dir).scalars]


@pytest.fixture(autouse=True)
def _reset_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts from a clean state."""
    yield
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        return
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_import_is_lazy() -> None:
    code = ("import sys, traindoc, traindoc.integrations; "
            "bad = [m for m in ('transformers', 'lightning', 'accelerate', 'plotly') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_callbacks_without_their_framework_name_the_extra() -> None:
    code = ("import sys\n"
            "for m in ('transformers', 'lightning', 'lightning.pytorch', 'pytorch_lightning'): sys.modules[m] = None\n"
            "import traindoc.integrations.hf as hf, traindoc.integrations.lightning as pl\n"
            "for mod in (hf, pl):\n"
            "    try:\n"
            "        mod.TraindocCallback()\n"
            "    except ImportError as e:\n"
            "        print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "pip install 'traindoc[hf]'" in res.stdout and "pip install 'traindoc[lightning]'" in res.stdout


# ----------------------------------------------------------------------------- Hugging Face Trainer


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(config)


def _lm_dataset(n: int, length: int = 12, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = int(torch.randint(1, 20, (1,), generator=g))
        ids = (torch.arange(length) * 3 + start) % 63 + 1  # a learnable arithmetic pattern
        out.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones(length, dtype=torch.long)})
    return out


@pytest.mark.parametrize("accumulation", [1, 2])
def test_hf_trainer_callback(tmp_path: Path, accumulation: int, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from traindoc.integrations.hf import TraindocCallback

    steps = 4
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation, learning_rate=1e-3, warmup_steps=2, logging_steps=1,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    cb = TraindocCallback(every=1, histograms_every=2)
    trainer = Trainer(model=_tiny_gpt2(), args=args, train_dataset=_lm_dataset(2 * accumulation * steps),
                      callbacks=[cb])
    trainer.train()

    assert isinstance(cb.report, Report)
    assert cb.report.info["steps"] == steps
    run_dir = tmp_path / "out" / "traindoc"
    run = read_run(run_dir)
    assert [r["step"] for r in run.scalars] == list(range(steps))
    assert [r["backward_calls"] for r in run.scalars] == [accumulation] * steps
    # the per-step loss equals what the Trainer itself logged (mean over the accumulated micro-batches)
    hf_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(hf_losses) == steps
    assert _losses(run_dir) == pytest.approx(hf_losses, abs=2e-3)
    # the Trainer's clipping (max_grad_norm=1.0) is seen, with the pre-clip norm it also logged
    assert {r["clip_threshold"] for r in run.scalars} == {1.0}
    hf_norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert [r["grad_norm"] for r in run.scalars] == pytest.approx(hf_norms, rel=1e-3)
    # the warmup shows in the recorded LR of the (two) param groups the Trainer builds
    lrs = [r["lr"][0] for r in run.scalars]
    assert lrs[0] < lrs[1] and len(run.scalars[0]["lr"]) == 2
    assert run.layers and run.histograms and (run_dir / "report.json").exists()
    out = capsys.readouterr().out
    assert f"traindoc: {steps} steps watched" in out and str(run_dir) in out
    if accumulation == 1:  # a second train() gets its own run directory, never appended to the first
        first = cb.report
        trainer.args.max_steps = 2
        trainer.train()
        assert cb.report is not first and cb.report.info["steps"] == 2
        assert len(read_run(run_dir).scalars) == steps
        assert [r["step"] for r in read_run(tmp_path / "out" / "traindoc-2").scalars] == [0, 1]


def test_hf_trainer_custom_compute_loss_uses_the_logged_loss(tmp_path: Path) -> None:
    """A model whose output holds no loss: the callback falls back to the Trainer's logged loss."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from traindoc.integrations.hf import TraindocCallback

    class OwnLoss(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            logits = model(**inputs).logits  # no labels passed: outputs.loss is None
            return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    cb = TraindocCallback(run_dir=tmp_path / "run", print_summary=False)
    trainer = OwnLoss(model=_tiny_gpt2(), args=args, train_dataset=_lm_dataset(6), callbacks=[cb])
    trainer.train()
    hf_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert cb.report.info["steps"] == 3
    assert _losses(tmp_path / "run") == pytest.approx(hf_losses, abs=1e-6)


def test_hf_trainer_nan_loss_is_recorded_not_filtered(tmp_path: Path) -> None:
    """The Trainer's logging_nan_inf_filter hides a NaN loss in its own logs; the run directory keeps it."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from traindoc.integrations.hf import TraindocCallback

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    data = _lm_dataset(8)
    for i in (4, 5):  # step 2's batch has no target at all: 0 tokens -> loss 0/0 = NaN, NaN gradients
        data[i]["labels"] = torch.full_like(data[i]["labels"], -100)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    cb = TraindocCallback(run_dir=tmp_path / "run", print_summary=False, every=1)
    trainer = InOrder(model=_tiny_gpt2(), args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    hf_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(v) for v in hf_losses)  # the Trainer's log hides it
    losses = _losses(tmp_path / "run")
    assert all(math.isfinite(v) for v in losses[:2]) and math.isnan(losses[2])
    assert cb.report.info["first_nonfinite_step"] == 2
    assert [f.evidence.get("step") for f in cb.report.get("nan-loss")] == [2]


class _FindsAtStepTwo:
    """A detector raising one finding at step 2 (to see the live stderr line, or its absence)."""

    ids = ("loss-spike",)

    def start(self, run):
        return []

    def update(self, record):
        from traindoc.findings import Finding

        return [Finding("loss-spike", "warning", "test finding", {"step": 2})] if record.step == 2 else []

    def finalize(self, end=None):
        return []


@pytest.mark.parametrize("quiet", [False, True])
def test_hf_trainer_passes_quiet_through(tmp_path: Path, quiet: bool, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from traindoc.integrations.hf import TraindocCallback

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    cb = TraindocCallback(print_summary=False, quiet=quiet, detectors=[_FindsAtStepTwo()])
    Trainer(model=_tiny_gpt2(), args=args, train_dataset=_lm_dataset(8), callbacks=[cb]).train()
    assert cb.report.ids == ["loss-spike"]
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("traindoc:")]
    assert lines == ([] if quiet else ["traindoc: WARNING loss-spike at step 2: test finding"])


# ----------------------------------------------------------------------------- Lightning


def _lightning_module(losses: list[float], lr: float = 0.05, manual_clip: bool = False):
    import lightning.pytorch as pl

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    return Regressor()


def _regression_loader(n: int = 64, batch_size: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :1] * 2 - x[:, 1:2]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_lightning_callback(tmp_path: Path, accumulation: int) -> None:
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from traindoc.integrations.lightning import TraindocCallback

    torch.manual_seed(0)
    losses: list[float] = []
    steps = 6
    cb = TraindocCallback(run_dir=tmp_path / "run", every=1, print_summary=False)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         accumulate_grad_batches=accumulation, gradient_clip_val=0.5, callbacks=[cb])
    trainer.fit(_lightning_module(losses), _regression_loader())

    assert isinstance(cb.report, Report) and cb.report.info["steps"] == steps
    run = read_run(tmp_path / "run")
    assert [r["step"] for r in run.scalars] == list(range(steps))
    assert [r["backward_calls"] for r in run.scalars] == [accumulation] * steps
    expected = [sum(losses[i * accumulation:(i + 1) * accumulation]) / accumulation for i in range(steps)]
    assert _losses(tmp_path / "run") == pytest.approx(expected, rel=1e-5)
    # gradient statistics belong to the step they were computed in (Lightning runs forward/backward
    # inside optimizer.step(closure)): every step has a gradient norm, clipped at Lightning's 0.5
    assert all(r["grad_norm"] is not None and math.isfinite(r["grad_norm"]) for r in run.scalars)
    assert {r["clip_threshold"] for r in run.scalars} == {0.5}
    assert len(run.layers) == steps and all(r["update_ratio"] for r in run.layers)


@pytest.mark.parametrize("quiet", [False, True])
def test_lightning_passes_quiet_through(tmp_path: Path, quiet: bool, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from traindoc.integrations.lightning import TraindocCallback

    torch.manual_seed(0)
    cb = TraindocCallback(run_dir=tmp_path / "run", print_summary=False, quiet=quiet, detectors=[_FindsAtStepTwo()])
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[cb])
    trainer.fit(_lightning_module([]), _regression_loader())
    assert cb.report.ids == ["loss-spike"]
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("traindoc:")]
    assert lines == ([] if quiet else ["traindoc: WARNING loss-spike at step 2: test finding"])


def test_lightning_gradient_norm_is_this_steps(tmp_path: Path) -> None:
    """The recorded norm is the gradient of the step's own batch, not the previous step's."""
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from traindoc.integrations.lightning import TraindocCallback

    seen: list[float] = []

    class Probe(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # after backward, before the step
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    torch.manual_seed(0)
    cb = TraindocCallback(run_dir=tmp_path / "run", print_summary=False)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[cb, Probe()])
    trainer.fit(_lightning_module([]), _regression_loader())
    run = read_run(tmp_path / "run")
    assert len(seen) == 4
    assert [r["grad_norm"] for r in run.scalars] == pytest.approx(seen, rel=1e-5)


def test_lightning_two_optimizers_get_two_run_dirs(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from traindoc.integrations.lightning import TraindocCallback

    class TwoOpt(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a = torch.nn.Linear(8, 4)
            self.b = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            opt_a, opt_b = self.optimizers()
            loss = torch.nn.functional.mse_loss(self.b(torch.tanh(self.a(x))), y)
            opt_a.zero_grad()
            opt_b.zero_grad()
            self.manual_backward(loss)
            opt_a.step()
            if batch_idx % 2 == 1:  # the second optimizer steps every other batch
                opt_b.step()
            return loss.detach()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.a.parameters(), lr=0.05), torch.optim.Adam(self.b.parameters(), lr=1e-3)]

    torch.manual_seed(0)
    cb = TraindocCallback(run_dir=tmp_path / "run", print_summary=False)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=6, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), callbacks=[cb])
    trainer.fit(TwoOpt(), _regression_loader())
    assert [r.info["steps"] for r in cb.reports] == [6, 3]
    # each optimizer's watch sees the other's parameters outside its own optimizer, held by the other watch
    assert [r.info["params_held_by_other_watches"] for r in cb.reports] == [2, 2]
    assert not any("params-not-in-optimizer" in r.ids for r in cb.reports)
    assert len(read_run(tmp_path / "run" / "optimizer0").scalars) == 6
    assert len(read_run(tmp_path / "run" / "optimizer1").scalars) == 3
    assert all(r["grad_norm"] is not None for r in read_run(tmp_path / "run" / "optimizer1").scalars)


# ----------------------------------------------------------------------------- Accelerate


@pytest.mark.parametrize("automatic", [False, True])
def test_accelerate_accumulate(tmp_path: Path, automatic: bool) -> None:
    pytest.importorskip("accelerate")
    from accelerate import Accelerator

    import traindoc
    from traindoc.integrations.accelerate import watch_accelerated

    torch.manual_seed(0)
    accumulation, micro_batches = 2, 8
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = _regression_loader(n=8 * micro_batches)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # what the inner optimizer really sees at each step, for comparison
    real_norms: list[float] = []
    inner = optimizer.optimizer
    inner.register_step_pre_hook(lambda opt, a, k: real_norms.append(
        float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))))

    if automatic:  # plain traindoc.watch on the prepared objects
        from traindoc.setup import unwrap_optimizer

        if unwrap_optimizer(optimizer) is optimizer:
            pytest.xfail("traindoc.watch does not unwrap AcceleratedOptimizer (a torch.optim.Optimizer subclass "
                         "whose hooks never fire): setup.py unwrap_optimizer; use watch_accelerated")
        w = traindoc.watch(model, optimizer, run_dir=tmp_path / "run", every=1)
    else:
        w = watch_accelerated(accelerator, model, optimizer, run_dir=tmp_path / "run", every=1)
    losses = []
    with w:
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                w.log(loss=loss.detach())
                losses.append(float(loss.detach()))
    assert isinstance(w.report, Report)
    steps = micro_batches // accumulation
    assert w.report.info["steps"] == steps
    run = read_run(tmp_path / "run")
    assert [r["step"] for r in run.scalars] == list(range(steps))
    assert [r["backward_calls"] for r in run.scalars] == [accumulation] * steps
    assert _losses(tmp_path / "run") == pytest.approx(
        [(losses[2 * i] + losses[2 * i + 1]) / 2 for i in range(steps)], rel=1e-5)
    assert [r["grad_norm"] for r in run.scalars] == pytest.approx(real_norms, rel=1e-5)
    assert len(real_norms) == steps
