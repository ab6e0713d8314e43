"""Data probes: look at the targets exactly where they reach the loss.

The main pass records every call of ``cross_entropy`` / ``nll_loss`` / BCE (inside a Hugging Face
model, a ``nn.CrossEntropyLoss`` module or the user's ``loss_fn``) with the real logits, targets and
``ignore_index``. These probes cost no extra pass: they compare those targets with the batch.

- ``label-out-of-range``: targets >= the logits width C the loss receives (or negative other than
  ``ignore_index``); C is also named by its source (``config.num_labels``, the vocabulary);
- ``pad-equals-eos``: pad id == eos id, and the loss receives no EOS target although the batch holds
  EOS tokens (the seed-000 ``targets != eos`` mask), or it receives EOS targets at pad positions
  (Hugging Face labels whose pads were not set to -100);
- ``padding-in-loss``: targets at pad positions (attention mask 0) reach the loss with a weight;
- ``labels-not-shifted``: token-prediction targets equal the model's input ids at the same position;
- ``class-imbalance``: one class dominates the labels; the majority baseline's accuracy and loss;
- ``data-view``: the first samples decoded with their labels (``report.info["samples"]``).

Every loss target is mapped back to the batch tensor it comes from (`traindoc.probes.targets`): the same
positions, the same positions shifted by one (a Hugging Face causal LM shifts its labels inside the
model), or a masked subsequence (``targets[mask]``), so that evidence can name samples.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from traindoc.findings import Finding
from traindoc.probes.context import LossCall, ProbeContext, Stream
from traindoc.probes.registry import probe
from traindoc.probes.targets import TargetSource, match_target

_CLASS_LOSSES = ("cross_entropy", "nll_loss")
_BINARY_LOSSES = ("binary_cross_entropy", "binary_cross_entropy_with_logits")
_MAX_LISTED = 10
_MIN_LABELS_FOR_IMBALANCE = 16
_TEXT_CHARS = 200


# ---------------------------------------------------------------------------------------- helpers
@dataclass
class LossTargets:
    """The class targets of one loss call, flattened, on the host."""

    call: LossCall
    target: torch.Tensor  # (N,) int64
    counted: torch.Tensor  # (N,) bool: not ignore_index and not weighted 0
    num_classes: int


@dataclass
class RealMask:
    """Which positions of a (B, T) batch tensor are real tokens, and how that was decided."""

    real: torch.Tensor  # (B, T) bool, host
    source: str
    proved: bool  # True: from an attention mask; False: inferred from runs of the pad id


_CACHE: weakref.WeakKeyDictionary[ProbeContext, dict[str, Any]] = weakref.WeakKeyDictionary()


def _cache(ctx: ProbeContext) -> dict[str, Any]:
    return _CACHE.setdefault(ctx, {})


def class_targets(call: LossCall, ctx: ProbeContext | None = None) -> LossTargets | None:
    """The flattened class targets of a cross_entropy / nll_loss call (None for soft targets).

    With ``reduction="none"`` the user may weight the per-element losses afterwards (``(loss * mask)
    .sum() / mask.sum()``): given ``ctx``, one backward pass asks autograd which elements reach the final
    loss, and targets with a zero gradient are not counted."""
    if call.fn not in _CLASS_LOSSES or call.target.is_floating_point() or call.input.dim() < 1:
        return None
    num_classes = call.input.shape[1] if call.input.dim() >= 2 else call.input.shape[0]
    target = call.target.reshape(-1).cpu().long()
    counted = torch.ones_like(target, dtype=torch.bool)
    if call.ignore_index is not None:
        counted &= target != call.ignore_index
    if isinstance(call.weight, torch.Tensor) and call.weight.dim() == 1 and call.weight.numel() == num_classes:
        in_range = counted & (target >= 0) & (target < num_classes)
        w = call.weight.detach().cpu()
        zero_weight = torch.zeros_like(counted)
        zero_weight[in_range] = w[target[in_range]] == 0
        counted &= ~zero_weight
    if ctx is not None and call.reduction == "none":
        counted &= _reaches_loss(ctx, call, target.numel())
    return LossTargets(call, target, counted, num_classes)


def _reaches_loss(ctx: ProbeContext, call: LossCall, n: int) -> torch.Tensor:
    """Bool (n,): which per-element losses of a ``reduction="none"`` call the final loss depends on."""
    cache = _cache(ctx).setdefault("reaches", {})
    key = id(call)
    if key not in cache:
        out, loss = call.output, ctx.main.loss
        reach = torch.ones(n, dtype=torch.bool)
        if (isinstance(out, torch.Tensor) and out.numel() == n and out.requires_grad
                and loss is not None and loss.requires_grad):
            (g,) = ctx.grad(loss, [out])
            reach = torch.zeros(n, dtype=torch.bool) if g is None else (g.detach().reshape(-1) != 0).cpu()
        cache[key] = reach
    return cache[key]


def _main_targets(ctx: ProbeContext) -> LossTargets | None:
    cache = _cache(ctx)
    if "targets" not in cache:
        cache["targets"] = class_targets(ctx.loss_call, ctx) if ctx.loss_call is not None else None
    return cache["targets"]


def find_source(ctx: ProbeContext, lt: LossTargets) -> TargetSource | None:
    """The batch tensor a loss call's targets come from (`traindoc.probes.targets.match_target`)."""
    return match_target(ctx, lt.target, lt.counted)


