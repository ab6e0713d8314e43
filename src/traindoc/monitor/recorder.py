"""The per-step measurements of a watched run, made on the device as the hooks fire.

`StepRecorder` keeps the step counter and, for each step not yet flushed, a `StepMeta`: the
host-side facts (LR values, loss counts, the clip call, whether gradients were seen) and references
to the 0-d device tensors the step produced (the losses and tokens logged, the clip total, the
stale-gradient flag, the batch fingerprint), plus one row of the `StatsBuffer`. Nothing here reads a
tensor's value on the host: every write is a device op or a reference kept, so a step never waits
for the device; the flush reads all of it with one copy (`traindoc.monitor.rows`).

What an ordinary step costs: the fused gradient norm (one ``torch._foreach_norm`` written into the
row; none when the user's ``clip_grad_norm_`` already computed it), a list of the LRs, a reference
to each logged loss, two counters in backward hooks, and on CPU a host read of the row for the NaN
watch. Everything else runs on a cadence:

* every ``every`` steps: the weight and update norms (`stats.LayerSample`, estimated from a fixed
  sample of each parameter), with a snapshot of that sample before the step;
* every ``histograms_every`` steps: the weight and gradient histograms;
* the stale-gradient check (a missing ``zero_grad``: is the smallest parameter's gradient non-zero
  before the step's first backward?) on the first `STALE_FIRST_STEPS` steps, then on the layer-stats
  steps (every `STALE_EVERY` steps when layer stats are off). A ``zero_grad`` before the step starts
  the step over (`zero_grad`): what was seen before it did not feed the step.

The events: `pre_step` (the optimizer's step pre-hook), `post_step`, `backward` (a gradient hook on
the first/last parameter counts backward passes per optimizer step: gradient accumulation),
`first_backward` (a hook on the smallest parameter), `clip` (the ``clip_grad_norm_`` patch: the
pre-clip norms and the user's ``max_norm``), `log` (the loss, tokens, metrics and a fingerprint of
the batch, `BatchFingerprint`).

Loss attribution: a ``log()`` after ``optimizer.step()`` and before the next backward belongs to
the step just taken; otherwise to the step in progress.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from traindoc.monitor import stats
from traindoc.monitor.layout import ParamLayout
from traindoc.monitor.stats import StatsBuffer
from traindoc.setup import named_tensors

FINGERPRINT_SAMPLES = 8192
"""Values per batch tensor that enter its fingerprint (a fixed stride through the tensor)."""

LAYER_SAMPLES = 2048
"""Values per parameter sampled for the weight and update norms of a layer-stats step."""

STALE_FIRST_STEPS = 4
"""The stale-gradient check runs on every one of the first steps (a loop without ``zero_grad`` is
found after three of them), then on the layer-stats steps."""

STALE_EVERY = 10
"""The stale-gradient cadence when layer stats are off (``every=0``)."""


@dataclass(slots=True)
class StepMeta:
    """What one step recorded: host values, and references to device tensors read at the flush."""

    step: int
    lr: list[Any] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    loss_count: int = 0
    loss_host: float = 0.0
    tokens: list[torch.Tensor] = field(default_factory=list)
    tokens_host: float = 0.0
    tokens_logged: bool = False
    fingerprint: torch.Tensor | None = None
    clip_threshold: Any = None
    clip_totals: list[torch.Tensor] = field(default_factory=list)
    clip_norms: list[tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=list)
    clip_covered: set[int] = field(default_factory=set)
    grads_seen: bool = False
    backward_calls: int = 0
    stale: torch.Tensor | bool | None = None  # None: not checked this step
    layer_stats: bool = False
    frozen: tuple[int, ...] = ()  # watched parameters frozen (requires_grad=False) since, at a layer-stats step
    skipped: bool = False
    scale: torch.Tensor | None = None
    train_mode: bool | None = None
    time: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    hist: torch.Tensor | None = None


def _without_grad(fn: Callable[..., None]) -> Callable[..., None]:
    """``torch.no_grad()`` as a decorator costs more than an ordinary step's own work (a context
    object made and entered per call); this sets the mode directly and restores it."""
    @functools.wraps(fn)
    def wrapper(*args: Any) -> None:
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            fn(*args)
        finally:
            torch._C._set_grad_enabled(enabled)

    return wrapper


class BatchFingerprint:
    """A device scalar that is equal for equal batches and, in practice, different for different ones:
    a strided sample of at most ``samples`` values of each of the batch's tensors, concatenated, dotted
    with fixed pseudo-random weights (so the position of a value counts). Non-finite values (a float
    attention mask's ``-inf``) count as small finite ones, so that one of them does not make every
    fingerprint ``-inf`` and every batch look the same. A few device ops per batch (concatenate,
    convert, clean, dot); no sync.

    >>> fp = BatchFingerprint()
    >>> a, b = {"x": torch.arange(12).view(3, 4)}, {"x": torch.arange(12).view(3, 4).flip(0)}
    >>> bool(fp(a) == fp({"x": torch.arange(12).view(3, 4)})), bool(fp(a) == fp(b))
    (True, False)
    >>> mask = torch.triu(torch.full((4, 4), float("-inf")), 1)
    >>> bool(fp({**a, "mask": mask}) == fp({**b, "mask": mask}))
    False
    """

    def __init__(self, samples: int = FINGERPRINT_SAMPLES):
        self.samples = samples
        self._weights: dict[torch.device, torch.Tensor] = {}

    def _w(self, device: torch.device, n: int) -> torch.Tensor:
        w = self._weights.get(device)
        if w is None or w.numel() < n:
            g = torch.Generator().manual_seed(1234567)
            size = max(n, 8 * self.samples)
            w = self._weights[device] = (torch.rand(size, generator=g) + 0.5).to(device)
        return w[:n]

    def __call__(self, batch: Any) -> torch.Tensor | None:
        parts = []
        for t in named_tensors(batch).values():
            n = t.numel()
            if n:
                flat = t.detach().reshape(-1)
                parts.append(flat[:: -(-n // self.samples)] if n > self.samples else flat)
        if not parts:
            return None
        device = parts[0].device
        if any(p.device != device for p in parts):
            parts = [p.to(device) for p in parts]
        values = torch.nan_to_num(torch.cat(parts).to(torch.float32), nan=1.5, posinf=2.5, neginf=-2.5)
        return torch.dot(values, self._w(device, values.numel()))


class StepRecorder:
    """Measures each optimizer step (see the module docstring)."""

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
        self.sample = (stats.LayerSample([p.shape for p in layout.params], LAYER_SAMPLES, layout.device)
                       if every else None)
        self.stale_every = every or STALE_EVERY
        self.step = 0
        """Optimizer steps taken (skipped AMP steps included); the step in progress has this index."""
        self.flushed = 0
        """Steps before this one have been handed to the flush."""
        self.metas: dict[int, StepMeta] = {}
        self.nan_check: Callable[[int, torch.Tensor], None] | None = None
        """Called with (step, the row's gradient norms) at each step whose gradients were measured."""
        self._after_step = False
        self._bw_counts = [0, 0]
        self._stale_checked = False
        self._snapshot: torch.Tensor | None = None
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

    def zero_grad(self) -> None:
        """The user reset the gradients (``optimizer.zero_grad()`` / ``model.zero_grad()``) before this
        step: the backward passes and losses seen so far for it do not feed it (a GAN's generator loss
        backpropagated through the discriminator, before the discriminator's own zero_grad)."""
        if self._after_step:
            return  # right after a step: nothing of the next one was seen yet
        self._bw_counts = [0, 0]
        self._stale_checked = False
        m = self.metas.get(self.step)
        if m is not None:
            m.stale = None
            m.losses.clear()
            m.loss_host, m.loss_count = 0.0, 0

    def checks_stale(self, step: int) -> bool:
        """Whether the stale-gradient check runs on this step (see the module docstring)."""
        return step < STALE_FIRST_STEPS or step % self.stale_every == 0

    def first_backward(self) -> None:
        """Before the step's first backward adds to it: is the smallest parameter's gradient non-zero?"""
        if self._stale_checked:
            return
        self._stale_checked = True
        if max(self._bw_counts) > 1 or not self.checks_stale(self.step):
            return  # not the step's first backward (cannot tell), or not a checked step
        g = self.layout.params[self.stale_param].grad
        self.meta(self.step).stale = False if g is None else (g != 0).any()

    # ------------------------------------------------------------------ optimizer step
    @_without_grad
    def pre_step(self, skipped: bool) -> None:
        self._after_step = False
        step, buf = self.step, self.buffer
        row = step % buf.rows
        m = self.meta(step)
        params = self.layout.params
        m.lr = [lr.detach().clone() if isinstance(lr := g.get("lr"), torch.Tensor) else lr
                for g in self.optimizer.param_groups]
        m.train_mode = self.model.training
        if m.clip_norms and len(m.clip_covered) == len(params):  # the user's clip measured every gradient
            for index, norms in m.clip_norms:
                buf.write_some_grad_norms(row, norms, index)
            m.grads_seen = True
        else:
            grads = [p.grad for p in params]
            if m.clip_norms or not all(g is not None for g in grads):  # `None in grads` calls Tensor.__eq__
                self._write_grad_norms_partial(m, row, grads)
            else:  # every parameter has a gradient, the user did not clip
                buf.write_grad_norms(row, grads)
                m.grads_seen = True
        if m.clip_totals:
            m.grads_seen = True
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        if isinstance(scale, torch.Tensor):
            m.scale = scale.detach().clone()  # the scaler updates it in place
        m.skipped = skipped
        if skipped:  # an AMP overflow: routine, the scaler skips it; no NaN replay
            return
        if self.nan_check is not None and m.grads_seen:
            self.nan_check(step, buf.grad_rows[row])
        if self.sample is not None and step % self.every == 0:
            m.layer_stats = True
            m.frozen = tuple(i for i, p in enumerate(params) if not p.requires_grad)
            self._snapshot = self.sample.snapshot(params, buf.weight_rows[row])
        if self.histograms is not None and self.histograms_every and step % self.histograms_every == 0:
            tensors: list[torch.Tensor | None] = []
            for i in self.histogram_params:  # weight (slot 2k) and gradient (slot 2k+1) of each layer
                tensors += [params[i].detach(), params[i].grad]
            m.hist = self.histograms(tensors)

    def _write_grad_norms_partial(self, m: StepMeta, row: int, grads: list[torch.Tensor | None]) -> None:
        """The norms the user's clip computed, then those of the other gradients present."""
        buf = self.buffer
        for index, norms in m.clip_norms:
            buf.write_some_grad_norms(row, norms, index)
        missing = [i for i, g in enumerate(grads) if g is not None and i not in m.clip_covered]
        if missing:
            m.grads_seen = True
            norms = stats.grad_norms([grads[i] for i in missing])  # type: ignore[misc]
            index = None if len(missing) == len(grads) else self._index_tensor(tuple(missing))
            buf.write_some_grad_norms(row, norms, index)
        elif m.clip_norms:
            m.grads_seen = True

    @_without_grad
    def post_step(self) -> None:
        m = self.meta(self.step)
        if m.layer_stats and self._snapshot is not None and self.sample is not None:
            self.sample.update_norms(self.layout.params, self._snapshot, self.buffer.update_rows[self.row(self.step)])
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
        m.clip_totals.append(total.detach() if total.requires_grad else total)
        m.clip_threshold = max_norm if m.clip_threshold is None else m.clip_threshold
        if norms is not None:
            norms = norms.detach() if norms.requires_grad else norms
            m.clip_norms.append((None, norms) if src_t is None else (dst_t, norms.index_select(0, src_t.to(norms.device))))
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
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                m.losses.append(_scalar(loss))
            else:
                m.loss_host += float(loss)
            m.loss_count += 1
        if tokens is not None:
            if isinstance(tokens, torch.Tensor):
                t = tokens.detach()
                m.tokens.append(t.sum() if t.numel() != 1 else _scalar(t))
            else:
                m.tokens_host += float(tokens)
            m.tokens_logged = True
        if batch is not None:
            self.log_batch(step, batch)
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor):
                m.metrics[name] = _scalar(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                m.metrics[name] = float(value)
        return step

    def log_batch(self, step: int, batch: Any) -> None:
        """The batch's fingerprint for this step (the first batch logged for a step counts)."""
        m = self.meta(step)
        if m.fingerprint is None:
            m.fingerprint = self._fingerprint(batch)


def _scalar(value: torch.Tensor) -> torch.Tensor:
    """A logged tensor as a new 0-d device tensor (its mean when it has several values), so that a
    tensor the user updates in place later (a running total) keeps the value it had here; no sync."""
    v = value.detach()
    if v.numel() != 1:
        return v.float().mean()
    return v.clone() if v.dim() == 0 else v.reshape(()).clone()
