"""Label probes: look at the class targets exactly where they reach the loss.

The main pass records every call of ``cross_entropy`` / ``nll_loss`` / BCE (inside a Hugging Face
model, a ``nn.CrossEntropyLoss`` module or the user's ``loss_fn``) with the real logits, targets and
``ignore_index``. These probes cost no extra pass: they compare those targets with the batch
(each target is mapped back to the batch tensor it comes from, `traindoc.probes.targets`).

- ``label-out-of-range``: targets >= the logits width C the loss receives (or negative other than
  ``ignore_index``); C is also named by its source (``config.num_labels``, the vocabulary);
- ``labels-not-shifted``: token-prediction targets equal the model's input ids at the same position;
- ``class-imbalance``: one class dominates the labels; the majority baseline's accuracy and loss.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from traindoc.findings import Finding, listed
from traindoc.probes.context import ProbeContext
from traindoc.probes.main_pass import LossCall

_BINARY_LOSSES = ("binary_cross_entropy", "binary_cross_entropy_with_logits")
_MIN_LABELS_FOR_IMBALANCE = 16


def label_out_of_range(ctx: ProbeContext) -> list[Finding]:
    """Targets that reach the loss outside 0..C-1 (C = the logits width it receives)."""
    findings = []
    for call in ctx.main.loss_calls:
        if call.fn in _BINARY_LOSSES:
            findings += _binary_out_of_range(ctx, call)
            continue
        lt = ctx.class_targets(call)
        if lt is None:
            continue
        C, t = lt.num_classes, lt.target
        fill = -100 if call.ignore_index is None else call.ignore_index
        bad = (t >= C) | ((t < 0) & (t != fill))
        n_bad = int(bad.sum())
        if not n_bad:
            continue
        values = Counter(t[bad].tolist())
        source = ctx.target_source if call is ctx.loss_call else ctx.source_of(lt)
        if source is None and lt.target.numel() == ctx.setup.batch_size:
            samples = torch.nonzero(bad).reshape(-1).tolist()
        else:
            samples = source.samples(bad) if source is not None else []
        cfg = ctx.setup.config
        c_from = [f"width of the logits the {call.fn} receives {tuple(call.input.shape)}"]
        num_labels = getattr(cfg, "num_labels", None) if cfg is not None else None
        if num_labels == C:
            c_from.append(f"config.num_labels = {C}")
        vocab = ctx.model_vocab_size
        if vocab == C and ctx.predicts_tokens(C):
            c_from.append(f"vocabulary size {C}")
        negative = sorted(v for v in values if v < 0)
        too_big = sorted(v for v in values if v >= C)
        evidence = {
            "num_classes": C, "num_classes_from": c_from, "loss_function": call.fn,
            "target_tensor": source.name if source is not None else None,
            "ignore_index": call.ignore_index,
            "values": {str(v): c for v, c in sorted(values.items())},
            "count": n_bad, "targets_in_loss": int(lt.counted.sum()),
            "samples": listed(samples), "num_samples": len(samples),
        }
        fix = _out_of_range_fix(ctx, C, too_big, negative, fill, vocab)
        parts = []
        if too_big:
            parts.append(f"{sum(values[v] for v in too_big)} target(s) >= {C} (max {too_big[-1]})")
        if negative:
            parts.append(f"{sum(values[v] for v in negative)} negative target(s) {negative[:3]} that are not "
                         f"ignore_index={fill}")
        where = f" in {len(samples)} sample(s) {listed(samples)}" if samples else ""
        findings.append(Finding(
            "label-out-of-range", "error",
            f"The {call.fn} receives {' and '.join(parts)}{where}, but the model predicts only {C} classes "
            "(NaN loss or 'Target is out of bounds' on CPU, a device-side assert on CUDA)",
            evidence=evidence, fix=fix))
    return findings


def _out_of_range_fix(ctx: ProbeContext, C: int, too_big: list[int], negative: list[int], fill: int,
                      vocab: int | None) -> str:
    lines = []
    tok_len = ctx.tokenizer_len
    if too_big and vocab == C and tok_len is not None and tok_len > C:
        lines.append(f"The tokenizer has {tok_len} tokens but the model's vocabulary is {C}: "
                     "`model.resize_token_embeddings(len(tokenizer))` after adding tokens.")
    elif too_big:
        k = too_big[-1] + 1
        if getattr(ctx.setup.config, "num_labels", None) == C:
            lines.append(f"If there really are {k} classes, build the head for them: "
                         f"`AutoModelForSequenceClassification.from_pretrained(name, num_labels={k})`; "
                         f"otherwise remap the labels to 0..{C - 1} (e.g. "
                         f"`dataset.filter(lambda ex: ex['label'] < {C})` for rows labelled by mistake).")
        else:
            lines.append(f"Give the output layer {k} classes (`nn.Linear(hidden, {k})`) if there are {k}, or "
                         f"remap the labels to 0..{C - 1}.")
    if negative:
        lines.append(f"Mark positions to skip with the loss's ignore_index ({fill}): "
                     f"`targets = targets.masked_fill(targets < 0, {fill})`, or "
                     f"`nn.CrossEntropyLoss(ignore_index={negative[0]})` if {negative[0]} is your padding label.")
    return " ".join(lines)


def _binary_out_of_range(ctx: ProbeContext, call: LossCall) -> list[Finding]:
    t = call.target.detach().cpu().float().reshape(-1)
    bad = (t < 0) | (t > 1)
    n_bad = int(bad.sum())
    if not n_bad:
        return []
    values = sorted(set(t[bad].tolist()))
    samples = []
    if call.target.dim() >= 1 and call.target.shape[0] == ctx.setup.batch_size:
        per = call.target.detach().cpu().reshape(ctx.setup.batch_size, -1)
        samples = torch.nonzero(((per < 0) | (per > 1)).any(1)).reshape(-1).tolist()
    return [Finding(
        "label-out-of-range", "error",
        f"The {call.fn} receives {n_bad} target(s) outside [0, 1] (e.g. {values[:3]}): BCE targets are "
        "probabilities",
        evidence={"loss_function": call.fn, "values": listed(values), "count": n_bad, "samples": listed(samples),
                  "valid_range": [0, 1]},
        fix="Use 0/1 (or soft 0..1) targets per output; for single-label classes use "
            "`F.cross_entropy(logits, labels)` with an output of one logit per class.")]


def labels_not_shifted(ctx: ProbeContext) -> list[Finding]:
    """Token-prediction targets that equal the model's inputs at the same positions (every class loss
    call is checked: with ``loss_fn`` given, a model's own shifted loss may be computed and dropped)."""
    B = ctx.setup.batch_size
    task = ctx.task[0]
    if task == "seq2seq" or len(ctx.token_streams) > 1:
        # the decoder's input only: a target equal to the *encoder's* input is a reconstruction task
        streams = [ctx.decoder_stream] if ctx.decoder_stream is not None else []
    else:
        streams = list(ctx.token_streams)
    for call in ctx.main.loss_calls:
        lt = ctx.class_targets(call)
        if lt is None or not ctx.predicts_tokens(lt.num_classes):
            continue
        for s in streams:
            ids = s.ids.cpu().long() if s.ids is not None else None
            if ids is None or ids.dim() != 2 or ids.shape[0] != B or lt.target.numel() != ids.numel():
                continue
            tv, cv = lt.target.view_as(ids), lt.counted.view_as(ids)
            n = int(cv.sum())
            if n < 4 or len(set(tv[cv].tolist())) < 2 or not bool((tv == ids)[cv].all()):
                continue
            row = int(torch.nonzero(cv.any(1))[0])
            k = min(8, ids.shape[1])
            source = ctx.source_of(lt)
            return [Finding(
                "labels-not-shifted", "error",
                f"All {n} targets that reach the {call.fn} equal the input {s.name!r} at the same position: "
                "the model is trained to copy its input, not to predict the next token",
                evidence={"input_tensor": s.name, "target_tensor": source.name if source is not None else None,
                          "loss_function": call.fn, "positions_compared": n, "equal_share": 1.0, "sample": row,
                          "inputs": ids[row, :k].tolist(), "targets": tv[row, :k].tolist(),
                          "loss": float(ctx.main.loss.detach()) if ctx.main.loss is not None else None},
                fix=_not_shifted_fix(ctx, s.name, source.name if source is not None else None))]
    return []


