"""torchtest2 (github Hrehory/torchtest2): ``check_model`` on the script's first batch.

How it is used. torchtest2's README: ``report = torchtest2.check_model(model, inputs, targets,
loss_fn=loss_fn, optimizer=optimizer)``, one batch, before training. The harness hands over, for each
optimizer, copies of the model and of the optimizer made before the optimizer's first update, the inputs
of the model call whose outputs the loss was computed from (in that optimizer's first step, or its
second when it started after another optimizer), and the script's own loss computation. The call is
built the way the README tells a user to write it:

* a Hugging Face model whose own loss the script backpropagated: ``check_model(model, inputs, labels,
  plugin="huggingface", optimizer=...)`` (labels and the Trainer's ``num_items_in_batch`` out of the
  inputs); another model whose output carries ``.loss``: ``check_model(model, inputs, optimizer=...)``;
* a loss that is ``F.cross_entropy`` / ``nn.CrossEntropyLoss`` (mean reduction) of the model's output,
  after any reshaping or indexing of it: ``loss_fn=F.cross_entropy`` (an ``nn.CrossEntropyLoss`` when
  it has a weight, ignore_index or label smoothing), ``targets`` = the script's targets, and, when the
  logits are reshaped or picked out of the output, ``forward_fn`` doing that, as the README's "models
  with a special training forward pass" says (this keeps torchtest2's ``initial_loss`` check, which
  only runs for cross-entropy);
* any other loss: ``loss_fn(outputs)`` = the script's own operations from the model's outputs to the
  loss, replayed (`Batch.replay`);
* no loss computed from one model call (two models in the loss, the loss not derived from a module's
  output): ``check_model(model, inputs, optimizer=...)`` with no loss, which torchtest2 documents as
  running the gradient checks on a random projection of the outputs.

In the first three, a final multiplication or division of the loss by constants (e.g. by the
gradient-accumulation count, as the Hugging Face Trainer does) is left out: a user passes the criterion.
The optimizer copy gets the LR it was created with (a scheduler's ``initial_lr``), not the first step's
LR a warmup set (0).

Inputs are passed as the script passed them: one tensor as is, several positional arguments as a
tuple, keyword arguments as a dict (positional and keyword ones: all by name in a dict when the
model's ``forward`` signature allows it, else through ``forward_fn``/``eval_forward_fn``). For a
Hugging Face encoder-decoder model, ``decoder_input_ids`` from the labels are added to the inputs
(``model.prepare_decoder_input_ids_from_labels``): its eval passes cannot run without them. When the
input tensors disagree on their first dimension and agree on their second (a sequence-first RNN's
``(T, B)`` tokens and ``(layers, B, H)`` state), ``batch_dim=1``, as the README says for
sequence-first tensors; a single sequence-first input cannot be told from a batch-first one and keeps
the default ``batch_dim=0``. Everything else
is left at torchtest2's defaults (200 overfitting steps, seed 0, no ``frozen``, no ``output_range``).

Which report counts. The reports of the optimizers of the run's final training phase (a script that
pre-trains and then fine-tunes is checked on the fine-tuning; a GAN on both of its optimizers); for an
optimizer whose parameters or model changed during the run (a head replaced, a param group added), the
check of its last phase.
``step`` is 0: torchtest2 answers before training.

Mapping (check, status [, message]) -> catalog ids. torchtest2 names parameters, never a line.

==========================  ============================================  ==================================
check                       status / what it says                         ids
==========================  ============================================  ==================================
output_finite               FAIL (NaN/inf in the outputs)                 nan-forward
loss                        FAIL "the loss is nan/inf"                    nan-forward, nan-loss
loss                        FAIL not connected to the graph / a leaf      no-grad-params
initial_loss                WARN (far from ln C, either way)              init-loss-mismatch
optimizer_coverage          FAIL (trainable params not in the optimizer)  params-not-in-optimizer
gradient_flow               FAIL (no gradient) or WARN (all-zero grad)    no-grad-params
gradient_magnitude          FAIL (NaN/inf gradients)                      nan-loss
gradient_magnitude          WARN (exploding gradients)                    exploding-gradients
params_change               FAIL (did not change after a step)            params-not-in-optimizer,
                                                                          stalled-layers
params_change               WARN "exactly zero gradient"                  no-grad-params
params_change               WARN "vanishing"                              vanishing-gradients, stalled-layers
batch_independence          FAIL (outputs depend on other samples)        batch-mixing
overfit_batch               FAIL "did not decrease" or WARN (not reached) cannot-overfit-batch
overfit_batch               FAIL loss / gradients became NaN/inf          nan-loss
==========================  ============================================  ==================================

Not mapped (no catalog id says it): forward FAIL (the script crashes the same way), output_varies,
eval_determinism, frozen_params, input_dependency, batch_independence WARN (the tool itself says it may
be kernel numerics), the loss check's other failures (not a scalar, a non-tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.gallery.peers._base import (
    DEFAULT_TIMEOUT,
    PeerResult,
    active_records,
    cannot_run,
    installed_version,
    launch,
    no_step,
)

TRACE = True
NAME = "torchtest2"

TABLE: list[tuple[str, str, str, tuple[str, ...]]] = [
    # (check, status, substring of the message ("" = any), ids)
    ("output_finite", "FAIL", "", ("nan-forward",)),
    ("loss", "FAIL", "the loss is ", ("nan-forward", "nan-loss")),
    ("loss", "FAIL", "not connected to the autograd graph", ("no-grad-params",)),
    ("loss", "FAIL", "is a leaf tensor", ("no-grad-params",)),
    ("initial_loss", "WARN", "", ("init-loss-mismatch",)),
    ("optimizer_coverage", "FAIL", "", ("params-not-in-optimizer",)),
    ("gradient_flow", "FAIL", "", ("no-grad-params",)),
    ("gradient_flow", "WARN", "", ("no-grad-params",)),
    ("gradient_magnitude", "FAIL", "", ("nan-loss",)),
    ("gradient_magnitude", "WARN", "exploding", ("exploding-gradients",)),
    ("params_change", "FAIL", "", ("params-not-in-optimizer", "stalled-layers")),
    ("params_change", "WARN", "exactly zero gradient", ("no-grad-params",)),
    ("params_change", "WARN", "vanishing", ("vanishing-gradients", "stalled-layers")),
    ("batch_independence", "FAIL", "", ("batch-mixing",)),
    ("overfit_batch", "FAIL", "did not decrease", ("cannot-overfit-batch",)),
    ("overfit_batch", "WARN", "", ("cannot-overfit-batch",)),
    ("overfit_batch", "FAIL", "became", ("nan-loss",)),
    ("overfit_batch", "FAIL", "detect_anomaly", ("nan-loss",)),
]


def ids_for(check: str, status: str, message: str) -> list[str]:
    out: list[str] = []
    for name, st, text, ids in TABLE:
        if name == check and st == status and text in message:
            out += [i for i in ids if i not in out]
    return out


# ---------------------------------------------------------------------------------------------------
# in the script's process (see _harness)


def setup(harness: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"reports": {}, "checked": {}}

    def on_batch(rec: Any, batch: Any) -> None:
        model = batch.source.parameters() if batch.source is not None else ()
        key = (frozenset(id(p) for p in rec.params()), frozenset(id(p) for p in model))
        if key in state["checked"]:  # an optimizer re-created over the same parameters: same check
            state["reports"][str(rec.index)] = {**state["reports"][state["checked"][key]], "same_as":
                                                state["checked"][key], "phase": batch.phase}
        else:
            state["reports"][str(rec.index)] = {**_check(batch), "phase": batch.phase}
            state["checked"][key] = str(rec.index)
        harness.write_partial(NAME, state_payload(state))

    harness.batch_callbacks.append(on_batch)
    return state


def state_payload(state: dict[str, Any]) -> dict[str, Any]:
    return {"reports": state["reports"]}


def finish(harness: Any, state: dict[str, Any], error: BaseException | None) -> dict[str, Any]:
    return state_payload(state)


def _call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _is_hf(model: Any) -> bool:
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


_SCALE_OPS = {"__truediv__", "__mul__", "__rmul__", "__div__", "div", "mul", "true_divide", "divide", "multiply",
              "__itruediv__", "__imul__", "div_", "mul_"}


def _unscaled(batch: Any) -> Any:
    """The key of the loss before the script multiplied or divided it by constants (e.g. by the number of
    gradient-accumulation steps, as the Hugging Face Trainer does)."""
    from benchmarks.gallery.peers._harness import Ref

    key = batch.loss_key
    while key is not None and key[0] == "node" and key[2] == ():
        node = batch.nodes[key[1]]
        others = [a for a in (*node.args, *node.kwargs.values()) if not isinstance(a, Ref)]
        if getattr(node.func, "__name__", "") not in _SCALE_OPS or len(node.deps) != 1 \
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in others):
            break
        key = next(iter(node.deps))
    return key


def _cross_entropy(batch: Any, key: Any) -> tuple[Any, Any, Any] | None:
    """(loss_fn, targets, the key of the logits) when the (unscaled) loss at ``key`` is a mean
    cross-entropy of the model's output."""
    import torch
    import torch.nn.functional as F
    from benchmarks.gallery.peers._harness import Ref

    if key is None or key[0] != "node" or key[2] != () or batch.nodes[key[1]].func is not F.cross_entropy:
        return None
    node = batch.nodes[key[1]]
    args, kw = list(node.args), dict(node.kwargs)
    logits = args[0] if args else kw.pop("input", None)
    target = args[1] if len(args) > 1 else kw.pop("target", None)
    if not isinstance(logits, Ref) or not isinstance(target, torch.Tensor) or len(args) > 2:
        return None
    if kw.get("size_average") is not None or kw.get("reduce") is not None or kw.get("reduction", "mean") != "mean":
        return None
    weight, ignore_index = kw.get("weight"), kw.get("ignore_index", -100)
    smoothing = kw.get("label_smoothing", 0.0)
    if isinstance(weight, Ref):
        return None
    if weight is None and ignore_index == -100 and smoothing == 0.0:
        loss_fn: Any = F.cross_entropy
    else:
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing)
    return loss_fn, target, logits.key


