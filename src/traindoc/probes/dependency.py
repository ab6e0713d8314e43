"""Dependency probes: what does each output depend on? Asked of autograd, on the user's model.

The main pass keeps every input embedding (and float input) as a point autograd can differentiate
against. In eval mode, with a random projection ``r`` so that no symmetry hides a dependency:

- ``batch-mixing``: d (out[i] . r) / d input[j] must be exactly 0 for every sample j != i (and when
  out[i] depends on none of sample i's own inputs while seq-first attention layers receive the
  batch on dim 0, the attention runs across the batch and the output is blind to its input); for an
  output that is a (B, B) matrix over pairs of samples by design (in-batch contrastive similarities),
  row i may depend on every sample of one stream (the columns') and column i on every sample of the
  other: a stream mixes samples only when both row i and column i depend on its other samples (one
  more backward, for such outputs only);
- ``causal-leak``: for autoregressive targets, d (out[i, t0] . r) / d decoder_input[i, t > t0]
  must be exactly 0 (t0 = the first real position, so every later position is tested);
- ``padding-leak``: d (sum of out at real positions . r) / d input at pad positions of the same
  sample must be exactly 0.

One backward serves batch-mixing and causal-leak (`ProbeContext.sample_dependency`), one serves
padding-leak, whatever B and T. Which positions are padding is `ProbeContext.real_tokens` (one rule).

A bug can hide another: with ``batch_first`` wrong, attention runs over the batch axis, so no
position sees another position of its own sample and the causal probe is blind. So the probes also
read what the attention modules actually received (recorded in the main pass): a decoder
self-attention called with no causal mask, a key-padding mask that is True exactly on real tokens
(a Hugging Face mask passed as a PyTorch one), a float 0/1 mask that is added, not applied.
"""

from __future__ import annotations

from typing import Any

import torch

from traindoc.findings import Finding
from traindoc.probes.context import ProbeContext, projection, sequence_relation
from traindoc.probes.main_pass import AttentionCall
from traindoc.probes.tokens import is_binary

# A dependency through a fully masked path is exactly 0.0 in floating point (exp(-inf) == 0 and a
# missing edge contributes nothing), so the threshold only guards against denormal dust.
_REL_EPS = 1e-6


def _sample_magnitudes(g: torch.Tensor) -> torch.Tensor:
    """max |g| per sample: (B,)."""
    return g.detach().abs().float().flatten(1).amax(1)


def _cross_sample(sg: Any) -> tuple[list[dict[str, Any]], float]:
    """The input streams through which sample ``sg.i``'s output depends on other samples, and the
    largest gradient it has with respect to its own inputs."""
    leaks, own = [], 0.0
    for s, g in zip(sg.streams, sg.grads, strict=True):
        if g is None:
            continue
        mags = _sample_magnitudes(g).cpu()
        own = max(own, float(mags[sg.i]))
        others = mags.clone()
        others[sg.i] = 0
        j = int(others.argmax())
        if float(others[j]) > 0:
            leaks.append({"input": s.name, "module": s.module, "other_sample": j, "max_abs_grad": float(others[j]),
                          "samples_affected": int((others > 0).sum())})
    return [lk for lk in leaks if lk["max_abs_grad"] > _REL_EPS * max(own, 1e-30)], own


def _mha_batch_axis_calls(ctx: ProbeContext) -> list[AttentionCall]:
    """Attention modules that attend over the user's batch axis (seq-first layer fed (B, T, E))."""
    B = ctx.setup.batch_size
    lengths = {s.value.shape[1] for s in ctx.batch_streams if s.value.dim() >= 3}
    return [a for a in ctx.main.attention
            if not a.batch_first and len(a.query_shape) == 3 and a.query_shape[0] == B
            and a.query_shape[1] != B and a.query_shape[1] in lengths]


def _time_major(ctx: ProbeContext) -> bool:
    """The batch is laid out (T, B), as seq-first recurrent models take it (PyTorch's word-language-model
    example): the model has an RNN/LSTM/GRU left at ``batch_first=False`` and the loss's targets are
    the token ids shifted by one along dim 0. Dim 0 is then time, and dependence along it is the
    recurrence, not samples mixing. (A (B, T) batch fed to the same RNN has its targets shifted along
    dim 1: that one is judged.)"""
    if not any(isinstance(m, torch.nn.RNNBase) and not m.batch_first for m in ctx.setup.model.modules()):
        return False
    lt = ctx.loss_targets
    if lt is None:
        return False
    for s in ctx.token_streams:
        ids = s.ids
        if ids is None or ids.dim() != 2 or ids.shape[0] < 2 or lt.target.numel() != ids.numel():
            continue
        target = lt.target.reshape(ids.shape)
        if sequence_relation(target.T.cpu(), ids.T.cpu(), ctx.ignore_index) == "shifted":
            return True
    return False