def target_source(ctx: ProbeContext) -> TargetSource | None:
    """`find_source` for the main loss call (cached)."""
    cache = _cache(ctx)
    if "source" not in cache:
        lt = _main_targets(ctx)
        cache["source"] = find_source(ctx, lt) if lt is not None else None
    return cache["source"]


def _streams_shaped(ctx: ProbeContext, shape: tuple[int, ...]) -> list[Stream]:
    out: list[Stream] = []
    ds = ctx.decoder_stream
    if ds is not None and ds.ids is not None and tuple(ds.ids.shape) == shape:
        out.append(ds)
    out += [s for s in ctx.token_streams if s.ids is not None and tuple(s.ids.shape) == shape and s not in out]
    return out


def _tensor_name(ctx: ProbeContext, t: torch.Tensor) -> str:
    return next((n for n, x in ctx.setup.tensors.items() if x is t), "attention mask")


def real_mask(ctx: ProbeContext, tensor: torch.Tensor) -> RealMask | None:
    """Real (non-pad) positions of a (B, T) batch tensor: the attention mask of the token stream of
    the same shape (the decoder's first), checked against the pad id; else trailing runs of the pad
    id in the tensor itself (with pad == eos, the first of the run is the real EOS)."""
    if tensor.dim() != 2:
        return None
    pad = ctx.setup.special_id("pad_token_id")
    for s in _streams_shaped(ctx, tuple(tensor.shape)):
        m = ctx.attention_mask_for(s)
        if m is None:
            continue
        real = (m.bool() if m.dtype == torch.bool else m != 0).cpu()
        ids = s.ids.cpu() if s.ids is not None else None
        if pad is not None and ids is not None and bool((~real).any()) and not bool((ids[~real] == pad).all()):
            continue  # zeros of this mask are not pads of this stream: it belongs to another stream
        return RealMask(real, f"{_tensor_name(ctx, m)} (mask of {s.name!r})", proved=True)
    if pad is None:
        return None
    t = tensor.detach().cpu()
    is_pad = t == pad
    trailing = torch.flip(torch.cumprod(torch.flip(is_pad, [1]).int(), 1), [1]).bool()
    if pad == ctx.setup.special_id("eos_token_id"):
        first = trailing & ~torch.cat([torch.zeros_like(trailing[:, :1]), trailing[:, :-1]], 1)
        trailing &= ~first
    return RealMask(~trailing, f"trailing runs of the pad id {pad} in the targets", proved=False)


def _short(values: list[Any]) -> list[Any]:
    return values[:_MAX_LISTED]


def _vocab_size(ctx: ProbeContext) -> int | None:
    cfg = ctx.setup.config
    v = getattr(cfg, "vocab_size", None) if cfg is not None else None
    return v if isinstance(v, int) else ctx.vocab_size


def _tokenizer_len(ctx: ProbeContext) -> int | None:
    tok = ctx.setup.tokenizer
    if tok is None:
        return None
    try:
        return len(tok)
    except Exception:
        v = getattr(tok, "vocab_size", None)
        return v if isinstance(v, int) else None


