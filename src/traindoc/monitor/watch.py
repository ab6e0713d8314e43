"""`traindoc.watch`: one call before the training loop; at the end, a `Report` of what went wrong.

    w = traindoc.watch(model, optimizer)          # hooks optimizer.step, backward and clipping
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # seen: pre-clip norm, max_norm
        optimizer.step(); optimizer.zero_grad()
        w.log(loss=loss, tokens=batch["attention_mask"].sum())   # tensors: no .item() needed
    report = w.close()                            # or: with traindoc.watch(...) as w: ...

What is hooked, and removed again by `close()`:

* ``optimizer.register_step_pre_hook`` / ``register_step_post_hook``: LR of each param group,
  per-parameter gradient norms (one ``torch._foreach_norm``), and every ``every`` steps the
  weight norms, a pre-step weight snapshot and the update norms ``||w_after - w_before||``;
  histograms of weights and gradients every ``histograms_every`` steps.
* a tensor hook on the first/last trainable parameter counts backward passes per optimizer step
  (gradient accumulation), and one on the smallest parameter checks, on the device, whether its
  gradient was already non-zero before the step's first backward (``missing-zero-grad``).
* ``torch.nn.utils.clip_grad_norm_`` (see `traindoc.monitor.hooks`): the norm *before* clipping
  and the user's ``max_norm``.
* ``scaler.step`` when ``scaler=`` (an AMP GradScaler) is given: steps the scaler skipped.

Speed: a step only queues device work; the host reads the statistics with one copy per flush
(every ``flush_every`` steps and at close), builds `StepRecord`s, feeds the detectors
(`traindoc.monitor.detectors`), and appends to the run directory (`traindoc.rundir`) and
TensorBoard. No ``.item()`` in a step.

What it writes (the schema of `traindoc.rundir`, with these keys filled)::

    meta.json       + optimizer, params (names, model order), param_layers, layer_depth,
                      histogram_layers, every, histograms_every, flush_every, histogram_bins,
                      histogram_samples, frozen_params, num_classes, device
    scalars.jsonl   step, loss, lr, grad_norm (pre-clip), clipped, clip_threshold,
                    nonfinite_grads, first_nonfinite_param, backward_calls, grad_was_stale,
                    skipped, scaler_scale, train_mode, tokens, step_time (host seconds),
                    metrics {name: float}; the last line of each flush adds tokens_per_s (over
                    the flush window) and, on CUDA, peak_memory_bytes
    layers.jsonl    every ``every`` steps: grad_norm, weight_norm (pre-step), update_ratio
    histograms.jsonl  every ``histograms_every`` steps, per chosen layer, "weight" and "grad"
                    (of a fixed strided sample of ``histogram_samples`` values per layer)

Layers are the modules that own parameters directly (``blocks.0.attn.out_proj``), in model order;
``layer_depth`` is that order (0 nearest the input for the usual model).

Loss attribution: a ``log()`` after ``optimizer.step()`` and before the next backward belongs to
the step just taken; otherwise to the step in progress. Losses of several micro-batches are
averaged.

Safety: every hook body is guarded; an exception inside traindoc is recorded as a ``probe-failed``
hint in the final report and training goes on. Watching an optimizer that is already watched
warns and closes the earlier watch (the newest one wins). Frozen parameters are skipped and
counted in ``report.info``. Several param groups are recorded separately; two optimizers are
watched by two `watch` calls (each with its own run directory).
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traindoc.catalog import entry
from traindoc.errors import TraindocInputError
from traindoc.findings import Finding, Report, internal_failure
from traindoc.monitor import stats as _stats
from traindoc.monitor.hooks import add_clip_listener
from traindoc.monitor.record import StepRecord
from traindoc.monitor.stats import LOSS, SCALE, STALE, TOKENS, StatsBuffer
from traindoc.rundir import RunDirWriter, fresh_run_dir
from traindoc.setup import unwrap_optimizer

DEFAULT_EVERY = 10
DEFAULT_HISTOGRAMS_EVERY = 100
DEFAULT_FLUSH_EVERY = 50
DEFAULT_BINS = 32
MAX_HISTOGRAM_LAYERS = 64
DEFAULT_HISTOGRAM_SAMPLES_CPU = 2048
DEFAULT_HISTOGRAM_SAMPLES_CUDA = 65536
MAX_RECORDED_ERRORS = 10

_ACTIVE: weakref.WeakKeyDictionary[torch.optim.Optimizer, Watch] = weakref.WeakKeyDictionary()


@dataclass
class _StepMeta:
    """Host-side facts of one step (device values live in the StatsBuffer row)."""

    step: int
    lr: list[Any] = field(default_factory=list)
    loss_count: int = 0
    loss_host: float = 0.0
    tokens_host: float = 0.0
    tokens_logged: bool = False
    clip_threshold: Any = None
    clip_totals: list[torch.Tensor] = field(default_factory=list)
    clip_norms: list[tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=list)
    clip_covered: set[int] = field(default_factory=set)
    grads_seen: bool = False
    backward_calls: int = 0
    stale: Any = None  # None (unknown), False, or "device" (flag in the buffer row)
    layer_stats: bool = False
    skipped: bool = False
    has_scale: bool = False
    train_mode: bool | None = None
    time: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    hist: torch.Tensor | None = None


def _guess_num_classes(model: torch.nn.Module) -> tuple[int | None, str | None]:
    """Width of the logits, guessed from a Hugging Face config or a final nn.Linear."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is not None:
        if any(k in name for k in ("LM", "CausalLM", "MaskedLM", "ConditionalGeneration")):
            v = getattr(config, "vocab_size", None)
            if isinstance(v, int):
                return v, "config.vocab_size"
        if "Classification" in name:
            v = getattr(config, "num_labels", None)
            if isinstance(v, int):
                return v, "config.num_labels"
    last = None
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = module
    if isinstance(last, torch.nn.Linear):
        return last.out_features, "last nn.Linear out_features"
    return None, None


