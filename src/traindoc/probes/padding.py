"""Padding probes: targets that sit on padding, and the pad token that is also the EOS token.

- ``padding-in-loss``: targets at pad positions (attention mask 0) reach the loss with a weight;
- ``pad-equals-eos``: pad id == eos id, and the loss receives no EOS target although the batch holds
  EOS tokens (a ``targets != eos`` mask, or a collator that sets every pad-id label to -100), or it
  receives EOS targets at pad positions (labels whose pads were not set to -100).

Which positions are padding is `ProbeContext.real_tokens_of` (one rule, `traindoc.probes.tokens`);
which targets sit there is `ProbeContext.pad_targets`. No extra pass.
"""

from __future__ import annotations

from typing import Any

import torch

from traindoc.findings import Finding, listed
from traindoc.probes.context import ProbeContext
from traindoc.probes.targets import TargetSource


def padding_in_loss(ctx: ProbeContext) -> list[Finding]:
    """Targets at pad positions (attention mask 0) that reach the loss with a weight."""
    facts = ctx.pad_targets
    lt = ctx.loss_targets
    if facts is None or lt is None or facts.count == 0:
        return []
    n_loss = int(lt.counted.sum())
    share = facts.count / max(1, n_loss)
    src = facts.source
    fix = _padding_in_loss_fix(ctx, facts)
    how = "exactly" if facts.exact else "at least (more targets of these values than real positions hold)"
    return [Finding(
        "padding-in-loss", "error" if facts.padding.proved else "warning",
        f"{facts.count} of the {n_loss} targets that reach the loss ({share:.0%}) are padding of "
        f"{src.name!r}: the model is trained to predict pad tokens",
        evidence={
            "pad_targets_in_loss": facts.count, "counted": how, "targets_in_loss": n_loss, "share": share,
            "target_tensor": src.name, "mapping": src.kind, "pad_positions_in_batch": facts.pad_positions,
            "padding_from": facts.padding.source, "pad_token_id": ctx.setup.special_id("pad_token_id"),
            "ignore_index": lt.call.ignore_index, "samples": listed(facts.samples),
        },
        fix=fix)]


def _padding_in_loss_fix(ctx: ProbeContext, facts: Any) -> str:
    """The fix for the model and batch it was proved on: labels set to -100 (a Hugging Face model's own
    loss; seq2seq labels with the decoder's mask), or padding left out by position (a loss of your own).
    Never `DataCollatorForLanguageModeling` where pad == eos: it would drop every real EOS too."""
    src, pad, eos = facts.source.name, ctx.setup.special_id("pad_token_id"), ctx.setup.special_id("eos_token_id")
    mask = facts.padding.mask_name if facts.padding.proved else None
    if ctx.setup.hugging_face and ctx.main.loss_source.startswith("output"):
        if ctx.task[0] == "seq2seq":
            by = f"batch[{mask!r}] == 0" if mask else f"batch[{src!r}] == {pad}"
            return (f"Set the labels' padding to -100, the loss's ignore_index: `batch[{src!r}] = "
                    f"batch[{src!r}].masked_fill({by}, -100)`; `DataCollatorForSeq2Seq(tokenizer, model=model)` "
                    "does it for you (its label_pad_token_id is -100).")
        by = mask or "attention_mask"
        text = (f"Set the labels of padding to -100, the loss's ignore_index, by position: `batch[{src!r}] = "
                f"batch[{src!r}].masked_fill(batch[{by!r}] == 0, -100)`")
        if pad is not None and pad == eos:
            return text + (" (not `DataCollatorForLanguageModeling`: with pad == eos it sets every EOS label "
                           "to -100, the real ones too).")
        return text + "; `DataCollatorForLanguageModeling(tokenizer, mlm=False)` does it for you."
    shift = facts.source.kind == "shifted"
    if mask:
        keep = f"batch[{mask!r}][:, 1:]" if shift else f"batch[{mask!r}]"
    else:
        keep = f"(targets != {pad})" if pad is not None and pad != eos else "a mask of the real positions"
    logits = "logits[:, :-1]" if shift else "logits"
    return ("Leave padding out of the loss by position, not by token id: "
            f"`keep = {keep}.reshape(-1).bool(); loss = F.cross_entropy({logits}.reshape(-1, logits.shape[-1])"
            "[keep], targets.reshape(-1)[keep])`, or set the padded targets to the loss's ignore_index "
            f"(-100) with `targets.masked_fill(~{keep}.bool(), -100)`.")