def _token_task(ctx: ProbeContext, num_classes: int) -> bool:
    """Targets are token ids (an LM of some kind), not a small label set."""
    task = ctx.task[0]
    if task in ("causal-lm", "seq2seq"):
        return True
    if task is not None:
        return False
    vocab = ctx.vocab_size
    return bool(vocab) and num_classes >= vocab // 2


# ----------------------------------------------------------------------------- label-out-of-range
@probe("label-out-of-range", "data")
def label_out_of_range(ctx: ProbeContext) -> list[Finding]:
    """Targets that reach the loss outside 0..C-1 (C = the logits width it receives)."""
    findings = []
    for call in ctx.main.loss_calls:
        if call.fn in _BINARY_LOSSES:
            findings += _binary_out_of_range(ctx, call)
            continue
        lt = class_targets(call)
        if lt is None:
            continue
        C, t = lt.num_classes, lt.target
        fill = -100 if call.ignore_index is None else call.ignore_index
        bad = (t >= C) | ((t < 0) & (t != fill))
        n_bad = int(bad.sum())
        if not n_bad:
            continue
        values = Counter(t[bad].tolist())
        source = target_source(ctx) if call is ctx.loss_call else find_source(ctx, lt)
        if source is None and lt.target.numel() == ctx.setup.batch_size:
            samples = torch.nonzero(bad).reshape(-1).tolist()
        else:
            samples = source.samples(bad) if source is not None else []
        cfg = ctx.setup.config
        c_from = [f"width of the logits the {call.fn} receives {tuple(call.input.shape)}"]
        num_labels = getattr(cfg, "num_labels", None) if cfg is not None else None
        if num_labels == C:
            c_from.append(f"config.num_labels = {C}")
        vocab = _vocab_size(ctx)
        if vocab == C and _token_task(ctx, C):
            c_from.append(f"vocabulary size {C}")
        negative = sorted(v for v in values if v < 0)
        too_big = sorted(v for v in values if v >= C)
        evidence = {
            "num_classes": C, "num_classes_from": c_from, "loss_function": call.fn,
            "target_tensor": source.name if source is not None else None,
            "ignore_index": call.ignore_index,
            "values": {str(v): c for v, c in sorted(values.items())},
            "count": n_bad, "targets_in_loss": int(lt.counted.sum()),
            "samples": _short(samples), "num_samples": len(samples),
        }
        fix = _out_of_range_fix(ctx, C, too_big, negative, fill, vocab)
        parts = []
        if too_big:
            parts.append(f"{sum(values[v] for v in too_big)} target(s) >= {C} (max {too_big[-1]})")
        if negative:
            parts.append(f"{sum(values[v] for v in negative)} negative target(s) {negative[:3]} that are not "
                         f"ignore_index={fill}")
        where = f" in {len(samples)} sample(s) {_short(samples)}" if samples else ""
        findings.append(Finding(
            "label-out-of-range", "error",
            f"The {call.fn} receives {' and '.join(parts)}{where}, but the model predicts only {C} classes "
            "(NaN loss or 'Target is out of bounds' on CPU, a device-side assert on CUDA)",
            evidence=evidence, fix=fix))
    return findings


def _out_of_range_fix(ctx: ProbeContext, C: int, too_big: list[int], negative: list[int], fill: int,
                      vocab: int | None) -> str:
    lines = []
    tok_len = _tokenizer_len(ctx)
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
        evidence={"loss_function": call.fn, "values": _short(values), "count": n_bad, "samples": _short(samples),
                  "valid_range": [0, 1]},
        fix="Use 0/1 (or soft 0..1) targets per output; for single-label classes use "
            "`F.cross_entropy(logits, labels)` with an output of one logit per class.")]


# ---------------------------------------------------------------------------------- padding-in-loss
@dataclass
class PaddingInLoss:
    count: int  # loss targets proved to sit at pad positions (a lower bound for a subset)
    eos_count: int  # of which equal to the eos id
    samples: list[int]
    mask: RealMask
    source: TargetSource
    pad_positions: int
    exact: bool