class _ClipListener:
    """What `traindoc.monitor.hooks` calls on each clip_grad_norm_ (holds the watch weakly)."""

    def __init__(self, watch: Watch):
        self._ref = weakref.ref(watch)

    def __call__(self, params: list[torch.Tensor], norms: torch.Tensor | None, total: torch.Tensor,
                 max_norm: Any) -> None:
        w = self._ref()
        if w is not None:
            w._on_clip(params, norms, total, max_norm)

    def on_error(self, where: str, text: str) -> None:
        w = self._ref()
        if w is not None:
            w._record_error_text(where, text)


class Watch:
    """A watched training run. Create it with `traindoc.watch` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, *, run_dir: str | Path | None = None,
                 every: int = DEFAULT_EVERY, histograms_every: int = DEFAULT_HISTOGRAMS_EVERY,
                 flush_every: int = DEFAULT_FLUSH_EVERY, histogram_bins: int = DEFAULT_BINS,
                 histogram_layers: Sequence[str] | None = None, histogram_samples: int | None = None,
                 scaler: Any = None,
                 detectors: Sequence[Any] | None = None, detector_options: dict[str, Any] | None = None,
                 tensorboard: bool | None = None, tensorboard_every: int = 10, num_classes: int | None = None,
                 forward: Callable[..., Any] | None = None, replay_nonfinite: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise TraindocInputError("model", f"is a {type(model).__name__}, not a torch.nn.Module")
        for arg, value, low in (("every", every, 0), ("flush_every", flush_every, 1),
                                ("tensorboard_every", tensorboard_every, 1),
                                ("histograms_every", histograms_every, 0), ("histogram_bins", histogram_bins, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TraindocInputError(arg, f"must be an int >= {low}, got {value!r}")
        self.model = model
        self.optimizer = unwrap_optimizer(optimizer)
        self.every = every
        self.histograms_every = histograms_every
        self.flush_every = flush_every
        self.tensorboard_every = tensorboard_every
        self.bins = histogram_bins
        self.scaler = scaler
        self.forward = forward
        self.replay_nonfinite = replay_nonfinite
        self.report: Report | None = None
        self._closed = False
        self._errors: dict[str, dict[str, Any]] = {}
        self._findings: list[Finding] = []
        self._handles: list[Any] = []
        self._undo: list[Callable[[], None]] = []
        self._metas: dict[int, _StepMeta] = {}
        self._step = 0
        self._flushed = 0
        self._flush_due = False
        self._after_step = False
        self._bw_counts = [0, 0]
        self._stale_checked = False
        self._replaying = False
        self._snapshot: list[torch.Tensor] | None = None
        self._batches: dict[int, Any] = {}  # the batches logged for the last two steps
        self._replay_done = False
        self._flag_step: int | None = None
        self._flag_host: torch.Tensor | None = None
        self._nonfinite_step: int | None = None
        self._replay_info: dict[str, Any] | None = None
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._clip_cache: dict[tuple[int, ...], tuple[torch.Tensor | None, torch.Tensor | None, set[int]]] = {}
        self._clipped_steps = 0
        self._clip_steps = 0
        self._nonfinite_steps = 0
        self._skipped_steps = 0
        self._flushes = 0
        self._window_start = time.perf_counter()
        self._last_time = self._window_start

        self._collect_params()
        if num_classes is None:
            num_classes, source = _guess_num_classes(model)
        else:
            source = "num_classes="
        self.num_classes, self._num_classes_source = num_classes, source
        self._choose_histogram_layers(histogram_layers)

        self.device = self.params[0].device
        if histogram_samples is None:
            histogram_samples = (DEFAULT_HISTOGRAM_SAMPLES_CUDA if self.device.type == "cuda"
                                 else DEFAULT_HISTOGRAM_SAMPLES_CPU)
        self.histogram_samples = histogram_samples
        self._hist_params = [i for li in self.histogram_layers for i in self.layer_params[li]]
        slot_of = {li: k for k, li in enumerate(self.histogram_layers)}
        shapes, slots = [], []
        for i in self._hist_params:
            shape = tuple(self.params[i].shape)
            shapes += [shape, shape]
            slots += [2 * slot_of[self.layer_of[i]], 2 * slot_of[self.layer_of[i]] + 1]
        self._hist = _stats.LayerHistograms(shapes, slots, 2 * len(self.histogram_layers), self.bins,
                                            histogram_samples)
        self.buffer = StatsBuffer(len(self.params), 2 * flush_every, self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else fresh_run_dir()
        self.writer = RunDirWriter(self.run_dir, meta=self._meta_json())
        self._tb: Any = None
        self._tb_pool: Any = None  # one background thread writes TensorBoard events, off the training thread
        if tensorboard is None:
            from traindoc.monitor.tensorboard import tensorboard_available

            tensorboard = tensorboard_available()
        self._tb_wanted = bool(tensorboard)
        if self._tb_wanted:  # opened now, so that no training step pays for the import and the file
            self._safe("tensorboard", self._open_tensorboard)

        self._detectors = self._make_detectors(detectors, detector_options or {})
        previous = _ACTIVE.get(self.optimizer)
        if previous is not None and not previous._closed:
            warnings.warn(f"traindoc.watch: this optimizer is already watched (run dir {previous.run_dir}); "
                          "closing that watch and starting a new one", UserWarning, stacklevel=3)
            previous.close()
        self._install()
        _ACTIVE[self.optimizer] = self

    # ------------------------------------------------------------------ setup
    def _collect_params(self) -> None:
        named = list(self.model.named_parameters())
        model_ids = {id(p) for _, p in named}
        in_opt: dict[int, int] = {}
        opt_params: list[torch.Tensor] = []
        for g, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                if id(p) not in in_opt:
                    in_opt[id(p)] = g
                    opt_params.append(p)
        params: list[torch.Tensor] = []
        names: list[str] = []
        for name, p in named:
            if id(p) in in_opt and p.requires_grad:
                params.append(p)
                names.append(name)
        for i, p in enumerate(opt_params):
            if id(p) not in model_ids and p.requires_grad:
                params.append(p)
                names.append(f"param_groups[{in_opt[id(p)]}].params[{i}]")
        if not params:
            raise TraindocInputError("optimizer", "holds no trainable parameter (requires_grad=True) to watch")
        self.params = params
        self.param_names = names
        self.param_group = [in_opt[id(p)] for p in params]
        self.numels = [p.numel() for p in params]
        self._index = {id(p): i for i, p in enumerate(params)}
        self.frozen_params = [n for n, p in named if not p.requires_grad]
        self.frozen_in_optimizer = [n for n, p in named if not p.requires_grad and id(p) in in_opt]
        self.not_in_optimizer = [n for n, p in named if p.requires_grad and id(p) not in in_opt]
        # Trainable parameters outside this optimizer: a cheap device-side fingerprint now, compared at
        # close. If they never moved, no optimizer updates them (seed 002's "the head never moves").
        outside = [p for n, p in named if p.requires_grad and id(p) not in in_opt]
        self._outside_fingerprint = _fingerprints(outside) if outside else None
        self._outside = outside
        layers: list[str] = []
        layer_of: list[int] = []
        seen: dict[str, int] = {}
        for n in names:
            layer = n.rsplit(".", 1)[0] if "." in n else "(root)"
            if layer not in seen:
                seen[layer] = len(layers)
                layers.append(layer)
            layer_of.append(seen[layer])
        self.layers = layers
        self.layer_of = layer_of
        self._layer_of_np = np.asarray(layer_of, dtype=np.int64)
        self.layer_params: list[list[int]] = [[] for _ in layers]
        for i, li in enumerate(layer_of):
            self.layer_params[li].append(i)
        smallest = min(range(len(params)), key=lambda i: self.numels[i])
        self._stale_param = smallest
        self._count_params = sorted({0, len(params) - 1})

    def _choose_histogram_layers(self, wanted: Sequence[str] | None) -> None:
        if wanted is not None:
            chosen = [i for i, name in enumerate(self.layers)
                      if any(name == w or name.startswith(w + ".") for w in wanted)]
        elif len(self.layers) <= MAX_HISTOGRAM_LAYERS:
            chosen = list(range(len(self.layers)))
        else:
            n = len(self.layers)
            chosen = sorted({round(k * (n - 1) / (MAX_HISTOGRAM_LAYERS - 1)) for k in range(MAX_HISTOGRAM_LAYERS)})
        self.histogram_layers = chosen

    def _meta_json(self) -> dict[str, Any]:
        groups = []
        for g, group in enumerate(self.optimizer.param_groups):
            lr = group.get("lr")
            groups.append({"lr": float(lr) if isinstance(lr, (int, float)) else None,
                           "weight_decay": group.get("weight_decay"),
                           "num_params": sum(1 for x in self.param_group if x == g)})
        return {
            "model": type(self.model).__name__,
            "optimizer": type(self.optimizer).__name__,
            "num_params": sum(self.numels),
            "param_groups": groups,
            "layers": self.layers,
            "layer_depth": {name: i for i, name in enumerate(self.layers)},
            "params": self.param_names,
            "param_layers": [self.layers[i] for i in self.layer_of],
            "histogram_layers": [self.layers[i] for i in self.histogram_layers],
            "every": self.every,
            "histograms_every": self.histograms_every,
            "flush_every": self.flush_every,
            "histogram_bins": self.bins,
            "histogram_samples": self.histogram_samples,
            "frozen_params": len(self.frozen_params),
            "num_classes": self.num_classes,
            "device": str(self.params[0].device),
        }

    def _make_detectors(self, detectors: Sequence[Any] | None, options: dict[str, Any]) -> list[Any]:
        if detectors is not None:
            return list(detectors)
        try:
            from traindoc.monitor.detectors import default_detectors
        except ImportError:
            self._detectors_missing = True
            return []
        try:
            return list(default_detectors(**options))
        except TypeError as e:
            raise TraindocInputError("detector_options", str(e)) from None

    def _install(self) -> None:
        opt = self.optimizer
        self._handles.append(opt.register_step_pre_hook(self._hook_pre_step))
        self._handles.append(opt.register_step_post_hook(self._hook_post_step))
        for slot, i in enumerate(self._count_params):
            self._handles.append(self.params[i].register_hook(self._make_count_hook(slot)))
        self._handles.append(self.params[self._stale_param].register_hook(self._hook_stale))
        self._undo.append(add_clip_listener(_ClipListener(self)))
        if self.scaler is not None and hasattr(self.scaler, "step"):
            self._wrap_scaler(self.scaler)

    def _wrap_scaler(self, scaler: Any) -> None:
        had_own = "step" in vars(scaler)
        original = scaler.step
        watch_ref = weakref.ref(self)

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            w = watch_ref()
            before = w._step if w is not None else 0
            out = original(optimizer, *args, **kwargs)
            if w is not None and not w._closed and w._step == before:
                w._safe("scaler.step", w._on_skipped_step, optimizer)
            return out

        scaler.step = step

        def undo() -> None:
            if had_own:
                scaler.step = original
            else:
                vars(scaler).pop("step", None)

        self._undo.append(undo)

    # ------------------------------------------------------------------ error containment
    def _safe(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # traindoc's own failure: record it, never break the user's training
            self._record_error(where, e)
            return None

    def _record_error(self, where: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._record_error_text(where, text, f"{type(exc).__name__}: {exc}")

    def _record_error_text(self, where: str, text: str, summary: str | None = None) -> None:
        entry = self._errors.get(where)
        if entry is None and len(self._errors) >= MAX_RECORDED_ERRORS:
            where = "other"
            entry = self._errors.get(where)
        if entry is None:
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            self._errors[where] = {"where": where, "exception": summary or (lines[-1] if lines else ""),
                                   "traceback": lines[-12:], "count": 1, "first_step": self._step}
        else:
            entry["count"] += 1

    # ------------------------------------------------------------------ hooks
    def _meta(self, step: int) -> _StepMeta:
        m = self._metas.get(step)
        if m is None:
            m = self._metas[step] = _StepMeta(step)
        return m

    def _make_count_hook(self, slot: int) -> Callable[[torch.Tensor], None]:
        watch_ref = weakref.ref(self)

        def hook(grad: torch.Tensor) -> None:
            w = watch_ref()
            if w is not None and not w._closed and not w._replaying:
                w._bw_counts[slot] += 1
                w._after_step = False

        return hook

    def _hook_stale(self, grad: torch.Tensor) -> None:
        if self._closed or self._replaying or self._stale_checked:
            return
        self._safe("backward hook", self._check_stale)

    def _check_stale(self) -> None:
        self._stale_checked = True
        if max(self._bw_counts) > 1:
            return  # not the step's first backward: cannot tell
        step = self._step
        m = self._meta(step)
        g = self.params[self._stale_param].grad
        if g is None:
            m.stale = False
        else:
            self.buffer.set(step % self.buffer.rows, STALE, (g != 0).any().float())
            m.stale = "device"

    def _hook_pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._closed:
            self._safe("optimizer pre-step hook", self._pre_step, False)

    def _hook_post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._closed:
            self._safe("optimizer post-step hook", self._post_step)

    def _on_skipped_step(self, optimizer: Any) -> None:
        if unwrap_optimizer(optimizer) is not self.optimizer:
            return
        self._pre_step(True)
        self._end_step(skipped=True)

    def _index_tensor(self, idx: tuple[int, ...]) -> torch.Tensor:
        t = self._index_cache.get(idx)
        if t is None:
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            t = self._index_cache[idx] = torch.tensor(idx, dtype=torch.long, device=self.device)
        return t

    @torch.no_grad()
    def _pre_step(self, skipped: bool) -> None:
        if self._flush_due:
            self._safe("flush", self._flush)
        self._after_step = False
        step = self._step
        row = step % self.buffer.rows
        m = self._meta(step)
        buf = self.buffer
        m.lr = [g["lr"].detach().clone() if isinstance(g.get("lr"), torch.Tensor) else g.get("lr")
                for g in self.optimizer.param_groups]
        m.train_mode = self.model.training
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        if present:
            m.grads_seen = True
            missing = [i for i in present if i not in m.clip_covered] if m.clip_totals else present
            if missing:
                grads = [self.params[i].grad for i in missing]
                norms = _stats.grad_norms(grads)
                full = len(missing) == len(self.params)
                buf.write_grad_norms(row, norms, None if full else self._index_tensor(tuple(missing)))
            for index, norms in m.clip_norms:
                target = buf.data[row, buf.grad_cols]
                if index is None:
                    target.copy_(norms)
                else:
                    target.index_copy_(0, index, norms)
        if len(m.clip_totals) == 1:
            m.grads_seen = True
            buf.data[row, _stats.GRAD_SQ].copy_(m.clip_totals[0].detach().square().reshape(()))
        elif m.clip_totals:
            m.grads_seen = True
            totals = torch.stack([t.detach().float().reshape(()).to(self.device) for t in m.clip_totals])
            buf.data[row, _stats.GRAD_SQ].copy_(totals.square().sum())
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        if isinstance(scale, torch.Tensor):
            buf.set(row, SCALE, scale.float())
            m.has_scale = True
        m.skipped = skipped
        if skipped:  # an AMP overflow: routine, the scaler skips it; no replay
            return
        if self.replay_nonfinite and m.grads_seen and not self._replay_done:
            self._check_nonfinite_flag(step, row)
        if self.every and step % self.every == 0:
            params = [p.detach() for p in self.params]
            m.layer_stats = True
            buf.write_weight_norms(row, _stats.grad_norms(params))
            self._snapshot = torch._foreach_mul(params, 1.0)
        if self.histograms_every and step % self.histograms_every == 0 and self.histogram_layers:
            m.hist = self._histograms()

    def _histograms(self) -> torch.Tensor:
        """Weight (slot 2k) and gradient (slot 2k+1) histograms of the chosen layers, on the device."""
        tensors: list[torch.Tensor | None] = []
        for i in self._hist_params:
            p = self.params[i]
            tensors.append(p.detach())
            tensors.append(p.grad)
        return self._hist(tensors)

    @torch.no_grad()
    def _post_step(self) -> None:
        step = self._step
        m = self._meta(step)
        if m.layer_stats and self._snapshot is not None:
            current = [p.detach() for p in self.params]
            torch._foreach_sub_(self._snapshot, current)
            self.buffer.write_update_norms(step % self.buffer.rows, _stats.grad_norms(self._snapshot))
        self._snapshot = None
        self._end_step(skipped=False)

    def _end_step(self, skipped: bool) -> None:
        m = self._meta(self._step)
        m.backward_calls = max(self._bw_counts)
        m.time = time.perf_counter()
        self._bw_counts = [0, 0]
        self._stale_checked = False
        self._step += 1
        self._after_step = True
        if self._step - self._flushed >= self.flush_every:
            self._flush_due = True

    def _on_clip(self, params: list[torch.Tensor], norms: torch.Tensor | None, total: torch.Tensor,
                 max_norm: Any) -> None:
        if self._closed or self._replaying:
            return
        self._safe("clip_grad_norm_ hook", self._record_clip, params, norms, total, max_norm)

    def _record_clip(self, params: list[torch.Tensor], norms: torch.Tensor | None, total: torch.Tensor,
                     max_norm: Any) -> None:
        with_grad = [p for p in params if p.grad is not None]
        key = tuple(id(p) for p in with_grad)
        cached = self._clip_cache.get(key)
        if cached is None:
            src = [k for k, p in enumerate(with_grad) if id(p) in self._index]
            dst = [self._index[id(with_grad[k])] for k in src]
            if not src:
                cached = (None, None, set())
            else:
                identity = src == list(range(len(with_grad))) and dst == list(range(len(self.params)))
                cached = (None if identity else torch.tensor(src, device=self.device),
                          None if identity else torch.tensor(dst, device=self.device), set(dst))
            if len(self._clip_cache) > 16:
                self._clip_cache.clear()
            self._clip_cache[key] = cached
        src_t, dst_t, covered = cached
        if not covered:
            return  # a clip of some other model's parameters
        m = self._meta(self._step)
        m.clip_totals.append(total.detach())
        m.clip_threshold = max_norm if m.clip_threshold is None else m.clip_threshold
        if norms is not None:
            stacked = norms.detach().float().to(self.device)
            if src_t is None:
                m.clip_norms.append((None, stacked))
            else:
                m.clip_norms.append((dst_t, stacked.index_select(0, src_t)))
            m.clip_covered |= covered

    # ------------------------------------------------------------------ user API
    def log(self, loss: Any = None, *, batch: Any = None, tokens: Any = None, **metrics: Any) -> None:
        """Record this step's loss (a tensor is fine: no sync), tokens, the batch, other metrics."""
        if self._closed:
            return
        self._safe("log", self._log, loss, batch, tokens, metrics)

    def _log(self, loss: Any, batch: Any, tokens: Any, metrics: dict[str, Any]) -> None:
        step = self._step
        if self._after_step and step - 1 >= self._flushed:
            step -= 1
        m = self._meta(step)
        row = step % self.buffer.rows
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
            self._keep_batch(step, batch)
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                m.metrics[name] = value.float().mean() if value.numel() != 1 else value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                m.metrics[name] = float(value)

    def watch_batch(self, batch: Any) -> None:
        """Keep a reference to the current batch, replayed through `nan-forward` if a NaN appears."""
        if not self._closed:
            self._keep_batch(self._step, batch)

    def _keep_batch(self, step: int, batch: Any) -> None:
        self._batches[step] = batch
        for old in [k for k in self._batches if k < step - 1]:
            del self._batches[old]

    def flush(self) -> None:
        """Write the finished steps to the run directory now (one device-to-host copy)."""
        if not self._closed:
            self._safe("flush", self._flush)

    @property
    def steps(self) -> int:
        """Optimizer steps seen so far (skipped AMP steps included)."""
        return self._step

    # ------------------------------------------------------------------ flush
    def _flush(self) -> None:
        self._flush_due = False
        steps = list(range(self._flushed, self._step))
        if not steps:
            return
        buf = self.buffer
        host = _stats.to_host(buf.data).numpy()
        metas = [self._meta(s) for s in steps]
        refs: list[torch.Tensor] = []
        for m in metas:
            for v in m.lr:
                if isinstance(v, torch.Tensor):
                    refs.append(v.float().reshape(()).to(self.device))
            if isinstance(m.clip_threshold, torch.Tensor):
                refs.append(m.clip_threshold.float().reshape(()).to(self.device))
            for v in m.metrics.values():
                if isinstance(v, torch.Tensor):
                    refs.append(v.float().reshape(()).to(self.device))
        ref_values = iter(_stats.to_host(torch.stack(refs)).tolist() if refs else [])
        hist_metas = [m for m in metas if m.hist is not None]
        hist_host = _stats.to_host(torch.stack([m.hist for m in hist_metas])).numpy() if hist_metas else None
        buf.clear_rows([s % buf.rows for s in steps])
        for s in steps:
            self._metas.pop(s, None)
        self._flushed = self._step

        def value(v: Any) -> Any:
            return next(ref_values) if isinstance(v, torch.Tensor) else v

        hist_by_step = {m.step: hist_host[k] for k, m in enumerate(hist_metas)} if hist_host is not None else {}
        scalars_lines, layer_lines, hist_lines = [], [], []
        window_tokens = 0.0
        window_time = (metas[-1].time or self._last_time) - self._window_start
        for s, m in zip(steps, metas, strict=True):
            row = host[s % buf.rows]
            lr = [float(value(v)) if v is not None else None for v in m.lr]
            clip_threshold = value(m.clip_threshold)
            clip_threshold = float(clip_threshold) if clip_threshold is not None else None
            metrics = {k: float(value(v)) for k, v in m.metrics.items()}
            record, scalars, layers = self._build_record(s, m, row, lr, clip_threshold, metrics)
            if m.tokens_logged:
                window_tokens += scalars["tokens"]
            scalars_lines.append(scalars)
            if layers is not None:
                layer_lines.append(layers)
            if s in hist_by_step:
                hist_lines.extend(self._hist_lines(s, hist_by_step[s]))
            self._feed(record)
        if window_tokens and window_time > 0:
            scalars_lines[-1]["tokens_per_s"] = window_tokens / window_time
        if self.device.type == "cuda":
            scalars_lines[-1]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
        self._window_start = metas[-1].time or self._window_start
        # layers and histograms reach the disk first: a run killed mid-flush never has a scalars line
        # whose step lacks its layer stats or histograms
        for line in layer_lines:
            self.writer.append("layers", line)
        for line in hist_lines:
            self.writer.append_plain("histograms", line)  # ints and finite floats only
        self.writer.flush()
        for line in scalars_lines:
            self.writer.append("scalars", line)
        self.writer.flush()
        self._flushes += 1
        if self._tb_wanted:
            # TensorBoard's event writer is pure Python (~0.2 ms per event): a worker thread does it
            # while the training thread is back in torch ops (which release the GIL); events keep
            # their order (one worker), and close() waits for them.
            if self._tb_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._tb_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traindoc-tensorboard")
            self._tb_pool.submit(self._safe, "tensorboard", self._write_tensorboard, scalars_lines, layer_lines,
                                 hist_lines)

    def _build_record(self, s: int, m: _StepMeta, row: Any, lr: list[Any], clip_threshold: float | None,
                      metrics: dict[str, float]) -> tuple[StepRecord, dict[str, Any], dict[str, Any] | None]:
        buf = self.buffer
        loss = (float(row[LOSS]) + m.loss_host) / m.loss_count if m.loss_count else None
        grad_norm = math.sqrt(float(row[_stats.GRAD_SQ])) if m.grads_seen else None
        if grad_norm is not None and math.isnan(float(row[_stats.GRAD_SQ])):
            grad_norm = float("nan")
        pn = row[buf.grad_cols]
        bad = np.flatnonzero(~np.isfinite(pn)).tolist() if m.grads_seen else []
        # elements of the parameters whose gradient norm is non-finite: exact when a NaN/Inf fills whole
        # gradients (the usual case once one reaches backward), an upper bound otherwise; never hidden
        nonfinite = sum(self.numels[i] for i in bad)
        first_bad = self.param_names[bad[0]] if bad else None
        clipped = None
        if clip_threshold is not None and grad_norm is not None:
            clipped = bool(grad_norm > clip_threshold)
            self._clip_steps += 1
            self._clipped_steps += int(clipped)
        stale = bool(row[STALE] > 0.5) if m.stale == "device" else m.stale
        skipped = m.skipped
        layers_line = None
        lg = lw = lu = depth = None
        if m.layer_stats:
            lg, lw, lu = self._layer_stats(row)
            depth = {name: self.layers.index(name) for name in lg}
            total_update = float(np.square(row[buf.update_cols].astype(np.float64)).sum())
            if total_update == 0.0:
                skipped = True  # the step changed no weight (lr 0, or an optimizer that did nothing)
            layers_line = {"step": s, "grad_norm": lg, "weight_norm": lw, "update_ratio": lu}
        if skipped:
            self._skipped_steps += 1
        loss_bad = loss is not None and not math.isfinite(loss)
        if loss_bad or nonfinite > 0:
            self._nonfinite_steps += 1
            if self._nonfinite_step is None:
                self._nonfinite_step = s
            if self.replay_nonfinite and not self._replay_done and (loss_bad or not m.skipped):
                # the step-time flag missed it (a NaN loss with finite gradients, or a CUDA flag in flight)
                self._safe("nan-forward replay", self._replay, s)
        scale = float(row[SCALE]) if m.has_scale else None
        tokens = float(row[TOKENS]) + m.tokens_host if m.tokens_logged else None
        extra = dict(metrics)
        if m.train_mode is not None:
            extra["train_mode"] = 1.0 if m.train_mode else 0.0
        if tokens is not None:
            extra["tokens"] = tokens
        record = StepRecord(
            step=s, loss=loss, lr=[float(x) if x is not None else float("nan") for x in lr],
            grad_norm=grad_norm, clip_threshold=clip_threshold, clipped=clipped, nonfinite_grads=nonfinite,
            first_nonfinite_param=first_bad, backward_calls=max(m.backward_calls, 1), grad_was_stale=stale,
            num_classes=self.num_classes, scaler_scale=scale, skipped=skipped, layer_grad_norm=lg,
            layer_weight_norm=lw, layer_update_ratio=lu, layer_depth=depth, extra=extra)
        prev_time = self._last_time
        self._last_time = m.time or prev_time
        scalars = {
            "step": s, "loss": loss, "lr": lr, "grad_norm": grad_norm, "clipped": clipped,
            "clip_threshold": clip_threshold, "nonfinite_grads": nonfinite,
"first_nonfinite_param": first_bad,
            "backward_calls": m.backward_calls, "grad_was_stale": stale, "skipped": skipped,
            "scaler_scale": scale, "train_mode": m.train_mode, "tokens": tokens,
            "step_time": (m.time - prev_time) if m.time is not None else None, "metrics": metrics,
        }
        return record, scalars, layers_line

    def _layer_stats(self, row: Any) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        buf = self.buffer
        pg, pw, pu = row[buf.grad_cols], row[buf.weight_cols], row[buf.update_cols]
        lg: dict[str, float] = {}
        lw: dict[str, float] = {}
        lu: dict[str, float] = {}
        sums = np.zeros((3, len(self.layers)))
        np.add.at(sums, (slice(None), self._layer_of_np),
                  np.square(np.stack([pg, pw, pu]).astype(np.float64)))
        norms = np.sqrt(sums).tolist()
        for li, name in enumerate(self.layers):
            g, w, u = norms[0][li], norms[1][li], norms[2][li]
            lg[name], lw[name] = g, w
            if w > 0 and math.isfinite(w):
                lu[name] = u / w
        return lg, lw, lu

    def _hist_lines(self, step: int, data: Any) -> list[dict[str, Any]]:
        lines = []
        for k, li in enumerate(self.histogram_layers):
            for j, kind in enumerate(("weight", "grad")):
                row = data[2 * k + j]
                counts = [int(round(float(c))) for c in row[: self.bins]]
                if kind == "grad" and not any(counts):
                    continue
                lo, hi = float(row[self.bins]), float(row[self.bins + 1])
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    continue  # NaN/Inf among the values: counted in nonfinite_grads, no histogram
                edges = [lo + (hi - lo) * b / self.bins for b in range(self.bins + 1)]
                lines.append({"step": step, "layer": self.layers[li], "kind": kind, "edges": edges,
                              "counts": counts})
        return lines

    def _feed(self, record: StepRecord) -> None:
        for det in list(self._detectors):
            try:
                found = det.update(record) or []
            except Exception as e:
                self._record_error(f"detector {type(det).__name__}", e)
                self._detectors.remove(det)
                continue
            for f in found:
                self._add_finding(f, record.step)

    def _add_finding(self, finding: Finding, step: int | None) -> None:
        self._findings.append(finding)
        self.writer.append("findings", {"step": step, **finding.to_dict()})

    def _write_tensorboard(self, scalars: list[dict[str, Any]], layers: list[dict[str, Any]],
                           hists: list[dict[str, Any]]) -> None:
        # TensorBoard's writer costs ~0.2 ms per event (a pure-Python CRC): per-layer data goes there
        # at most every `tensorboard_every` steps; the run directory keeps every step
        k = self.tensorboard_every
        layers = [r for r in layers if r["step"] % k == 0]
        hists = [r for r in hists if r["step"] % k == 0]
        if self._tb is None:
            self._open_tensorboard()
        self._tb.write_scalars(scalars)
        self._tb.write_layers(layers)
        self._tb.write_histograms(hists)
        self._tb.flush()

    def _open_tensorboard(self) -> None:
        from traindoc.monitor.tensorboard import TensorBoardSink

        self._tb = TensorBoardSink(self.run_dir / "tb")

    # ------------------------------------------------------------------ NaN replay
    def _check_nonfinite_flag(self, step: int, row: int) -> None:
        """Near-zero-cost NaN watch: is this step's gradient norm non-finite? Replay the batch if so.

        On CPU the flag is an ordinary host tensor (reading it waits for nothing), so the replay runs
        before this step updates the weights. On CUDA the flag goes to pinned host memory with a
        non-blocking copy and is read at the next step (the weights have then taken one step).
        """
        if self._flag_step is not None and self._flag_host is not None:
            if bool(self._flag_host):
                self._replay_soon(self._flag_step)
            self._flag_step = None
        if self._replay_done:
            return
        flag = ~torch.isfinite(self.buffer.data[row, _stats.GRAD_SQ])
        if self.device.type == "cpu":
            if bool(flag):
                self._replay_soon(step)
            return
        if self._flag_host is None:
            self._flag_host = torch.zeros((), dtype=torch.bool, pin_memory=torch.cuda.is_available())
        self._flag_host.copy_(flag, non_blocking=True)
        self._flag_step = step

    def _replay_soon(self, step: int) -> None:
        self._replay_done = True
        self._safe("nan-forward replay", self._replay, step)

    def _replay(self, step: int) -> None:
        self._replay_done = True
        batch_step = step if step in self._batches else max(self._batches, default=None)
        batch = self._batches.get(batch_step) if batch_step is not None else None
        if batch is None:
            self._replay_info = {"step": step, "replayed": False, "reason": "no batch given (w.log(batch=...))"}
            return
        try:
            from traindoc.probes.nan_forward import locate_nonfinite
        except ImportError:
            self._replay_info = {"step": step, "replayed": False, "reason": "nan-forward probe not available"}
            return
        modes = [(mod, mod.training) for mod in self.model.modules()]
        all_params = list(self.model.parameters())
        grads = [p.grad for p in all_params]
        self._replaying = True
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                found = locate_nonfinite(self.model, batch, forward=self.forward) or []
        finally:
            self._replaying = False
            for p, g in zip(all_params, grads, strict=True):
                p.grad = g
            for mod, mode in modes:
                mod.training = mode
        self._replay_info = {"step": step, "replayed": True, "batch_step": batch_step,
                             "findings": len(found)}
        for f in found:
            self._add_finding(f, step)

    # ------------------------------------------------------------------ close
    def close(self) -> Report:
        """Flush, judge, write RUN_DIR/report.json, remove every hook; return the `Report`."""
        if self._closed and self.report is not None:
            return self.report
        self._closed = True
        self._safe("flush", self._flush)
        for det in list(self._detectors):
            try:
                found = det.finalize() or []
            except Exception as e:
                self._record_error(f"detector {type(det).__name__}", e)
                continue
            for f in found:
                self._add_finding(f, None)
        for h in self._handles:
            self._safe("remove hooks", h.remove)
        for undo in self._undo:
            self._safe("remove hooks", undo)
        self._handles.clear()
        self._undo.clear()
        if _ACTIVE.get(self.optimizer) is self:
            del _ACTIVE[self.optimizer]
        self._safe("params-not-in-optimizer", self._judge_params_outside)
        if self._tb_pool is not None:
            self._safe("tensorboard", self._tb_pool.shutdown, True)
        findings = list(self._findings)
        for err in self._errors.values():
            findings.append(internal_failure(f"traindoc's monitor ({err['where']})", err["exception"],
                                             count=err["count"], evidence=err))
        report = Report(findings, self._info())
        try:
            self.writer.write_report(report.to_dict())
            self.writer.close()
        except Exception as e:  # disk full or similar: the report is still returned
            warnings.warn(f"traindoc.watch: could not write {self.run_dir}: {e}", RuntimeWarning, stacklevel=2)
        if self._tb is not None:
            self._safe("tensorboard", self._tb.close)
        self._metas.clear()
        self._batches.clear()
        self._snapshot = None
        self.report = report
        return report

    def _judge_params_outside(self) -> None:
        """Trainable parameters outside the optimizer that did not move during the run: proved stuck."""
        if self._outside_fingerprint is None or self._step == 0:
            return
        same = (_fingerprints(self._outside) == self._outside_fingerprint).all(1).cpu().tolist()
        stuck = [(n, p) for n, p, unchanged in zip(self.not_in_optimizer, self._outside, same, strict=True)
                 if unchanged]
        if not stuck:
            return
        with_grad = [n for n, p in stuck if p.grad is not None and bool(p.grad.abs().sum() > 0)]
        modules = sorted({n.rsplit(".", 1)[0] if "." in n else "(root)" for n, _ in stuck})
        evidence = {"step": self._step, "steps": self._step, "modules": modules[:20],
                    "parameters": [n for n, _ in stuck][:50], "count": len(stuck),
                    "numel": sum(p.numel() for _, p in stuck), "receiving_gradients": with_grad[:50]}
        self._add_finding(Finding(
            "params-not-in-optimizer", "error",
            f"{len(stuck)} trainable parameter(s) in {', '.join(modules[:3])}{'...' if len(modules) > 3 else ''} "
            f"are in no param group and never moved in {self._step} steps"
            + (f" although {len(with_grad)} receive gradients" if with_grad else ""),
            evidence=evidence, fix=entry("params-not-in-optimizer").fix), None)

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "steps": self._step,
            "run_dir": str(self.run_dir),
            "watched_params": len(self.params),
            "watched_numel": sum(self.numels),
            "layers": len(self.layers),
            "param_groups": len(self.optimizer.param_groups),
            "frozen_params": len(self.frozen_params),
            "frozen_params_skipped": self.frozen_params[:20],
            "params_not_in_optimizer": len(self.not_in_optimizer),
            "clip_steps": self._clip_steps,
            "clipped_fraction": (self._clipped_steps / self._clip_steps) if self._clip_steps else None,
            "nonfinite_steps": self._nonfinite_steps,
            "first_nonfinite_step": self._nonfinite_step,
            "skipped_steps": self._skipped_steps,
            "flushes": self._flushes,
            "layer_stats_every": self.every,
            "histograms_every": self.histograms_every,
            "num_classes": self.num_classes,
            "num_classes_source": self._num_classes_source,
            "detectors": [type(d).__name__ for d in self._detectors],
            "tensorboard": str(self.run_dir / "tb") if self._tb is not None else None,
        }
        if getattr(self, "_detectors_missing", False):
            info["detectors_missing"] = "traindoc.monitor.detectors is not available"
        if self.frozen_params:
            info["frozen_note"] = (f"{len(self.frozen_params)} frozen parameter(s) (requires_grad=False) are "
                                   "not watched")
        if self._replay_info is not None:
            info["nan_replay"] = self._replay_info
        if self._metas:
            info["unfinished_step_dropped"] = True
        return info

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Watch({type(self.model).__name__}, steps={self._step}, run_dir={str(self.run_dir)!r}, {state})"


