"""Model, loss, optimizer and resource probes: each bug case gives the right id with its evidence,
and each healthy twin (plain PyTorch and tiny Hugging Face models from configs) gives nothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model_zoo as z
import traindoc
from traindoc.probes import memory
from traindoc.probes.main_pass import LossCall
from traindoc.probes.nan_forward import locate_nonfinite
from traindoc.state import fingerprint

torch.set_num_threads(1)

MINE = ["nan-forward", "init-loss-mismatch", "double-softmax", "nll-without-log-softmax", "loss-broadcast",
        "no-grad-params",
        "params-not-in-optimizer", "lr-too-high", "weight-decay-on-norms", "oom-risk"]


def check(model, batch, **kw):
    return traindoc.check(model, batch, probes=kw.pop("probes", MINE), **kw)


def xy(model, **kw):
    return check(model, z.classification_batch(), forward=z.xy_forward, loss_fn=kw.pop("loss_fn", z.ce_loss), **kw)


def only(report, finding_id):
    found = report.get(finding_id)
    assert len(found) == 1, report
    return found[0]


# ------------------------------------------------------------------ healthy twins: nothing at all
HEALTHY = {
    "mlp": lambda: (z.MLP(), z.classification_batch(), z.xy_forward, z.ce_loss),
    "mlp-batchnorm": lambda: (z.MLPWithBN(), z.classification_batch(), z.xy_forward, z.ce_loss),
    "decoder-only-lm": lambda: (z.TinyLM(), z.lm_batch(), z.lm_forward, z.lm_loss),
    "hf-gpt2": lambda: (*z.hf_gpt2(), None, None),
    "hf-bert-classifier": lambda: (*z.hf_bert_classifier(), None, None),
    "hf-t5": lambda: (*z.hf_t5(), None, None),
    "hf-bart": lambda: (*z.hf_bart(), None, None),
}


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_models_give_no_finding(name):
    z.seed(0)
    model, batch, fwd, loss_fn = HEALTHY[name]()
    opt = z.no_decay_adamw(model, lr=5e-5 if name.startswith("hf") else 1e-3)
    report = check(model, batch, forward=fwd, loss_fn=loss_fn, optimizer=opt)
    assert report.findings == [], report
    mem = report.info["memory"]
    assert mem["total"] == mem["weights"] + mem["gradients"] + mem["optimizer_state"] + mem["activations"]
    assert mem["activations"] > 0
    assert report.info["passes"] == {"forward": 1, "backward": 1}


# ------------------------------------------------------------------ nan-forward
def test_nan_forward_names_first_module_and_samples():
    z.seed(0)
    x, y = z.classification_batch()
    report = xy(z.NaNMLP())
    f = only(report, "nan-forward")
    assert f.severity == "error"
    ev = f.evidence
    assert ev["first_module"] == "act_log" and ev["module_class"] == "LogModule"
    assert ev["input_finite"] is True
    expected = ((x + 1) < 0).any(1).nonzero().flatten().tolist()  # log of a negative -> NaN
    assert 0 < len(expected) < len(x)
    assert ev["samples"] == expected
    assert ev["nonfinite_modules"][0] == "act_log" and "head" in ev["nonfinite_modules"]
    assert report.info["passes"]["forward"] == 2  # one replay, only because something was non-finite


def test_nan_forward_inf_born_before_nan():
    """log(0) gives -inf in act_log; the head turns it into NaN (inf - inf): the birth place is act_log."""
    model = nn.Sequential()
    model.add_module("inp", nn.Linear(8, 8))
    model.add_module("relu", nn.ReLU())
    model.add_module("act_log", z.LogModule())
    model.add_module("head", nn.Linear(8, z.C))
    with torch.no_grad():
        model.inp.weight.copy_(torch.eye(8))
        model.inp.bias.zero_()
    x, y = z.classification_batch()
    x = x.abs() + 0.1
    x[2] = -x[2]
    f = only(check(model, (x, y), forward=z.xy_forward, loss_fn=z.ce_loss), "nan-forward")
    ev = f.evidence
    assert ev["first_module"] == "act_log" and ev["first_nan_module"] == "head"
    assert ev["samples"] == [2] and ev["nan_count"] == 0 and ev["inf_count"] == 8
    assert ev["loss_analysis"]["samples"] == [2]


def test_nan_forward_healthy_twin_costs_one_forward():
    report = xy(z.MLP())
    assert "nan-forward" not in report
    assert report.info["passes"]["forward"] == 1


def test_nan_forward_nan_in_the_batch():
    x, y = z.classification_batch()
    x[3, 2] = float("nan")
    report = check(z.MLP(), (x, y), forward=z.xy_forward, loss_fn=z.ce_loss)
    f = only(report, "nan-forward")
    assert f.evidence["batch_tensors"] == {"batch[0]": [3]}


def test_nan_forward_loss_only_shared_label():
    """Modules are finite; class 4 is masked with -inf on the way to the loss: only the samples
    labelled 4 have an infinite loss, and the probe says so."""
    x, y = z.classification_batch()
    y[:3] = 4

    def masked_loss(out, batch):
        mask = torch.zeros(z.C, dtype=torch.bool)
        mask[4] = True
        return F.cross_entropy(out.masked_fill(mask, float("-inf")), batch[1])

    report = check(z.MLP(), (x, y), forward=z.xy_forward, loss_fn=masked_loss)
    f = only(report, "nan-forward")
    ev = f.evidence
    assert ev["first_module"] is None and ev["module_outputs_finite"] is True
    assert ev["samples"] == (y == 4).nonzero().flatten().tolist()
    assert ev["labels_of_bad_targets"] == {"4": int((y == 4).sum())} and ev["shared_label"] == 4
    assert "label 4" in f.title


def test_nan_forward_rest_of_the_loss():
    def loss_fn(out, batch):  # a regulariser divided by a count that is 0
        return F.cross_entropy(out, batch[1]) + out.pow(2).mean() / torch.tensor(0.0)

    f = only(xy(z.MLP(), loss_fn=loss_fn), "nan-forward")
    assert f.evidence["first_module"] is None and f.evidence["num_bad_targets"] == 0
    assert "rest of the loss" in f.title


def test_nan_forward_all_targets_ignored():
    batch = z.lm_batch()
    batch["targets"][:] = -100
    report = check(z.TinyLM(), batch, forward=z.lm_forward, loss_fn=z.lm_loss)
    f = only(report, "nan-forward")
    assert f.evidence["every_target_ignored"] is True


def test_nan_forward_inf_masking_with_finite_loss_is_only_a_hint():
    class Masked(z.MLP):
        def forward(self, x):
            out = super().forward(x)
            return out.masked_fill(torch.arange(z.C) == 0, float("-inf"))  # class 0 never predicted

    x, y = z.classification_batch()
    y = y.clamp_min(1)
    report = check(Masked(), (x, y), forward=z.xy_forward, loss_fn=z.ce_loss)
    f = only(report, "nan-forward")
    assert f.severity == "hint" and f.evidence["nan_count"] == 0


def test_nan_forward_diverged_weights_in_hf_model_with_bad_labels():
    """NaN weights deep in a tiny BERT whose labels are also out of range: the replay must not
    crash on the labels (the model computes its loss inside forward) and must name the layer."""
    model, batch = z.hf_bert_classifier(num_labels=2)
    batch["labels"] = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    f = only(check(model, batch), "nan-forward")
    assert f.evidence["first_module"] == "bert.encoder.layer.1.output.dense"
    assert f.evidence["module_class"] == "Linear"
    assert f.evidence["nonfinite_own_params"] == ["weight"] and f.evidence["input_finite"] is True
    assert f.evidence["samples"] == [0, 1, 2, 3]
    assert "own weights are non-finite" in f.title


def test_per_element_loss_marks_out_of_range_labels():
    logits = torch.randn(4, 2)
    call = LossCall("cross_entropy", logits, torch.tensor([0, 1, 2, -100]), -100, "mean")
    losses, ignored, oor, C = call.per_element()
    assert C == 2 and oor.tolist() == [False, False, True, False] and ignored.tolist() == [False] * 3 + [True]
    assert torch.isnan(losses[2]) and losses[3] == 0
    assert torch.allclose(losses[:2], F.cross_entropy(logits[:2], torch.tensor([0, 1]), reduction="none"))


def test_locate_nonfinite_replays_and_preserves_state():
    model = z.NaNMLP()
    model.train()
    x, _ = z.classification_batch()
    model(x).sum().backward()
    before = fingerprint(model)
    found = locate_nonfinite(model, x)
    assert [f.id for f in found] == ["nan-forward"] and found[0].evidence["first_module"] == "act_log"
    assert fingerprint(model) == before
    assert locate_nonfinite(z.MLP(), x) == []


def test_locate_nonfinite_never_raises():
    found = locate_nonfinite(z.MLP(), torch.randn(4, 3))  # wrong width: the replay fails
    assert [f.id for f in found] == ["probe-failed"]


# ------------------------------------------------------------------ init-loss-mismatch
def test_init_loss_mismatch_on_badly_scaled_head():
    model = z.MLP()
    with torch.no_grad():
        model.head.weight.mul_(60)
    f = only(xy(model), "init-loss-mismatch")
    assert f.severity == "warning"
    g = only(xy(model, loss_fn=lambda out, b: F.nll_loss(F.log_softmax(out, -1), b[1])), "init-loss-mismatch")
    assert g.evidence["loss"] == pytest.approx(f.evidence["loss"], rel=1e-5)
    assert f.evidence["num_classes"] == z.C
    assert f.evidence["expected_ln_C"] == pytest.approx(math.log(z.C))
    assert f.evidence["loss"] > f.evidence["threshold"] > math.log(z.C)


def test_init_loss_mismatch_not_for_pretrained_models():
    model, batch = z.hf_bert_classifier()
    with torch.no_grad():
        model.classifier.weight.mul_(500)
    assert "init-loss-mismatch" in check(model, batch)  # untrained-looking: reported
    z.as_pretrained(model)  # loaded from a checkpoint: its loss is its own
    assert "init-loss-mismatch" not in check(model, batch)


# ------------------------------------------------------------------ double-softmax
def test_double_softmax_cross_entropy_on_probabilities():
    f = only(xy(z.MLP(softmax=True)), "double-softmax")
    assert f.severity == "error"
    assert f.evidence["loss_function"] == "cross_entropy"
    assert f.evidence["softmax_modules"] == ["softmax"] and f.evidence["produced_by"] == "SoftmaxBackward0"
    assert f.evidence["max_abs_row_sum_minus_1"] < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_double_softmax_in_half_precision(dtype):
    x, y = z.classification_batch()
    model = z.MLP(softmax=True).to(dtype)
    report = check(model, (x.to(dtype), y), forward=z.xy_forward, loss_fn=z.ce_loss)
    assert only(report, "double-softmax").severity == "error"
    healthy = z.MLP().to(dtype)
    assert check(healthy, (x.to(dtype), y), forward=z.xy_forward, loss_fn=z.ce_loss).findings == []


def test_double_softmax_nll_on_probabilities_and_healthy_log_softmax():
    f = only(xy(z.MLP(softmax=True), loss_fn=z.nll_loss), "double-softmax")
    assert f.evidence["loss_function"] == "nll_loss"
    report = xy(z.MLP(), loss_fn=lambda out, b: F.nll_loss(F.log_softmax(out, -1), b[1]))
    assert "double-softmax" not in report


def test_nll_loss_on_raw_logits_and_its_healthy_twin_on_log_softmax():
    f = only(xy(z.MLP(), loss_fn=z.nll_loss), "nll-without-log-softmax")
    assert f.severity == "error" and f.evidence["max_value"] > 0 and f.evidence["max_abs_logsumexp"] > 1e-3
    healthy = xy(z.MLP(), loss_fn=lambda out, b: F.nll_loss(F.log_softmax(out, -1), b[1]))
    assert "nll-without-log-softmax" not in healthy and healthy.findings == []
    probabilities = xy(z.MLP(softmax=True), loss_fn=z.nll_loss)  # that one is double-softmax, said once
    assert "nll-without-log-softmax" not in probabilities and "double-softmax" in probabilities


@pytest.mark.parametrize("loss", [F.mse_loss, F.l1_loss, F.smooth_l1_loss])
def test_a_regression_loss_that_broadcasts_and_its_healthy_twin(loss):
    x = torch.randn(16, 8)
    y = x.sum(1)  # (16,): the model predicts (16, 1)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.warns(UserWarning):  # torch only warns about it
        f = only(check(model, (x, y), forward=z.xy_forward, loss_fn=lambda out, b: loss(out, b[1])), "loss-broadcast")
    assert f.severity == "error" and f.evidence["broadcast_shape"] == [16, 16] and "squeeze(-1)" in f.fix
    healthy = check(model, (x, y), forward=z.xy_forward, loss_fn=lambda out, b: loss(out.squeeze(-1), b[1]))
    assert "loss-broadcast" not in healthy


def test_double_softmax_bce_with_logits_after_sigmoid():
    x = torch.randn(16, 8)
    y = (torch.rand(16, 3) > 0.5).float()
    model = nn.Sequential(nn.Linear(8, 3), nn.Sigmoid())
    loss = lambda out, b: F.binary_cross_entropy_with_logits(out, b[1])  # noqa: E731
    f = only(check(model, (x, y), forward=z.xy_forward, loss_fn=loss), "double-softmax")
    assert f.evidence["produced_by"] == "SigmoidBackward0"
    healthy = check(model[0], (x, y), forward=z.xy_forward, loss_fn=loss)
    assert healthy.findings == []


# ------------------------------------------------------------------ no-grad-params
def test_no_grad_params_detached_custom_head():
    f = only(xy(z.DetachedHead()), "no-grad-params")
    assert f.severity == "error"
    assert [g["module"] for g in f.evidence["groups"]] == ["custom_head"]
    assert f.evidence["groups"][0]["num_params"] == 4 and f.evidence["num_params"] == 4
    assert f.evidence["num_trainable_params"] == 8


def test_no_grad_params_loss_cut_from_graph():
    f = only(xy(z.MLP(), loss_fn=lambda out, b: F.cross_entropy(out.detach(), b[1])), "no-grad-params")
    assert f.severity == "error" and "does not require grad" in f.title


class AuxHead(z.MLP):
    """GoogLeNet-style auxiliary head, used only in training mode (the check runs in eval mode)."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Linear(16, z.C)

    def forward(self, x):
        h = self.body(x)
        out = self.head(h)
        if self.training:
            out = out + 0.3 * self.aux(h)
        return out


