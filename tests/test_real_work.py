"""Setups common in real work: each healthy one gets no error (and no false warning), its bug twin is
still proved, and each fix text is right for the setup it was proved on (its code runs)."""

from __future__ import annotations

import re
import tempfile

import pytest
import torch
import torch.nn.functional as F

import real_work_models as R
import traindoc

torch.set_num_threads(1)


def loud(report) -> list[str]:
    return [f"{f.id}: {f.title}" for f in report.findings if f.severity != "hint"]


def failed(report) -> list[str]:
    return [f.title for f in report.get("probe-failed")]


# ----------------------------------------------------------------------------- gradient checkpointing
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_is_answered_and_a_real_causal_leak_is_still_proved(reentrant):
    ids = R.tokens()
    healthy = traindoc.check(R.CheckpointedLM(causal=True, reentrant=reentrant), ids,
                             loss_fn=lambda out, b: R.next_token_loss(out, b))
    assert loud(healthy) == [] and failed(healthy) == []
    assert healthy.info["passes"] == {"forward": 1, "backward": 2}  # the probes really differentiated
    leak = traindoc.check(R.CheckpointedLM(causal=False, reentrant=reentrant), ids,
                          loss_fn=lambda out, b: R.next_token_loss(out, b))
    (f,) = leak.get("causal-leak")
    assert f.severity == "error" and f.evidence["future_positions_seen_count"] == R.T - 1 and failed(leak) == []


def test_hf_gradient_checkpointing_enable_is_clean():
    model, batch = R.tiny_gpt2_lm(checkpointing=True)
    report = traindoc.check(model, batch, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4))
    assert loud(report) == [] and failed(report) == []


# ----------------------------------------------------------------------------- positions that count
def test_prefix_lm_is_judged_on_the_positions_its_loss_trains():
    healthy = traindoc.check(R.PrefixLM(prefix=4), R.prefix_batch(prefix=4))
    assert loud(healthy) == []
    leak = traindoc.check(R.PrefixLM(prefix=4, leak=True), R.prefix_batch(prefix=4))
    (f,) = leak.get("causal-leak")
    # the first trained prediction: position 3 predicts labels[4], the first label that is not -100
    assert f.evidence["output_position"] == 3 and "counts in the loss" in f.evidence["output_position_is"]
    assert f.evidence["future_positions_seen_count"] == R.T - 4


# ----------------------------------------------------------------------------- same-length padding
def test_encoder_and_decoder_padded_to_one_length_each_keep_their_own_mask():
    model, batch = R.t5_same_length()
    assert batch["attention_mask"].shape == batch["decoder_attention_mask"].shape
    assert loud(traindoc.check(model, batch)) == []
    model, batch = R.t5_same_length(labels_padded_with_pad_id=True)
    (f,) = traindoc.check(model, batch).get("padding-in-loss")
    assert f.evidence["pad_targets_in_loss"] == int((batch["decoder_attention_mask"] == 0).sum())
    assert f.evidence["padding_from"] == "decoder_attention_mask"
    assert "DataCollatorForSeq2Seq" in f.fix and "DataCollatorForLanguageModeling" not in f.fix
    code = re.search(r"`(batch\[.*?)`", f.fix).group(1)
    exec(code, {"batch": batch})  # the fix, as written, on the batch it was proved on
    assert "padding-in-loss" not in traindoc.check(model, batch)


# ----------------------------------------------------------------------------- training-only branch
def test_a_head_used_only_in_training_by_a_helper_method_is_not_unconnected():
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    kw = dict(forward=lambda m, b: m(b[0]), loss_fn=lambda out, b: F.cross_entropy(out, b[1]))
    report = traindoc.check(R.AuxHeadNet(), (x, y), **kw)
    assert loud(report) == []
    (hint,) = report.get("no-grad-params")
    assert hint.severity == "hint" and "only when self.training" in hint.title
    (dead,) = traindoc.check(R.DeadHeadNet(), (x, y), **kw).get("no-grad-params")
    assert dead.severity == "error" and dead.evidence["groups"][0]["module"] == "aux"


# ----------------------------------------------------------------------------- adapters
def test_adapters_on_a_frozen_checkpoint_are_not_fine_tuning_it():
    model, batch, opt = R.bert_with_lora(adapters=True)
    assert "lr-too-high" not in traindoc.check(model, batch, optimizer=opt)
    model, batch, opt = R.bert_with_lora(adapters=False)  # the whole checkpoint at AdamW's 1e-3
    (f,) = traindoc.check(model, batch, optimizer=opt).get("lr-too-high")
    assert f.evidence["lr"] == 1e-3


# ----------------------------------------------------------------------------- contrastive
def test_in_batch_contrastive_similarities_are_not_batch_mixing():
    healthy = traindoc.check(R.TwoTower(), R.pairs(), loss_fn=R.contrastive_loss)
    assert loud(healthy) == []
    assert healthy.info["passes"] == {"forward": 1, "backward": 3}  # the loss, row i, column i
    (f,) = traindoc.check(R.TwoTower(mix_batch=True), R.pairs(), loss_fn=R.contrastive_loss).get("batch-mixing")
    assert f.severity == "error" and [lk["input"] for lk in f.evidence["cross_sample"]] == ["batch[0]"]


