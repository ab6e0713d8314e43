"""Device-side statistics of a watched run: everything is written into preallocated device tensors.

The rule: a step never waits for the device. Every statistic of a step is a
device tensor written into one row of a ring buffer (`StatsBuffer.data`); the host reads the
buffer with **one** copy per flush (`to_host`). Norms are computed with ``torch._foreach_norm``
(one fused pass over all gradients); per-layer values are aggregated on the host at flush time
from per-parameter norms, which costs the device nothing.

Row layout of `StatsBuffer.data` (float32, shape ``(rows, NUM_BASE + 3 * P)``)::

    LOSS      sum of the losses logged for the step (divided by their count on the host)
    GRAD_SQ   squared global gradient L2 norm before clipping
    STALE     1.0 when the gradient was non-zero before the step's first backward
    SCALE     AMP GradScaler scale
    BATCH     fingerprint of the batch logged for the step (equal batches, equal values)
    TOKENS    tokens logged with watch.log(tokens=...) as tensors
    then P per-parameter gradient norms, P pre-step weight norms, P update norms ||w_after - w_before||

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    >>> buf = StatsBuffer(num_params=2, rows=4, device=torch.device("cpu"))
    >>> for q in p: q.grad = torch.full_like(q, 2.0)
    >>> buf.write_grad_norms(0, grad_norms([q.grad for q in p]))
    >>> host = to_host(buf.data)
    >>> round(float(host[0, GRAD_SQ]) ** 0.5, 4), [round(x, 4) for x in host[0, NUM_BASE:NUM_BASE + 2].tolist()]
    (4.4721, [3.4641, 2.8284])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

LOSS, GRAD_SQ, STALE, SCALE, BATCH, TOKENS = range(6)
NUM_BASE = 6

HOST_COPIES = [0]
"""How many device-to-host copies `to_host` made (tests assert one per flush)."""


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """The only place the monitor copies device statistics to the host (counted in HOST_COPIES)."""
    HOST_COPIES[0] += 1
    return tensor.detach().to("cpu", copy=True)


def grad_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor as one float32 vector on the first tensor's device (fused, no sync).

    Tensors on other devices or of other dtypes are grouped, as torch's clip_grad_norm_ does.
    """
    if not grads:
        raise ValueError("no tensors")
    device = grads[0].device
    first = grads[0]
    if all(g.device == device and g.dtype == first.dtype for g in grads):
        return torch.stack(torch._foreach_norm(list(grads), 2.0)).float()
    out = torch.empty(len(grads), dtype=torch.float32, device=device)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((g.device, g.dtype), []).append(i)
    for idx in groups.values():
        norms = torch.stack(torch._foreach_norm([grads[i] for i in idx], 2.0)).float().to(device)
        out[torch.tensor(idx, device=device)] = norms
    return out


def histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Histogram of ``values`` over their own [min, max] range, without a host sync.

    Returns ``bins + 2`` floats on the device: the counts, then min and max (the edges are
    ``linspace(min, max, bins + 1)``). ``torch.histc`` would need the range on the host, so the
    values are first mapped onto [0, bins] on the device and binned there with a fixed, host-known
    range: four passes (aminmax, subtract, scale, histc). When the values hold a NaN/Inf, min or
    max is non-finite and the histogram is meaningless; the reader drops it (non-finite values are
    counted elsewhere).

    >>> histogram(torch.tensor([0.0, 1.0, 2.0, 3.0]), bins=3).tolist()
    [1.0, 1.0, 2.0, 0.0, 3.0]
    """
    x = values.detach().reshape(-1)
    if x.dtype != torch.float32:
        x = x.float()
    if x.numel() == 0:
        return torch.zeros(bins + 2, device=x.device)
    lo, hi = torch.aminmax(x)
    scale = bins / (hi - lo).clamp_min(1e-30)
    counts = torch.histc((x - lo).mul_(scale), bins=bins, min=0.0, max=float(bins))
    return torch.cat([counts, lo.reshape(1), hi.reshape(1)])


def sample_stride(numel: int, last_dim: int, budget: int) -> int:
    """A stride that keeps about ``budget`` of ``numel`` values and is coprime with the row length.

    Coprime, so that a strided sample of a matrix walks across its columns instead of hitting the
    same few columns in every row.

    >>> sample_stride(1000, 10, 100), sample_stride(50, 10, 100)
    (11, 1)
    """
    if budget <= 0 or numel <= budget:
        return 1
    stride = -(-numel // budget)
    while math.gcd(stride, max(last_dim, 1)) != 1:
        stride += 1
    return stride


class LayerHistograms:
    """Histograms of groups of tensors (one group per slot, e.g. a layer's weights), all at once.

    Built once per watch from the tensors' shapes. Each tensor is subsampled with a fixed stride
    (`sample_stride`) so that each slot bins about ``samples`` values: ``torch.histc`` costs ~20 ns
    per value on CPU, a hundred times a fused norm, so binning every weight and gradient on every
    step would cost more than the step. The samples of all tensors are concatenated (one op), each
    slot's range [lo, hi] is the min and max of its samples (one ``scatter_reduce`` each), the
    samples are mapped into their slot's band ``[bins * slot, bins * (slot + 1))`` and one
    ``torch.histc`` with the host-known range [0, bins * num_slots] bins everything: no host sync.

    Calling it returns ``(num_slots, bins + 2)`` on the device: counts, then lo and hi (the edges are
    ``linspace(lo, hi, bins + 1)``). A slot with a NaN/Inf sample has a non-finite lo or hi; its
    counts are meaningless and the reader drops it. A slot with no tensor has all zeros. ``None``
    in place of a tensor (a parameter without a gradient) leaves it out.

    >>> h = LayerHistograms([(2,), (1,), (1,)], slots=[0, 0, 1], num_slots=2, bins=4, samples=0)
    >>> h([torch.tensor([-1.0, 0.5]), torch.tensor([1.0]), torch.tensor([4.0])]).tolist()
    [[1.0, 0.0, 1.0, 1.0, -1.0, 1.0], [1.0, 0.0, 0.0, 0.0, 4.0, 4.0]]
    """

    def __init__(self, shapes: Sequence[Sequence[int]], slots: Sequence[int], num_slots: int, bins: int,
                 samples: int):
        self.slots = list(slots)
        self.num_slots = num_slots
        self.bins = bins
        numels = [math.prod(s) for s in shapes]
        slot_numel = [0] * num_slots
        for n, slot in zip(numels, self.slots, strict=True):
            slot_numel[slot] += n
        self.strides = []
        for shape, n, slot in zip(shapes, numels, self.slots, strict=True):
            budget = max(64, samples * n // max(slot_numel[slot], 1)) if samples > 0 else 0
            self.strides.append(sample_stride(n, shape[-1] if len(shape) else 1, budget))
        self.counts = [-(-n // k) for n, k in zip(numels, self.strides, strict=True)]
        self._ids: dict[tuple[bool, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _slot_ids(self, present: tuple[bool, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._ids.get(present)
        if cached is None or cached[0].device != device:
            ids = [slot for slot, n, ok in zip(self.slots, self.counts, present, strict=True) if ok for _ in range(n)]
            idx = torch.tensor(ids, dtype=torch.long, device=device)
            cached = self._ids[present] = (idx, idx.float() * self.bins)
        return cached

    def __call__(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        present = tuple(t is not None for t in tensors)
        first = next(t for t in tensors if t is not None)
        device = first.device
        parts = [t.detach().reshape(-1)[::k] for t, k in zip(tensors, self.strides, strict=True)
                 if t is not None]
        values = torch.cat([p.to(device, torch.float32) for p in parts])
        ids, band = self._slot_ids(present, device)
        lo = torch.zeros(self.num_slots, device=device).scatter_reduce(0, ids, values, "amin", include_self=False)
        hi = torch.zeros(self.num_slots, device=device).scatter_reduce(0, ids, values, "amax", include_self=False)
        # a floor relative to the values keeps a constant slot in its own band
        width = torch.maximum(hi - lo, 1e-4 * torch.maximum(lo.abs(), hi.abs())).clamp_min(1e-30)
        scale = self.bins * (1 - 1e-6) / width
        mapped = torch.addcmul(band, values - lo.index_select(0, ids), scale.index_select(0, ids))
        total = float(self.bins * self.num_slots)
        counts = torch.histc(mapped, bins=self.bins * self.num_slots, min=0.0, max=total)
        return torch.cat([counts.reshape(self.num_slots, self.bins), lo[:, None], hi[:, None]], dim=1)


def param_fingerprints(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n, 2) device tensor: the sum and L2 norm of each parameter — they change when a weight moves."""
    with torch.no_grad():
        return torch.stack([torch.stack([p.detach().float().sum(), torch.linalg.vector_norm(p.detach().float())])
                            for p in params])


class StatsBuffer:
    """A ring of ``rows`` step rows on the device; row ``step % rows`` holds step ``step``."""

    def __init__(self, num_params: int, rows: int, device: torch.device):
        self.num_params = num_params
        self.rows = rows
        self.device = device
        self.data = torch.zeros(rows, NUM_BASE + 3 * num_params, dtype=torch.float32, device=device)

    # column slices -------------------------------------------------------------------------
    @property
    def grad_cols(self) -> slice:
        return slice(NUM_BASE, NUM_BASE + self.num_params)

    @property
    def weight_cols(self) -> slice:
        return slice(NUM_BASE + self.num_params, NUM_BASE + 2 * self.num_params)

    @property
    def update_cols(self) -> slice:
        return slice(NUM_BASE + 2 * self.num_params, NUM_BASE + 3 * self.num_params)

    # writers (all device ops, no sync) -----------------------------------------------------
    def add(self, row: int, col: int, value: torch.Tensor | float) -> None:
        if isinstance(value, torch.Tensor):
            v = value.detach()
            if v.numel() != 1:
                v = v.float().mean()
            self.data[row, col].add_(v.reshape(()).to(self.device, torch.float32, non_blocking=True))
        else:
            self.data[row, col].add_(float(value))

    def set(self, row: int, col: int, value: torch.Tensor) -> None:
        self.data[row, col].copy_(value.detach().reshape(()), non_blocking=True)

    def write_grad_norms(self, row: int, norms: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Per-parameter gradient norms (all params, or those at ``index``) and the global norm²."""
        target = self.data[row, self.grad_cols]
        if index is None:
            target.copy_(norms, non_blocking=True)
        else:
            target.index_copy_(0, index, norms.to(self.device, non_blocking=True))
        self.data[row, GRAD_SQ].copy_(target.square().sum())

    def write_weight_norms(self, row: int, norms: torch.Tensor) -> None:
        self.data[row, self.weight_cols].copy_(norms, non_blocking=True)

    def write_update_norms(self, row: int, norms: torch.Tensor) -> None:
        self.data[row, self.update_cols].copy_(norms, non_blocking=True)

    def clear_rows(self, rows: Sequence[int]) -> None:
        """Zero the given rows (after they were read) so the ring can be reused."""
        for a, b in _runs(sorted(rows)):
            self.data[a:b].zero_()


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted row indices as half-open contiguous runs: [0,1,2,5] -> [(0,3),(5,6)]."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out