class MoE(z.MLP):
    def __init__(self, n: int = 4):
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(16, 16) for _ in range(n))

    def forward(self, x):
        h = self.body(x)
        return self.head(self.experts[0](h))  # the router picked expert 0 for the whole batch


def test_no_grad_params_by_design_is_only_a_hint():
    for model, module in ((AuxHead(), "aux"), (MoE(), "experts.1")):
        f = only(xy(model), "no-grad-params")
        assert f.severity == "hint", f
        assert f.evidence["groups"][0]["module"] == module


def test_no_grad_params_unused_hf_pooler_is_only_a_hint():
    from transformers import BertConfig, BertModel

    z.seed(0)

    class Classifier(nn.Module):  # a common custom head on a Hugging Face backbone
        def __init__(self):
            super().__init__()
            self.bert = BertModel(BertConfig(vocab_size=z.V, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32,
                                             max_position_embeddings=32))
            self.head = nn.Linear(16, 3)

        def forward(self, input_ids, attention_mask, labels):
            cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
            logits = self.head(cls)
            return {"logits": logits, "loss": F.cross_entropy(logits, labels)}

    _, batch = z.hf_bert_classifier()
    f = only(check(Classifier(), batch), "no-grad-params")
    assert f.severity == "hint" and f.evidence["groups"][0]["module"] == "bert.pooler"