def _named(model: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Positional arguments given with keyword ones, passed by name (``model(ids, attention_mask=m)`` ->
    ``{"input_ids": ids, "attention_mask": m}``), so that torchtest2 can be given one dict."""
    if not (args and kwargs):
        return args, kwargs
    import inspect

    try:
        sig = inspect.signature(model.forward)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    kinds = {name: sig.parameters[name].kind for name in bound.arguments}
    if any(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL) for k in kinds.values()):
        return args, kwargs
    named: dict = {}
    for name, value in bound.arguments.items():
        if kinds[name] is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return (), named


def plan(batch: Any) -> tuple[dict[str, Any], str]:
    """The arguments of ``check_model`` for ``batch`` and how they were chosen (one line)."""
    import torch
    from benchmarks.gallery.peers._harness import leaves

    model = batch.model
    args, kwargs = _named(model, batch.args, dict(batch.kwargs))
    call: dict[str, Any] = {"model": model, "optimizer": batch.optimizer}
    how: list[str] = []
    if args and kwargs:
        call["inputs"] = {"args": args, "kwargs": kwargs}
        call["forward_fn"] = lambda m, x, t: m(*x["args"], **x["kwargs"])
        call["eval_forward_fn"] = lambda m, x: m(*x["args"], **x["kwargs"])
        how.append("inputs=(args, kwargs) through forward_fn")
    elif kwargs:
        call["inputs"] = kwargs
        how.append(f"inputs=dict({', '.join(kwargs)})")
    elif len(args) == 1 and isinstance(args[0], torch.Tensor):
        call["inputs"] = args[0]
        how.append(f"inputs=Tensor{list(args[0].shape)}")
    else:
        call["inputs"] = tuple(args)
        how.append(f"inputs=tuple of {len(args)}")
    tensors = [t for _, t in leaves(call["inputs"])]
    if len(tensors) > 1 and all(t.ndim >= 2 for t in tensors) and len({t.shape[0] for t in tensors}) > 1 \
            and len({t.shape[1] for t in tensors}) == 1:
        # sequence-first inputs (an RNN's (T, B) tokens and (L, B, H) state): the README's batch_dim=1
        call["batch_dim"] = 1
        how.append("batch_dim=1")
    if batch.loss_key is None:
        how.append("no loss (random projection): " + (batch.note or "no loss found"))
        return call, "; ".join(how)
    key = _unscaled(batch)
    if key[0] == "root" and key[2] == ("loss",):
        if _is_hf(model) and "labels" in kwargs and not args:
            # the Trainer's bookkeeping argument is not a model input a user would pass
            inputs = {k: v for k, v in kwargs.items() if k not in ("labels", "num_items_in_batch")}
            labels = kwargs["labels"]
            if getattr(getattr(model, "config", None), "is_encoder_decoder", False) \
                    and "decoder_input_ids" not in inputs and hasattr(model, "prepare_decoder_input_ids_from_labels"):
                # without labels (eval passes) a seq2seq model needs its decoder inputs, as a user gives them
                inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
            call["inputs"], call["targets"], call["plugin"] = inputs, labels, "huggingface"
            how = [f"inputs=dict({', '.join(inputs)}), targets=labels, plugin='huggingface'"]
        else:
            how.append("the model's own outputs.loss")
        return call, "; ".join(how)
    ce = _cross_entropy(batch, key)
    if ce is not None and "forward_fn" not in call:
        loss_fn, target, logits_key = ce
        call["loss_fn"], call["targets"] = loss_fn, target
        how.append(f"loss_fn={getattr(loss_fn, '__name__', None) or type(loss_fn).__name__}, targets=Tensor"
                   f"{list(target.shape)}")
        if logits_key != ("root", logits_key[1], ()):
            call["forward_fn"] = lambda m, x, t: batch.replay(_call(m, x), upto=logits_key)
            how.append("forward_fn = the model, then the script's ops to the logits")
        return call, "; ".join(how)
    call["loss_fn"] = batch.replay
    ops = [batch.nodes[i].name for i in batch.needed]
    how.append(f"loss_fn(outputs) = the script's ops: {' -> '.join(ops) or 'an output'}")
    return call, "; ".join(how)


def _check(batch: Any) -> dict[str, Any]:
    import torchtest2

    if batch.model is None:
        return {"error": "no module was called before the optimizer's step: nothing to check"}
    try:
        kwargs, how = plan(batch)
    except Exception as e:
        return {"error": f"could not build the call: {type(e).__name__}: {e}"}
    model, inputs = kwargs.pop("model"), kwargs.pop("inputs")
    targets = kwargs.pop("targets", None)
    try:
        report = torchtest2.check_model(model, inputs, targets, **kwargs)
    except Exception as e:
        return {"error": f"check_model raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                "call": how}
    return {"call": how, "note": batch.note, "copied": batch.copied,
            "results": [{"name": r.name, "status": r.status.value, "message": r.message} for r in report.results],
            "text": str(report)}


# ---------------------------------------------------------------------------------------------------
# in the scorer's process


class TorchTest2Peer:
    name = NAME
    expressible = frozenset(i for *_, ids in TABLE for i in ids)

    @property
    def version(self) -> str:
        return installed_version("torchtest2")

    def run(self, script: Path, fixed: bool, run_options: list[str], timeout: float = DEFAULT_TIMEOUT
            ) -> PeerResult:
        refused = cannot_run(run_options, "torchtest2")
        if refused is not None:
            return refused
        got = launch(NAME, script, fixed, timeout)
        if got.data is None:
            return PeerResult([], None, None, got.wall_s, [], got.error)
        reports = got.data.get("payload", {}).get("reports", {})
        chosen = [str(o["index"]) for o in active_records(got.data) if str(o["index"]) in reports] or list(reports)
        ids: list[str] = []
        messages: list[str] = []
        errors: list[str] = []
        for index in chosen:
            rep = reports[index]
            if "error" in rep:
                errors.append(rep["error"])
                continue
            summary = rep["text"].splitlines()[-1].strip()
            messages.append(f"check_model({rep['call']}): {summary}" + (f" [{rep['note']}]" if rep.get("note") else ""))
            for r in rep["results"]:
                if r["status"] in ("FAIL", "WARN"):
                    messages.append(f"{r['status']}  {r['name']}  {r['message']}")
                    ids += [i for i in ids_for(r["name"], r["status"], r["message"]) if i not in ids]
        if got.timed_out:  # the script did not end: which phase is its last is unknown; counted as failed
            messages = [f"before the timeout: {m}" for m in messages]
            return PeerResult([], None, None, got.wall_s, messages, got.error)
        error = ""
        if not reports:
            error = got.error or (no_step(got.data) if not got.data.get("global_steps") else
                                  "no batch was captured (no module call before the optimizer's step)")
        elif errors and not messages:
            error = "; ".join(errors)
        elif errors:
            messages += [f"error: {e}" for e in errors]
        return PeerResult(sorted(ids), 0 if ids else None, None, got.wall_s, messages, error,
                          dict.fromkeys(ids, 0))
