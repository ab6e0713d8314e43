"""Data probes: label-out-of-range, pad-equals-eos, padding-in-loss, labels-not-shifted, class-imbalance
and the decoded data view. Each bug on a tiny model (plain PyTorch and Hugging Face built from configs),
each healthy twin clean."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import traindoc
from data_models import (
    PAD,
    SENTENCES,
    TinyClassifier,
    TinyGRULM,
    TinyTagger,
    bert_style_tokenizer,
    classification_encoding,
    classifier_batch,
    classifier_loss,
    gpt2_style_tokenizer,
    lm_batch,
    lm_encoding,
    shifted_masked_loss,
    shifted_unmasked_loss,
    tagger_loss,
    tiny_bert_classifier,
    tiny_gpt2,
    unshifted_loss,
)
from data_models import (
    V as VOCAB,
)

DATA = ["label-out-of-range", "pad-equals-eos", "padding-in-loss", "labels-not-shifted", "class-imbalance",
        "data-view"]
DATA_IDS = set(DATA) - {"data-view"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gpt2_tok():
    return gpt2_style_tokenizer()


@pytest.fixture(scope="module")
def bert_tok():
    return bert_style_tokenizer()


def data_check(model, batch, **kw):
    return traindoc.check(model, batch, probes=DATA, **kw)


def data_ids(report) -> set[str]:
    return set(report.ids) & DATA_IDS


# ------------------------------------------------------------------------------ label-out-of-range
def test_hf_bert_label_2_with_two_classes_is_out_of_range(bert_tok):
    """The Hugging Face course's NaN loss: num_labels=2 and some labels are 2."""
    labels = [0, 1, 2, 0, 2, 1]
    batch = classification_encoding(bert_tok, labels)
    report = data_check(tiny_bert_classifier(bert_tok, num_labels=2), batch)
    [f] = report.get("label-out-of-range")
    assert f.severity == "error" and not report.ok
    ev = f.evidence
    assert ev["num_classes"] == 2
    assert ev["values"] == {"2": 2} and ev["count"] == 2
    assert ev["samples"] == [2, 4]
    assert ev["target_tensor"] == "labels"
    assert "config.num_labels = 2" in ev["num_classes_from"]
    assert "num_labels=3" in f.fix


def test_hf_bert_in_range_labels_are_clean(bert_tok):
    batch = classification_encoding(bert_tok, [0, 1, 1, 0, 1, 0])
    report = traindoc.check(tiny_bert_classifier(bert_tok, num_labels=2), batch, tokenizer=bert_tok)
    assert "label-out-of-range" not in report
    assert data_ids(report) == set()
    assert report.ok, report.findings


def test_the_check_survives_the_out_of_bounds_error_of_cpu_cross_entropy():
    """On CPU torch raises 'Target 3 is out of bounds'; the check must report, not crash."""
    batch = classifier_batch([0, 1, 2, 3, -1, 1])
    with pytest.raises(IndexError):
        classifier_loss(TinyClassifier(3)(batch["input_ids"], batch["attention_mask"]), batch)
    report = data_check(TinyClassifier(3), batch, loss_fn=classifier_loss)
    [f] = report.get("label-out-of-range")
    assert f.evidence["values"] == {"-1": 1, "3": 1}
    assert f.evidence["samples"] == [3, 4]
    assert f.evidence["ignore_index"] == -100
    assert "ignore_index" in f.fix and "masked_fill" in f.fix


def test_ignore_index_is_not_out_of_range():
    batch = classifier_batch([0, 1, 2, -100, 1, 2])
    report = data_check(TinyClassifier(3), batch, loss_fn=classifier_loss)
    assert "label-out-of-range" not in report


def test_ignore_index_passed_positionally_is_respected():
    """F.cross_entropy(input, target, weight, size_average, ignore_index): -1 is skipped, not out of range."""
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, -1, 0, 1, 2, -1])
    report = data_check(model, (x, y), forward=lambda m, b: m(b[0]),
                        loss_fn=lambda o, b: F.cross_entropy(o, b[1], None, None, -1))
    assert "label-out-of-range" not in report
    report = data_check(model, (x, y), forward=lambda m, b: m(b[0]), loss_fn=lambda o, b: F.cross_entropy(o, b[1]))
    assert report.get("label-out-of-range")[0].evidence["samples"] == [3, 7]


