"""batch-mixing, causal-leak, padding-leak: each bug proved on a tiny model, each healthy twin clean."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traindoc
from seq_models import (
    PoolingClassifier,
    StuckChatbot,
    TinyDecoderLM,
    chatbot_batch,
    chatbot_forward,
    chatbot_loss,
    fixed_loss,
    lm_batch,
    lm_loss,
)

DEPENDENCY = ["batch-mixing", "causal-leak", "padding-leak"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def run(model, batch, **kw):
    return traindoc.check(model, batch, probes=DEPENDENCY, **kw)


def test_chatbot_broken_chatbot_shows_all_three_bugs():
    report = run(StuckChatbot(fixed=False), chatbot_batch(), forward=chatbot_forward(True), loss_fn=chatbot_loss)
    assert set(report.ids) == set(DEPENDENCY)
    mixing = report.get("batch-mixing")[0]
    assert mixing.severity == "error"
    assert mixing.evidence["cross_sample"][0]["max_abs_grad"] > 0
    assert any("batch_first=False" in s for s in mixing.evidence["attention_over_batch_axis"])
    causal = report.get("causal-leak")[0]
    # batch_first hides the future from the gradient probe; the observed decoder attention proves it
    assert causal.evidence["max_abs_grad_future"] == 0.0
    assert causal.evidence["self_attention_without_causal_mask"]
    assert "batch" in causal.evidence["note"]
    padding = report.get("padding-leak")[0]
    observed = padding.evidence["attention_masks_observed"]
    assert {o["mask"] for o in observed} >= {"attention_mask", "target_attention_mask"}
    assert all(o["transposed"] for o in observed)


def test_chatbot_fixed_chatbot_is_clean():
    report = run(StuckChatbot(fixed=True), chatbot_batch(), forward=chatbot_forward(False), loss_fn=fixed_loss)
    assert report.ids == []
    assert report.info["task"] == "seq2seq"
    assert report.info["passes"] == {"forward": 1, "backward": 2}


def test_missing_tgt_mask_is_proved_by_gradient_when_layout_is_right():
    model = StuckChatbot(fixed=True, causal=False)
    report = run(model, chatbot_batch(), forward=chatbot_forward(False), loss_fn=fixed_loss)
    assert report.ids == ["causal-leak"]
    ev = report.get("causal-leak")[0].evidence
    assert ev["max_abs_grad_future"] > 0 and ev["future_positions_seen_count"] >= 5
    assert ev["decoder_input"] == "target_inputs"


def test_inverted_key_padding_mask_with_right_layout():
    model = StuckChatbot(fixed=True, invert_masks=True)
    report = run(model, chatbot_batch(), forward=chatbot_forward(False), loss_fn=fixed_loss)
    assert report.ids == ["padding-leak"]
    f = report.get("padding-leak")[0]
    assert f.evidence["dependency_on_pads"][0]["max_abs_grad_at_pads"] > 0
    assert not f.evidence["attention_masks_observed"][0]["transposed"]


@pytest.mark.parametrize("causal", [True, False])
def test_decoder_only_lm_causal_mask(causal):
    report = run(TinyDecoderLM(causal=causal), lm_batch(), loss_fn=lm_loss)
    assert report.info["task"] == "causal-lm"
    assert report.ids == ([] if causal else ["causal-leak"])


def test_decoder_only_without_key_padding_mask_and_right_padding_is_clean():
    # right padding + causal mask: real tokens never see the pads, even with no key-padding mask
    batch = lm_batch()
    report = run(TinyDecoderLM(causal=True), batch, forward=lambda m, b: m(b["input_ids"]), loss_fn=lm_loss)
    assert report.ids == []


@pytest.mark.parametrize("mask_pads", [True, False])
def test_classifier_pooling_over_pads(mask_pads):
    batch = lm_batch()
    batch["labels"] = torch.tensor([0, 1, 2, 1])
    report = run(PoolingClassifier(mask_pads=mask_pads), batch)
    assert report.info["task"] == "classification"
    assert report.ids == ([] if mask_pads else ["padding-leak"])


class BatchNormNet(nn.Module):
    def __init__(self, mix: bool = False):
        super().__init__()
        self.mix = mix
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        if self.mix:  # "normalises" with statistics of the whole batch, also at inference
            x = x - x.mean(0, keepdim=True)
        return self.net(x)


@pytest.mark.parametrize("mix", [False, True])
def test_batchnorm_is_not_mixing_but_batch_statistics_at_inference_are(mix):
    model = BatchNormNet(mix).train()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    report = run(model, (x, y), forward=lambda m, b: m(b[0]), loss_fn=lambda o, b: nn.functional.cross_entropy(o, b[1]))
    assert report.ids == (["batch-mixing"] if mix else [])
    assert model.training  # restored


def test_batch_of_one_cannot_mix():
    batch = {k: v[:1] for k, v in lm_batch().items()}
    assert "batch-mixing" not in run(TinyDecoderLM(causal=True), batch, loss_fn=lm_loss)


# ---------------------------------------------------------------- Hugging Face models from configs
transformers = pytest.importorskip("transformers")


def _hf_batch(B: int = 4, T: int = 12, V: int = 100):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -4:] = 0
    mask[3, -6:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                  pad_token_id=0, eos_token_id=0, bos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def test_hf_gpt2_right_padded_with_mask_is_clean():
    ids, mask = _hf_batch()
    report = run(_gpt2(), {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    assert report.ids == []
    assert report.info["task"] == "causal-lm"


def test_hf_gpt2_left_padded_without_attention_mask_leaks_padding():
    ids, mask = _hf_batch()
    ids, mask = torch.flip(ids, [1]), torch.flip(mask, [1])
    labels = ids.masked_fill(mask == 0, -100)
    assert run(_gpt2(), {"input_ids": ids, "labels": labels}).ids == ["padding-leak"]
    assert run(_gpt2(), {"input_ids": ids, "attention_mask": mask, "labels": labels}).ids == []


def test_hf_bert_classifier_and_t5_are_clean():
    ids, mask = _hf_batch()
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3))
    report = run(bert, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])})
    assert report.ids == [] and report.info["task"] == "classification"
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0,
        pad_token_id=0))
    labels = torch.randint(3, 100, (4, 8))
    labels[0, -2:] = -100
    report = run(t5, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert report.ids == [] and report.info["task"] == "seq2seq"
    assert report.info["passes"] == {"forward": 1, "backward": 2}


class SeqFirstCausalLM(nn.Module):
    """batch_first left False *with* is_causal: causal attention runs over the batch axis, so sample i
    sees samples < i only (sample 0 sees nothing: the probe must not anchor on it)."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(32, 50)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.out(self.enc(self.emb(x), mask=mask, is_causal=True))