def batch_mixing(ctx: ProbeContext) -> list[Finding]:
    """Does sample i's output depend on other samples' inputs? (ids: batch-mixing)"""
    B = ctx.setup.batch_size
    if B < 2 or _time_major(ctx):
        return []
    sg = ctx.sample_dependency
    if sg is None:
        return []
    i = sg.i
    leaks, own = _cross_sample(sg)
    column = ctx.column_dependency
    if column is not None:
        # a (B, B) output pairs every sample with every other by design: row i may depend on all samples
        # of the stream that feeds the columns, column i on all of the one that feeds the rows. A stream
        # mixes samples only when both row i and column i depend on its other samples.
        by_column = {lk["input"] for lk in _cross_sample(column)[0]}
        leaks = [lk for lk in leaks if lk["input"] in by_column]
    if not leaks:
        return _blind_through_batch_axis(ctx, sg, own)
    calls = _mha_batch_axis_calls(ctx)
    evidence: dict[str, Any] = {
        "sample": i,
        "own_max_abs_grad": own,
        "cross_sample": leaks,
        "batch_size": B,
    }
    if column is not None:
        evidence["output"] = (f"a ({B}, {B}) matrix over pairs of samples: the streams above reach sample "
                              f"{i}'s row and its column through other samples")
    if sg.t0 is not None:
        evidence["output_position"] = sg.t0
    if calls:
        evidence["attention_over_batch_axis"] = [
            f"{a.module} (batch_first=False) received query of shape {list(a.query_shape)}: it attends over "
            f"dim 0 = your batch of {B}" for a in calls[:6]]
        fix = ("Build the transformer layers with batch_first=True, e.g. `nn.Transformer(..., batch_first=True)` "
               "(and `nn.TransformerEncoderLayer(..., batch_first=True)`), keep (B, T, E) inputs and pass "
               "key-padding masks as (B, T) without transposing.")
    else:
        fix = ("Find the op that reduces over dim 0 of a (B, ...) tensor: attention with the wrong layout, "
               "a mean/softmax over dim 0, or BatchNorm misuse at inference. Sample i's output must depend only "
               "on sample i.")
    lk = leaks[0]
    return [Finding(
        "batch-mixing", "error",
        f"Sample {i}'s output depends on sample {lk['other_sample']}'s {lk['input']} (|grad| up to "
        f"{lk['max_abs_grad']:.3g}; must be exactly 0)" + (" — attention runs across the batch" if calls else ""),
        evidence=evidence, fix=fix)]


def _blind_through_batch_axis(ctx: ProbeContext, sg: Any, own: float) -> list[Finding]:
    """Sample i's output depends on none of its own inputs (exactly 0) while transformer layers with
    ``batch_first=False`` receive ``(B, ...)`` tensors: attention runs across the batch and the output is
    read where it carries no input at all (an encoder's token 0 read for every sample: the CLS tokens
    of all samples, which are equal). Without such an attention call, a zero dependency is left to the
    ``no-grad-params`` hint (a zero-initialised head does it too)."""
    B = ctx.setup.batch_size
    if own != 0.0 or not any(g is not None for g in sg.grads):
        return []
    calls = [a for a in ctx.main.attention
             if not a.batch_first and len(a.query_shape) == 3 and a.query_shape[0] == B and a.query_shape[1] != B]
    if not calls:
        return []
    return [Finding(
        "batch-mixing", "error",
        f"Sample {sg.i}'s output depends on none of its own inputs (every gradient exactly 0): the transformer "
        f"layers (batch_first=False) receive ({B}, ...) tensors and attend across the batch",
        {"sample": sg.i, "own_max_abs_grad": own, "batch_size": B,
         "attention_over_batch_axis": [
             f"{a.module} (batch_first=False) received query of shape {list(a.query_shape)}: it attends over "
             f"dim 0 = your batch of {B}" for a in calls[:6]]},
        "Build the transformer layers with batch_first=True, e.g. `nn.TransformerEncoderLayer(..., "
        "batch_first=True)`, and keep (B, T, E) inputs; or transpose to (T, B, E) before the encoder and back "
        "after it.")]


