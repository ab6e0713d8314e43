"""`Watch`: a watched training run, from the first hook to the final `Report`.

    w = traindoc.watch(model, optimizer)          # hooks optimizer.step, backward and clipping
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # seen: pre-clip norm, max_norm
        optimizer.step(); optimizer.zero_grad()
        w.log(loss=loss, tokens=batch["attention_mask"].sum())   # tensors: no .item() needed
    report = w.close()                            # or: with traindoc.watch(...) as w: ...

The watch only wires its parts together, each in its own module:

=================  ===========================================================================
`layout`           which parameters and layers are watched (names, groups, depth)
`capture`          the hooks in PyTorch (optimizer step, backward, ``clip_grad_norm_``, scaler)
`recorder`         what each step measures, on the device (`stats`: the buffer, norms, histograms)
`rows`             at a flush: one device-to-host copy, then pure functions build the records
`judges`           the detectors (`detectors/`) judge each record
`nan_replay`       the saved batch replayed when a NaN appears (the function comes from above)
`traindoc.rundir`  the run directory; `tensorboard` mirrors it for TensorBoard
=================  ===========================================================================

Speed: a step only queues device work and keeps references; the host reads the statistics with one
copy per flush, builds `StepRecord`s, feeds the detectors, and appends to the run directory and
TensorBoard. No ``.item()`` in a step. An ordinary step does only what must happen every step: the
fused gradient norm (reused from ``clip_grad_norm_`` when the user clips), the LRs, a reference to
the logged loss, and the NaN watch; the layer statistics, histograms and the stale-gradient check run
every K steps (`recorder`). The flushes are dense at the start and sparse later (`next_flush`):
after steps 1, 2, 4, 8, 16, 32 (the powers of two below ``flush_every``), then every
``flush_every`` steps, and at close. A bug proved on the first steps (no ``zero_grad``, a schedule
that collapses) is judged within a few steps, not at the first steady flush; the six extra early
flushes are six host copies in a whole run (and, when some trainable parameters are outside the
optimizer, the first flush makes one more small copy: whether they have moved).

Findings as they happen: each new finding is printed as one line on stderr when it is raised
(``traindoc: WARNING loss-spike at step 57: <title>``; ``quiet=True`` silences it), and appended to
the run directory's findings.jsonl, so a run killed before ``close()`` keeps them. What is known
about the run when it starts (`RunStart`: the trainable parameters outside the watched optimizer)
is judged at the first flush, after one optimizer step, when every watch of the run exists.

Safety: every hook body is guarded (`failures`); an exception inside traindoc is recorded as a
``probe-failed`` hint in the final report and training goes on. Watching an optimizer that is
already watched warns and closes the earlier watch (the newest one wins). Frozen parameters are
skipped and counted in ``report.info``. Several param groups are recorded separately; two
optimizers are watched by two `watch` calls (each with its own run directory). A watch that is never
closed holds nothing global: once the model, the optimizer and the watch are unreachable, all three
are freed and ``clip_grad_norm_`` is torch's own again.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from traindoc.errors import TraindocInputError
from traindoc.findings import Finding, Report
from traindoc.monitor import stats
from traindoc.monitor.capture import Hooks
from traindoc.monitor.detectors import default_detectors
from traindoc.monitor.failures import FailureLog
from traindoc.monitor.judges import Judges
from traindoc.monitor.layout import ParamLayout, guess_num_classes
from traindoc.monitor.nan_replay import Locate, NanReplay
from traindoc.monitor.record import RunEnd, RunStart
from traindoc.monitor.recorder import StepRecorder
from traindoc.monitor.rows import build_step, histogram_lines, read_steps
from traindoc.rundir import RunDirWriter, fresh_run_dir
from traindoc.setup import unwrap_optimizer

DEFAULT_EVERY = 10
DEFAULT_HISTOGRAMS_EVERY = 100
DEFAULT_FLUSH_EVERY = 50
DEFAULT_BINS = 32
DEFAULT_HISTOGRAM_SAMPLES_CPU = 2048
DEFAULT_HISTOGRAM_SAMPLES_CUDA = 65536


def next_flush(done: int, every: int) -> int:
    """The step count at which the next flush is due, after a flush of the first ``done`` steps: the
    next power of two while it is below ``every``, else the next multiple of ``every``.

    >>> [next_flush(d, 50) for d in (0, 1, 2, 4, 8, 16, 32, 50, 100)]
    [1, 2, 4, 8, 16, 32, 50, 100, 150]
    >>> [next_flush(d, 5) for d in (0, 1, 2, 4, 5)]
    [1, 2, 4, 5, 10]
    """
    power = 1
    while power <= done:
        power *= 2
    return power if power < every else (done // every + 1) * every


def finding_line(finding: Finding, step: int | None) -> str:
    """The one line a watch prints when a finding is raised: the step it is about (its evidence's
    ``step``), else the step the monitor was judging.

    >>> finding_line(Finding("loss-spike", "warning", "Loss spike at step 57: 9.1 vs 2.2", {"step": 57}), 60)
    'traindoc: WARNING loss-spike at step 57: Loss spike at step 57: 9.1 vs 2.2'
    """
    about = finding.evidence.get("step")
    if not isinstance(about, int) or isinstance(about, bool):
        about = step
    where = f" at step {about}" if about is not None else ""
    return f"traindoc: {finding.severity.upper()} {finding.id}{where}: {finding.title}"


_OPEN: weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.ref[Watch]] = weakref.WeakKeyDictionary()
"""The open watch of each optimizer, held weakly on both sides."""


@contextlib.contextmanager
def paused_watches() -> Iterator[None]:
    """Every open watch ignores the forwards and backwards run inside the block (traindoc's own)."""
    with contextlib.ExitStack() as stack:
        for ref in list(_OPEN.values()):
            w = ref()
            if w is not None and not w.closed:
                stack.enter_context(w.hooks.paused())
        yield


class Watch:
    """A watched training run. Create it with `traindoc.watch` (its docstring lists the options;
    ``quiet=True`` keeps the one-line announcement of each new finding off stderr; ``locate`` is the
    function the NaN replay calls, `traindoc.monitor.nan_replay.Locate`)."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, *, run_dir: str | Path | None = None,
                 every: int = DEFAULT_EVERY, histograms_every: int = DEFAULT_HISTOGRAMS_EVERY,
                 flush_every: int = DEFAULT_FLUSH_EVERY, histogram_bins: int = DEFAULT_BINS,
                 histogram_layers: Sequence[str] | None = None, histogram_samples: int | None = None,
                 scaler: Any = None, detectors: Sequence[Any] | None = None,
                 detector_options: dict[str, Any] | None = None, tensorboard: bool | None = None,
                 tensorboard_every: int = 10, num_classes: int | None = None,
                 forward: Callable[..., Any] | None = None, replay_nonfinite: bool = True,
                 quiet: bool = False, locate: Locate | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TraindocInputError("model", f"is a {type(model).__name__}, not a torch.nn.Module")
        for arg, value, low in (("every", every, 0), ("flush_every", flush_every, 1),
                                ("tensorboard_every", tensorboard_every, 1),
                                ("histograms_every", histograms_every, 0), ("histogram_bins", histogram_bins, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TraindocInputError(arg, f"must be an int >= {low}, got {value!r}")
        self.model = model
        self.optimizer = unwrap_optimizer(optimizer)
        self.flush_every = flush_every
        self.quiet = bool(quiet)
        self._next_flush = next_flush(0, flush_every)
        self.report: Report | None = None
        self.closed = False
        self.layout = layout = ParamLayout.build(model, self.optimizer)
        if num_classes is None:
            num_classes, source = guess_num_classes(model)
        else:
            source = "num_classes="
        self.num_classes, self._num_classes_source = num_classes, source
        detectors = list(detectors) if detectors is not None else default_detectors(**(detector_options or {}))

        self._findings: list[Finding] = []
        self.found_at: dict[tuple[str, str], int] = {}
        """(id, title) of each finding raised -> the optimizer steps seen when it was raised (the step
        count at the flush that judged it, or at close): how long the run went before traindoc knew."""
        hist_layers = layout.histogram_layers(histogram_layers) if histograms_every else []
        if histogram_samples is None:
            histogram_samples = (DEFAULT_HISTOGRAM_SAMPLES_CUDA if layout.device.type == "cuda"
                                 else DEFAULT_HISTOGRAM_SAMPLES_CPU)
        hist_params = [i for li in hist_layers for i in layout.layer_params[li]]
        histograms = None
        if hist_params:
            slot_of = {li: k for k, li in enumerate(hist_layers)}
            shapes, slots = [], []
            for i in hist_params:
                shape = tuple(layout.params[i].shape)
                slot = 2 * slot_of[layout.layer_of[i]]
                shapes += [shape, shape]
                slots += [slot, slot + 1]
            histograms = stats.LayerHistograms(shapes, slots, 2 * len(hist_layers), histogram_bins, histogram_samples)
        self._hist_layers, self._bins = hist_layers, histogram_bins
        self.recorder = StepRecorder(layout, model, self.optimizer, rows=2 * flush_every, every=every,
                                     histograms_every=histograms_every, histograms=histograms,
                                     histogram_params=hist_params, scaler=scaler)
        # the log's step source holds the recorder weakly: the TensorBoard thread's pending writes hold
        # the log, and must not keep the model alive
        recorder = weakref.ref(self.recorder)
        self.failures = FailureLog(step=lambda: getattr(recorder(), "step", 0))
        self.hooks = Hooks(self.recorder, self.optimizer, self.failures, self._flush_if_due, scaler)
        self.nan = NanReplay(model, locate, forward=forward, failures=self.failures, pause=self.hooks.paused,
                             report=self._add_finding)
        if replay_nonfinite:
            self.recorder.nan_check = self.nan.check_flag
        self._replay_nonfinite = replay_nonfinite

        self.run_dir = Path(run_dir) if run_dir is not None else fresh_run_dir()
        meta = layout.meta(model, self.optimizer)
        meta.update({"histogram_layers": [layout.layers[i] for i in hist_layers], "every": every,
                     "histograms_every": histograms_every, "flush_every": flush_every,
                     "histogram_bins": histogram_bins, "histogram_samples": histogram_samples,
                     "num_classes": num_classes})
        self.writer = RunDirWriter(self.run_dir, meta=meta)
        self._tb: Any = None
        if tensorboard is None:
            from traindoc.monitor.tensorboard import tensorboard_available

            tensorboard = tensorboard_available()
        if tensorboard:  # opened now, so that no training step pays for opening the file
            self.failures.guard("tensorboard", self._open_tensorboard, tensorboard_every)

        self.judges = Judges(detectors, self.failures, self._add_finding, self._withdraw_finding)
        self._outside_start = stats.param_fingerprints([p for _, p in layout.outside]) if layout.outside else None
        self._started = False
        self._held_elsewhere: list[str] = []
        self._withdrawn: list[str] = []
        self._counts = {"clip_steps": 0, "clipped_steps": 0, "skipped_steps": 0, "nonfinite_steps": 0, "flushes": 0}
        self._first_nonfinite: int | None = None
        self._last_time = self._window_start = time.perf_counter()

        ref = _OPEN.get(self.optimizer)
        previous = ref() if ref is not None else None
        if previous is not None and not previous.closed:
            warnings.warn(f"traindoc.watch: this optimizer is already watched (run dir {previous.run_dir}); "
                          "closing that watch and starting a new one", UserWarning, stacklevel=3)
            previous.close()
        self.hooks.install()
        _OPEN[self.optimizer] = weakref.ref(self)

    def _open_tensorboard(self, every: int) -> None:
        from traindoc.monitor.tensorboard import TensorBoardWriter

        self._tb = TensorBoardWriter(self.run_dir / "tb", every, self.failures.guard)
        weakref.finalize(self, self._tb.release)  # a watch never closed: its event file is closed with it

    # ------------------------------------------------------------------ user API
    def log(self, loss: Any = None, *, batch: Any = None, tokens: Any = None, **metrics: Any) -> None:
        """Record this step's loss (a tensor is fine: no sync), tokens, the batch, other metrics.

        The batch is kept by reference for the NaN replay and fingerprinted for ``repeated-batch``."""
        if not self.closed:
            self.failures.guard("log", self._log, loss, batch, tokens, metrics)

    def _log(self, loss: Any, batch: Any, tokens: Any, metrics: dict[str, Any]) -> None:
        step = self.recorder.log(loss, batch, tokens, metrics)
        if batch is not None:
            self.nan.keep_batch(step, batch)

    def watch_batch(self, batch: Any) -> None:
        """Keep a reference to the current batch (replayed through ``nan-forward`` if a NaN appears)
        and fingerprint it (``repeated-batch``)."""
        if not self.closed:
            self.failures.guard("watch_batch", self._watch_batch, batch)

    def _watch_batch(self, batch: Any) -> None:
        step = self.recorder.step
        self.recorder.log_batch(step, batch)
        self.nan.keep_batch(step, batch)

    def add_finding(self, finding: Finding, step: int | None = None) -> None:
        """Add a finding proved outside the detectors (by an integration that sees what the step
        records cannot, e.g. the Hugging Face Trainer's loss normalisation) to this run: it is written
        to the run directory's findings now and is part of the final `Report`. ``step`` defaults to the
        current step. Ignored once the watch is closed."""
        if not isinstance(finding, Finding):
            raise TraindocInputError("finding", f"is a {type(finding).__name__}, not a traindoc Finding")
        if not self.closed:
            self.failures.guard("add_finding", self._add_finding, finding, self.steps if step is None else step)

    def flush(self) -> None:
        """Write the finished steps to the run directory now (one device-to-host copy)."""
        if not self.closed:
            self.failures.guard("flush", self._flush)

    @property
    def steps(self) -> int:
        """Optimizer steps seen so far (skipped AMP steps included)."""
        return self.recorder.step

    # ------------------------------------------------------------------ flush
    def _flush_if_due(self) -> None:
        if self.recorder.step >= self._next_flush:
            self._flush()

    def _flush(self) -> None:
        rec = self.recorder
        metas = rec.take()
        if not metas:
            return
        self._next_flush = next_flush(metas[-1].step + 1, self.flush_every)
        if not self._started:
            self._start_judges()
        host = read_steps(rec.buffer, metas)
        rec.release(metas)
        scalars_lines, layer_lines, hist_lines = [], [], []
        window_tokens = 0.0
        window_time = (metas[-1].time or self._last_time) - self._window_start
        for h in host:
            built = build_step(self.layout, rec.buffer, h, prev_time=self._last_time, num_classes=self.num_classes)
            self._last_time = h.meta.time or self._last_time
            record = built.record
            self._count(record)
            if self._replay_nonfinite and (record.loss_nonfinite or (record.nonfinite and not h.meta.skipped)):
                self.nan.replay(record.step)  # the step-time flag missed it (a NaN loss, a CUDA flag in flight)
            if record.extra.get("tokens") is not None:
                window_tokens += record.extra["tokens"]
            scalars_lines.append(built.scalars)
            if built.layers is not None:
                layer_lines.append(built.layers)
            if h.hist is not None:
                hist_lines.extend(histogram_lines(self.layout, self._hist_layers, self._bins, record.step, h.hist))
            self.judges.update(record)
        if window_tokens and window_time > 0:
            scalars_lines[-1]["tokens_per_s"] = window_tokens / window_time
        if self.layout.device.type == "cuda":
            scalars_lines[-1]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(self.layout.device)
        self._window_start = metas[-1].time or self._window_start
        # layers and histograms reach the disk first: a run killed mid-flush never has a scalars line
        # whose step lacks its layer stats or histograms
        for line in layer_lines:
            self.writer.append("layers", line)
        for line in hist_lines:
            self.writer.append("histograms", line)
        self.writer.flush()
        for line in scalars_lines:
            self.writer.append("scalars", line)
        self.writer.flush()
        self._counts["flushes"] += 1
        if self._tb is not None:
            self._tb.submit(scalars_lines, layer_lines, hist_lines)

    def _count(self, record: Any) -> None:
        c = self._counts
        if record.clipped is not None:
            c["clip_steps"] += 1
            c["clipped_steps"] += int(record.clipped)
        c["skipped_steps"] += int(record.skipped)
        if record.nonfinite:
            c["nonfinite_steps"] += 1
            if self._first_nonfinite is None:
                self._first_nonfinite = record.step

    def _add_finding(self, finding: Finding, step: int | None) -> None:
        self._findings.append(finding)
        self.found_at.setdefault((finding.id, finding.title), self.recorder.step)
        self.writer.append("findings", {"step": step, **finding.to_dict()})
        if not self.quiet:
            print(finding_line(finding, step), file=sys.stderr, flush=True)

    def _withdraw_finding(self, finding: Finding) -> None:
        """A detector takes back a finding it raised earlier (it stays in findings.jsonl, the log of what
        was said when; the final `Report` no longer holds it)."""
        kept = [f for f in self._findings if f is not finding]
        if len(kept) < len(self._findings):
            self._withdrawn.append(finding.id)
        self._findings = kept

    def _start_judges(self) -> None:
        """`RunStart` for the detectors, at the first flush (after the first optimizer step, when every
        watch of this run exists) or at close: the parameters outside this optimizer, which of them
        another open watch's optimizer holds, and which have moved since the watch started."""
        self._started = True
        layout = self.layout
        held: list[str] = []
        moved: list[str] = []
        if layout.outside:
            others = self._held_by_other_watches()
            held = [n for n, p in layout.outside if id(p) in others]
            if self.recorder.step:
                moved = [n for n, unchanged in zip(layout.not_in_optimizer, self._outside_unchanged(), strict=True)
                         if not unchanged]
        self._held_elsewhere = held
        self.judges.start(RunStart(outside_optimizer=layout.not_in_optimizer,
                                   outside_numel=sum(p.numel() for _, p in layout.outside),
                                   held_elsewhere=held, moved=moved, steps=self.recorder.step,
                                   num_classes=self.num_classes))

    def _outside_unchanged(self) -> list[bool]:
        """For each parameter outside the optimizer: is its fingerprint the one it had at the start?"""
        now = stats.param_fingerprints([p for _, p in self.layout.outside])
        return stats.to_host((now == self._outside_start).all(1)).tolist()

    # ------------------------------------------------------------------ close
    def close(self) -> Report:
        """Flush, judge, write RUN_DIR/report.json, remove every hook; return the `Report`."""
        if self.closed and self.report is not None:
            return self.report
        self.closed = True
        self.failures.guard("flush", self._flush)
        self.hooks.remove()
        if not self._started:
            self.failures.guard("run start", self._start_judges)
        if _OPEN.get(self.optimizer) is not None and _OPEN[self.optimizer]() is self:
            del _OPEN[self.optimizer]
        end = self.failures.guard("params-not-in-optimizer", self._run_end) or RunEnd(steps=self.recorder.step)
        self.judges.finalize(end)
        if self._tb is not None:
            self.failures.guard("tensorboard", self._tb.close)
        report = Report(self._findings + self.failures.findings(), self._info())
        try:
            self.writer.write_report(report.to_dict())
            self.writer.close()
        except Exception as e:  # disk full or similar: the report is still returned
            warnings.warn(f"traindoc.watch: could not write {self.run_dir}: {e}", RuntimeWarning, stacklevel=2)
        self.recorder.metas.clear()
        self.nan.clear()
        self.report = report
        return report

    def _run_end(self) -> RunEnd:
        """What moved over the run: the parameters outside the optimizer, fingerprinted again."""
        steps = self.recorder.step
        outside = self.layout.outside
        added = self._added_outside() if steps else []
        added_grad = [n for n, p in added if p.grad is not None and bool(p.grad.abs().sum() > 0)]
        if self._outside_start is None or steps == 0:
            return RunEnd(steps=steps, added_outside=[n for n, _ in added], added_with_grad=added_grad)
        same = self._outside_unchanged()
        stuck = [(n, p) for (n, p), unchanged in zip(outside, same, strict=True) if unchanged]
        with_grad = [n for n, p in stuck if p.grad is not None and bool(p.grad.abs().sum() > 0)]
        return RunEnd(steps=steps, unmoved_outside=[n for n, _ in stuck],
                      unmoved_outside_numel=sum(p.numel() for _, p in stuck), unmoved_with_grad=with_grad,
                      added_outside=[n for n, _ in added], added_with_grad=added_grad)

    def _held_by_other_watches(self) -> set[int]:
        """The ids of the parameters that the optimizers of the other open watches hold."""
        held: set[int] = set()
        for ref in list(_OPEN.values()):
            w = ref()
            if w is not None and w is not self and not w.closed:
                held.update(id(p) for g in w.optimizer.param_groups for p in g["params"])
        return held

    def _added_outside(self) -> list[tuple[str, torch.Tensor]]:
        """Trainable parameters the model gained since the start that no open watch's optimizer holds."""
        known = {id(p) for p in self.layout.params} | {id(p) for _, p in self.layout.outside}
        held = self._held_by_other_watches() | {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        return [(n, p) for n, p in self.model.named_parameters()
                if p.requires_grad and id(p) not in known and id(p) not in held]

    def _info(self) -> dict[str, Any]:
        layout, c = self.layout, self._counts
        info: dict[str, Any] = {
            "steps": self.recorder.step,
            "run_dir": str(self.run_dir),
            "watched_params": len(layout.params),
            "watched_numel": sum(layout.numels),
            "layers": len(layout.layers),
            "param_groups": len(self.optimizer.param_groups),
            "frozen_params": len(layout.frozen),
            "frozen_params_skipped": layout.frozen[:20],
            "params_not_in_optimizer": len(layout.outside),
            "params_held_by_other_watches": len(self._held_elsewhere),
            "clip_steps": c["clip_steps"],
            "clipped_fraction": (c["clipped_steps"] / c["clip_steps"]) if c["clip_steps"] else None,
            "nonfinite_steps": c["nonfinite_steps"],
            "first_nonfinite_step": self._first_nonfinite,
            "skipped_steps": c["skipped_steps"],
            "flushes": c["flushes"],
            "layer_stats_every": self.recorder.every,
            "histograms_every": self.recorder.histograms_every,
            "num_classes": self.num_classes,
            "num_classes_source": self._num_classes_source,
            "detectors": self.judges.names,
            "tensorboard": str(self.run_dir / "tb") if self._tb is not None else None,
        }
        if layout.frozen:
            info["frozen_note"] = f"{len(layout.frozen)} frozen parameter(s) (requires_grad=False) are not watched"
        if self._withdrawn:
            info["withdrawn_findings"] = list(self._withdrawn)
        if self.nan.info is not None:
            info["nan_replay"] = self.nan.info
        if self.recorder.metas:
            info["unfinished_step_dropped"] = True
        return info

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Watch({type(self.model).__name__}, steps={self.steps}, run_dir={str(self.run_dir)!r}, {state})"