def padding_in_loss_facts(ctx: ProbeContext) -> PaddingInLoss | None:
    """How many loss targets sit at pad positions of the target tensor."""
    cache = _cache(ctx)
    if "padding" in cache:
        return cache["padding"]
    result = None
    lt, source = _main_targets(ctx), target_source(ctx)
    if lt is not None and source is not None and source.tensor.dim() == 2:
        mask = real_mask(ctx, source.tensor)
        if mask is not None:
            real = mask.real.reshape(-1)
            eos = ctx.setup.special_id("eos_token_id")
            if source.kind in ("same", "shifted"):
                mapped = lt.counted & (source.positions >= 0)
                at_pad = torch.zeros_like(mapped)
                at_pad[mapped] = ~real[source.positions[mapped]]
                count = int(at_pad.sum())
                eos_count = int((at_pad & (lt.target == eos)).sum()) if eos is not None else 0
                samples = source.samples(at_pad)
                exact = True
            else:  # a masked subset: more targets of a value than real positions hold is a proof
                got = Counter(lt.target[lt.counted].tolist())
                flat = source.tensor.reshape(-1).long()
                have = Counter(flat[real].tolist())
                excess = {v: n - have.get(v, 0) for v, n in got.items() if n > have.get(v, 0)}
                count = sum(excess.values())
                eos_count = excess.get(eos, 0) if eos is not None else 0
                # which samples: the greedy alignment's guess (any alignment has at least `count`)
                at_pad = lt.counted & ~real[source.positions.clamp(min=0)] & (source.positions >= 0)
                samples = source.samples(at_pad) if count else []
                exact = False
            result = PaddingInLoss(count, eos_count, samples, mask, source, int((~mask.real).sum()), exact)
    cache["padding"] = result
    return result


@probe("padding-in-loss", "data")
def padding_in_loss(ctx: ProbeContext) -> list[Finding]:
    """Targets at pad positions (attention mask 0) that reach the loss with a weight."""
    facts = padding_in_loss_facts(ctx)
    lt = _main_targets(ctx)
    if facts is None or lt is None or facts.count == 0:
        return []
    n_loss = int(lt.counted.sum())
    share = facts.count / max(1, n_loss)
    src = facts.source
    hf = ctx.setup.config is not None and ctx.main.loss_source == "output.loss"
    mask_name = facts.mask.source.split(" ")[0] if facts.mask.proved else "attention_mask"
    if hf:
        fix = ("Set the labels of padding to -100 (the loss's ignore_index): "
               f"`batch['{src.name}'] = batch['{src.name}'].masked_fill(batch['{mask_name}'] == 0, -100)`, "
               "or build batches with `DataCollatorForLanguageModeling(tokenizer, mlm=False)` / "
               "`DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)`.")
    else:
        fix = ("Leave padding out of the loss by position, not by token id: "
               f"`keep = batch['{mask_name}'].bool(); loss = F.cross_entropy(logits[keep], targets[keep])`, "
               f"or set padded targets to the ignore_index: "
               f"`targets = targets.masked_fill(batch['{mask_name}'] == 0, -100)`.")
    how = "exactly" if facts.exact else "at least (more targets of these values than real positions hold)"
    return [Finding(
        "padding-in-loss", "error" if facts.mask.proved else "warning",
        f"{facts.count} of the {n_loss} targets that reach the loss ({share:.0%}) are padding of "
        f"{src.name!r}: the model is trained to predict pad tokens",
        evidence={
            "pad_targets_in_loss": facts.count, "counted": how, "targets_in_loss": n_loss, "share": share,
            "target_tensor": src.name, "mapping": src.kind, "pad_positions_in_batch": facts.pad_positions,
            "padding_from": facts.mask.source, "pad_token_id": ctx.setup.special_id("pad_token_id"),
            "ignore_index": lt.call.ignore_index, "samples": _short(facts.samples),
        },
        fix=fix)]


