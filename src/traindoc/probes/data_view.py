"""The data view: the first samples decoded where they enter the model, with their labels
(``report.info["samples"]``). No finding and no pass: what the Hugging Face course asks to look at
first.
"""

from __future__ import annotations

from typing import Any

from traindoc.findings import Finding
from traindoc.probes.context import ProbeContext
from traindoc.probes.main_pass import Stream
from traindoc.probes.tokens import RealTokens

_TEXT_CHARS = 200


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


def data_view(ctx: ProbeContext) -> list[Finding]:
    """Decode the first samples where they enter the model (``info["samples"]``); no finding."""
    tok = ctx.setup.tokenizer
    if tok is None or not hasattr(tok, "decode"):
        return []
    B = ctx.setup.batch_size
    source = ctx.target_source
    lt = ctx.loss_targets
    task = ctx.task[0]
    vocab = ctx.tokenizer_len
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
    label_real: RealTokens | bool | None = None
    for i in range(min(3, B)):
        sample: dict[str, Any] = {"index": i}
        for name, t in token_tensors.items():
            s = stream_by_name.get(name)
            m = ctx.attention_mask_for(s) if s is not None else None
            real = (m[1][i] != 0).tolist() if m is not None else None
            sample[name] = decode_row(tok, t[i].tolist(), real, None, vocab)
        if label_name is not None:
            lab = ctx.setup.tensors[label_name]
            if lab.dim() == 1:
                v = int(lab[i])
                name = id2label.get(v, id2label.get(str(v))) if isinstance(id2label, dict) else None
                sample["label"] = f"{v} ({name})" if name and name != f"LABEL_{v}" else v
            elif task in ("classification", "token-classification") or (lt and not ctx.predicts_tokens(lt.num_classes)):
                sample["label"] = _clip(str(lab[i].tolist()))
            else:
                if label_real is None:
                    label_real = ctx.real_tokens_of(lab) or False
                real = label_real.real[i].tolist() if label_real and label_real.proved else None
                sample["label"] = decode_row(tok, lab[i].tolist(), real, ignore, vocab)
            sample["label_tensor"] = label_name
        samples.append(sample)
    if samples:
        ctx.notes["samples"] = samples
        ctx.notes["samples_task"] = task
    return []