def test_token_targets_beyond_the_vocabulary_suggest_resizing_embeddings(gpt2_tok):
    """A tokenizer that grew (added tokens) and a model whose vocabulary did not."""
    model = TinyGRULM(vocab=len(gpt2_tok) - 3)
    batch = lm_encoding(gpt2_tok)
    batch["input_ids"] = batch["input_ids"].clamp(max=len(gpt2_tok) - 4)
    batch["input_ids"][0, 3] = len(gpt2_tok) - 1  # the new token is only a target
    batch["attention_mask"][:] = 1

    def loss_fn(out, b):
        targets = b["input_ids"][:, 1:].clone()
        targets[0, 2] = len(gpt2_tok) - 1
        return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), targets.reshape(-1))

    report = data_check(model, batch, forward=lambda m, b: m(b["input_ids"].clamp(max=len(gpt2_tok) - 4)),
                        loss_fn=loss_fn, tokenizer=gpt2_tok)
    [f] = report.get("label-out-of-range")
    assert f.evidence["num_classes"] == len(gpt2_tok) - 3
    assert f.evidence["values"] == {str(len(gpt2_tok) - 1): 1}
    assert "resize_token_embeddings" in f.fix


def test_bce_targets_outside_zero_one():
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.zeros(8, 3)
    y[5, 1] = 2.0
    report = data_check(model, (x, y), forward=lambda m, b: m(b[0]),
                        loss_fn=lambda o, b: F.binary_cross_entropy_with_logits(o, b[1]))
    [f] = report.get("label-out-of-range")
    assert f.evidence["values"] == [2.0] and f.evidence["samples"] == [5]
    y[5, 1] = 1.0
    report = data_check(model, (x, y), forward=lambda m, b: m(b[0]),
                        loss_fn=lambda o, b: F.binary_cross_entropy_with_logits(o, b[1]))
    assert "label-out-of-range" not in report


# ------------------------------------------------------------------ pad-equals-eos / padding-in-loss (HF)
def test_hf_gpt2_labels_with_pads_not_minus_100(gpt2_tok):
    """pad == eos and labels = input_ids: every pad is an EOS target."""
    batch = lm_encoding(gpt2_tok)
    batch["labels"] = batch["input_ids"].clone()
    report = data_check(tiny_gpt2(gpt2_tok), batch, tokenizer=gpt2_tok)
    assert data_ids(report) == {"pad-equals-eos", "padding-in-loss"}
    assert report.info["passes"] == {"forward": 1, "backward": 0}  # the data probes only read the main pass
    mask = batch["attention_mask"]
    # the model shifts the labels: position 0 is never a target
    expected = int((mask[:, 1:] == 0).sum())
    pad_rows = sorted({int(i) for i in torch.nonzero(mask[:, 1:] == 0)[:, 0]})
    assert expected > 0
    [pil] = report.get("padding-in-loss")
    assert pil.severity == "error"
    assert pil.evidence["pad_targets_in_loss"] == expected
    assert pil.evidence["mapping"] == "shifted" and pil.evidence["target_tensor"] == "labels"
    assert pil.evidence["samples"] == pad_rows
    assert "-100" in pil.fix
    [pe] = report.get("pad-equals-eos")
    assert pe.severity == "error"
    assert pe.evidence["eos_targets_at_pad_positions"] == expected
    assert pe.evidence["eos_targets_in_loss"] == expected + len(SENTENCES[:4])  # + one real EOS per row
    assert pe.evidence["pad_token_id"] == pe.evidence["eos_token_id"] == gpt2_tok.eos_token_id


