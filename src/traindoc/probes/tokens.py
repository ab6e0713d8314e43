"""Which positions of a (B, T) batch tensor are real tokens, and which are padding: one rule for
every probe.

1. An attention mask of the same shape (0/1 or bool, 1 = real) decides, when its zeros sit on pad
   ids of the tensor (or the pad id is unknown): ``proved`` — the user's own mask says so.
2. Otherwise runs of the pad id decide: a run that ends a row (right padding) or starts it (left
   padding) is padding; a pad id that starts *every* row is a start token (T5's
   ``decoder_start_token_id``, a chatbot's EOS used as BOS), not padding; with pad == eos, the first
   id of a trailing run is the real EOS that ends the sequence. Not ``proved``: inferred from ids.
   A tensor that holds nothing but the pad id is not padded text (BERT's default all-zero
   ``token_type_ids`` when the pad id is 0): it marks no padding.

    >>> ids = torch.tensor([[5, 6, 2, 2], [5, 2, 2, 2]])
    >>> real_tokens(ids, None, pad=2, eos=2).real.tolist()
    [[True, True, True, False], [True, True, False, False]]
    >>> rt = real_tokens(ids, torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]), pad=2, eos=2, mask_name="attention_mask")
    >>> rt.real.tolist(), rt.proved, rt.source
    ([[True, True, False, False], [True, False, False, False]], True, 'attention_mask')
    >>> real_tokens(torch.zeros(2, 4, dtype=torch.long), None, pad=0, eos=2) is None  # segment ids, not pads
    True
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch


@dataclass
class RealTokens:
    """Real (non-pad) positions of a (B, T) tensor, on the host, and how that was decided."""

    real: torch.Tensor  # (B, T) bool
    proved: bool  # True: from the user's attention mask; False: inferred from runs of the pad id
    source: str  # the mask's name, or how the pad runs were read
    mask_name: str | None = None


def is_binary(t: torch.Tensor) -> bool:
    """A bool tensor, or one holding only 0 and 1 (an attention mask)."""
    if t.dtype == torch.bool:
        return True
    if t.numel() == 0:
        return False
    return bool(((t == 0) | (t == 1)).all())


def mask_fits(ids: torch.Tensor, mask: torch.Tensor, pad: int | None | Collection[int]) -> bool:
    """Do the zeros of ``mask`` sit on padding of ``ids`` — the pad id, or any of several values (a
    label tensor's padding may be the ignore index) — always true when no pad value is known?"""
    pads = {pad} if isinstance(pad, int) else set(pad or ())
    real = mask.bool() if mask.dtype == torch.bool else mask != 0
    if not pads or not bool((~real).any()):
        return True
    values = ids.to(real.device)[~real]
    return bool(torch.isin(values, torch.tensor(sorted(pads), device=values.device, dtype=values.dtype)).all())


def real_tokens(ids: torch.Tensor, mask: torch.Tensor | None, *, pad: int | None, eos: int | None,
                mask_name: str | None = None) -> RealTokens | None:
    """The rule of the module docstring; None when neither a mask nor a pad id marks anything."""
    if ids.dim() != 2:
        return None
    if mask is not None and tuple(mask.shape) == tuple(ids.shape) and mask_fits(ids, mask, pad):
        real = (mask.bool() if mask.dtype == torch.bool else mask != 0).cpu()
        return RealTokens(real, True, mask_name or "attention mask", mask_name)
    if pad is None:
        return None
    is_pad = ids.detach().cpu() == pad
    if bool(is_pad.all()):
        return None
    trailing = torch.flip(torch.cumprod(torch.flip(is_pad, [1]).int(), 1), [1]).bool()
    leading = torch.cumprod(is_pad.int(), 1).bool()
    if bool(is_pad[:, 0].all()):
        leading = torch.zeros_like(leading)
    if pad == eos:  # the first id of a trailing run, after a real token, is the sequence's EOS
        first = trailing & ~torch.cat([torch.zeros_like(trailing[:, :1]), trailing[:, :-1]], 1)
        trailing &= ~(first & ~leading)
    return RealTokens(~(trailing | leading), False, f"runs of the pad id {pad}")
