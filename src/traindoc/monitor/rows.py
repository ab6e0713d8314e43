"""From the device buffer to host records: the flush's copies, then pure functions of host values.

`read_steps` makes the flush's device-to-host copies (`traindoc.monitor.stats.to_host`, at most
three: the stats ring; every 0-d tensor the steps kept, stacked per dtype and device into one
vector; the histograms) and computes, for all the flush's steps at once, what every step needs (the
global gradient norm, the non-finite gradients). `build_step` turns one step's host values into the
`StepRecord` the detectors judge and the lines the run directory keeps (schema in
`traindoc.rundir`); it reads nothing but its arguments.

What the lines hold::

    scalars.jsonl   step, loss, lr, grad_norm (pre-clip), clipped, clip_threshold,
                    nonfinite_grads, first_nonfinite_param, backward_calls, grad_was_stale,
                    skipped, scaler_scale, train_mode, tokens, batch_fingerprint, step_time (host
                    seconds), metrics {name: float}; the watch adds tokens_per_s (over the flush
                    window) and, on CUDA, peak_memory_bytes to the last line of each flush
    layers.jsonl    every ``every`` steps: grad_norm, weight_norm (pre-step), update_ratio per layer
    histograms.jsonl  every ``histograms_every`` steps, per chosen layer, "weight" and "grad"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from traindoc.monitor import stats
from traindoc.monitor.layout import ParamLayout
from traindoc.monitor.record import StepRecord
from traindoc.monitor.recorder import StepMeta
from traindoc.monitor.stats import StatsBuffer


@dataclass
class HostStep:
    """One finished step's values, on the host."""

    meta: StepMeta
    row: np.ndarray
    loss: float | None
    grad_norm: float | None
    nonfinite_params: list[int]
    lr: list[float | None]
    clip_threshold: float | None
    tokens: float | None
    fingerprint: float | None
    stale: bool | None
    scale: float | None
    metrics: dict[str, float]
    hist: np.ndarray | None


@dataclass
class BuiltStep:
    record: StepRecord
    scalars: dict[str, Any]
    layers: dict[str, Any] | None


class _Ref:
    """The position of a kept tensor in the flush's vector of scalars."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _read_scalars(refs: list[torch.Tensor], device: torch.device) -> list[float]:
    """The values of 0-d tensors, with one copy to the host: stacked per (device, dtype), converted
    and concatenated on ``device``."""
    if not refs:
        return []
    wide = torch.float32 if device.type == "mps" else torch.float64
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(refs):
        groups.setdefault((t.device, t.dtype), []).append(i)
    order: list[int] = []
    parts = []
    for idx in groups.values():
        order += idx
        parts.append(torch.stack([refs[i] if refs[i].dim() == 0 else refs[i].reshape(()) for i in idx])
                     .to(device, wide))
    flat = stats.to_host(parts[0] if len(parts) == 1 else torch.cat(parts)).tolist()
    out = [0.0] * len(refs)
    for pos, i in enumerate(order):
        out[i] = flat[pos]
    return out


def read_steps(buffer: StatsBuffer, metas: Sequence[StepMeta]) -> list[HostStep]:
    """Copy the rows of these steps, and every tensor their metas hold, to the host."""
    if not metas:
        return []
    refs: list[torch.Tensor] = []

    def ref(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            refs.append(v)  # kept detached
            return _Ref(len(refs) - 1)
        return v

    staged = [(ref(m.clip_threshold), [ref(v) for v in m.lr], {k: ref(v) for k, v in m.metrics.items()},
               [ref(v) for v in m.losses], [ref(v) for v in m.tokens], [ref(v) for v in m.clip_totals],
               ref(m.fingerprint), ref(m.stale), ref(m.scale)) for m in metas]
    data = stats.to_host(buffer.data).numpy()
    values = _read_scalars(refs, buffer.device)

    def value(v: Any) -> Any:
        return values[v.i] if isinstance(v, _Ref) else v

    with_hist = [m for m in metas if m.hist is not None]
    hist = stats.to_host(torch.stack([m.hist for m in with_hist])).numpy() if with_hist else None
    hist_of = {m.step: hist[k] for k, m in enumerate(with_hist)} if hist is not None else {}
    rows = data[[m.step % buffer.rows for m in metas]]
    grads = rows[:, buffer.grad_cols].astype(np.float64)
    grad_sq = np.square(grads).sum(axis=1).tolist()
    all_finite = np.isfinite(grads).all(axis=1).tolist()
    out = []
    for k, (m, staged_m) in enumerate(zip(metas, staged, strict=True)):
        threshold, lr, metrics, losses, tokens, totals, fingerprint, stale, scale = staged_m
        loss = (sum(value(v) for v in losses) + m.loss_host) / m.loss_count if m.loss_count else None
        grad_norm = None
        if totals:  # the user's clip_grad_norm_ measured it
            grad_norm = math.sqrt(sum(value(v) ** 2 for v in totals))
        elif m.grads_seen:
            grad_norm = math.sqrt(grad_sq[k])
        bad = [] if all_finite[k] or not m.grads_seen else np.flatnonzero(~np.isfinite(grads[k])).tolist()
        threshold = value(threshold)
        out.append(HostStep(
            m, rows[k], loss, grad_norm, bad, [float(value(v)) if v is not None else None for v in lr],
            float(threshold) if threshold is not None else None,
            sum(value(v) for v in tokens) + m.tokens_host if m.tokens_logged else None,
            value(fingerprint), bool(value(stale) > 0.5) if isinstance(stale, _Ref) else stale, value(scale),
            {name: float(value(v)) for name, v in metrics.items()}, hist_of.get(m.step)))
    return out


def layer_stats(layout: ParamLayout, buffer: StatsBuffer, row: np.ndarray, frozen: Sequence[int] = (),
                ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per-layer gradient norm, weight norm and update/weight ratio from the per-parameter norms; a
    layer whose parameters were all frozen during the run (``frozen``) is left out: it is not trained."""
    pg, pw, pu = row[buffer.grad_cols], row[buffer.weight_cols], row[buffer.update_cols]
    sums = np.zeros((3, len(layout.layers)))
    np.add.at(sums, (slice(None), layout.layer_of_np), np.square(np.stack([pg, pw, pu]).astype(np.float64)))
    norms = np.sqrt(sums).tolist()
    lg: dict[str, float] = {}
    lw: dict[str, float] = {}
    lu: dict[str, float] = {}
    still = {li for li in {layout.layer_of[i] for i in frozen}
             if all(i in frozen for i in layout.layer_params[li])} if frozen else set()
    for li, name in enumerate(layout.layers):
        if li in still:
            continue
        g, w, u = norms[0][li], norms[1][li], norms[2][li]
        lg[name], lw[name] = g, w
        if w > 0 and math.isfinite(w):
            lu[name] = u / w
    return lg, lw, lu