def _is_causal_mask(mask: torch.Tensor | None, T: int) -> bool:
    """Does an attention mask block every j > i (bool: True = blocked; float: -inf/very negative)?"""
    if mask is None or mask.dim() < 2 or mask.shape[-1] != mask.shape[-2]:
        return False
    m = mask.reshape(-1, mask.shape[-2], mask.shape[-1])[0]
    future = torch.triu(torch.ones(m.shape, dtype=torch.bool, device=m.device), diagonal=1)
    blocked = m if m.dtype == torch.bool else m <= -1e4
    return bool(blocked[future].all()) and future.any().item()


def _unmasked_decoder_self_attention(ctx: ProbeContext) -> list[AttentionCall]:
    calls = [a for a in ctx.main.attention if a.self_attention]
    decoder_calls = [a for a in calls if a.in_decoder]
    if not decoder_calls:
        if len(ctx.token_streams) != 1 or any(a.in_encoder and a.in_decoder for a in calls):
            return []
        decoder_calls = calls  # a decoder-only model built from attention modules
    return [a for a in decoder_calls if not a.is_causal and not _is_causal_mask(a.attn_mask, a.query_shape[0])]


def causal_leak(ctx: ProbeContext) -> list[Finding]:
    """Does the output at position t see decoder inputs after t? (ids: causal-leak)"""
    if not ctx.autoregressive:
        return []
    dec = ctx.decoder_stream
    evidence: dict[str, Any] = {"task": ctx.task[0], "task_inferred_from": ctx.task[1]}
    proved_by_gradient = judged_by_gradient = False
    sg = ctx.sample_dependency
    if dec is not None and sg is not None and sg.t0 is not None:
        i, t0 = sg.i, sg.t0
        g = next((g for s, g in zip(sg.streams, sg.grads, strict=True) if s is dec), None)
        if g is not None and g.shape[1] > t0 + 1:
            judged_by_gradient = True
            per_pos = g[i].detach().abs().float().flatten(1).amax(1).cpu()  # (T,)
            past = float(per_pos[: t0 + 1].max())
            future = per_pos[t0 + 1:]
            leaking = torch.nonzero(future > _REL_EPS * max(past, 1e-30)).flatten() + t0 + 1
            evidence.update({"decoder_input": dec.name, "sample": i, "output_position": t0,
                             "max_abs_grad_past": past, "max_abs_grad_future": float(future.max())})
            if ctx.counted_positions is not None:
                evidence["output_position_is"] = "the first position whose prediction counts in the loss"
            if leaking.numel():
                proved_by_gradient = True
                evidence["future_positions_seen"] = leaking[:20].tolist()
                evidence["future_positions_seen_count"] = int(leaking.numel())
    blind = _mha_batch_axis_calls(ctx)
    # what the attention modules received is evidence only where the gradient could not judge (attention
    # over the batch axis hides a missing causal mask); where it judged, a mask built another way (a
    # prefix that attends both ways, a causal mask applied inside the module) must not be contradicted
    unmasked = _unmasked_decoder_self_attention(ctx) if (blind or not judged_by_gradient) else []
    if unmasked:
        evidence["self_attention_without_causal_mask"] = [
            f"{a.module}: attn_mask={'None' if a.attn_mask is None else 'not causal ' + str(list(a.attn_mask.shape))}"
            f", is_causal={a.is_causal}" for a in unmasked[:6]]
    if not proved_by_gradient and not unmasked:
        return []
    if not proved_by_gradient and blind:
        evidence["note"] = ("the gradient probe cannot see this while attention runs over the batch axis "
                            "(batch-mixing); the decoder's self-attention modules were observed with no causal mask")
    if proved_by_gradient:
        title = (f"Output at position {evidence['output_position']} depends on {evidence['future_positions_seen_count']} "
                 f"later decoder positions of {dec.name!r}: the model reads the tokens it must predict")
    else:
        title = (f"The decoder's self-attention gets no causal mask ({len(unmasked)} call(s)): once the layout is "
                 "fixed, each position will see the tokens it must predict")
    fix = _causal_fix(ctx)
    return [Finding("causal-leak", "error", title, evidence=evidence, fix=fix)]