def _fingerprints(params: list[torch.Tensor]) -> torch.Tensor:
    """(n, 2) device tensor: sum and L2 norm of each parameter — changes when any weight moves."""
    with torch.no_grad():
        return torch.stack([torch.stack([p.detach().float().sum(), torch.linalg.vector_norm(p.detach().float())])
                            for p in params])


def watch(model: torch.nn.Module, optimizer: Any, *, run_dir: str | Path | None = None,
          every: int = DEFAULT_EVERY, histograms_every: int = DEFAULT_HISTOGRAMS_EVERY,
          flush_every: int = DEFAULT_FLUSH_EVERY, **options: Any) -> Watch:
    """Watch a training run: call once before the loop; ``close()`` returns the `Report`.

    Args:
        model: the model being trained.
        optimizer: its optimizer (a wrapper with ``.optimizer``, e.g. Accelerate's, is unwrapped).
        run_dir: where the run directory goes (default ``./runs/<timestamp>``).
        every: per-layer gradient norm, weight norm and update/weight ratio every K steps (0: never;
            those steps copy the weights once, transiently, to measure the update).
        histograms_every: weight and gradient histograms every H steps (0: never).
        flush_every: copy the statistics to the host and write them every N steps.
        **options: ``histogram_bins``, ``histogram_layers`` (layer names), ``histogram_samples``
            (values sampled per layer
            and kind; default 2048 on CPU, 65536 on CUDA; 0: all), ``scaler`` (an AMP
            GradScaler), ``detectors`` (a list replacing the defaults), ``detector_options``,
            ``tensorboard`` (None: when installed), ``tensorboard_every`` (per-layer scalars and
            histograms go to TensorBoard on steps that are multiples of it; default 10),
            ``num_classes``, ``forward`` (how to call the
            model on a logged batch for the NaN replay), ``replay_nonfinite``.

    >>> import torch, tempfile, traindoc
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with traindoc.watch(model, opt, run_dir=tempfile.mkdtemp(), tensorboard=False, detectors=[]) as w:
    ...     for _ in range(3):
    ...         loss = model(torch.randn(8, 4)).pow(2).mean()
    ...         loss.backward(); opt.step(); opt.zero_grad()
    ...         w.log(loss=loss)
    >>> w.report.info["steps"]
    3
    """
    return Watch(model, optimizer, run_dir=run_dir, every=every, histograms_every=histograms_every,
                 flush_every=flush_every, **options)