def build_step(layout: ParamLayout, buffer: StatsBuffer, h: HostStep, *, prev_time: float,
               num_classes: int | None) -> BuiltStep:
    """The record and run-directory lines of one step (a pure function of its arguments)."""
    m, s = h.meta, h.meta.step
    grad_norm, bad = h.grad_norm, h.nonfinite_params
    # elements of the parameters whose gradient norm is non-finite: exact when a NaN/Inf fills whole
    # gradients (the usual case once one reaches backward), an upper bound otherwise; never hidden
    nonfinite = sum(layout.numels[i] for i in bad)
    first_bad = layout.names[bad[0]] if bad else None
    clipped = bool(grad_norm > h.clip_threshold) if h.clip_threshold is not None and grad_norm is not None \
        else None
    skipped = m.skipped
    layers_line = None
    lg = lw = lu = depth = groups = None
    if m.layer_stats:
        lg, lw, lu = layer_stats(layout, buffer, h.row, m.frozen)
        depth = {name: layout.depth[name] for name in lg}
        groups = {name: layout.layer_groups[layout.depth[name]] for name in lg}
        if float(np.square(h.row[buffer.update_cols].astype(np.float64)).sum()) == 0.0:
            skipped = True  # the step changed no weight (lr 0, or an optimizer that did nothing)
        layers_line = {"step": s, "grad_norm": lg, "weight_norm": lw, "update_ratio": lu}
    extra = dict(h.metrics)
    if m.train_mode is not None:
        extra["train_mode"] = 1.0 if m.train_mode else 0.0
    if h.tokens is not None:
        extra["tokens"] = h.tokens
    record = StepRecord(
        step=s, loss=h.loss, lr=[float(x) if x is not None else float("nan") for x in h.lr],
        grad_norm=grad_norm, clip_threshold=h.clip_threshold, clipped=clipped, nonfinite_grads=nonfinite,
        first_nonfinite_param=first_bad, backward_calls=max(m.backward_calls, 1), grad_was_stale=h.stale,
        num_classes=num_classes, scaler_scale=h.scale, skipped=skipped, layer_grad_norm=lg,
        layer_weight_norm=lw, layer_update_ratio=lu, layer_depth=depth, layer_groups=groups,
        batch_fingerprint=h.fingerprint, extra=extra)
    scalars = {
        "step": s, "loss": h.loss, "lr": h.lr, "grad_norm": grad_norm, "clipped": clipped,
        "clip_threshold": h.clip_threshold, "nonfinite_grads": nonfinite, "first_nonfinite_param": first_bad,
        "backward_calls": m.backward_calls, "grad_was_stale": h.stale, "skipped": skipped,
        "scaler_scale": h.scale, "train_mode": m.train_mode, "tokens": h.tokens,
        "batch_fingerprint": h.fingerprint,
        "step_time": (m.time - prev_time) if m.time is not None else None, "metrics": h.metrics,
    }
    return BuiltStep(record, scalars, layers_line)


def histogram_lines(layout: ParamLayout, layers: Sequence[int], bins: int, step: int,
                    data: np.ndarray) -> list[dict[str, Any]]:
    """The histograms.jsonl lines of one step: weight (slot 2k) and gradient (slot 2k+1) of each
    chosen layer; a layer whose values hold a NaN/Inf has no histogram (counted in nonfinite_grads)."""
    lines = []
    for k, li in enumerate(layers):
        for j, kind in enumerate(("weight", "grad")):
            row = data[2 * k + j]
            counts = [int(round(float(c))) for c in row[:bins]]
            if kind == "grad" and not any(counts):
                continue
            lo, hi = float(row[bins]), float(row[bins + 1])
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            edges = [lo + (hi - lo) * b / bins for b in range(bins + 1)]
            lines.append({"step": step, "layer": layout.layers[li], "kind": kind, "edges": edges, "counts": counts})
    return lines