def _padding_leak_fix(ctx: ProbeContext, evidence: dict[str, Any], inverted: bool) -> str:
    """The fix for what was proved: a mask passed with the wrong polarity, a mask in the batch that
    never reaches the attention, or no mask at all."""
    if inverted:
        return ("PyTorch's key_padding_mask is True where a position must be IGNORED; a Hugging Face "
                "attention_mask is 1 where a token is REAL. Convert: `key_padding_mask = attention_mask == 0` "
                "(bool, shape (B, T), no transpose with batch_first=True); pass it as src_key_padding_mask, "
                "tgt_key_padding_mask and memory_key_padding_mask.")
    hf = ctx.setup.hugging_face
    masks = [n for n, t in ctx.setup.tensors.items() if "mask" in n.lower() and t.dim() == 2 and is_binary(t)]
    if masks:
        evidence["masks_in_batch"] = masks
        attention = ctx.main.attention
        if attention and all(a.key_padding_mask is not None or a.attn_mask is not None for a in attention):
            return (f"Every attention call received a mask, yet outputs at real tokens depend on the pads: "
                    "something else mixes positions with the padding in (mean- or max-pooling over the "
                    "sequence, a sum over positions, a convolution). Leave the pads out there too, e.g. "
                    f"`m = batch[{masks[0]!r}].unsqueeze(-1).float(); pooled = (h * m).sum(1) / m.sum(1)`.")
        return (f"The batch holds {masks[0]!r} but the attention does not apply it: pass it to the model "
                + (f"(`model(input_ids=..., attention_mask=batch[{masks[0]!r}])`)." if hf else
                   f"and on to every attention call: `key_padding_mask = batch[{masks[0]!r}] == 0` for "
                   "nn.MultiheadAttention / nn.Transformer (src_key_padding_mask, tgt_key_padding_mask, "
                   "memory_key_padding_mask), or an `attn_mask` that blocks the pad keys for "
                   "F.scaled_dot_product_attention; and leave the pads out of any pooling over the sequence."))
    pad = ctx.setup.special_id("pad_token_id")
    build = f"`attention_mask = (input_ids != {pad}).long()`" if pad is not None else \
        "`attention_mask = (input_ids != pad_id).long()`"
    evidence["masks_in_batch"] = []
    return ("The batch has no attention mask at all, so nothing can tell the model where the padding is: "
            f"build one with the padding ({build}, or keep the one the tokenizer returns: "
            "`tokenizer(texts, padding=True, return_tensors='pt')` gives `attention_mask`) and pass it to "
            "the model" + (" (`model(input_ids=..., attention_mask=...)`)." if hf else
                           ": `key_padding_mask = attention_mask == 0` for nn.Transformer / "
                           "nn.MultiheadAttention."))


def _causal_fix(ctx: ProbeContext) -> str:
    """The causal mask where this model's attention takes one: nn.Transformer / nn.MultiheadAttention
    (seen in the main pass), a Hugging Face config, or hand-written attention."""
    if any(a.self_attention for a in ctx.main.attention):
        if any(a.in_decoder for a in ctx.main.attention):
            return ("Pass a causal mask to the decoder: `tgt_mask = nn.Transformer.generate_square_subsequent_mask("
                    "T, device=x.device)` and `model.transformer(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True, "
                    "...)`.")
        return ("Give the self-attention a causal mask: `mask = nn.Transformer.generate_square_subsequent_mask(T, "
                "device=x.device)` passed as `mask=mask, is_causal=True` to nn.TransformerEncoder (or "
                "`attn_mask=mask` to nn.MultiheadAttention).")
    if ctx.setup.hugging_face:
        return ("The model attends to later positions: a causal LM must not get a bidirectional config "
                "(`is_decoder=True` for BERT-style models used as decoders) or a 4-D attention mask that "
                "opens the future.")
    return ("Mask the future in the attention: `F.scaled_dot_product_attention(q, k, v, is_causal=True)`, or "
            "before the softmax `att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool, "
            "device=att.device), 1), float('-inf'))`.")