def test_hf_gpt2_healthy_twin_is_clean(gpt2_tok):
    """Pads set to -100, the real EOS kept: labels == input_ids is right for a causal LM."""
    batch = lm_encoding(gpt2_tok)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    report = traindoc.check(tiny_gpt2(gpt2_tok), batch, tokenizer=gpt2_tok)
    assert data_ids(report) == set(), report.findings
    assert report.ok, report.findings
    assert report.info["task"] == "causal-lm"


def test_hf_gpt2_collator_that_masks_every_eos(gpt2_tok):
    """DataCollatorForLanguageModeling with pad == eos sets every EOS label to -100, the real one too."""
    batch = lm_encoding(gpt2_tok)
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == gpt2_tok.pad_token_id, -100)
    report = data_check(tiny_gpt2(gpt2_tok), batch, tokenizer=gpt2_tok)
    assert data_ids(report) == {"pad-equals-eos"}
    [f] = report.get("pad-equals-eos")
    assert f.severity == "error"
    assert f.evidence["eos_targets_in_loss"] == 0
    assert f.evidence["real_eos_in_inputs"] == 4 and f.evidence["num_samples"] == 4
    assert "DataCollatorForLanguageModeling" in f.fix


def test_hf_gpt2_without_padding_or_eos_is_not_pad_equals_eos(gpt2_tok):
    """run_clm-style blocks: no padding, no EOS; pad == eos is harmless here."""
    enc = dict(gpt2_tok([SENTENCES[0], SENTENCES[3]], padding=True, return_tensors="pt"))
    enc["input_ids"] = enc["input_ids"][:, :4]
    enc["attention_mask"] = enc["attention_mask"][:, :4]
    enc["labels"] = enc["input_ids"].clone()
    report = data_check(tiny_gpt2(gpt2_tok), enc, tokenizer=gpt2_tok)
    assert data_ids(report) == set()


def test_no_real_eos_at_all_is_a_warning(gpt2_tok):
    texts = SENTENCES[:4]  # no EOS appended, padded with EOS
    batch = dict(gpt2_tok(texts, padding=True, return_tensors="pt"))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    report = data_check(tiny_gpt2(gpt2_tok), batch, tokenizer=gpt2_tok)
    [f] = report.get("pad-equals-eos")
    assert f.severity == "warning" and "no real EOS" in f.title
    assert "padding-in-loss" not in report


def _tiny_t5(tok):
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
        pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id))


def test_hf_t5_labels_padded_with_the_pad_id(bert_tok):
    """Seq2seq labels padded with 0 instead of -100: found from the pad id (no decoder mask), a warning."""
    enc = dict(bert_tok(SENTENCES[:4], padding=True, return_tensors="pt"))
    dec = dict(bert_tok(SENTENCES[4:8], padding=True, return_tensors="pt"))
    report = data_check(_tiny_t5(bert_tok), {**enc, "labels": dec["input_ids"]}, tokenizer=bert_tok)
    assert data_ids(report) == {"padding-in-loss"}
    [f] = report.get("padding-in-loss")
    assert f.severity == "warning"
    assert f.evidence["pad_targets_in_loss"] == int((dec["attention_mask"] == 0).sum())


def test_hf_t5_healthy_and_autoencoder_are_clean(bert_tok):
    """-100 at pads is right; a target equal to the *encoder's* input (reconstruction) is not a copy bug."""
    enc = dict(bert_tok(SENTENCES[:4], padding=True, return_tensors="pt"))
    dec = dict(bert_tok(SENTENCES[4:8], padding=True, return_tensors="pt"))
    model = _tiny_t5(bert_tok)
    report = traindoc.check(model, {**enc, "labels": dec["input_ids"].masked_fill(dec["attention_mask"] == 0, -100)},
                            tokenizer=bert_tok)
    assert data_ids(report) == set() and report.ok, report.findings
    assert report.info["task"] == "seq2seq"
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    report = data_check(model, {**enc, "labels": labels}, tokenizer=bert_tok)
    assert data_ids(report) == set()


