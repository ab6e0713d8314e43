"""``instability`` and ``tune_warmup``: the Tuning Playbook's stability procedures.

``instability`` (the Playbook: "train at 2 x lr* and look at where it breaks"). A copy trains for
``steps`` steps (the Playbook's ~500, scaled to the budget) at a constant LR, ``lr`` (default: 2 x
the user's own), every step's loss kept. The run is unstable at `traindoc.experiments.measures.
unstable_at` (non-finite, or the smoothed loss above 2x its best). Unstable within the first
`EARLY` of the steps (and at least the first 10): **early** instability, which warmup cures;
later: **sudden** instability mid-training, which warmup does not address (clipping, a lower peak
LR, or the data at that step). Findings: ``divergence`` (warning) with the kind, the step and the
curve's numbers; none when the run is stable.

``tune_warmup``. At an LR that is unstable without warmup, warmups over orders of magnitude are tried:
``W_max`` = `WARMUP_CAP` of the planned steps, and ``W_max / 1000, / 100, / 10, W_max`` (at least 1
step, each distinct), plus no warmup; each trial runs its warmup and then ``2 x W`` more steps (the
Playbook's design; at least `MIN_STEPS`, at most ``max_steps``). Stable: never unstable and ending
below its first loss. ``warmup_steps`` is the shortest stable warmup (0 when no warmup is needed,
None when none is stable). Over `LONG_WARMUP` of the planned steps, the advice is to lengthen the run
too. Finding: ``divergence`` (warning) when no warmup is stable at this LR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from traindoc.experiments.jobs import run_trials
from traindoc.experiments.measures import final_loss, unstable_at
from traindoc.experiments.result import ExperimentResult
from traindoc.experiments.trial import Curve, Plan, Setting
from traindoc.findings import Finding

EARLY = 0.1
WARMUP_CAP = 0.1
LONG_WARMUP = 0.05
MIN_STEPS = 30


def _stable(curve: Curve) -> bool:
    return unstable_at(curve.losses) is None and final_loss(curve.losses) < curve.losses[0]


def instability(model: nn.Module, batches: Any, *, optimizer: Any = None,
                make_optimizer: Callable[[nn.Module], Any] | None = None, forward: Any = None, loss_fn: Any = None,
                lr: float | None = None, steps: int = 500, seed: int = 0) -> ExperimentResult:
    """Train a copy at ``lr`` (default 2 x the optimizer's) and say where it becomes unstable."""
    steps = max(MIN_STEPS, int(steps))
    plan = Plan(model, batches, optimizer=optimizer, make_optimizer=make_optimizer, forward=forward,
                loss_fn=loss_fn, steps=steps)
    return instability_experiment(plan, lr=lr, steps=steps, seed=seed)


def instability_experiment(plan: Any, *, lr: float | None, steps: int, seed: int = 0) -> ExperimentResult:
    """`instability` on a plan (copies of a model, or trial runs of a script)."""
    steps = max(MIN_STEPS, int(steps))
    lr = float(lr) if lr is not None else 2 * plan.base_lr
    curve = plan.run(Setting(steps=steps, lr=lr, seed=seed))
    at = unstable_at(curve.losses)
    kind = None if at is None else ("early" if at < max(10, EARLY * steps) else "sudden")
    result = {"lr": lr, "steps": steps, "unstable": at is not None, "unstable_at_step": at, "kind": kind,
              "first_loss": curve.losses[0], "final_loss": final_loss(curve.losses)}
    findings = []
    if kind == "early":
        findings.append(Finding(
            "divergence", "warning",
            f"At lr={lr:.3g} training is unstable from its first steps (step {at} of {steps}): warmup would help",
            dict(result), "Add a linear warmup before this LR (`traindoc tune warmup` finds how long), or lower the LR."))
    elif kind == "sudden":
        findings.append(Finding(
            "divergence", "warning",
            f"At lr={lr:.3g} training runs stably, then becomes unstable at step {at} of {steps}",
            dict(result), "Clip gradients (`traindoc tune clip` gives a threshold) or lower the peak LR; warmup does not "
                          "address instability that appears mid-training."))
    return ExperimentResult("instability", result, findings, {f"lr={lr:.3g}": curve}, {"training_steps": curve.steps})


def warmup_candidates(planned_steps: int) -> list[int]:
    """0, then ``W_max / 1000, / 100, / 10, W_max`` with ``W_max`` = 10% of the planned steps.

    >>> warmup_candidates(10_000)
    [0, 1, 10, 100, 1000]
    """
    w_max = max(1, round(WARMUP_CAP * planned_steps))
    return sorted({0} | {max(1, round(w_max / 10 ** k)) for k in (3, 2, 1, 0)})


def tune_warmup(model: nn.Module, batches: Any, *, planned_steps: int, optimizer: Any = None,
                make_optimizer: Callable[[nn.Module], Any] | None = None, forward: Any = None, loss_fn: Any = None,
                lr: float | None = None, max_steps: int | None = None, seed: int = 0, jobs: int = 1,
                backend: str = "pool", progress: Callable[[int, int], None] | None = None) -> ExperimentResult:
    """The shortest warmup that makes ``lr`` (default: the optimizer's) stable (see the module docstring)."""
    lengths = warmup_lengths(int(planned_steps), max_steps)
    plan = Plan(model, batches, optimizer=optimizer, make_optimizer=make_optimizer, forward=forward,
                loss_fn=loss_fn, steps=max(lengths.values()))
    return warmup_experiment(plan, planned_steps=planned_steps, lr=lr, max_steps=max_steps, seed=seed, jobs=jobs,
                             backend=backend, progress=progress)


def warmup_lengths(planned_steps: int, max_steps: int | None) -> dict[int, int]:
    """Each candidate warmup and the steps its trial runs: ``3 x W`` (at least `MIN_STEPS`, at most
    ``max_steps``); no warmup runs as long as the shortest warmup's trial."""
    candidates = warmup_candidates(planned_steps)
    cap = int(max_steps) if max_steps else 3 * candidates[-1]
    lengths = {w: min(cap, max(MIN_STEPS, 3 * w)) for w in candidates}
    lengths[0] = min(cap, max(MIN_STEPS, 3 * candidates[1]))
    return lengths


def warmup_experiment(plan: Any, *, planned_steps: int, lr: float | None = None, max_steps: int | None = None,
                      seed: int = 0, jobs: int = 1, backend: str = "pool",
                      progress: Callable[[int, int], None] | None = None) -> ExperimentResult:
    """`tune_warmup` on a plan (copies of a model, or trial runs of a script)."""
    lengths = warmup_lengths(int(planned_steps), max_steps)
    candidates = sorted(lengths)
    lr = float(lr) if lr is not None else plan.base_lr
    settings = [Setting(steps=lengths[w], lr=lr, warmup=w, seed=seed) for w in candidates]
    curves = run_trials(plan, settings, jobs=jobs, backend=backend, progress=progress)
    stable = {w: _stable(c) for w, c in zip(candidates, curves, strict=True)}
    warmup_steps = next((w for w in candidates if stable[w]), None)
    result = {"warmup_steps": warmup_steps, "lr": lr, "planned_steps": int(planned_steps), "tried": candidates,
              "stable": {str(w): stable[w] for w in candidates},
              "final_loss": {str(w): final_loss(c.losses) for w, c in zip(candidates, curves, strict=True)},
              "lengthen_training": bool(warmup_steps and warmup_steps > LONG_WARMUP * planned_steps)}
    findings = []
    if warmup_steps is None:
        findings.append(Finding(
            "divergence", "warning",
            f"At lr={lr:.3g} no warmup up to {candidates[-1]} steps (10% of {planned_steps}) keeps training stable",
            dict(result), "Lower the peak LR (`traindoc tune lr`); warmup alone does not make this LR trainable."))
    curves_by = {f"warmup={w}": c for w, c in zip(candidates, curves, strict=True)}
    info = {"training_steps": sum(c.steps for c in curves)}
    if result["lengthen_training"]:
        info["note"] = (f"the warmup needed ({warmup_steps} steps) is more than 5% of the planned {planned_steps}: "
                        "lengthen training so that the warmup does not eat the budget")
    return ExperimentResult("warmup", result, findings, curves_by, info)