def _inverted_padding_masks(ctx: ProbeContext) -> list[dict[str, Any]]:
    """Attention calls whose key-padding mask is True on real tokens, or a float 0/1 mask (added, not applied)."""
    hf_masks = {n: t for n, t in ctx.setup.tensors.items() if "mask" in n.lower() and t.dim() == 2 and is_binary(t)}
    found = []
    for a in ctx.main.attention:
        kpm = a.key_padding_mask
        if kpm is None or kpm.dim() != 2:
            continue
        if kpm.is_floating_point():
            if is_binary(kpm) and bool((kpm != 0).any()):
                found.append({"module": a.module, "problem": "float 0/1 key_padding_mask: PyTorch adds float masks "
                              "to the attention scores, so nothing is masked", "mask_shape": list(kpm.shape)})
                continue
            kpm_bool = kpm <= -1e4  # the canonical float form: -inf where a position is ignored
        else:
            kpm_bool = kpm.bool()
        for name, m in hf_masks.items():
            real = m != 0
            for transposed, cand in ((False, real), (True, real.t())):
                if cand.shape == kpm_bool.shape and torch.equal(cand, kpm_bool) and not bool(real.all()):
                    found.append({"module": a.module, "mask": name, "transposed": transposed,
                                  "problem": f"key_padding_mask is True exactly where {name} == 1 (real tokens): "
                                             "the module ignores the real tokens and attends to the pads",
                                  "ignored_real_tokens": int(real.sum()), "attended_pads": int((~real).sum())})
                    break
    return found


def padding_leak(ctx: ProbeContext) -> list[Finding]:
    """Do outputs at real tokens depend on what sits in the pad positions? (ids: padding-leak)"""
    out = ctx.per_sample_output
    evidence: dict[str, Any] = {}
    proved_by_gradient = False
    padding = {s.name: ctx.real_tokens(s) for s in ctx.token_streams}
    streams = [s for s in ctx.token_streams if padding[s.name] is not None]
    if out is not None and streams:
        pads = {s.name: ~padding[s.name].real.to(s.value.device) for s in streams}
        if any(bool(p.any()) for p in pads.values()):
            dec = ctx.decoder_stream
            if out.dim() >= 3:
                # outputs at real positions of the stream the outputs are aligned with
                aligned = dec if dec is not None and dec.ids.shape[1] == out.shape[1] else next(
                    (s for s in streams if s.ids.shape[1] == out.shape[1]), None)
                out_real = ctx.real_tokens(aligned) if aligned is not None else None
                weight = (out_real.real.to(out.device, out.dtype) if out_real is not None
                          else torch.ones(out.shape[:2], dtype=out.dtype, device=out.device))
                r = projection(out.shape, out) * weight.view(*weight.shape, *([1] * (out.dim() - 2)))
            else:  # one output per sample: only samples with a real token count (an empty one reads its pads)
                has_real = torch.stack([padding[s.name].real.any(1) for s in streams]).any(0)
                r = projection(out.shape, out) * has_real.to(out.device, out.dtype).view(-1, *([1] * (out.dim() - 1)))
            scalar = (out.float() * r.float()).sum()
            grads = ctx.grad(scalar, [s.value for s in streams])
            leaks = []
            for s, g in zip(streams, grads, strict=True):
                if g is None:
                    continue
                per_pos = g.detach().abs().float().flatten(2).amax(2)  # (B, T)
                pad = pads[s.name]
                real_mag = float(per_pos[~pad].max()) if bool((~pad).any()) else 0.0
                pad_mag = per_pos.masked_fill(~pad, 0)
                hit = pad_mag > _REL_EPS * max(real_mag, 1e-30)
                if bool(hit.any()):
                    b = int(hit.any(1).float().argmax())
                    leaks.append({"input": s.name, "pad_positions_seen": int(hit.sum()),
                                  "pad_positions": int(pad.sum()), "max_abs_grad_at_pads": float(pad_mag.max()),
                                  "max_abs_grad_at_real": real_mag, "example_sample": b,
                                  "example_positions": torch.nonzero(hit[b]).flatten()[:10].tolist()})
            if leaks:
                proved_by_gradient = True
                evidence["dependency_on_pads"] = leaks
    observed = _inverted_padding_masks(ctx)
    if observed:
        evidence["attention_masks_observed"] = observed[:6]
    if not proved_by_gradient and not observed:
        return []
    if observed:
        o = observed[0]
        title = f"{o['module']}: {o['problem']}"
    else:
        lk = evidence["dependency_on_pads"][0]
        title = (f"Outputs at real tokens depend on {lk['pad_positions_seen']} pad positions of {lk['input']!r} "
                 "(must be exactly 0): padding is not masked")
    fix = _padding_leak_fix(ctx, evidence, bool(observed))
    return [Finding("padding-leak", "error", title, evidence=evidence, fix=fix)]
