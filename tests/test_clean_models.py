"""Healthy setups must come out clean from the full check: no error and no warning (false positives
are bugs). Plain PyTorch and Hugging Face models built from small configs, tokenizers trained locally."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import model_zoo
import real_work_models
import seq_models
import traindoc
from data_models import (
    bert_style_tokenizer,
    classification_encoding,
    gpt2_style_tokenizer,
    lm_encoding,
    tiny_bert_classifier,
    tiny_gpt2,
)


def _plain_lm():
    batch = seq_models.lm_batch()
    return dict(model=seq_models.TinyDecoderLM(causal=True), batch=batch, loss_fn=seq_models.lm_loss)


def _seq2seq():
    return dict(model=seq_models.StuckChatbot(fixed=True), batch=seq_models.chatbot_batch(),
                forward=seq_models.chatbot_forward(False), loss_fn=seq_models.fixed_loss)


def _classifier():
    batch = seq_models.lm_batch(B=16)
    batch["labels"] = torch.arange(16) % 3
    return dict(model=seq_models.PoolingClassifier(mask_pads=True), batch=batch)


def _batchnorm():
    x, y = model_zoo.classification_batch(n=16)
    return dict(model=model_zoo.MLPWithBN().train(), batch=(x, y), forward=model_zoo.xy_forward,
                loss_fn=model_zoo.ce_loss)


def _gpt2():
    tok = gpt2_style_tokenizer()
    enc = lm_encoding(tok)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # pads out, real EOS kept
    return dict(model=tiny_gpt2(tok), batch={**enc, "labels": labels}, tokenizer=tok)


def _bert():
    tok = bert_style_tokenizer()
    return dict(model=tiny_bert_classifier(tok, num_labels=2),
                batch=classification_encoding(tok, [0, 1] * 8), tokenizer=tok)


def _t5():
    model, batch = model_zoo.hf_t5()
    return dict(model=model, batch=batch)


def _bart():
    model, batch = model_zoo.hf_bart()
    return dict(model=model, batch=batch)


def _checkpointed(reentrant: bool):
    def make():
        return dict(model=real_work_models.CheckpointedLM(reentrant=reentrant), batch=real_work_models.tokens(),
                    loss_fn=lambda out, b: real_work_models.next_token_loss(out, b))
    return make


def _xy(model_cls):
    def make():
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        return dict(model=model_cls(), batch=(x, y), loss_fn=lambda out, b: nn.functional.cross_entropy(out, b[1]))
    return make


def _lora():
    model, batch, _ = real_work_models.bert_with_lora(adapters=True)
    return dict(model=model, batch=batch)


def _t5_same_length():
    model, batch = real_work_models.t5_same_length()
    return dict(model=model, batch=batch)


# families common in real work (tests/real_work_models.py), each healthy here and its bug twin caught in
# tests/test_real_work.py
REAL_WORK = {
    "torch.utils.checkpoint": _checkpointed(False), "reentrant checkpoint": _checkpointed(True),
    "prefix LM": lambda: dict(model=real_work_models.PrefixLM(), batch=real_work_models.prefix_batch()),
    "T5 padded to one length": _t5_same_length, "aux head in training only": _xy(real_work_models.AuxHeadNet),
    "LoRA on a frozen checkpoint": _lora,
    "in-batch contrastive": lambda: dict(model=real_work_models.TwoTower(), batch=real_work_models.pairs(),
                                         loss_fn=real_work_models.contrastive_loss),
    "(inputs, targets) into model(inputs)": _xy(real_work_models.OneInput),
    "(logits, loss) model": lambda: dict(model=real_work_models.KarpathyGPT(), batch=real_work_models.xy_lm_batch()),
}

SETUPS = {"decoder-only LM": _plain_lm, "seq2seq nn.Transformer": _seq2seq, "classifier": _classifier,
          "MLP with BatchNorm": _batchnorm, "HF GPT-2": _gpt2, "HF BERT classifier": _bert, "HF T5": _t5,
          "HF BART": _bart, **REAL_WORK}


@pytest.mark.parametrize("name", list(SETUPS))
def test_healthy_setup_has_no_error_and_no_warning(name):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    kw = SETUPS[name]()
    model = kw["model"]
    opt = model_zoo.no_decay_adamw(model, lr=1e-3)
    report = traindoc.check(optimizer=opt, **kw)
    loud = [f"{f.id}: {f.title}" for f in report.findings if f.severity != "hint"]
    assert loud == [], loud
    assert report.ok
    assert report.info["task"] is not None
    # a fixed number of passes, whatever the model
    assert report.info["passes"]["forward"] == 1 and report.info["passes"]["backward"] <= 3


def test_pass_count_does_not_grow_with_batch_or_length():
    counts = set()
    for B, T in ((2, 6), (8, 12)):
        batch = seq_models.lm_batch(B=B, T=T)
        r = traindoc.check(seq_models.TinyDecoderLM(), batch, loss_fn=seq_models.lm_loss)
        counts.add(tuple(sorted(r.info["passes"].items())))
    assert len(counts) == 1, counts


def test_unsupported_model_is_one_clear_message():
    with pytest.raises(traindoc.TraindocInputError, match="model"):
        traindoc.check(nn.ReLU(), torch.randn(2, 3))
