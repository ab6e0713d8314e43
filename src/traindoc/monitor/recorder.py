"""The per-step measurements of a watched run, written on the device as the hooks fire.

`StepRecorder` keeps the step counter and, for each step not yet flushed, a `StepMeta` (the
host-side facts: LR values or LR tensors, loss counts, the clip call, whether gradients were seen)
and one row of the `StatsBuffer` (the device-side values). Nothing here reads a tensor's value on
the host: every write is a device op, so a step never waits for the device.

What each event measures:

* `pre_step` (the optimizer's step pre-hook): the LR of each param group, ``model.training``, the
  per-parameter gradient norms (one fused ``torch._foreach_norm``; those the user's
  ``clip_grad_norm_`` already computed are reused), the global norm, the AMP scale; every ``every``
  steps the weight norms and a weight snapshot; every ``histograms_every`` steps the histograms.
* `post_step`: every ``every`` steps the update norms ``||w_after - w_before||``; then the step ends.
* `backward` (a gradient hook on the first/last parameter): counts backward passes per optimizer
  step (gradient accumulation). `first_backward` (a hook on the smallest parameter): whether its
  gradient was already non-zero before the step's first backward (no ``zero_grad``).
* `clip` (the ``clip_grad_norm_`` patch): the pre-clip norms and the user's ``max_norm``.
* `log`: the loss (summed on the device, averaged over its micro-batches on the host), tokens,
  metrics, and a fingerprint of the batch (`batch_fingerprint`).

Loss attribution: a ``log()`` after ``optimizer.step()`` and before the next backward belongs to
the step just taken; otherwise to the step in progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from traindoc.monitor import stats
from traindoc.monitor.layout import ParamLayout
from traindoc.monitor.stats import BATCH, LOSS, SCALE, STALE, TOKENS, StatsBuffer
from traindoc.setup import named_tensors

FINGERPRINT_SAMPLES = 8192
"""Values per batch tensor that enter its fingerprint (a fixed stride through the tensor)."""


@dataclass
class StepMeta:
    """Host-side facts of one step (device values live in the StatsBuffer row)."""

    step: int
    lr: list[Any] = field(default_factory=list)
    loss_count: int = 0
    loss_host: float = 0.0
    tokens_host: float = 0.0
    tokens_logged: bool = False
    batch_logged: bool = False
    clip_threshold: Any = None
    clip_totals: list[torch.Tensor] = field(default_factory=list)
    clip_norms: list[tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=list)
    clip_covered: set[int] = field(default_factory=set)
    grads_seen: bool = False
    backward_calls: int = 0
    stale: Any = None  # None (unknown), False, or "device" (flag in the buffer row)
    layer_stats: bool = False
    frozen: tuple[int, ...] = ()  # watched parameters frozen (requires_grad=False) since, at a layer-stats step
    skipped: bool = False
    has_scale: bool = False
    train_mode: bool | None = None
    time: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    hist: torch.Tensor | None = None


class BatchFingerprint:
    """A device scalar that is equal for equal batches and, in practice, different for different ones:
    the sum over the batch's tensors of a strided sample of their values times fixed pseudo-random
    weights. One small device op per tensor; no sync.

    >>> fp = BatchFingerprint()
    >>> a, b = {"x": torch.arange(12).view(3, 4)}, {"x": torch.arange(12).view(3, 4).flip(0)}
    >>> bool(fp(a) == fp({"x": torch.arange(12).view(3, 4)})), bool(fp(a) == fp(b))
    (True, False)
    """

    def __init__(self, samples: int = FINGERPRINT_SAMPLES):
        self.samples = samples
        self._weights: dict[torch.device, torch.Tensor] = {}

    def _w(self, device: torch.device) -> torch.Tensor:
        w = self._weights.get(device)
        if w is None:
            g = torch.Generator().manual_seed(1234567)
            w = self._weights[device] = (torch.rand(self.samples, generator=g) + 0.5).to(device)
        return w

    def __call__(self, batch: Any) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        for k, t in enumerate(named_tensors(batch).values()):
            flat = t.detach().reshape(-1)
            n = flat.numel()
            if n == 0:
                continue
            sample = flat[:: -(-n // self.samples)]
            w = self._w(flat.device)[: sample.numel()]
            part = (sample.to(torch.float32) * w).sum() * (1.0 + 0.618 * k)
            total = part if total is None else total + part.to(total.device)
        return total


class StepRecorder:
    """Measures each optimizer step into the device buffer (see the module docstring)."""

    def __init__(self, layout: ParamLayout, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                 rows: int, every: int, histograms_every: int, histograms: stats.LayerHistograms | None,
                 histogram_params: list[int], scaler: Any = None):
        self.layout = layout
        self.model = model
        self.optimizer = optimizer
        self.buffer = StatsBuffer(len(layout.params), rows, layout.device)
        self.every = every
        self.histograms_every = histograms_every
        self.histograms = histograms
        self.histogram_params = histogram_params
        self.scaler = scaler
        self.step = 0
        """Optimizer steps taken (skipped AMP steps included); the step in progress has this index."""
        self.flushed = 0
        """Steps before this one have been handed to the flush."""
        self.metas: dict[int, StepMeta] = {}
        self.nan_check: Callable[[int, int], None] | None = None
        """Called with (step, row) at each step whose gradients were measured (the NaN watch)."""
        self._after_step = False
        self._bw_counts = [0, 0]
        self._stale_checked = False
        self._snapshot: list[torch.Tensor] | None = None
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._clip_cache: dict[tuple[int, ...], tuple[torch.Tensor | None, torch.Tensor | None, set[int]]] = {}
        self._fingerprint = BatchFingerprint()
        params = layout.params
        self.stale_param = min(range(len(params)), key=lambda i: layout.numels[i])
        self.count_params = sorted({0, len(params) - 1})

    # ------------------------------------------------------------------ bookkeeping
    def meta(self, step: int) -> StepMeta:
        m = self.metas.get(step)
        if m is None:
            m = self.metas[step] = StepMeta(step)
        return m

    def row(self, step: int) -> int:
        return step % self.buffer.rows

    def take(self) -> list[StepMeta]:
        """The finished steps not yet flushed, in order (their rows stay until `release`)."""
        return [self.meta(s) for s in range(self.flushed, self.step)]

    def release(self, metas: list[StepMeta]) -> None:
        """Forget flushed steps and zero their rows so the ring can be reused."""
        self.buffer.clear_rows([self.row(m.step) for m in metas])
        for m in metas:
            self.metas.pop(m.step, None)
        if metas:
            self.flushed = metas[-1].step + 1

    def _index_tensor(self, idx: tuple[int, ...]) -> torch.Tensor:
        t = self._index_cache.get(idx)
        if t is None:
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            t = self._index_cache[idx] = torch.tensor(idx, dtype=torch.long, device=self.layout.device)
        return t

    # ------------------------------------------------------------------ backward
    def backward(self, slot: int) -> None:
        self._bw_counts[slot] += 1
        self._after_step = False

    def first_backward(self) -> None:
        """Before the step's first backward adds to it: is the smallest parameter's gradient non-zero?"""
        if self._stale_checked:
            return
        self._stale_checked = True
        if max(self._bw_counts) > 1:
            return  # not the step's first backward: cannot tell
        m = self.meta(self.step)
        g = self.layout.params[self.stale_param].grad
        if g is None:
            m.stale = False
        else:
            self.buffer.set(self.row(self.step), STALE, (g != 0).any().float())
            m.stale = "device"

    # ------------------------------------------------------------------ optimizer step
    @torch.no_grad()
    def pre_step(self, skipped: bool) -> None:
        self._after_step = False
        step, row, buf = self.step, self.row(self.step), self.buffer
        m = self.meta(step)
        params = self.layout.params
        m.lr = [g["lr"].detach().clone() if isinstance(g.get("lr"), torch.Tensor) else g.get("lr")
                for g in self.optimizer.param_groups]
        m.train_mode = self.model.training
        present = tuple(i for i, p in enumerate(params) if p.grad is not None)
        if present:
            m.grads_seen = True
            missing = [i for i in present if i not in m.clip_covered] if m.clip_totals else present
            if missing:
                norms = stats.grad_norms([params[i].grad for i in missing])
                full = len(missing) == len(params)
                buf.write_grad_norms(row, norms, None if full else self._index_tensor(tuple(missing)))
            for index, norms in m.clip_norms:
                target = buf.data[row, buf.grad_cols]
                if index is None:
                    target.copy_(norms)
                else:
                    target.index_copy_(0, index, norms)
        if len(m.clip_totals) == 1:
            m.grads_seen = True
            buf.data[row, stats.GRAD_SQ].copy_(m.clip_totals[0].detach().square().reshape(()))
        elif m.clip_totals:
            m.grads_seen = True
            totals = torch.stack([t.detach().float().reshape(()).to(self.layout.device) for t in m.clip_totals])
            buf.data[row, stats.GRAD_SQ].copy_(totals.square().sum())
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        if isinstance(scale, torch.Tensor):
            buf.set(row, SCALE, scale.float())
            m.has_scale = True
        m.skipped = skipped
        if skipped:  # an AMP overflow: routine, the scaler skips it; no NaN replay
            return
        if self.nan_check is not None and m.grads_seen:
            self.nan_check(step, row)
        if self.every and step % self.every == 0:
            detached = [p.detach() for p in params]
            m.layer_stats = True
            m.frozen = tuple(i for i, p in enumerate(params) if not p.requires_grad)
            buf.write_weight_norms(row, stats.grad_norms(detached))
            self._snapshot = torch._foreach_mul(detached, 1.0)
        if self.histograms is not None and self.histograms_every and step % self.histograms_every == 0:
            tensors: list[torch.Tensor | None] = []
            for i in self.histogram_params:  # weight (slot 2k) and gradient (slot 2k+1) of each layer
                tensors += [params[i].detach(), params[i].grad]
            m.hist = self.histograms(tensors)

    @torch.no_grad()
    def post_step(self) -> None:
        m = self.meta(self.step)
        if m.layer_stats and self._snapshot is not None:
            torch._foreach_sub_(self._snapshot, [p.detach() for p in self.layout.params])
            self.buffer.write_update_norms(self.row(self.step), stats.grad_norms(self._snapshot))
        self._snapshot = None
        self.end_step()

    def skipped_step(self) -> None:
        """An AMP GradScaler skipped the optimizer step (inf/NaN gradients)."""
        self.pre_step(True)
        self.end_step()

    def end_step(self) -> None:
        m = self.meta(self.step)
        m.backward_calls = max(self._bw_counts)
        m.time = time.perf_counter()
        self._bw_counts = [0, 0]
        self._stale_checked = False
        self.step += 1
        self._after_step = True

    # ------------------------------------------------------------------ clip_grad_norm_
    def clip(self, params: list[torch.Tensor], norms: torch.Tensor | None, total: torch.Tensor,
             max_norm: Any) -> None:
        index = self.layout.index
        with_grad = [p for p in params if p.grad is not None]
        key = tuple(id(p) for p in with_grad)
        cached = self._clip_cache.get(key)
        if cached is None:
            src = [k for k, p in enumerate(with_grad) if id(p) in index]
            dst = [index[id(with_grad[k])] for k in src]
            if not src:
                cached = (None, None, set())
            else:
                device = self.layout.device
                identity = src == list(range(len(with_grad))) and dst == list(range(len(self.layout.params)))
                cached = (None if identity else torch.tensor(src, device=device),
                          None if identity else torch.tensor(dst, device=device), set(dst))
            if len(self._clip_cache) > 16:
                self._clip_cache.clear()
            self._clip_cache[key] = cached
        src_t, dst_t, covered = cached
        if not covered:
            return  # a clip of some other model's parameters
        m = self.meta(self.step)
        m.clip_totals.append(total.detach())
        m.clip_threshold = max_norm if m.clip_threshold is None else m.clip_threshold
        if norms is not None:
            stacked = norms.detach().float().to(self.layout.device)
            m.clip_norms.append((None, stacked) if src_t is None else (dst_t, stacked.index_select(0, src_t)))
            m.clip_covered |= covered

    # ------------------------------------------------------------------ watch.log
    def log_step(self) -> int:
        """The step a ``log()`` now belongs to (see the module docstring)."""
        if self._after_step and self.step - 1 >= self.flushed:
            return self.step - 1
        return self.step

    def log(self, loss: Any, batch: Any, tokens: Any, metrics: dict[str, Any]) -> int:
        step = self.log_step()
        m = self.meta(step)
        row = self.row(step)
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                self.buffer.add(row, LOSS, loss)
            else:
                m.loss_host += float(loss)
            m.loss_count += 1
        if tokens is not None:
            if isinstance(tokens, torch.Tensor):
                self.buffer.add(row, TOKENS, tokens.sum() if tokens.numel() > 1 else tokens)
            else:
                m.tokens_host += float(tokens)
            m.tokens_logged = True
        if batch is not None:
            self.log_batch(step, batch)
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                m.metrics[name] = value.float().mean() if value.numel() != 1 else value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                m.metrics[name] = float(value)
        return step

    def log_batch(self, step: int, batch: Any) -> None:
        """The batch's fingerprint for this step (the first batch logged for a step counts)."""
        m = self.meta(step)
        if m.batch_logged:
            return
        fp = self._fingerprint(batch)
        if fp is not None:
            self.buffer.set(self.row(step), BATCH, fp.to(self.layout.device))
            m.batch_logged = True