# ----------------------------------------------------------------------------- how the model is called
def test_inputs_and_targets_with_a_loss_fn_call_the_model_on_the_inputs():
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    report = traindoc.check(R.OneInput(), (x, y), loss_fn=lambda out, b: F.cross_entropy(out, b[1]))
    assert loud(report) == [] and report.info["model_called_as"] == "model(batch[0])"
    bad = traindoc.check(R.OneInput(), (x, y + 3), loss_fn=lambda out, b: F.cross_entropy(out, b[1]))
    assert "label-out-of-range" in bad


def test_models_returning_logits_and_loss_are_checked_with_their_own_loss():
    model = R.KarpathyGPT()
    report = traindoc.check(model, R.xy_lm_batch(), optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    assert loud(report) == [] and "probe-skipped" not in report
    assert report.info["loss_from"] == "output[1]" and report.info["model_called_as"] == "model(*batch)"
    cut = R.KarpathyGPT(cut=True)
    (f,) = traindoc.check(cut, R.xy_lm_batch(), optimizer=torch.optim.AdamW(cut.parameters(), lr=3e-4)
                          ).get("no-grad-params")
    assert f.severity == "error" and {g["module"] for g in f.evidence["groups"]} == {"tok", "pos", "block"}
    # called without targets it returns (logits, None): the report says what it saw, nothing more
    (skipped,) = traindoc.check(R.KarpathyGPT(), R.xy_lm_batch()[0]).get("probe-skipped")
    assert "tuple of 2: Tensor(6, 10, 40) float32, None" in skipped.title


# ----------------------------------------------------------------------------- fix texts
def test_padding_leak_fix_fits_what_was_proved():
    import transformers

    cfg = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2, n_positions=32,
                                  pad_token_id=0, eos_token_id=0, bos_token_id=0)
    ids = R.tokens()
    ids[:2, :3] = 0  # left padding
    (f,) = traindoc.check(transformers.GPT2LMHeadModel(cfg), {"input_ids": ids, "labels": ids}).get("padding-leak")
    assert "no attention mask at all" in f.fix and "key_padding_mask = attention_mask == 0" not in f.fix
    from seq_models import PoolingClassifier, lm_batch

    batch = lm_batch()
    batch["labels"] = torch.tensor([0, 1, 2, 1])
    (f,) = traindoc.check(PoolingClassifier(mask_pads=False), batch).get("padding-leak")
    assert "pooling" in f.fix and "no attention mask" not in f.fix


def test_labels_not_shifted_on_a_seq2seq_model_gets_seq2seq_advice():
    model, batch = R.t5_same_length()
    labels = batch["labels"].masked_fill(batch["labels"] == -100, 0)
    batch = {**batch, "decoder_input_ids": labels}  # the bug: the decoder reads the very labels it predicts
    (f,) = traindoc.check(model, batch).get("labels-not-shifted")
    assert "shifted right" in f.fix and "prepare_decoder_input_ids_from_labels" in f.fix
    assert "causal LM" not in f.fix and "logits[:, :-1]" not in f.fix


def test_log_probabilities_into_cross_entropy_are_not_double_softmax():
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    net = R.OneInput()
    for head, expected in ((lambda o: o.log_softmax(-1), []), (lambda o: o.softmax(-1), ["double-softmax"])):
        report = traindoc.check(net, (x, y), forward=lambda m, b, h=head: h(m(b[0])),
                                loss_fn=lambda out, b: F.cross_entropy(out, b[1]))
        assert [f.id for f in report.findings if f.id == "double-softmax"] == expected


# ----------------------------------------------------------------------------- check inside a watched run
def test_a_check_inside_a_watched_run_is_not_counted_as_training():
    model = R.OneInput()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    with traindoc.watch(model, opt, run_dir=tempfile.mkdtemp(), tensorboard=False, flush_every=1) as w:
        for step in range(3):
            if step == 0:
                traindoc.check(model, (x, y), loss_fn=lambda out, b: F.cross_entropy(out, b[1]), optimizer=opt)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            w.log(loss=torch.tensor(1.0))
    from traindoc.rundir import read_run

    assert [s["backward_calls"] for s in read_run(w.run_dir).scalars] == [1, 1, 1]



def test_a_tied_weight_is_named_by_both_its_names():
    model = R.KarpathyGPT()
    model.head.weight = model.tok.weight  # tied input and output embeddings, as GPT-2 does
    body = [p for n, p in model.named_parameters() if not n.startswith("tok.")]
    (f,) = traindoc.check(model, R.xy_lm_batch(), optimizer=torch.optim.AdamW(body, lr=3e-4)
                          ).get("params-not-in-optimizer")
    assert f.evidence["groups"][0]["params"] == ["tok.weight (also head.weight)"]
