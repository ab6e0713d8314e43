"""The HF Trainer's gradient-accumulation normalisation, proved by `TraindocCallback` on the real Trainer
and real model classes built from tiny configs (CPU, two steps, no network).

transformers 5.x stops dividing each micro-batch loss by ``gradient_accumulation_steps`` when the
model's forward accepts ``**kwargs``, trusting the model to normalise by ``num_items_in_batch``; the
BERT heads ignore it and return a plain mean, so every gradient is k times too large (upstream
transformers #47688). A causal LM normalises by ``num_items_in_batch`` and is healthy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from traindoc.rundir import read_run

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")

LN3 = math.log(3)


@pytest.fixture(autouse=True)
def _reset_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts from a clean state."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _bert(kind: str = "single") -> Any:
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(0)
    problem = {"single": None, "regression": None, "multi": "multi_label_classification", "token": None}[kind]
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=1 if kind == "regression" else 3,
                        problem_type=problem)
    return (BertForTokenClassification if kind == "token" else BertForSequenceClassification)(config)


def _data(kind: str = "single", n: int = 32, length: int = 8) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(1, 50, (length,), generator=g)
        if kind == "single":
            labels = torch.tensor(i % 3)
        elif kind == "regression":
            labels = torch.randn((), generator=g)
        elif kind == "multi":
            labels = torch.randint(0, 2, (3,), generator=g).float()
        else:  # token classification: a few positions ignored, a different count per sample
            labels = torch.randint(0, 3, (length,), generator=g)
            labels[: i % 4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels})
    return out


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0))


def _lm_data(n: int = 32, length: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(1, 64, (length,), generator=g)
        labels = ids.clone()
        labels[length - i % 5:] = -100  # a different number of targets per sample
        out.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones(length, dtype=torch.long)})
    return out


def _train(tmp_path: Path, model: Any, data: list[dict[str, torch.Tensor]], accumulation: int,
           tweak: Any = None) -> tuple[Any, Any]:
    from transformers import Trainer, TrainingArguments

    from traindoc.integrations.hf import TraindocCallback

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                             gradient_accumulation_steps=accumulation, learning_rate=1e-3, logging_steps=1,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    cb = TraindocCallback(run_dir=tmp_path / "run", print_summary=False, tensorboard=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    if tweak is not None:
        tweak(trainer)
    trainer.train()
    return trainer, cb


def _hf_losses(trainer: Any) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _traindoc_losses(tmp_path: Path) -> list[float]:
    return [r["loss"] for r in read_run(tmp_path / "run").scalars]


@pytest.mark.parametrize("kind", ["single", "regression", "multi", "token"])
def test_bert_ignoring_num_items_in_batch_under_accumulation_is_proved(tmp_path: Path, kind: str) -> None:
    trainer, cb = _train(tmp_path, _bert(kind), _data(kind), accumulation=2)

    [f] = cb.report.get("grad-accum-normalization")
    e = f.evidence
    assert f.severity == "error" and e["step"] == 0 and e["gradient_accumulation_steps"] == 2
    assert "BertFor" in e["model"] and "ignores num_items_in_batch" in f.title
    # fact 1: the model returned the plain mean over its own items, not sum / num_items_in_batch
    assert e["returned_is"] == "plain mean (num_items_in_batch ignored)"
    assert e["returned_loss"] == pytest.approx(e["plain_mean"], rel=1e-4)
    assert e["returned_loss"] == pytest.approx(2 * e["sum_over_num_items_in_batch"], rel=0.35)
    assert e["num_items_in_batch"] > e["items"]
    # fact 2: the Trainer backpropagated it as returned (gradient 1 reaching it, not 1/2)
    assert e["trainer_divided"] is False and e["loss_gradient_scale"] == pytest.approx(1.0)
    assert e["gradient_factor"] == pytest.approx(e["num_items_in_batch"] / e["items"])
    assert len(e["micro_batches"]) == 2
    # the finding reaches the run directory, and the logged step loss is what the Trainer logged
    assert [r["id"] for r in read_run(tmp_path / "run").findings] == ["grad-accum-normalization"]
    assert "loss_is_scaled_for_ga = False" in f.fix and "accepts_loss_kwargs = False" in f.fix
    assert _traindoc_losses(tmp_path) == pytest.approx(_hf_losses(trainer), rel=1e-5)
    if kind == "single":  # independent evidence: a fresh 3-class head starts at 2 x ln 3, not ln 3
        assert e["gradient_factor"] == pytest.approx(2.0)
        assert e["chance_loss"] == pytest.approx(LN3) and e["classes"] == 3
        assert e["step_loss"] == pytest.approx(2 * LN3, abs=0.03) == _hf_losses(trainer)[0]
        assert e["step_loss_over_chance"] == pytest.approx(2.0, abs=0.03)
    else:
        assert e["loss_kind"] == {"regression": "squared error over label values",
                                  "multi": "binary cross-entropy over label values",
                                  "token": "cross-entropy over tokens"}[kind]


def test_bert_without_accumulation_stays_quiet(tmp_path: Path) -> None:
    trainer, cb = _train(tmp_path, _bert(), _data(), accumulation=1)
    assert "grad-accum-normalization" not in cb.report
    check = cb.accumulation_check
    assert check["verdict"] == "no-accumulation"
    assert {r["returned_is"] for r in check["micro_batches"]} == {"both (equal here)"}
    assert _hf_losses(trainer)[0] == pytest.approx(LN3, abs=0.03)


def test_causal_lm_normalising_by_num_items_in_batch_stays_quiet(tmp_path: Path) -> None:
    trainer, cb = _train(tmp_path, _gpt2(), _lm_data(), accumulation=2)
    assert "grad-accum-normalization" not in cb.report
    check = cb.accumulation_check
    assert check["verdict"] == "healthy" and check["step"] == 0
    assert check["micro_batches"][0]["loss_kind"] == "cross-entropy over tokens (shifted: causal LM)"
    for r in check["micro_batches"]:
        assert r["returned_is"] == "sum / num_items_in_batch" and r["trainer_divided"] is False
        assert r["returned_loss"] == pytest.approx(r["sum_over_num_items_in_batch"], rel=1e-4)
    assert _traindoc_losses(tmp_path) == pytest.approx(_hf_losses(trainer), rel=1e-5)


def test_normalised_loss_divided_again_is_too_small(tmp_path: Path) -> None:
    """The first fix applied to a model that needs none halves every gradient: also proved."""
    def divide(trainer: Any) -> None:
        trainer.loss_is_scaled_for_ga = False

    _, cb = _train(tmp_path, _gpt2(), _lm_data(), accumulation=2, tweak=divide)
    [f] = cb.report.get("grad-accum-normalization")
    assert f.severity == "error" and "too small" in f.title
    assert f.evidence["trainer_divided"] is True
    assert f.evidence["loss_gradient_scale"] == pytest.approx(0.5)
    assert f.evidence["gradient_factor"] == pytest.approx(0.5)


@pytest.mark.parametrize("fix", ["loss_is_scaled_for_ga", "accepts_loss_kwargs"])
def test_the_fixes_in_the_finding_work(tmp_path: Path, fix: str) -> None:
    """Each fix the finding names: no finding, the first loss is ln 3 again, the gradient halves."""
    model = _bert()
    if fix == "accepts_loss_kwargs":
        model.accepts_loss_kwargs = False  # before building the Trainer

    def tweak(trainer: Any) -> None:
        if fix == "loss_is_scaled_for_ga":
            trainer.loss_is_scaled_for_ga = False

    trainer, cb = _train(tmp_path, model, _data(), accumulation=2, tweak=tweak)
    assert "grad-accum-normalization" not in cb.report
    assert _hf_losses(trainer)[0] == pytest.approx(LN3, abs=0.03)
    assert _traindoc_losses(tmp_path) == pytest.approx(_hf_losses(trainer), rel=1e-5)
    if fix == "loss_is_scaled_for_ga":  # num_items_in_batch still passed: the check ran and saw the division
        assert cb.accumulation_check["verdict"] == "healthy"
        assert {r["loss_gradient_scale"] for r in cb.accumulation_check["micro_batches"]} == {0.5}
    else:  # the Trainer no longer passes num_items_in_batch: nothing to check
        assert cb.accumulation_check is None


def test_a_failing_check_never_reaches_the_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import traindoc.integrations.hf as hf

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(hf, "item_losses", broken)
    trainer, cb = _train(tmp_path, _bert(), _data(), accumulation=2)
    assert trainer.state.global_step == 2 and cb.report.info["steps"] == 2
    assert "grad-accum-normalization" not in cb.report
    [f] = cb.report.get("probe-failed")
    assert "accumulation check" in f.title and "boom" in f.title
    assert cb.accumulation_check["verdict"] == "undetermined"
    assert _traindoc_losses(tmp_path) == pytest.approx(_hf_losses(trainer), rel=1e-5)


def test_a_loss_it_cannot_mirror_is_left_alone_after_one_look(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model taking **kwargs whose logits do not fit any mirrored loss: no finding, no cost after the first look."""
    import traindoc.integrations.hf as hf

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 4)

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
            logits = self.emb(input_ids).unsqueeze(1)  # (B, 1, T, 4): no head traindoc mirrors
            return {"loss": logits.square().mean(), "logits": logits}

    calls = []
    real = hf.item_losses
    monkeypatch.setattr(hf, "item_losses", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = [{"input_ids": d["input_ids"], "labels": d["labels"]} for d in _data()]
    torch.manual_seed(0)
    trainer, cb = _train(tmp_path, Odd(), data, accumulation=2)
    assert trainer.model_accepts_loss_kwargs and trainer.state.global_step == 2
    assert cb.report.findings == [] and len(calls) == 1
    assert cb.accumulation_check["verdict"] == "undetermined" and "no mirror" in cb.accumulation_check["reason"]


def test_watch_add_finding(tmp_path: Path) -> None:
    import traindoc
    from traindoc.errors import TraindocInputError
    from traindoc.findings import Finding

    model = torch.nn.Linear(2, 1)
    w = traindoc.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=tmp_path / "run",
                       tensorboard=False, detectors=[])
    with pytest.raises(TraindocInputError):
        w.add_finding("grad-accum-normalization")  # type: ignore[arg-type]
    w.add_finding(Finding("grad-accum-normalization", "error", "proved elsewhere"))
    report = w.close()
    w.add_finding(Finding("loss-spike", "warning", "after close: ignored"))
    assert report.ids == ["grad-accum-normalization"]
    assert [(r["step"], r["id"]) for r in read_run(tmp_path / "run").findings] == [(0, "grad-accum-normalization")]