# ---------------------------------------------------------------------------- the demo's chatbot
@pytest.fixture(scope="module")
def chatbot():
    from traindoc.demo.data import build_batch, train_tokenizer

    tok = train_tokenizer(SENTENCES * 5, vocab_size=400)
    pairs = [(tok.encode(a), tok.encode(b)) for a, b in zip(SENTENCES[:4], SENTENCES[1:5], strict=True)]
    return tok, build_batch(pairs, tok, block_size=12)


def _demo_model(tok, fixed: bool):
    from traindoc.demo.model import BrokenLanguageModel, FixedLanguageModel, ModelConfig

    cfg = ModelConfig(vocab_size=tok.vocab_size, n_embd=16, n_head=2, n_layer=1, block_size=12, dim_feedforward=32)
    return (FixedLanguageModel if fixed else BrokenLanguageModel)(cfg)


def test_chatbot_loss_that_drops_eos_targets(chatbot):
    from traindoc.demo.model import loss_without_eos_targets

    tok, batch = chatbot
    report = data_check(
        _demo_model(tok, fixed=False), batch,
        forward=lambda m, b: m(b["input_ids"], b["target_inputs"], None, b["attention_mask"].T,
                               b["target_attention_mask"].T),
        loss_fn=lambda out, b: loss_without_eos_targets(out, b, tok.eos_token_id), tokenizer=tok)
    assert data_ids(report) == {"pad-equals-eos"}
    [f] = report.get("pad-equals-eos")
    assert f.severity == "error"
    ev = f.evidence
    assert ev["eos_targets_in_loss"] == 0
    assert ev["target_tensor"] == "target_labels"
    assert ev["real_eos_in_targets"] == 4  # one reply-ending EOS per sample, all dropped
    assert ev["targets_in_loss"] == int((batch["target_labels"] != tok.eos_token_id).sum())
    assert ev["samples"] == [0, 1, 2, 3]
    assert report.info["task"] == "seq2seq"
    # the decoded view shows where the real reply ends and the padding starts
    sample = report.info["samples"][0]
    assert sample["label_tensor"] == "target_labels"
    assert sample["label"].startswith(f"a dog ran in the park<|endoftext|> [pad labelled {tok.eos_token_id} ×")


def test_chatbot_fixed_loss_is_clean(chatbot):
    from traindoc.demo.model import reply_token_loss

    tok, batch = chatbot
    report = traindoc.check(
        _demo_model(tok, fixed=True), batch,
        forward=lambda m, b: m(b["input_ids"], b["target_inputs"], None, b["attention_mask"],
                               b["target_attention_mask"]),
        loss_fn=reply_token_loss, tokenizer=tok)
    assert data_ids(report) == set(), report.findings
    assert report.ok, report.findings


# --------------------------------------------------------------------------- padding-in-loss (plain)
def test_plain_lm_loss_over_pads():
    batch = lm_batch()
    report = data_check(TinyGRULM(), batch, loss_fn=shifted_unmasked_loss)
    assert data_ids(report) == {"padding-in-loss"}
    [f] = report.get("padding-in-loss")
    assert f.severity == "error"
    mask = batch["attention_mask"]
    assert f.evidence["pad_targets_in_loss"] == int((mask[:, 1:] == 0).sum())
    assert f.evidence["targets_in_loss"] == mask[:, 1:].numel()
    assert f.evidence["samples"] == [1, 2, 3]
    assert f.evidence["padding_from"].startswith("attention_mask")


def test_plain_lm_masked_loss_is_clean():
    report = data_check(TinyGRULM(), lm_batch(), loss_fn=shifted_masked_loss)
    assert data_ids(report) == set()


def test_per_token_losses_masked_after_the_call_are_clean():
    """reduction='none' then (loss * mask).sum() / mask.sum(): pads reach cross_entropy, not the loss."""

    def masked_after(out, b):
        per_token = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), b["input_ids"][:, 1:].reshape(-1),
                                    reduction="none")
        keep = b["attention_mask"][:, 1:].reshape(-1).float()
        return (per_token * keep).sum() / keep.sum()

    def weighted_all(out, b):
        per_token = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), b["input_ids"][:, 1:].reshape(-1),
                                    reduction="none")
        return per_token.mean()

    report = data_check(TinyGRULM(), lm_batch(), loss_fn=masked_after)
    assert data_ids(report) == set()
    assert report.info["passes"] == {"forward": 1, "backward": 1}  # one backward: which elements count
    report = data_check(TinyGRULM(), lm_batch(), loss_fn=weighted_all)
    assert data_ids(report) == {"padding-in-loss"}


