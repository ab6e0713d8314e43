"""trainspotter (github antonsoo/trainspotter): diagnosis of the run's logged loss curve.

How it is used. trainspotter reads the log a run writes: ``trainspotter analyze log.csv`` after the run,
or ``trainspotter watch log.csv`` while it grows ("prints only newly-appeared findings"); "any CSV /
JSONL with a step column and numeric columns" is read as is. The harness logs, after every optimizer
step, what a training loop logs: ``step, loss, lr, grad_norm`` (the mean of the losses backpropagated in
the step, the LR of the first param group, the pre-clip gradient norm). That log is written to a CSV,
read with ``trainspotter.load_run`` (its CSV reader maps ``loss`` to ``train/loss``) and diagnosed with
``trainspotter.run_all`` (the default detectors, default thresholds) as ``watch`` would: on the log as
it grew, polled every ``ceil(rows / 100)`` rows and at the end; a finding counts from the first poll
that shows it (``watch`` prints it then), and the first poll that shows a mapped finding is refined to
the row. There is no eval loss: scripts do not backpropagate it.

Which log counts. That of each optimizer of the run's final training phase (see _harness).
``step``: the number of rows the log had when the finding first appeared, minus one (the index of its
last row: the step whose loss completed the evidence).

Mapping (detector, title -> catalog ids). trainspotter names step ranges, never a line.

============  ====================================  ==========================================
detector      title                                   ids
============  ====================================  ==========================================
divergence    Diverged (non-finite values)            nan-loss, nan-forward, divergence
divergence    Diverged (sustained growth)             divergence
spikes        Loss spike                              loss-spike
plateau       Plateau                                 loss-plateau
lr_schedule   LR increased after its peak             scheduler-misuse
lr_schedule   LR discontinuity                        scheduler-misuse
lr_schedule   No LR warmup detected                   (none: no catalog id says a warmup is missing)
grad_norm     Gradient-norm explosion                 exploding-gradients
grad_norm     Gradient clipping likely saturated      aggressive-clipping
loss_floor    Suspiciously low loss early             loss-collapse
overfitting   Overfitting onset                       (none)
throughput    Throughput regression                   (none)
eval_noise    Eval metric too noisy                   (none)
============  ====================================  ==========================================
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gallery.peers._base import (
    DEFAULT_TIMEOUT,
    PeerResult,
    active_records,
    cannot_run,
    installed_version,
    launch,
    no_step,
)

TRACE = False
NAME = "trainspotter"
POLLS = 100

TABLE: list[tuple[str, str, tuple[str, ...]]] = [
    # (detector, start of the title, ids)
    ("divergence", "Diverged (non-finite", ("nan-loss", "nan-forward", "divergence")),
    ("divergence", "Diverged (sustained", ("divergence",)),
    ("spikes", "", ("loss-spike",)),
    ("plateau", "", ("loss-plateau",)),
    ("lr_schedule", "LR increased after its peak", ("scheduler-misuse",)),
    ("lr_schedule", "LR discontinuity", ("scheduler-misuse",)),
    ("grad_norm", "Gradient-norm explosion", ("exploding-gradients",)),
    ("grad_norm", "Gradient clipping likely saturated", ("aggressive-clipping",)),
    ("loss_floor", "", ("loss-collapse",)),
]


def ids_for(detector: str, title: str) -> list[str]:
    out: list[str] = []
    for det, start, ids in TABLE:
        if det == detector and title.startswith(start):
            out += [i for i in ids if i not in out]
    return out


# ---------------------------------------------------------------------------------------------------
# in the script's process: nothing beyond the harness's log


def setup(harness: Any) -> None:
    return None


def finish(harness: Any, state: Any, error: BaseException | None) -> dict[str, Any]:
    return {}


# ---------------------------------------------------------------------------------------------------
# in the scorer's process


def _write_log(path: Path, log: dict[str, list[float]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss", "lr", "grad_norm"])
        for i, (loss, lr, gn) in enumerate(zip(log["loss"], log["lr"], log["grad_norm"], strict=True)):
            w.writerow([i, *("" if v is None else repr(float(v)) for v in (loss, lr, gn))])


def _prefix(run: Any, rows: int) -> Any:
    from trainspotter import MetricSeries, Run

    cut = Run(source_format=run.source_format, source_path=run.source_path, meta=dict(run.meta))
    for name, series in run.metrics.items():
        cut.metrics[name] = MetricSeries(name=name, points=[p for p in series.points if p.step < rows])
    return cut


def watch(log: dict[str, list[float]]) -> tuple[dict[str, int], list[str]]:
    """``trainspotter watch`` on ``log`` as it grew: (id -> first row index, the findings' lines)."""
    import trainspotter

    n = len(log["loss"])
    with tempfile.TemporaryDirectory(prefix="trainspotter-") as tmp:
        path = Path(tmp) / "train_log.csv"
        _write_log(path, log)
        run = trainspotter.load_run(path)
    stride = max(1, math.ceil(n / POLLS))
    polls = sorted({*range(stride, n + 1, stride), n})
    seen: dict[tuple, int] = {}
    lines: dict[tuple, str] = {}

    def poll(rows: int) -> list[Any]:
        found = trainspotter.run_all(_prefix(run, rows))
        for f in found:
            # watch prints a finding again when its step range grows; one line per finding is kept
            key = (f.detector, f.title, f.metric, f.step_start)
            seen.setdefault(key, rows - 1)
            span = str(f.step_start) if f.step_start == f.step_end else f"{f.step_start}-{f.step_end}"
            lines[key] = (f"[{f.severity.upper()}] steps {span} {f.detector} {f.title}: {f.message} "
                          f"(first shown with {seen[key] + 1} rows)")
        return found

    first_mapped: int | None = None
    previous = 0
    for rows in polls:
        found = poll(rows)
        if first_mapped is None and any(ids_for(f.detector, f.title) for f in found):
            first_mapped = rows
            for r in range(previous + 1, rows):  # refine: the first row that shows it
                if any(ids_for(f.detector, f.title) for f in poll(r)):
                    break
        previous = rows
    id_steps: dict[str, int] = {}
    for key, row in seen.items():
        for i in ids_for(key[0], key[1]):
            id_steps[i] = min(id_steps.get(i, row), row)
    return id_steps, [lines[k] for k in sorted(lines, key=lambda k: seen[k])]


class TrainspotterPeer:
    name = NAME
    expressible = frozenset(i for *_, ids in TABLE for i in ids)

    @property
    def version(self) -> str:
        return installed_version("trainspotter")

    def run(self, script: Path, fixed: bool, run_options: list[str], timeout: float = DEFAULT_TIMEOUT
            ) -> PeerResult:
        refused = cannot_run(run_options, "trainspotter")
        if refused is not None:
            return refused
        got = launch(NAME, script, fixed, timeout)
        if got.data is None or got.timed_out:
            return PeerResult([], None, None, got.wall_s, [], got.error)
        records = [o for o in active_records(got.data) if o["log"]["loss"]]
        if not records:
            return PeerResult([], None, None, got.wall_s, [], no_step(got.data))
        id_steps: dict[str, int] = {}
        messages: list[str] = []
        wall = got.wall_s
        for o in records:
            t0 = time.perf_counter()
            try:
                steps, lines = watch(o["log"])
            except Exception as e:  # trainspotter's own failure on this log
                return PeerResult([], None, None, wall, messages, f"trainspotter raised {type(e).__name__}: {e}")
            wall += time.perf_counter() - t0
            prefix = f"[{o['class']} #{o['index']}] " if len(records) > 1 else ""
            messages += [prefix + line for line in lines] or [
                f"{prefix}No pathologies detected ({len(o['log']['loss'])} rows)"]
            for i, s in steps.items():
                id_steps[i] = min(id_steps.get(i, s), s)
        ids = sorted(id_steps)
        return PeerResult(ids, min(id_steps.values()) if id_steps else None, None, wall, messages, "", id_steps)
