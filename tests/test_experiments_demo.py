"""The experiments on the bundled demo: from Python on its two models, and from the command line on
examples/chatbot_train.py, the demo written as an ordinary training script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("chitchat_dataset")
pytest.importorskip("tokenizers")

from traindoc.cli import main  # noqa: E402
from traindoc.experiments import overfit_batch, tune_lr  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chatbot_train.py"


@pytest.fixture(scope="module")
def demo():
    from traindoc.demo.data import prepare_data
    from traindoc.demo.model import ModelConfig
    from traindoc.demo.train import make_twins

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = prepare_data(block_size=24, vocab_size=1000, max_conversations=300)
    cfg = ModelConfig(vocab_size=data.tokenizer.vocab_size, block_size=24, dropout=0.0)
    yield make_twins(cfg, data.tokenizer.eos_token_id, lr=2e-3, seed=0), data.batches(40, 32, seed=0)
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_from_python_the_broken_demo_model_cannot_overfit_a_batch_and_the_fixed_one_can(demo):
    (broken, fixed), batches = demo
    results = {t.name: overfit_batch(t.model, batches, optimizer=t.optimizer, forward=t.forward, loss_fn=t.loss_fn,
                                     steps=60) for t in (broken, fixed)}
    assert results["fixed"]["reached"] and results["fixed"].findings == []
    (f,) = results["broken"].findings
    assert f.severity == "error" and {"batch-mixing", "causal-leak"} <= set(f.evidence["proved"])


@pytest.mark.slow
def test_from_python_an_lr_for_the_demo_model(demo):
    (_, fixed), batches = demo
    r = tune_lr(fixed.model, batches, optimizer=fixed.optimizer, forward=fixed.forward, loss_fn=fixed.loss_fn,
                max_steps=20, trials=3, seeds=1, planned_steps=600)
    low, high = r["lr_range"]
    assert low <= r["suggested_lr"] <= high and r["suggested_lr"] <= r["short_run_lr"]


@pytest.mark.slow
def test_from_the_command_line_on_the_demo_script(tmp_path):
    out = tmp_path / "broken.json"
    code = main(["overfit", str(EXAMPLE), "--max-steps", "40", "--json", str(out), "--trials-dir", str(tmp_path / "t"),
                 "--", "--conversations", "300", "--broken"])
    assert code == 0
    data = json.loads(out.read_text())
    (f,) = data["findings"]
    assert f["id"] == "cannot-overfit-batch" and "batch-mixing" in f["evidence"]["proved"]
    assert f["location"]["file"].endswith("chatbot_train.py")