def test_whole_check_on_a_padded_lm_with_a_masked_per_token_loss_costs_one_forward_three_backwards():
    """What the README promises: the loss backward also says which per-token losses count; the
    dependency probes spend one each."""

    def masked_after(out, b):
        per_token = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), b["input_ids"][:, 1:].reshape(-1),
                                    reduction="none")
        keep = b["attention_mask"][:, 1:].reshape(-1).float()
        return (per_token * keep).sum() / keep.sum()

    model = TinyGRULM()
    report = traindoc.check(model, lm_batch(), loss_fn=masked_after,
                            optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert bool((lm_batch()["attention_mask"] == 0).any())  # padded: padding-leak spends its backward
    assert report.info["passes"] == {"forward": 1, "backward": 3}


def test_chatbot_variant_that_zero_weights_eos_after_the_call(chatbot):
    """The chatbot's mask applied as a weight on per-token losses: still no EOS reaches the loss."""
    tok, batch = chatbot

    def loss_fn(out, b):
        per_token = F.cross_entropy(out.reshape(-1, out.shape[-1]), b["target_labels"].reshape(-1),
                                    reduction="none")
        keep = (b["target_labels"] != tok.eos_token_id).reshape(-1).float()
        return (per_token * keep).sum() / keep.sum()

    report = data_check(
        _demo_model(tok, fixed=True), batch,
        forward=lambda m, b: m(b["input_ids"], b["target_inputs"], None, b["attention_mask"],
                               b["target_attention_mask"]),
        loss_fn=loss_fn, tokenizer=tok)
    assert data_ids(report) == {"pad-equals-eos"}
    assert report.get("pad-equals-eos")[0].evidence["real_eos_in_targets"] == 4


def test_plain_lm_ignore_index_pad_is_clean():
    def loss_fn(out, b):
        return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), b["input_ids"][:, 1:].reshape(-1),
                               ignore_index=PAD)

    report = data_check(TinyGRULM(), lm_batch(), loss_fn=loss_fn)
    assert data_ids(report) == set()


def test_boolean_selection_that_keeps_pads_is_counted_as_a_lower_bound():
    """targets[keep] with a keep mask that is not the attention mask: the pads still reach the loss."""
    batch = lm_batch()
    dropped = int(batch["input_ids"][0, 1])

    def loss_fn(out, b):
        keep = b["input_ids"][:, 1:] != dropped  # drops one real token id, keeps the pads
        return F.cross_entropy(out[:, :-1][keep], b["input_ids"][:, 1:][keep])

    report = data_check(TinyGRULM(), batch, loss_fn=loss_fn)
    [f] = report.get("padding-in-loss")
    assert f.evidence["mapping"] == "subset"
    assert f.evidence["pad_targets_in_loss"] == int((batch["attention_mask"][:, 1:] == 0).sum())
    assert f.evidence["counted"].startswith("at least")


def test_pads_found_by_pad_id_without_an_attention_mask_are_a_warning(gpt2_tok):
    batch = {"input_ids": lm_batch()["input_ids"]}
    tok = type("Tok", (), {"pad_token_id": PAD, "eos_token_id": 1})()
    report = data_check(TinyGRULM(), batch, loss_fn=shifted_unmasked_loss, tokenizer=tok)
    [f] = report.get("padding-in-loss")
    assert f.severity == "warning"
    assert "pad id" in f.evidence["padding_from"]