def _not_shifted_fix(ctx: ProbeContext, inputs: str, targets: str | None) -> str:
    """For an encoder-decoder, the decoder's inputs are the targets shifted right; for an LM, the
    targets are the inputs shifted left."""
    hf = ctx.setup.hugging_face
    if ctx.task[0] == "seq2seq":
        if hf:
            return ("The decoder's inputs must be the labels shifted right (the start token first): pass only "
                    "`labels` and let the model build `decoder_input_ids` from them, or "
                    "`decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)`.")
        return (f"Feed the decoder the targets shifted right, a start token first: `{inputs} = torch.cat("
                f"[torch.full_like({targets or 'targets'}[:, :1], bos_id), {targets or 'targets'}[:, :-1]], 1)` "
                "(and keep a causal mask on the decoder).")
    if hf:
        return ("Pass `labels=input_ids` to a Hugging Face causal LM and use its `output.loss`: it shifts them "
                "itself (token t is predicted from tokens < t); do not shift them again or compare logits "
                "with the unshifted ids yourself.")
    return ("Predict token t+1 from tokens <= t: `loss = F.cross_entropy(logits[:, :-1].reshape(-1, "
            f"logits.shape[-1]), {inputs}[:, 1:].reshape(-1))`.")


def imbalance_threshold(num_classes: int) -> float:
    """Majority share that counts as imbalanced: 0.8 for 2-3 classes, 3/C down to 0.5 for many.

    >>> imbalance_threshold(2), imbalance_threshold(4), imbalance_threshold(10)
    (0.8, 0.75, 0.5)
    """
    return max(0.5, min(0.8, 3 / num_classes))