@pytest.mark.parametrize("batch_first", [False, True])
def test_causal_attention_over_the_batch_axis_is_mixing(batch_first):
    x = torch.randint(1, 50, (4, 10))

    def loss(o, b):
        return nn.functional.cross_entropy(o[:, :-1].reshape(-1, 50), b[:, 1:].reshape(-1))

    report = run(SeqFirstCausalLM(batch_first), x, loss_fn=loss)
    assert report.ids == ([] if batch_first else ["batch-mixing"])


class TinyViT(nn.Module):
    """A vision transformer: patches, a CLS token, an encoder, the CLS output to a head."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 5, 16) * 0.02)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], 1) + self.pos
        return self.head(self.enc(t)[:, 0])


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_vit_left_at_batch_first_false_reads_a_token_that_carries_no_input(batch_first):
    """(B, T, E) into a seq-first encoder, then the CLS output ``[:, 0]``: for every sample that is the CLS
    token of sample 0's position across the batch, which no image reaches: the output is blind."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 3
    report = traindoc.check(TinyViT(batch_first), (x, y), forward=lambda m, b: m(b[0]),
                            loss_fn=lambda out, b: nn.functional.cross_entropy(out, b[1]))
    if batch_first:
        assert "batch-mixing" not in report
    else:
        (f,) = report.get("batch-mixing")
        assert f.severity == "error" and f.evidence["own_max_abs_grad"] == 0.0
        assert "batch_first=False" in f.evidence["attention_over_batch_axis"][0]


class SeqFirstRNNLM(nn.Module):
    """PyTorch's word-language-model example in small: an nn.RNN left at batch_first=False, called with
    the hidden state, returning (logits, hidden)."""

    def __init__(self, vocab: int = 30):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.rnn = nn.RNN(16, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, ids, hidden):
        out, hidden = self.rnn(self.emb(ids), hidden)
        return self.head(out), hidden


@pytest.mark.parametrize("time_major", [True, False])
def test_a_seq_first_rnn_fed_time_by_batch_is_not_mixing_but_fed_batch_by_time_is(time_major):
    """(T, B) ids with targets shifted along dim 0 (PyTorch's word-language-model example): dim 0 is time,
    and the recurrence along it is not samples mixing. The same RNN fed (B, T) rows (targets shifted
    along dim 1) runs its recurrence across the batch."""
    text = torch.randint(0, 30, (13, 8))  # 8 streams of 13 characters, laid out (T, B)
    rows = text if time_major else text.T.contiguous()
    ids, targets = (rows[:-1], rows[1:]) if time_major else (rows[:, :-1], rows[:, 1:])
    hidden = torch.zeros(1, ids.shape[1], 16)

    def loss_fn(out, batch):
        return nn.functional.cross_entropy(out[0].reshape(-1, 30), targets.reshape(-1))

    report = run(SeqFirstRNNLM(), (ids, hidden), forward=lambda m, b: m(*b), loss_fn=loss_fn)
    assert ("batch-mixing" in report.ids) == (not time_major), report.findings


class EmptyAwarePool(nn.Module):
    """Mean-pools the real tokens; a row with none (an empty document) pools its pads, by design."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask, labels=None):
        w = attention_mask.float()
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        pooled = (self.emb(input_ids) * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True)
        logits = self.head(pooled)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_an_empty_row_that_reads_its_pads_is_not_a_padding_leak():
    batch = lm_batch()
    batch["input_ids"][3] = 0
    batch["attention_mask"][3] = 0
    batch["labels"] = torch.tensor([0, 1, 2, 1])
    report = run(EmptyAwarePool(), batch)
    assert "padding-leak" not in report.ids, report.findings