# ------------------------------------------------------------------------------- labels-not-shifted
def test_targets_equal_to_inputs_at_the_same_position():
    batch = lm_batch()
    report = data_check(TinyGRULM(), batch, loss_fn=unshifted_loss)
    assert "labels-not-shifted" in report
    [f] = report.get("labels-not-shifted")
    assert f.severity == "error"
    assert f.evidence["input_tensor"] == "input_ids"
    assert f.evidence["positions_compared"] == int(batch["attention_mask"].sum())
    assert f.evidence["inputs"] == f.evidence["targets"]
    assert "[:, 1:]" in f.fix


def test_hf_causal_lm_with_a_user_loss_that_forgets_to_shift(gpt2_tok):
    """labels == input_ids is right for the model's own loss, not for a loss computed outside it."""
    batch = lm_encoding(gpt2_tok)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def unshifted(out, b):
        return F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), b["labels"].reshape(-1))

    def shifted(out, b):
        return F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), b["labels"][:, 1:].reshape(-1))

    report = data_check(tiny_gpt2(gpt2_tok), batch, loss_fn=unshifted, tokenizer=gpt2_tok)
    [f] = report.get("labels-not-shifted")
    assert f.evidence["target_tensor"] == "labels"
    assert f.evidence["positions_compared"] == int(batch["attention_mask"].sum())
    report = data_check(tiny_gpt2(gpt2_tok), batch, loss_fn=shifted, tokenizer=gpt2_tok)
    assert data_ids(report) == set()


def test_shifted_targets_are_clean():
    report = data_check(TinyGRULM(), lm_batch(), loss_fn=shifted_masked_loss)
    assert "labels-not-shifted" not in report


def test_token_classification_with_tags_equal_to_ids_is_not_labels_not_shifted():
    """A small label set that happens to equal the ids is not a copy task."""
    batch = lm_batch()
    batch["input_ids"] = batch["input_ids"] % 3
    batch["labels"] = batch["input_ids"].clone()
    report = data_check(TinyTagger(3), batch, loss_fn=tagger_loss)
    assert "labels-not-shifted" not in report


# ---------------------------------------------------------------------------------- class-imbalance
def test_class_imbalance_reports_the_baselines():
    labels = [0] * 28 + [1] * 3 + [2] * 1
    report = data_check(TinyClassifier(3), classifier_batch(labels), loss_fn=classifier_loss)
    [f] = report.get("class-imbalance")
    assert f.severity == "warning" and report.ok
    ev = f.evidence
    assert ev["histogram"] == {"0": 28, "1": 3, "2": 1}
    assert ev["majority_class"] == 0
    assert ev["majority_baseline_accuracy"] == pytest.approx(28 / 32)
    p = [28 / 32, 3 / 32, 1 / 32]
    assert ev["frequency_baseline_loss"] == pytest.approx(-sum(q * math.log(q) for q in p))
    assert ev["uniform_guess_loss"] == pytest.approx(math.log(3))


def test_balanced_classes_are_clean():
    labels = [0, 1, 2, 1] * 8
    report = data_check(TinyClassifier(3), classifier_batch(labels), loss_fn=classifier_loss)
    assert data_ids(report) == set()
    assert report.info["class_histogram"] == {"0": 8, "1": 16, "2": 8}
    assert report.info["label_baselines"]["majority_accuracy"] == 0.5


def test_hf_binary_imbalance_and_id2label(bert_tok):
    model = tiny_bert_classifier(bert_tok, num_labels=2)
    model.config.id2label = {0: "negative", 1: "positive"}
    report = data_check(model, classification_encoding(bert_tok, [1] * 15 + [0] + [1] * 2))
    [f] = report.get("class-imbalance")
    assert f.evidence["majority_class"] == 1
    assert "positive" in f.title
    report = data_check(model, classification_encoding(bert_tok, [1, 0] * 9))
    assert "class-imbalance" not in report


def test_single_logit_bce_classifier_imbalance():
    model = torch.nn.Linear(4, 1)
    x = torch.randn(20, 4)

    def loss_fn(out, b):
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), b[1])

    y = torch.tensor([1.0] * 18 + [0.0] * 2)
    report = data_check(model, (x, y), forward=lambda m, b: m(b[0]), loss_fn=loss_fn)
    [f] = report.get("class-imbalance")
    assert f.evidence["histogram"] == {"0": 2, "1": 18}
    report = data_check(model, (x, torch.tensor([1.0, 0.0] * 10)), forward=lambda m, b: m(b[0]), loss_fn=loss_fn)
    assert data_ids(report) == set()