# ---------------------------------------------------------------------------------- pad-equals-eos
@probe("pad-equals-eos", "data")
def pad_equals_eos(ctx: ProbeContext) -> list[Finding]:
    """pad id == eos id and the EOS targets are dropped from the loss, or pads are EOS targets."""
    pad, eos = ctx.setup.special_id("pad_token_id"), ctx.setup.special_id("eos_token_id")
    lt = _main_targets(ctx)
    if (pad is None or eos is None or pad != eos or lt is None or not bool(lt.counted.any())
            or not _token_task(ctx, lt.num_classes)):
        return []
    source = target_source(ctx)
    eos_in_loss = int((lt.counted & (lt.target == eos)).sum())
    evidence: dict[str, Any] = {"pad_token_id": pad, "eos_token_id": eos, "eos_targets_in_loss": eos_in_loss,
                                "targets_in_loss": int(lt.counted.sum()),
                                "target_tensor": source.name if source is not None else None}
    hf = ctx.setup.config is not None and ctx.main.loss_source == "output.loss"
    if eos_in_loss == 0:
        return _eos_never_a_target(ctx, source, eos, evidence, hf)
    facts = padding_in_loss_facts(ctx)
    if facts is None or facts.eos_count == 0:
        return []
    evidence.update({"eos_targets_at_pad_positions": facts.eos_count, "padding_from": facts.mask.source,
                     "samples": _short(facts.samples)})
    return [Finding(
        "pad-equals-eos", "error" if facts.mask.proved else "warning",
        f"pad == eos (id {eos}) and {facts.eos_count} of the {eos_in_loss} EOS targets in the loss are padding "
        "(labels not set to -100 at pads): the model is trained to emit EOS at every pad position, and "
        "the pads drown the real end-of-sequence signal",
        evidence=evidence,
        fix="Set the labels of padding to -100 and keep only the first EOS: "
            "`labels = input_ids.masked_fill(attention_mask == 0, -100)` (with the real EOS inside the "
            "attention mask); or give the tokenizer its own pad token.")]


def _stream_real(ctx: ProbeContext, stream: Stream) -> torch.Tensor | None:
    """The attention mask of a stream as bool, if its zeros are pads of that stream."""
    m = ctx.attention_mask_for(stream)
    if m is None or stream.ids is None:
        return None
    real = (m.bool() if m.dtype == torch.bool else m != 0).cpu()
    pad = ctx.setup.special_id("pad_token_id")
    if pad is not None and bool((~real).any()) and not bool((stream.ids.cpu()[~real] == pad).all()):
        return None
    return real


def _eos_never_a_target(ctx: ProbeContext, source: TargetSource | None, eos: int, evidence: dict[str, Any],
                        hf: bool) -> list[Finding]:
    """pad == eos and no EOS reaches the loss: were there EOS tokens the loss dropped?"""
    B = ctx.setup.batch_size
    any_eos = torch.zeros(B, dtype=torch.bool)
    real_eos = torch.zeros(B, dtype=torch.bool)
    masks_known = False
    mask_name = "attention_mask"
    if source is not None:
        t = source.tensor.reshape(B, -1)
        evidence["eos_in_batch_targets"] = int((t == eos).sum())
        any_eos |= (t == eos).any(1)
        mask = real_mask(ctx, source.tensor) if source.tensor.dim() == 2 else None
        if mask is not None and mask.proved:
            masks_known = True
            mask_name = mask.source.split(" ")[0]
            real_in_targets = (t == eos) & mask.real
            evidence["real_eos_in_targets"] = int(real_in_targets.sum())
            evidence["padding_from"] = mask.source
            real_eos |= real_in_targets.any(1)
    # the input stream the targets are predicted from: an EOS after its first real token is a target
    shape = tuple(source.tensor.shape) if source is not None else None
    streams = _streams_shaped(ctx, shape) if shape else ([ctx.decoder_stream] if ctx.decoder_stream else [])
    if streams and streams[0].ids is not None:
        s = streams[0]
        ids = s.ids.cpu()
        evidence["input_tensor"] = s.name
        real = _stream_real(ctx, s)
        later = torch.ones_like(ids, dtype=torch.bool)
        later[:, 0] = False
        evidence["eos_in_inputs"] = int(((ids == eos) & later).sum())
        any_eos |= ((ids == eos) & later).any(1)
        if real is not None:
            masks_known = True
            after_first = real & (real.long().cumsum(1) > 1)
            real_in_inputs = (ids == eos) & after_first
            evidence["real_eos_in_inputs"] = int(real_in_inputs.sum())
            real_eos |= real_in_inputs.any(1)
    if not bool(any_eos.any()):
        return []  # no padding and no EOS in this batch: pad == eos changes nothing here
    n_loss = evidence["targets_in_loss"]
    if masks_known and not bool(real_eos.any()):
        rows = torch.nonzero(any_eos).reshape(-1).tolist()
        evidence.update({"samples": _short(rows), "num_samples": len(rows)})
        return [Finding(
            "pad-equals-eos", "warning",
            f"pad == eos (id {eos}) and the batch has no real EOS at all (every EOS id is padding): none of the "
            f"{n_loss} targets that reach the loss is EOS, so the model cannot learn to stop",
            evidence=evidence,
            fix="Append the EOS token to every sequence before padding (`text + tokenizer.eos_token`), keep it "
                "inside the attention mask and as a target, and mask only the padding (labels = -100 where "
                "attention_mask == 0); or give the tokenizer its own pad token.")]
    rows = torch.nonzero(real_eos if masks_known else any_eos).reshape(-1).tolist()
    evidence.update({"samples": _short(rows), "num_samples": len(rows)})
    what = "real EOS (inside the attention mask)" if masks_known else "EOS tokens"
    fix = ("The loss drops every EOS target, so the model never learns to end a sequence. Mask padding by "
           "position, not by token id, and keep the first EOS of each sequence as a target: "
           f"`keep = batch['{mask_name}'].bool(); loss = F.cross_entropy(logits[keep], targets[keep])` "
           "(with EOS inside the attention mask), or set labels to -100 only where attention_mask == 0. "
           "Or give the tokenizer its own pad token: `tokenizer.add_special_tokens({'pad_token': '[PAD]'}); "
           "model.resize_token_embeddings(len(tokenizer))`.")
    if hf:
        fix += (" With pad == eos, `DataCollatorForLanguageModeling` sets every EOS label to -100: mask by "
                "`attention_mask` instead.")
    return [Finding(
        "pad-equals-eos", "error",
        f"pad == eos (id {eos}) and none of the {n_loss} targets that reach the loss is EOS, although "
        f"{len(rows)} of the {B} samples hold {what}: the loss drops them with the padding, and the model "
        "never learns to stop",
        evidence=evidence, fix=fix)]