def frequency_baseline(counts: list[int]) -> tuple[float, float]:
    """(accuracy of always predicting the majority class, cross-entropy of predicting the class
    frequencies) for a class histogram.

    >>> acc, loss = frequency_baseline([90, 10]); round(acc, 2), round(loss, 3)
    (0.9, 0.325)
    """
    n = sum(counts)
    probs = [c / n for c in counts if c]
    return max(counts) / n, -sum(p * math.log(p) for p in probs)


def _binary_labels(ctx: ProbeContext) -> torch.Tensor | None:
    """0/1 labels of a single-logit binary classifier trained with BCE (one target per sample)."""
    B = ctx.setup.batch_size
    for call in ctx.main.loss_calls:
        if call.fn in _BINARY_LOSSES and call.target.numel() == B:
            t = call.target.detach().reshape(-1).cpu()
            if bool(((t == 0) | (t == 1)).all()):
                return t.long()
    return None


def class_imbalance(ctx: ProbeContext) -> list[Finding]:
    """One class dominates the targets: the majority and frequency baselines to beat."""
    if ctx.task[0] not in ("classification", "token-classification"):
        return []
    lt = ctx.loss_targets
    if lt is not None:
        C = lt.num_classes
        t = lt.target[lt.counted]
        t = t[(t >= 0) & (t < C)]
    else:
        t = _binary_labels(ctx)
        if t is None:
            return []
        C = 2
    if C < 2 or t.numel() == 0:
        return []
    counts = torch.bincount(t, minlength=C).tolist()
    id2label = getattr(ctx.setup.config, "id2label", None) or {}

    def label(c: int) -> str:
        name = id2label.get(c, id2label.get(str(c))) if isinstance(id2label, dict) else None
        return f"{c} ({name})" if name and name != f"LABEL_{c}" else str(c)

    ctx.notes["class_histogram"] = {label(c): n for c, n in enumerate(counts) if n}
    n = t.numel()
    majority = max(range(C), key=lambda c: counts[c])
    share = counts[majority] / n
    acc, freq_loss = frequency_baseline(counts)
    ctx.notes["label_baselines"] = {"majority_accuracy": acc, "frequency_loss": freq_loss,
                                    "uniform_guess_loss": math.log(C)}
    # a tagging task is dominated by its "outside" tag by nature: only a very lopsided one is worth a word
    threshold = 0.8 if ctx.task[0] == "token-classification" else imbalance_threshold(C)
    if n < _MIN_LABELS_FOR_IMBALANCE or share < threshold:
        return []
    if any(call.weight is not None for call in ctx.main.loss_calls):
        return []  # the loss weighs the classes: the imbalance is already being answered
    loss = ctx.main.loss
    loss_now = float(loss.detach()) if loss is not None and bool(torch.isfinite(loss.detach())) else None
    return [Finding(
        "class-imbalance", "warning",
        f"Class {label(majority)} is {share:.0%} of the {n} labels in this batch: always predicting it scores "
        f"{acc:.0%} accuracy, and predicting the class frequencies gives loss {freq_loss:.3f} "
        f"(uniform guess: ln {C} = {math.log(C):.3f}); the model must beat these",
        evidence={"histogram": {label(c): k for c, k in enumerate(counts)}, "labels": n, "num_classes": C,
                  "majority_class": majority, "majority_share": share, "threshold": threshold,
                  "majority_baseline_accuracy": acc, "frequency_baseline_loss": freq_loss,
                  "uniform_guess_loss": math.log(C), "current_loss": loss_now},
        fix="Judge the model against these baselines (accuracy alone is misleading here). If the rare classes "
            "matter, weight them: `weights = counts.sum() / (len(counts) * counts); "
            "nn.CrossEntropyLoss(weight=weights)`, or balance the batches with "
            "`torch.utils.data.WeightedRandomSampler`.")]