def test_token_classification_imbalance_ignores_minus_100():
    batch = lm_batch(B=4, T=10)
    tags = torch.zeros(4, 10, dtype=torch.long)
    tags[:, 0] = 1
    tags[batch["attention_mask"] == 0] = -100
    batch["labels"] = tags
    report = data_check(TinyTagger(3), batch, loss_fn=tagger_loss)
    [f] = report.get("class-imbalance")
    n = int(batch["attention_mask"].sum())
    assert f.evidence["labels"] == n
    assert f.evidence["histogram"] == {"0": n - 4, "1": 4, "2": 0}


# --------------------------------------------------------------------------------------- data view
def test_decoded_samples_show_inputs_labels_and_padding(gpt2_tok):
    batch = lm_encoding(gpt2_tok)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    report = data_check(tiny_gpt2(gpt2_tok), batch, tokenizer=gpt2_tok)
    samples = report.info["samples"]
    assert [s["index"] for s in samples] == [0, 1, 2]
    assert samples[0]["input_ids"] == SENTENCES[0] + " <|endoftext|>"
    assert samples[2]["input_ids"].endswith("[pad ×1]")
    assert samples[2]["label"].startswith(SENTENCES[2]) and samples[2]["label_tensor"] == "labels"
    assert report.info["samples_task"] == "causal-lm"


def test_decoded_classification_labels_use_id2label(bert_tok):
    model = tiny_bert_classifier(bert_tok, num_labels=2)
    model.config.id2label = {0: "negative", 1: "positive"}
    report = data_check(model, classification_encoding(bert_tok, [1, 0, 1]), tokenizer=bert_tok)
    first = report.info["samples"][0]
    assert first["input_ids"].startswith("[CLS] " + SENTENCES[0])
    assert first["label"] == "1 (positive)"


def test_no_tokenizer_no_samples():
    report = data_check(TinyGRULM(), lm_batch(), loss_fn=shifted_masked_loss)
    assert "samples" not in report.info


# ------------------------------------------------- padding-in-loss with the pad id the model declares
class _PaddedCharLM(torch.nn.Module):
    """A character LM whose embedding declares its pad id (``padding_idx``): no tokenizer, no config."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.rnn = torch.nn.GRU(8, 8, batch_first=True)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0])


@pytest.mark.parametrize("ignore_pad", [False, True])
def test_the_embeddings_padding_idx_is_the_pad_id_when_nothing_else_names_one(ignore_pad):
    ids = lm_batch()["input_ids"]
    ignore = PAD if ignore_pad else -100

    def loss_fn(out, b):
        return F.cross_entropy(out[:, :-1].reshape(-1, VOCAB), b[:, 1:].reshape(-1), ignore_index=ignore)

    report = data_check(_PaddedCharLM(), ids, loss_fn=loss_fn)
    if ignore_pad:  # the healthy twin: the pads are ignored
        assert data_ids(report) == set(), report.findings
        return
    [f] = report.get("padding-in-loss")
    assert f.evidence["pad_targets_in_loss"] == int((ids[:, 1:] == PAD).sum())
    assert f.evidence["padding_from"] == f"runs of the pad id {PAD}"


def test_class_weights_in_the_loss_answer_the_imbalance():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.zeros(64, dtype=torch.long)
    y[:3] = 1
    model = torch.nn.Linear(8, 2)
    plain = data_check(model, (x, y), forward=lambda m, b: m(b[0]),
                       loss_fn=lambda out, b: F.cross_entropy(out, b[1]))
    assert "class-imbalance" in plain.ids
    weighted = data_check(model, (x, y), forward=lambda m, b: m(b[0]),
                          loss_fn=lambda out, b: F.cross_entropy(out, b[1], weight=torch.tensor([0.1, 1.0])))
    assert "class-imbalance" not in weighted.ids
