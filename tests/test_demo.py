"""`traindoc demo`: data and tokenizer, the broken and fixed chatbots (checked with autograd directly,
not through traindoc's probes), and an end-to-end smoke run of a shrunken demo."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest
import torch

pytest.importorskip("chitchat_dataset")
pytest.importorskip("tokenizers")

from traindoc.demo import main as demo_main  # noqa: E402
from traindoc.demo.data import build_batch, load_conversations, prepare_data  # noqa: E402
from traindoc.demo.model import (  # noqa: E402
    BrokenLanguageModel,
    FixedLanguageModel,
    ModelConfig,
    broken_forward,
    fixed_forward,
    loss_without_eos_targets,
    reply_token_loss,
)
from traindoc.demo.train import (  # noqa: E402
    greedy_reply,
    heldout_loss,
    prompt_dependence,
    with_prompts_shuffled,
)

BLOCK = 12


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data():
    convs = load_conversations()[:300]
    return prepare_data(block_size=BLOCK, vocab_size=400, conversations=convs, tokenizer_messages=2000)


@pytest.fixture(scope="module")
def batch(data):
    return data.batches(1, 6, seed=1)[0]


def tiny_config(data) -> ModelConfig:
    return ModelConfig(vocab_size=data.tokenizer.vocab_size, n_embd=16, n_head=2, n_layer=1,
                       block_size=BLOCK, dim_feedforward=32, dropout=0.0)


def test_tokenizer_pads_with_eos_like_gpt2(data):
    tok = data.tokenizer
    assert tok.pad_token_id == tok.eos_token_id == tok.bos_token_id
    assert tok.decode([tok.eos_token_id]) == "<|endoftext|>"
    assert tok.decode(tok.encode("how are you?")) == "how are you?"
    assert 100 < tok.vocab_size <= 400
    assert len(data.train_pairs) > 100 and data.heldout_pairs
    assert all(0 < len(p) < BLOCK and 0 < len(r) < BLOCK for p, r in data.train_pairs)


def test_batch_layout_pads_with_eos_and_shifts_targets(data, batch):
    eos = data.tokenizer.eos_token_id
    assert set(batch) == {"input_ids", "attention_mask", "target_inputs", "target_labels", "target_attention_mask"}
    for value in batch.values():
        assert value.shape == (6, BLOCK)
    # targets are the decoder inputs shifted left by one
    assert torch.equal(batch["target_labels"][:, :-1], batch["target_inputs"][:, 1:])
    assert (batch["target_inputs"][:, 0] == eos).all()
    for i in range(6):
        n_src = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, n_src - 1] == eos  # prompt + eos
        assert (batch["input_ids"][i, n_src:] == eos).all()  # padded with eos
        n_tgt = int(batch["target_attention_mask"][i].sum())
        labels = batch["target_labels"][i]
        assert labels[n_tgt - 1] == eos and (labels[: n_tgt - 1] != eos).all()  # reply + eos
        assert (labels[n_tgt:] == eos).all()


def test_build_batch_rejects_pairs_longer_than_the_block(data):
    with pytest.raises(ValueError, match="block_size"):
        build_batch([([1] * BLOCK, [2])], data.tokenizer, BLOCK)


def test_broken_loss_drops_every_eos_and_the_fixed_loss_keeps_the_first(data, batch):
    eos = data.tokenizer.eos_token_id
    logits = torch.zeros(6, BLOCK, data.tokenizer.vocab_size)
    logits[..., eos] = 10.0  # a model that only says EOS
    n_reply_eos = int(batch["target_attention_mask"].sum())
    words_only = float(loss_without_eos_targets(logits, batch, eos))
    assert words_only > 9  # every EOS target is out: only real reply tokens, each at ~10
    eos_ce = math.log(math.exp(10.0) + logits.size(-1) - 1) - 10.0  # one EOS target per reply, ~0
    n_words = n_reply_eos - 6
    expected = (words_only * n_words + eos_ce * 6) / n_reply_eos
    assert float(reply_token_loss(logits, batch)) == pytest.approx(expected, rel=1e-5)


def test_twins_share_their_initial_weights_and_shapes(data, batch):
    cfg = tiny_config(data)
    torch.manual_seed(3)
    broken = BrokenLanguageModel(cfg)
    torch.manual_seed(3)
    fixed = FixedLanguageModel(cfg)
    assert broken.transformer.encoder.layers[0].self_attn.batch_first is False
    assert fixed.transformer.encoder.layers[0].self_attn.batch_first is True
    for (k1, v1), (k2, v2) in zip(broken.state_dict().items(), fixed.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert broken_forward(broken, batch).shape == (6, BLOCK, cfg.vocab_size)
    assert fixed_forward(fixed, batch).shape == (6, BLOCK, cfg.vocab_size)


def _embedding_grads(model, forward, batch, select):
    """d(select(output) . r)/d(encoder and decoder embeddings), the embeddings made leaves."""
    leaves = {}

    def leaf(name):
        def hook(_module, _inputs, out):
            leaves[name] = out.detach().requires_grad_()
            return leaves[name]
        return hook

    handles = [model.encoder_embedding_layer.register_forward_hook(leaf("enc")),
               model.decoder_embedding_layer.register_forward_hook(leaf("dec"))]
    try:
        model.eval()
        out = forward(model, batch)
        picked = select(out)
        r = torch.randn(picked.shape, generator=torch.Generator().manual_seed(0))
        (picked * r).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return leaves["enc"].grad.abs(), leaves["dec"].grad.abs()


def test_fixed_decoder_does_not_see_later_tokens_nor_other_samples(data, batch):
    torch.manual_seed(0)
    fixed = FixedLanguageModel(tiny_config(data))
    t = 2
    _, dec = _embedding_grads(fixed, fixed_forward, batch, lambda out: out[:, t])
    assert dec[:, : t + 1].sum() > 0
    assert dec[:, t + 1:].sum() == 0  # exactly: a causal decoder
    enc, dec = _embedding_grads(fixed, fixed_forward, batch, lambda out: out[0])
    assert enc[0].sum() > 0 and dec[0].sum() > 0
    assert enc[1:].sum() == 0 and dec[1:].sum() == 0  # exactly: samples stay apart


def test_broken_model_mixes_the_samples_of_a_batch(data, batch):
    torch.manual_seed(0)
    broken = BrokenLanguageModel(tiny_config(data))
    enc, dec = _embedding_grads(broken, broken_forward, batch, lambda out: out[0])
    assert enc[1:].sum() + dec[1:].sum() > 1e-4  # sample 0's output depends on samples 1..5


def test_broken_model_cannot_tell_its_own_prompt_from_the_others(data, batch):
    torch.manual_seed(0)
    cfg = tiny_config(data)
    broken, fixed = BrokenLanguageModel(cfg).eval(), FixedLanguageModel(cfg).eval()
    shuffled = with_prompts_shuffled(batch)
    assert not torch.equal(shuffled["input_ids"], batch["input_ids"])
    keep = batch["target_attention_mask"]
    with torch.no_grad():
        # the broken decoder reads the batch's prompts as one unordered set: giving every sample another
        # sample's prompt changes nothing
        torch.testing.assert_close(broken_forward(broken, shuffled), broken_forward(broken, batch),
                                   atol=1e-5, rtol=1e-5)
        assert abs(prompt_dependence(broken, broken_forward, [batch])) < 1e-4
        # the fixed one reads its own prompt
        moved = (fixed_forward(fixed, shuffled) - fixed_forward(fixed, batch))[keep].abs().max()
    assert moved > 1e-3


def test_fixed_model_ignores_what_sits_in_the_padding(data, batch):
    torch.manual_seed(0)
    fixed = FixedLanguageModel(tiny_config(data)).eval()
    noisy = dict(batch)
    for key, mask in (("input_ids", "attention_mask"), ("target_inputs", "target_attention_mask")):
        junk = torch.randint(0, data.tokenizer.vocab_size, batch[key].shape)
        noisy[key] = torch.where(batch[mask], batch[key], junk)
    assert not torch.equal(noisy["input_ids"], batch["input_ids"])
    keep = batch["target_attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(fixed_forward(fixed, noisy)[keep], fixed_forward(fixed, batch)[keep],
                                   atol=1e-5, rtol=1e-5)


def test_greedy_reply_stops_at_eos_and_heldout_loss_is_finite(data, batch):
    eos = data.tokenizer.eos_token_id
    torch.manual_seed(0)
    fixed = FixedLanguageModel(tiny_config(data))
    with torch.no_grad():
        fixed.fin.bias[eos] = 100.0
    assert greedy_reply(fixed, fixed_forward, [5, 6, 7], data.tokenizer, BLOCK) == ([], True)
    with torch.no_grad():
        fixed.fin.bias[eos] = -100.0
    ids, stopped = greedy_reply(fixed, fixed_forward, [5, 6, 7], data.tokenizer, BLOCK, max_new_tokens=5)
    assert len(ids) == 5 and not stopped and eos not in ids
    assert fixed.training  # train mode restored
    # the held-out metric scores the EOS ending each of the 6 replies: each costs > 100 nats now
    n_scored = int(batch["target_attention_mask"].sum())
    assert heldout_loss(fixed, fixed_forward, [batch]) > 100 * 6 / n_scored


def test_missing_optional_dependency_exits_2_with_the_install_hint(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(demo_main.importlib.util, "find_spec",
                        lambda name, *a: None if name == "plotly" else real(name, *a))
    assert demo_main.run_demo(steps=1, out_dir=tmp_path) == 2
    err = capsys.readouterr().err
    assert "plotly" in err and "pip install 'traindoc[demo]'" in err
    assert not any(tmp_path.iterdir())


def _small_demo(tmp_path, console):
    return demo_main.run_demo(steps=6, out_dir=tmp_path / "out", json_path=tmp_path / "report.json",
                              console=console, max_conversations=200,
                              model_config={"n_embd": 16, "n_head": 2, "n_layer": 1, "dim_feedforward": 32})


def test_demo_end_to_end_small_with_its_output_sent_to_a_log(tmp_path):
    import io

    from rich.console import Console

    from traindoc.cli import build_parser

    log = io.StringIO()  # what `traindoc demo > log.txt` writes to: not a terminal
    console = Console(file=log, width=140)
    assert not console.is_terminal
    torch.set_num_threads(2)
    try:
        rc = _small_demo(tmp_path, console)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(1)
    text = log.getvalue()
    # traindoc.check found the four bugs of the broken model and none in the fixed one
    assert rc == 0, text
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(demo_main.EXPECTED) <= {f["id"] for f in report["findings"]}
    # plain progress lines, one every ~10% of the steps (6 steps: every step), no live display
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert len(lines) == 6, lines
    assert re.fullmatch(r"step 6/6  train loss: broken \d+\.\d{3}, fixed \d+\.\d{3}  \d+ s", lines[-1])
    assert "\x1b[" not in text
    html = tmp_path / "out" / "loss_curves.html"
    assert html.exists() and "plotly" in html.read_text()[:5000].lower()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 6
    # one torch thread by default (the CLI's too): two fall off a cliff when another process takes a core
    assert summary["threads"] == demo_main.DEFAULT_THREADS == 1
    assert build_parser().parse_args(["demo"]).threads is None
    demo_help = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()  # noqa: SLF001
    assert f"(default {demo_main.DEFAULT_STEPS})" in demo_help and "(default 1:" in demo_help
    for name in ("broken", "fixed"):
        assert math.isfinite(summary[name]["heldout_loss"])
        assert [s for s, _ in summary[name]["heldout"]] == [0, 1, 2, 3, 4, 5, 6]
        assert (tmp_path / "out" / f"run-{name}" / "report.html").exists()
        assert f"traindoc.watch({name})" in text
    # the broken run's page holds what the doctor proved on the same model, not only the monitor's findings
    page = (tmp_path / "out" / "run-broken" / "report.html").read_text()
    assert all(f'data-finding-id="{fid}"' in page for fid in demo_main.EXPECTED)
    assert len(summary["replies"]) == len(demo_main.PROMPTS)
    assert "greedy replies" in text and "held-out loss" in text
    assert "seed" not in text.lower()


def test_training_shows_a_progress_bar_on_a_terminal(data, tmp_path):
    import io

    from rich.console import Console

    from traindoc.demo.train import make_twins

    screen = io.StringIO()
    console = Console(file=screen, width=140, force_terminal=True)
    twins = make_twins(tiny_config(data), data.tokenizer.eos_token_id, lr=1e-3)
    demo_main._train(console, twins, data.batches(4, 6), data.heldout_batches(6, 1), tmp_path)
    text = screen.getvalue()
    assert "\x1b[" in text and "train loss: broken" in text and "4/4" in text
    assert not re.search(r"^step \d+/4  train loss", text, flags=re.M)  # no plain log lines
    assert all(len(t.train_losses) == 4 and len(t.heldout) == 5 for t in twins)
    assert all(t.watch_report is not None and (tmp_path / f"run-{t.name}" / "report.json").exists() for t in twins)