def test_no_grad_params_all_zero_gradient():
    class Gated(z.MLP):
        def forward(self, x):
            h = self.body(x)
            return self.head(h) + 0.0 * self.extra(h)

    model = Gated()
    model.extra = nn.Linear(16, z.C)
    f = only(xy(model), "no-grad-params")
    assert f.severity == "error" and f.evidence["gradient"] == "exactly zero everywhere"
    assert [g["module"] for g in f.evidence["groups"]] == ["extra"]


def test_no_grad_params_zero_init_branch_is_a_hint():
    class LoRA(z.MLP):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 4, bias=False)
            self.b = nn.Linear(4, z.C, bias=False)
            nn.init.zeros_(self.b.weight)

        def forward(self, x):
            h = self.body(x)
            return self.head(h) + self.b(self.a(h))

    f = only(xy(LoRA()), "no-grad-params")
    assert f.severity == "hint" and f.evidence["all_zero_weights"] == ["b.weight"]


def test_no_grad_params_ignores_partial_zero_rows_of_embeddings():
    model = z.TinyLM()
    model.emb = nn.Embedding(z.V, 16, padding_idx=0)
    batch = z.lm_batch(vocab=10)  # most vocabulary rows get no gradient, the matrix as a whole does
    report = check(model, batch, forward=z.lm_forward, loss_fn=z.lm_loss)
    assert "no-grad-params" not in report


