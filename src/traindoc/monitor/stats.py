"""Device-side statistics of a watched run: everything is written into preallocated device tensors.

The rule: a step never waits for the device. What a step measures stays on the device: the
per-parameter gradient norms (and, every K steps, weight and update norms) in one row of a ring
buffer (`StatsBuffer.data`); the step's scalars (loss, tokens, clip total, ...) as references to the
0-d tensors the step produced, which the flush stacks. The host reads everything with **one** copy
per kind per flush (`to_host`). Norms are computed with ``torch._foreach_norm`` (one fused pass over
all gradients, written straight into the row); the global norm and the per-layer values are summed
on the host at flush time from the per-parameter norms, which costs the device nothing.

Row layout of `StatsBuffer.data` (float32, shape ``(rows, 3 * P)``)::

    P per-parameter gradient norms (before clipping), P pre-step weight norms, P update norms
    ||w_after - w_before|| (the last two on layer-stats steps only, estimated from `LayerSample`)

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    >>> buf = StatsBuffer(num_params=2, rows=4, device=torch.device("cpu"))
    >>> for q in p: q.grad = torch.full_like(q, 2.0)
    >>> buf.write_grad_norms(0, [q.grad for q in p])
    >>> [round(x, 4) for x in to_host(buf.data)[0, :2].tolist()]
    [3.4641, 2.8284]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

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
    (`sample_stride`) so that each slot bins about ``samples`` values: binning every weight and
    gradient on every step would cost more than the step. The samples of all tensors are
    concatenated slot by slot (one op), each slot's range [lo, hi] is the min and max of its
    contiguous segment (two fused ``_foreach_max``), the samples are mapped into their slot's band
    ``[bins * slot, bins * (slot + 1))`` and one ``torch.bincount`` of their floors counts everything
    (``torch.histc`` does the same four times slower on CPU): no host sync, about fifteen device ops
    whatever the number of tensors.

    Calling it returns ``(num_slots, bins + 2)`` on the device: counts, then lo and hi (the edges are
    ``linspace(lo, hi, bins + 1)``). A slot with a NaN/Inf sample has a non-finite lo or hi; its
    counts are meaningless and the reader drops it (its non-finite samples are counted in no band).
    A slot with no tensor has all zeros. ``None`` in place of a tensor (a parameter without a
    gradient) leaves it out.

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
        self.order = sorted(range(len(self.slots)), key=self.slots.__getitem__)  # slot by slot
        self._layouts: dict[tuple[bool, ...], tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor | None]] = {}

    def _layout(self, present: tuple[bool, ...], device: torch.device,
                ) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor | None]:
        """For the tensors present: each sample's slot, its band offset, the sizes of the non-empty
        slots' segments, and those slots' indices (None when every slot has samples)."""
        cached = self._layouts.get(present)
        if cached is None or cached[0].device != device:
            sizes = [0] * self.num_slots
            for i in self.order:
                if present[i]:
                    sizes[self.slots[i]] += self.counts[i]
            ids = torch.repeat_interleave(torch.arange(self.num_slots), torch.tensor(sizes)).to(device)
            nonempty = [k for k in range(self.num_slots) if sizes[k]]
            index = None if len(nonempty) == self.num_slots else torch.tensor(nonempty, device=device)
            cached = self._layouts[present] = (ids, ids.float() * self.bins, [sizes[k] for k in nonempty], index)
        return cached

    def __call__(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        present = tuple(t is not None for t in tensors)
        parts = [tensors[i].detach().reshape(-1)[::self.strides[i]] for i in self.order  # type: ignore[union-attr]
                 if present[i]]
        device = parts[0].device
        if any(p.device != device for p in parts):
            parts = [p.to(device) for p in parts]
        values = torch.cat(parts).to(torch.float32)  # cat promotes mixed dtypes
        ids, band, sizes, index = self._layout(present, device)
        segments = values.split(sizes)
        hi = torch.stack(torch._foreach_max(segments))
        lo = torch.stack(torch._foreach_max(torch._foreach_neg(segments))).neg_()
        if index is not None:
            lo = torch.zeros(self.num_slots, device=device).index_copy_(0, index, lo)
            hi = torch.zeros(self.num_slots, device=device).index_copy_(0, index, hi)
        # a floor relative to the values keeps a constant slot in its own band
        width = torch.maximum(hi - lo, 1e-4 * torch.maximum(lo.abs(), hi.abs())).clamp_min(1e-30)
        scale = self.bins * (1 - 1e-6) / width
        mapped = torch.addcmul(band, values - lo.index_select(0, ids), scale.index_select(0, ids))
        total = self.bins * self.num_slots
        bins = mapped.nan_to_num_(nan=total, posinf=total, neginf=total).long()  # non-finite: one bin past the end
        counts = torch.bincount(bins, minlength=total + 1)[:total].to(torch.float32)
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
        self.data = torch.zeros(rows, 3 * num_params, dtype=torch.float32, device=device)
        p = num_params
        # views made once: indexing a row costs a dispatch per step
        self.grad_rows = [self.data[r, :p] for r in range(rows)]
        self.weight_rows = [self.data[r, p:2 * p] for r in range(rows)]
        self.update_rows = [self.data[r, 2 * p:] for r in range(rows)]
        self._several_devices = False

    # column slices -------------------------------------------------------------------------
    @property
    def grad_cols(self) -> slice:
        return slice(0, self.num_params)

    @property
    def weight_cols(self) -> slice:
        return slice(self.num_params, 2 * self.num_params)

    @property
    def update_cols(self) -> slice:
        return slice(2 * self.num_params, 3 * self.num_params)

    # writers (all device ops, no sync) -----------------------------------------------------
    def write_grad_norms(self, row: int, grads: Sequence[torch.Tensor]) -> None:
        """The L2 norm of each gradient into the row: one fused ``_foreach_norm`` stacked in place
        (any dtype; gradients on several devices take `grad_norms`, one more op per device)."""
        target = self.grad_rows[row]
        if not self._several_devices:
            try:
                torch.stack(torch._foreach_norm(list(grads), 2.0), out=target)
                return
            except RuntimeError:  # gradients on several devices: known from now on
                self._several_devices = True
        target.copy_(grad_norms(grads), non_blocking=True)

    def write_some_grad_norms(self, row: int, norms: torch.Tensor, index: torch.Tensor | None) -> None:
        """Per-parameter gradient norms of all parameters (``index`` None) or of those at ``index``."""
        target = self.grad_rows[row]
        if index is None:
            target.copy_(norms, non_blocking=True)
        else:
            target.index_copy_(0, index, norms.to(self.device, torch.float32, non_blocking=True))

    def clear_rows(self, rows: Sequence[int]) -> None:
        """Zero the given rows (after they were read) so the ring can be reused."""
        for a, b in _runs(sorted(rows)):
            self.data[a:b].zero_()


class LayerSample:
    """Weight and update norms of every parameter, estimated from a fixed strided sample of at most
    ``budget`` values per parameter (`sample_stride`; exact for a parameter of at most ``budget`` values).

    Why a sample: the update norm ``||w_after - w_before||`` needs a copy of the weights before the
    step, and the exact norms read every weight three times; on a CPU step of a few milliseconds that
    alone costs more than the step's own optimizer update. The detectors read the update/weight
    *ratio* against thresholds orders of magnitude apart, and a uniform sample of 2048 values
    estimates a sum of squares within ~3% (relative standard error sqrt(2/n) for Gaussian-like
    values), so the sample costs ~0 and decides the same. The ratio is taken on the same sample (the
    weight norm is scaled by sqrt(numel / sampled) to estimate the whole parameter's).

    `snapshot` (before the step) returns the sampled values, one ``torch.cat``, and writes the
    weight norms (one fused ``_foreach_norm`` over the parameters' segments); `update_norms` (after
    it) samples again and writes the norms of the difference. Four or five device ops each, whatever
    the number of parameters.

    >>> w = [torch.nn.Parameter(torch.ones(10000)), torch.nn.Parameter(torch.full((3,), 2.0))]
    >>> s = LayerSample([p.shape for p in w], budget=100, device=torch.device("cpu"))
    >>> weights, updates = torch.zeros(2), torch.zeros(2)
    >>> before = s.snapshot(w, weights)
    >>> with torch.no_grad():
    ...     _ = w[1].add_(1.0)
    >>> s.update_norms(w, before, updates)
    >>> [round(x, 3) for x in weights.tolist()], [round(x, 3) for x in updates.tolist()]
    ([100.0, 3.464], [0.0, 1.732])
    """

    def __init__(self, shapes: Sequence[Sequence[int]], budget: int, device: torch.device):
        numels = [math.prod(s) for s in shapes]
        # coprime with the row length: a strided sample of a matrix walks across all its columns
        self.strides = [sample_stride(n, s[-1] if len(s) else 1, budget) for n, s in zip(numels, shapes, strict=True)]
        self.counts = [-(-n // k) if n else 0 for n, k in zip(numels, self.strides, strict=True)]
        self.root_scale = torch.tensor([math.sqrt(n / c) if c else 0.0 for n, c in zip(numels, self.counts, strict=True)],
                                       dtype=torch.float32, device=device)
        self.device = device

    def _values(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        parts = [p.detach().reshape(-1)[::k] if k > 1 else p.detach().reshape(-1)
                 for p, k in zip(params, self.strides, strict=True)]
        if any(t.device != self.device for t in parts):
            parts = [t.to(self.device) for t in parts]
        return torch.cat(parts).to(torch.float32)  # cat promotes mixed dtypes

    def _norms(self, values: torch.Tensor, out: torch.Tensor) -> None:
        torch.stack(torch._foreach_norm(values.split(self.counts), 2.0), out=out)
        out.mul_(self.root_scale)

    def snapshot(self, params: Sequence[torch.Tensor], weight_norms: torch.Tensor) -> torch.Tensor:
        """The sampled values before the step; their parameters' estimated norms into ``weight_norms``."""
        values = self._values(params)  # a new tensor: torch.cat copies
        self._norms(values, weight_norms)
        return values

    def update_norms(self, params: Sequence[torch.Tensor], before: torch.Tensor, out: torch.Tensor) -> None:
        """The estimated ``||w_after - w_before||`` of each parameter into ``out``."""
        self._norms(self._values(params).sub_(before), out)


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted row indices as half-open contiguous runs: [0,1,2,5] -> [(0,3),(5,6)]."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out
