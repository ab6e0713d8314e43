"""The loss targets: which of them count, and where each one comes from in the batch.

`class_targets` flattens the class targets of one observed loss call and says which count (not
``ignore_index``, not a class of weight 0, and for ``reduction="none"`` only those whose loss reaches
the final loss). The loss may receive the batch's labels at the same positions, shifted by one (a
Hugging Face causal LM shifts its ``labels`` inside the model), or a masked selection
(``targets[mask]``, as a hand-written seq2seq loop often does). `match_target` finds the batch
tensor and the position of every target, so that evidence can name samples and probes can relate
targets to the inputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from traindoc.probes.main_pass import LossCall

CLASS_LOSSES = ("cross_entropy", "nll_loss")


@dataclass
class LossTargets:
    """The class targets of one loss call, flattened, on the host."""

    call: LossCall
    target: torch.Tensor  # (N,) int64
    counted: torch.Tensor  # (N,) bool: not ignore_index, not weighted 0, reaching the final loss
    num_classes: int


def class_targets(call: LossCall, reaches: torch.Tensor | None = None) -> LossTargets | None:
    """The flattened class targets of a cross_entropy / nll_loss call (None for soft targets).

    ``reaches``: for ``reduction="none"``, which per-element losses the final loss depends on (the user
    may weight them afterwards, ``(loss * mask).sum() / mask.sum()``); elements with a zero gradient
    do not count."""
    if call.fn not in CLASS_LOSSES or call.target.is_floating_point() or call.input.dim() < 1:
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
    if reaches is not None and reaches.numel() == target.numel():
        counted &= reaches
    return LossTargets(call, target, counted, num_classes)


@dataclass
class TargetSource:
    """Where the loss targets come from in the batch.

    ``kind`` is ``"same"`` (the same positions), ``"shifted"`` (target k is the batch element one
    position later, as a Hugging Face causal LM shifts ``labels`` inside), or ``"subset"`` (a masked
    selection ``targets[mask]``, aligned greedily). ``positions[k]`` is the flat index in ``tensor`` of
    loss target k, -1 where none (the ignore_index a causal LM appends to each row)."""

    name: str
    tensor: torch.Tensor  # on the host
    kind: str
    positions: torch.Tensor  # (N,) int64

    @property
    def row_len(self) -> int:
        return self.tensor[0].numel() if self.tensor.dim() > 0 and self.tensor.shape[0] else 1

    def samples(self, which: torch.Tensor) -> list[int]:
        """Sorted sample indices of the loss targets selected by the bool mask ``which``."""
        pos = self.positions[which & (self.positions >= 0)]
        return sorted({int(p) // self.row_len for p in pos.tolist()})


def _greedy_positions(needle: list[int], hay: list[int]) -> list[int] | None:
    """Earliest positions in ``hay`` of ``needle`` as a subsequence (order kept), or None."""
    out: list[int] = []
    j = 0
    n = len(needle)
    for i, x in enumerate(hay):
        if j < n and x == needle[j]:
            out.append(i)
            j += 1
            if j == n:
                return out
    return out if j == n else None


def align(target: torch.Tensor, counted: torch.Tensor, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """How the loss targets map onto a batch tensor: ``(kind, positions)`` (see `TargetSource`), or None.

    >>> labels = torch.tensor([[5, 6, 7], [8, 9, 0]])
    >>> hf = torch.tensor([6, 7, -100, 9, 0, -100])       # what a causal LM's loss receives
    >>> kind, pos = align(hf, hf != -100, labels); kind, pos.tolist()
    ('shifted', [1, 2, -1, 4, 5, -1])
    >>> align(torch.tensor([5, 7, 9]), torch.ones(3, dtype=torch.bool), labels)[0]
    'subset'
    """
    n = target.numel()
    if not bool(counted.any()):
        return None
    t = tensor.detach().cpu().long()
    flat = t.reshape(-1)
    if flat.numel() == n and bool(((target == flat) | ~counted).all()):
        return "same", torch.arange(n)
    if t.dim() == 2 and t.shape[1] >= 2:
        B, T = t.shape
        for L in (T, T - 1):
            if n != B * L:
                continue
            tv, cv = target.view(B, L), counted.view(B, L)
            k = min(L, T - 1)
            if bool(((tv[:, :k] == t[:, 1:k + 1]) | ~cv[:, :k]).all()) and bool(cv[:, :k].any()):
                cols = torch.arange(L).expand(B, L)
                rows = torch.arange(B).unsqueeze(1).expand(B, L)
                pos = rows * T + cols + 1
                pos[:, k:] = -1
                return "shifted", pos.reshape(-1)
    if n < flat.numel():
        found = _greedy_positions(target.tolist(), flat.tolist())
        if found is not None:
            return "subset", torch.tensor(found, dtype=torch.long)
    return None


def match_target(tensors: Mapping[str, torch.Tensor], batch_size: int, embedded: Collection[str],
                 target: torch.Tensor, counted: torch.Tensor) -> TargetSource | None:
    """The batch tensor the (flat, host) loss targets come from: the first exact or shifted match, in
    the order label-like names first and what the model does not embed (``embedded``) first; else a
    masked subsequence (several tensors may hold one: the decoder inputs carry the same tokens)."""

    def order(name: str) -> tuple[bool, bool]:
        low = name.lower()
        return (not any(k in low for k in ("label", "target", "tgt", "y")), name in embedded)

    names = sorted((n for n, t in tensors.items()
                    if not t.is_floating_point() and t.dim() in (1, 2) and t.shape[0] == batch_size
                    and not (t.dim() == 2 and "mask" in n.lower())), key=order)
    subset = None
    for name in names:
        tensor = tensors[name]
        hit = align(target, counted, tensor)
        if hit is None:
            continue
        found = TargetSource(name, tensor.detach().cpu(), hit[0], hit[1])
        if hit[0] != "subset":
            return found
        subset = subset or found
    return subset