# ------------------------------------------------------------------ params-not-in-optimizer
def test_params_not_in_optimizer_head_built_after():
    model = z.MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.head = nn.Linear(16, z.C)  # replaced after the optimizer was created
    f = only(xy(model, optimizer=opt), "params-not-in-optimizer")
    assert f.severity == "error"
    assert [g["module"] for g in f.evidence["groups"]] == ["head"] and f.evidence["num_params"] == 2
    assert f.evidence["optimizer_params_not_in_model"] == 2


def test_params_not_in_optimizer_frozen_inside_is_a_hint():
    model = z.MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.body.requires_grad_(False)
    f = only(xy(model, optimizer=opt), "params-not-in-optimizer")
    assert f.severity == "hint" and f.evidence["num_params"] == 2
    assert [g["module"] for g in f.evidence["frozen_in_optimizer"]] == ["body.0"]


def test_params_not_in_optimizer_healthy_and_without_optimizer():
    model = z.MLP()
    assert xy(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)).findings == []
    assert xy(model).findings == []


# ------------------------------------------------------------------ lr-too-high / weight-decay-on-norms
def _pretrained_bert():
    model, batch = z.hf_bert_classifier()
    return z.as_pretrained(model), batch


def test_lr_too_high_not_for_a_model_built_from_a_config_folder():
    """``AutoModel.from_config(AutoConfig.from_pretrained("cfg"))`` trains from scratch: its config names
    a folder, but its LayerNorms hold their initial 1 and 0, so it is not a checkpoint (lr 1e-3 is fine)."""
    model, batch = z.hf_bert_classifier()
    model.config._name_or_path = "cfg"
    report = check(model, batch, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert "lr-too-high" not in report


def test_lr_too_high_on_pretrained_model():
    model, batch = _pretrained_bert()
    f = only(check(model, batch, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3)), "lr-too-high")
    assert f.severity == "warning" and f.evidence["lr"] == 1e-3
    assert f.evidence["sane_range"] == [1e-5, 1e-4] and f.evidence["checkpoint"] == "bert-base-uncased"


