"""``tune_lr``: a learning rate validated by short real runs, with the LR where training turns unstable.

Algorithm.

1. **Bracket** (one trial, the LR range test): the LR of group 0 rises exponentially from
   `RAMP_FROM` to `RAMP_TO` over ``max_steps`` steps (at least `RAMP_STEPS`: a coarser ramp skips
   whole decades); the trial stops when its smoothed loss has
   diverged (`traindoc.experiments.measures.unstable_at`). The LR at the minimum of the smoothed loss,
   ``lr_min_loss``, is where the loss still fell fastest *while the LR kept rising*: an upper end,
   not an answer (for transformers it lands near 1e-3 where the best fine-tuning LR is ~1e-5, the
   reason Hugging Face declined a plain LR finder). The bracket spans `BRACKET_DECADES` decades below it.
   A ramp whose smoothed loss never fell by `RAMP_GAIN` of its first value shows nothing: the bracket
   is then the optimizer's own LR, 2 decades below to 1 above.
2. **Short real runs**: ``trials`` LRs log-spaced over the bracket, each trained for ``max_steps``
   steps at a constant LR from the same initial state, with ``seeds`` seeds (dropout and batch order);
   then two more LRs half a grid step either side of the best (or a grid step beyond the bracket when
   the best is at its end). A run's score is `traindoc.experiments.measures.final_loss`; an LR's is
   the mean over seeds.
3. **Answer**: ``lr*`` is the LR with the best score. ``lr_range`` is the contiguous run of tried
   LRs around it whose score is within the noise of the best: half the spread across seeds at lr*,
   or 1% of its score if larger. ``unstable_lr`` is the smallest tried LR above lr* at which a seed
   became unstable (`traindoc.experiments.measures.unstable_at`: non-finite, or the smoothed loss at
   twice its best), else the LR where the ramp diverged.
4. **Horizon**: the best LR can fall as training gets longer (Bjorck et al., ICLR 2025). lr* is
   also read at 1/4 and 1/2 of the steps (the prefixes of the same constant-LR runs are shorter
   runs): ``best_lr_by_steps``, and ``horizon_exponent``, the slope of log lr* against log steps.
   The answer is **not** extrapolated with it: on the benchmark's three tasks (benchmarks/
   lr_benchmark.py) the slope measured over 25..100 steps was noisy or did not continue to 300 steps,
   and shifting by it moved the answer 2-4x away from the grid-best, while lr* itself was within 2x
   and 0.3% of the grid-best's final loss. ``suggested_lr`` is lr*; ``horizon_note`` says in words
   what the trend means for the planned length (a falling trend: prefer the low end of the range,
   or tune with longer trials).

Findings: the user's LR against the answer: at or above ``unstable_lr``, or more than
`OUTSIDE` x above ``lr_range``: ``lr-too-high``; more than `OUTSIDE` x below it: ``lr-too-low``
(warnings: measured on copies with a constant LR, without the user's schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from traindoc.experiments.jobs import run_trials
from traindoc.experiments.measures import final_loss, smoothed, unstable_at
from traindoc.experiments.result import ExperimentResult
from traindoc.experiments.trial import DIVERGE, Curve, Plan, Setting
from traindoc.findings import Finding

RAMP_FROM, RAMP_TO = 1e-7, 10.0
RAMP_STEPS = 100
RAMP_GAIN = 0.05
BRACKET_DECADES = 2.0
OUTSIDE = 3.0


def _geomspace(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [hi]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def _unstable(curve: Curve) -> bool:
    """The run went non-finite or its smoothed loss rose to twice its best (`unstable_at`); a loss that
    merely did not fall (an LR too low) is not unstable."""
    return unstable_at(curve.losses) is not None


def tune_lr(model: nn.Module, batches: Any, *, optimizer: Any = None,
            make_optimizer: Callable[[nn.Module], Any] | None = None, forward: Any = None, loss_fn: Any = None,
            max_steps: int = 100, trials: int = 7, seeds: int = 2, planned_steps: int | None = None,
            jobs: int = 1, backend: str = "pool", progress: Callable[[int, int], None] | None = None,
            ) -> ExperimentResult:
    """Find a learning rate by short real runs (see the module docstring); the user's model and optimizer
    are not touched (trials train copies).

    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(256, 8); y = (x[:, 0] > 0).long()
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    >>> r = tune_lr(model, batches, optimizer=opt, loss_fn=lambda out, b: torch.nn.functional.cross_entropy(out, b[1]),
    ...             max_steps=40, trials=5, seeds=1)
    >>> r["lr_range"][0] <= r["short_run_lr"] <= r["lr_range"][1]
    True
    """
    max_steps = max(8, int(max_steps))
    plan = Plan(model, batches, optimizer=optimizer, make_optimizer=make_optimizer, forward=forward,
                loss_fn=loss_fn, steps=max_steps)
    return lr_experiment(plan, max_steps=max_steps, trials=trials, seeds=seeds, planned_steps=planned_steps,
                         jobs=jobs, backend=backend, progress=progress)


def lr_experiment(plan: Any, *, max_steps: int, trials: int = 7, seeds: int = 2, planned_steps: int | None = None,
                  jobs: int = 1, backend: str = "pool", progress: Callable[[int, int], None] | None = None,
                  ) -> ExperimentResult:
    """`tune_lr` on a plan: copies of a model (`traindoc.experiments.trial.Plan`) or trial runs of a
    script (`traindoc.experiments.script_plan.ScriptPlan`)."""
    total = 1 + (trials + 2) * seeds
    done = [0]

    def tick(_: int, __: int) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    ramp = run_trials(plan, [Setting(steps=max(RAMP_STEPS, max_steps), lr=RAMP_FROM, lr_end=RAMP_TO,
                                     stop_on_divergence=True)], progress=tick)[0]
    stop = unstable_at(ramp.losses, DIVERGE)
    sm = smoothed(ramp.losses[:stop] if stop is not None else ramp.losses)
    finite = [(v, i) for i, v in enumerate(sm) if math.isfinite(v)]
    i_min = min(finite)[1] if finite else 0
    lr_min_loss = ramp.lrs[i_min]
    lr_diverge = ramp.lrs[stop] if stop is not None else None
    improved = bool(finite) and sm[i_min] < (1 - RAMP_GAIN) * sm[0]
    if improved:
        grid = _geomspace(lr_min_loss / 10 ** BRACKET_DECADES, lr_min_loss, max(2, trials))
    else:  # the ramp never brought the loss down: bracket the optimizer's own LR instead
        base = plan.base_lr if plan.base_lr > 0 else 1e-3
        grid = _geomspace(base / 10 ** BRACKET_DECADES, base * 10, max(2, trials))
    ratio = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1))

    runs: dict[float, list[Curve]] = {}

    def measure(lrs: list[float]) -> None:
        settings = [Setting(steps=max_steps, lr=lr, seed=s) for lr in lrs for s in range(seeds)]
        curves = run_trials(plan, settings, jobs=jobs, backend=backend, progress=tick)
        for k, lr in enumerate(lrs):
            runs[lr] = curves[k * seeds:(k + 1) * seeds]

    def score(lr: float, upto: int | None = None) -> float:
        values = [final_loss(c.losses, upto) for c in runs[lr]]
        return sum(values) / len(values)

    measure(grid)
    best = min(grid, key=score)
    if best == grid[0]:
        extra = [best / ratio, best / math.sqrt(ratio)]
    elif best == grid[-1]:
        extra = [best * math.sqrt(ratio), best * ratio]
    else:
        extra = [best / math.sqrt(ratio), best * math.sqrt(ratio)]
    measure(extra)
    tried = sorted(runs)
    scores = {lr: score(lr) for lr in tried}
    lr_star = min(tried, key=lambda lr: scores[lr])
    finals = [final_loss(c.losses) for c in runs[lr_star]]
    spread = (max(finals) - min(finals)) / 2 if all(math.isfinite(v) for v in finals) else 0.0
    tolerance = max(spread, 0.01 * abs(scores[lr_star]))
    i = tried.index(lr_star)
    lo = hi = i
    while lo > 0 and scores[tried[lo - 1]] <= scores[lr_star] + tolerance:
        lo -= 1
    while hi + 1 < len(tried) and scores[tried[hi + 1]] <= scores[lr_star] + tolerance:
        hi += 1
    lr_range = [tried[lo], tried[hi]]
    unstable = [lr for lr in tried if lr > lr_star and any(_unstable(c) for c in runs[lr])]
    unstable_lr = min(unstable) if unstable else lr_diverge

    horizons = sorted({max(4, max_steps // 4), max(4, max_steps // 2), max_steps})
    best_at = {h: min(tried, key=lambda lr, h=h: score(lr, h)) for h in horizons}
    alpha = _slope([math.log(h) for h in horizons], [math.log(best_at[h]) for h in horizons])
    planned = int(planned_steps) if planned_steps else max_steps
    note = _horizon_note(best_at, planned, max_steps, lr_range)

    result: dict[str, Any] = {
        "suggested_lr": lr_star, "lr_range": lr_range, "unstable_lr": unstable_lr, "short_run_lr": lr_star,
        "steps_per_trial": max_steps, "planned_steps": planned, "horizon_exponent": alpha,
        "best_lr_by_steps": {str(h): best_at[h] for h in horizons}, "horizon_note": note, "seeds": seeds,
        "bracket": {"ramp_min_loss_lr": lr_min_loss, "ramp_diverged_lr": lr_diverge, "ramp_brought_loss_down": improved,
                    "low": grid[0], "high": grid[-1]},
        "scores": {f"{lr:.3g}": scores[lr] for lr in tried}, "seed_spread": spread,
    }
    curves = {"ramp": ramp, **{f"lr={lr:.3g}": runs[lr][0] for lr in tried}}
    user_lr = plan.base_lr
    findings = _judge(user_lr, result)
    info = {"trials": total, "training_steps": ramp.steps + sum(c.steps for cs in runs.values() for c in cs),
            "user_lr": user_lr}
    return ExperimentResult("lr", result, findings, curves, info)


def _horizon_note(best_at: dict[int, float], planned: int, steps: int, lr_range: list[float]) -> str:
    """What the short runs say about a longer run, in words (see the module docstring, step 4)."""
    hs = sorted(best_at)
    trend = " -> ".join(f"{best_at[h]:.2g} at {h}" for h in hs)
    if planned <= steps:
        return f"the best LR by steps: {trend}; the short runs are as long as the planned run"
    falling = all(best_at[a] >= best_at[b] for a, b in zip(hs, hs[1:], strict=False)) and best_at[hs[0]] > best_at[hs[-1]]
    if falling:
        return (f"the best LR fell as the short runs got longer ({trend} steps); the planned {planned} steps are "
                f"{planned / steps:.0f}x longer, so the best LR for them may be lower still: if the full run turns "
                f"unstable, use the low end of {lr_range[0]:.2g}..{lr_range[1]:.2g}, or tune with --max-steps closer "
                f"to {planned}")
    return (f"the best LR did not fall as the short runs got longer ({trend} steps); on the tasks measured, such "
            f"an answer held for runs 3x longer (benchmarks/lr_benchmark.py)")


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var > 0 else 0.0


def _judge(user_lr: float, result: dict[str, Any]) -> list[Finding]:
    low, high = result["lr_range"]
    unstable, suggested, steps = result["unstable_lr"], result["suggested_lr"], result["steps_per_trial"]
    evidence = {"lr": user_lr, "lr_range": [low, high], "suggested_lr": suggested, "unstable_lr": unstable,
                "short_run_lr": result["short_run_lr"], "steps_per_trial": steps,
                "planned_steps": result["planned_steps"], "scores": result["scores"]}
    horizon = f" after {steps} steps"
    fix = (f"Set the learning rate to about {suggested:.2g}: short runs of this model found {low:.2g}..{high:.2g} "
           f"best{horizon}. Add a warmup if the run is long (`traindoc tune warmup`).")
    if user_lr <= 0:
        return []
    if unstable is not None and user_lr >= unstable:
        return [Finding("lr-too-high", "warning",
                        f"lr={user_lr:.3g} is at or above {unstable:.3g}, where short runs of this model turned "
                        "unstable", evidence, fix)]
    if user_lr > OUTSIDE * high:
        return [Finding("lr-too-high", "warning",
                        f"lr={user_lr:.3g} is {user_lr / high:.1f}x above {low:.2g}..{high:.2g}, the best range"
                        f"{horizon} that short runs of this model found", evidence, fix)]
    if user_lr < low / OUTSIDE:
        return [Finding("lr-too-low", "warning",
                        f"lr={user_lr:.3g} is {low / user_lr:.1f}x below {low:.2g}..{high:.2g}, the best range"
                        f"{horizon} that short runs of this model found", evidence, fix)]
    return []