# ------------------------------------------------------------------------------- labels-not-shifted
@probe("labels-not-shifted", "data")
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
        lt = class_targets(call, ctx)
        if lt is None or not _token_task(ctx, lt.num_classes):
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
            source = find_source(ctx, lt)
            return [Finding(
                "labels-not-shifted", "error",
                f"All {n} targets that reach the {call.fn} equal the input {s.name!r} at the same position: "
                "the model is trained to copy its input, not to predict the next token",
                evidence={"input_tensor": s.name, "target_tensor": source.name if source is not None else None,
                          "loss_function": call.fn, "positions_compared": n, "equal_share": 1.0, "sample": row,
                          "inputs": ids[row, :k].tolist(), "targets": tv[row, :k].tolist(),
                          "loss": float(ctx.main.loss.detach()) if ctx.main.loss is not None else None},
                fix="Predict token t+1 from tokens <= t: `loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), "
                    "input_ids[:, 1:].reshape(-1))`; or pass `labels=input_ids` to a Hugging Face causal LM "
                    "and use its `output.loss`, which shifts them itself.")]
    return []


# ---------------------------------------------------------------------------------- class-imbalance
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


@probe("class-imbalance", "data")
def class_imbalance(ctx: ProbeContext) -> list[Finding]:
    """One class dominates the targets: the majority and frequency baselines to beat."""
    if ctx.task[0] not in ("classification", "token-classification"):
        return []
    lt = _main_targets(ctx)
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


# ------------------------------------------------------------------------------------ data view
def _decode(tok: Any, ids: list[int]) -> str:
    if not ids:
        return ""
    try:
        return str(tok.decode(ids, skip_special_tokens=False))
    except TypeError:
        return str(tok.decode(ids))


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1] + "…"