def test_lr_too_high_sees_through_warmup():
    model, batch = _pretrained_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 100)  # lr starts at 0
    assert opt.param_groups[0]["lr"] == 0.0
    assert "lr-too-high" in check(model, batch, optimizer=opt)


def test_lr_too_high_sees_a_pretrained_submodule():
    model, batch = _pretrained_bert()

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = model

        def forward(self, **kw):
            return self.encoder(**kw)

    wrapped = Wrapper()
    assert "lr-too-high" in check(wrapped, batch, optimizer=torch.optim.AdamW(wrapped.parameters(), lr=1e-3))


def test_lr_too_high_healthy_twins():
    model, batch = _pretrained_bert()
    assert "lr-too-high" not in check(model, batch, optimizer=z.no_decay_adamw(model, lr=3e-5))
    head = list(model.classifier.parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    groups = torch.optim.AdamW([{"params": body, "lr": 2e-5}, {"params": head, "lr": 1e-3}], weight_decay=0.0)
    assert "lr-too-high" not in check(model, batch, optimizer=groups)  # a new head may go faster
    scratch, batch = z.hf_bert_classifier()  # from a config: trained from scratch, 1e-3 is fine
    assert "lr-too-high" not in check(scratch, batch, optimizer=torch.optim.Adam(scratch.parameters(), lr=1e-3))


def test_weight_decay_on_norms():
    model = z.MLPWithBN()
    f = only(xy(model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3)), "weight-decay-on-norms")
    assert f.severity == "hint"
    assert f.evidence["num_1d_params"] == 4  # 2 Linear biases + BN weight and bias
    assert "net.0.bias" in f.evidence["groups"][0]["examples"]
    assert "weight-decay-on-norms" not in xy(model, optimizer=z.no_decay_adamw(model))