def pad_equals_eos(ctx: ProbeContext) -> list[Finding]:
    """pad id == eos id and the EOS targets are dropped from the loss, or pads are EOS targets."""
    pad, eos = ctx.setup.special_id("pad_token_id"), ctx.setup.special_id("eos_token_id")
    lt = ctx.loss_targets
    if (pad is None or eos is None or pad != eos or lt is None or not bool(lt.counted.any())
            or not ctx.predicts_tokens(lt.num_classes)):
        return []
    source = ctx.target_source
    eos_in_loss = int((lt.counted & (lt.target == eos)).sum())
    evidence: dict[str, Any] = {"pad_token_id": pad, "eos_token_id": eos, "eos_targets_in_loss": eos_in_loss,
                                "targets_in_loss": int(lt.counted.sum()),
                                "target_tensor": source.name if source is not None else None}
    hf = ctx.setup.hugging_face and ctx.main.loss_source.startswith("output")
    if eos_in_loss == 0:
        return _eos_never_a_target(ctx, source, eos, evidence, hf)
    facts = ctx.pad_targets
    if facts is None or facts.eos_count == 0:
        return []
    evidence.update({"eos_targets_at_pad_positions": facts.eos_count, "padding_from": facts.padding.source,
                     "samples": listed(facts.samples)})
    return [Finding(
        "pad-equals-eos", "error" if facts.padding.proved else "warning",
        f"pad == eos (id {eos}) and {facts.eos_count} of the {eos_in_loss} EOS targets in the loss are padding "
        "(labels not set to -100 at pads): the model is trained to emit EOS at every pad position, and "
        "the pads drown the real end-of-sequence signal",
        evidence=evidence,
        fix="Set the labels of padding to -100 and keep only the first EOS: "
            "`labels = input_ids.masked_fill(attention_mask == 0, -100)` (with the real EOS inside the "
            "attention mask); or give the tokenizer its own pad token.")]


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
        mask = ctx.real_tokens_of(source.tensor)
        if mask is not None and mask.proved:
            masks_known = True
            mask_name = mask.mask_name or mask_name
            real_in_targets = (t == eos) & mask.real
            evidence["real_eos_in_targets"] = int(real_in_targets.sum())
            evidence["padding_from"] = mask.source
            real_eos |= real_in_targets.any(1)
    # the input stream the targets are predicted from: an EOS after its first real token is a target
    shape = tuple(source.tensor.shape) if source is not None else None
    streams = ctx.streams_shaped(shape) if shape else ([ctx.decoder_stream] if ctx.decoder_stream else [])
    if streams and streams[0].ids is not None:
        s = streams[0]
        ids = s.ids.cpu()
        evidence["input_tensor"] = s.name
        rt = ctx.real_tokens(s)
        real = rt.real if rt is not None and rt.proved else None
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
        evidence.update({"samples": listed(rows), "num_samples": len(rows)})
        return [Finding(
            "pad-equals-eos", "warning",
            f"pad == eos (id {eos}) and the batch has no real EOS at all (every EOS id is padding): none of the "
            f"{n_loss} targets that reach the loss is EOS, so the model cannot learn to stop",
            evidence=evidence,
            fix="Append the EOS token to every sequence before padding (`text + tokenizer.eos_token`), keep it "
                "inside the attention mask and as a target, and mask only the padding (labels = -100 where "
                "attention_mask == 0); or give the tokenizer its own pad token.")]
    rows = torch.nonzero(real_eos if masks_known else any_eos).reshape(-1).tolist()
    evidence.update({"samples": listed(rows), "num_samples": len(rows)})
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