def decode_row(tok: Any, row: list[int], real: list[bool] | None = None, ignore: int | None = None,
               vocab: int | None = None) -> str:
    """Decode one row, showing runs of padding as ``[pad ×k]``, ignored targets as ``[ignored ×k]`` and,
    in a label row (``ignore`` given), padding that is still a target as ``[pad labelled 0 ×k]``.

    >>> class Tok:
    ...     def decode(self, ids, skip_special_tokens=False): return " ".join(f"w{i}" for i in ids)
    >>> decode_row(Tok(), [5, 6, 0, 0], real=[True, True, False, False])
    'w5 w6 [pad ×2]'
    >>> decode_row(Tok(), [5, 6, 0, -100], real=[True, True, False, False], ignore=-100)
    'w5 w6 [pad labelled 0 ×1] [ignored ×1]'
    """
    parts: list[str] = []
    run: list[int] = []
    marker, count = "", 0

    def flush_run() -> None:
        if run:
            parts.append(_decode(tok, run))
            run.clear()

    def flush_marker() -> None:
        nonlocal marker, count
        if count:
            parts.append(f"[{marker} ×{count}]")
        marker, count = "", 0

    for i, x in enumerate(row):
        if ignore is not None and x == ignore:
            kind = "ignored"
        elif real is not None and not real[i]:
            kind = "pad" if ignore is None else f"pad labelled {x}"
        elif x < 0 or (vocab is not None and x >= vocab):
            kind = "out of vocab"
        else:
            kind = ""
        if kind:
            flush_run()
            if kind != marker:
                flush_marker()
                marker = kind
            count += 1
        else:
            flush_marker()
            run.append(x)
    flush_run()
    flush_marker()
    return _clip(" ".join(p for p in parts if p))


def _is_text(ctx: ProbeContext, stream: Stream, vocab: int | None) -> bool:
    """A stream of token ids (not token_type_ids / position ids): its embedding is vocabulary-sized."""
    if stream.module is None:
        return False
    try:
        emb = ctx.setup.model.get_submodule(stream.module)
    except AttributeError:
        return True
    n = getattr(emb, "num_embeddings", None)
    if not isinstance(n, int):
        return True
    return n >= (vocab or 0) // 2 and n > 16 if vocab else n > 16


@probe("data-view", "data")
def data_view(ctx: ProbeContext) -> list[Finding]:
    """Decode the first samples where they enter the model (``info["samples"]``); no finding."""
    tok = ctx.setup.tokenizer
    if tok is None or not hasattr(tok, "decode"):
        return []
    B = ctx.setup.batch_size
    source = target_source(ctx)
    lt = _main_targets(ctx)
    task = ctx.task[0]
    vocab = _tokenizer_len(ctx)
    ignore = lt.call.ignore_index if lt is not None else -100
    id2label = getattr(ctx.setup.config, "id2label", None) or {}
    label_name = source.name if source is not None else ctx.target_name
    stream_by_name = {s.name: s for s in ctx.token_streams if s.from_batch and _is_text(ctx, s, vocab)}
    token_tensors = {n: t for n, t in ctx.setup.tensors.items()
                     if n in stream_by_name and t.dim() == 2 and n != label_name}
    if not token_tensors:  # a model that does not embed with nn.Embedding: tensors named like ids
        token_tensors = {n: t for n, t in ctx.setup.tensors.items()
                         if not t.is_floating_point() and t.dim() == 2 and t.shape[0] == B and n != label_name
                         and "ids" in n.lower() and not any(k in n.lower() for k in ("type", "position"))}
    samples = []
    label_real: RealMask | bool | None = None
    for i in range(min(3, B)):
        sample: dict[str, Any] = {"index": i}
        for name, t in token_tensors.items():
            s = stream_by_name.get(name)
            m = ctx.attention_mask_for(s) if s is not None else None
            real = (m[i] != 0).tolist() if m is not None else None
            sample[name] = decode_row(tok, t[i].tolist(), real, None, vocab)
        if label_name is not None:
            lab = ctx.setup.tensors[label_name]
            if lab.dim() == 1:
                v = int(lab[i])
                name = id2label.get(v, id2label.get(str(v))) if isinstance(id2label, dict) else None
                sample["label"] = f"{v} ({name})" if name and name != f"LABEL_{v}" else v
            elif task in ("classification", "token-classification") or (lt and not _token_task(ctx, lt.num_classes)):
                sample["label"] = _clip(str(lab[i].tolist()))
            else:
                if label_real is None:
                    label_real = real_mask(ctx, lab) or False
                real = label_real.real[i].tolist() if label_real and label_real.proved else None
                sample["label"] = decode_row(tok, lab[i].tolist(), real, ignore, vocab)
            sample["label_tensor"] = label_name
        samples.append(sample)
    if samples:
        ctx.notes["samples"] = samples
        ctx.notes["samples_task"] = task
    return []