# ------------------------------------------------------------------ oom-risk
def test_oom_risk_breakdown_and_warning(monkeypatch):
    model = z.MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    report = xy(model, optimizer=opt)
    assert "oom-risk" not in report
    mem = report.info["memory"]
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert mem["weights"] == weights and mem["gradients"] == weights
    assert mem["optimizer_state"] == 2 * weights and mem["optimizer_state_estimated"] == 2 * weights
    assert mem["activations"] > 0 and mem["fraction_of_budget"] < 0.9

    budget = int(mem["total"] / 0.95) - (mem["weights"] + mem["activations"])  # the check adds what is held
    monkeypatch.setattr(memory, "device_memory", lambda device: {"capacity": budget, "available": budget,
                                                                 "source": "test"})
    f = only(xy(model, optimizer=opt), "oom-risk")
    assert f.severity == "warning" and f.evidence["fraction_of_budget"] == pytest.approx(0.95, abs=0.01)
    assert f.evidence["max_batch_size_that_fits"] < z.classification_batch()[0].shape[0]


def test_oom_risk_measures_existing_optimizer_state():
    model = z.MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = z.classification_batch()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    mem = xy(model, optimizer=opt).info["memory"]
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert mem["optimizer_state_measured"] == weights and mem["optimizer_state_estimated"] == 0


def test_fully_frozen_model_cannot_train_and_its_unfrozen_twin_can():
    from model_zoo import MLP, ce_loss, classification_batch, xy_forward

    model = MLP()
    batch = classification_batch()
    assert "no-grad-params" not in traindoc.check(model, batch, forward=xy_forward, loss_fn=ce_loss)
    model.requires_grad_(False)
    report = traindoc.check(model, batch, forward=xy_forward, loss_fn=ce_loss)
    f = report.get("no-grad-params")
    assert f and f[0].severity == "error" and f[0].evidence["trainable"] == 0


def test_no_loss_is_said_not_hidden():
    from model_zoo import hf_gpt2

    model, batch = hf_gpt2()
    batch.pop("labels")
    report = traindoc.check(model, batch)
    assert report.ok and [f.id for f in report] == ["probe-skipped"]
    assert "input_ids" in report.get("probe-skipped")[0].evidence["batch_keys"]
    model, batch = hf_gpt2()
    assert "probe-skipped" not in traindoc.check(model, batch)
