"""Numbers read off a trial's loss curve; every experiment judges with these, so each rule exists once.

* `final_loss`: the mean of the last `FINAL_WINDOW` of the steps (at least 3), infinite when any
  loss of the run was non-finite: the number a trial is scored by.
* `smoothed`: the bias-corrected exponential moving average of the losses (`SMOOTHING`).
* `unstable_at`: the first step (from step 5) whose loss is non-finite or whose smoothed loss
  exceeds ``factor`` times the best smoothed loss so far: where a run became unstable (`UNSTABLE`),
  or where an LR ramp has diverged (factor 4). A warmup's steps are judged like the others.
* `oscillating`: the loss goes up and down more than it goes down: over the second half, at least
  `OSCILLATION_FLIPS` of the step-to-step changes flip sign and their mean size is more than
  `OSCILLATION_SIZE` of the mean loss.
"""

from __future__ import annotations

import math

SMOOTHING = 0.9
FINAL_WINDOW = 0.1
UNSTABLE = 2.0
OSCILLATION_FLIPS = 0.4
OSCILLATION_SIZE = 0.05


def final_loss(losses: list[float], upto: int | None = None) -> float:
    """The score of a run (or of its first ``upto`` steps).

    >>> final_loss([4.0, 3.0, 2.0, 1.0, 1.0, 1.0]), final_loss([4.0, float("nan"), 1.0])
    (1.0, inf)
    """
    values = losses[:upto] if upto is not None else losses
    if not values or any(not math.isfinite(v) for v in values):
        return math.inf
    n = max(3, round(FINAL_WINDOW * len(values)))
    tail = values[-n:]
    return sum(tail) / len(tail)


def smoothed(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The bias-corrected exponential moving average of the losses (NaN stays NaN from there on).

    >>> [round(v, 3) for v in smoothed([1.0, 1.0, 4.0])]
    [1.0, 1.0, 2.107]
    """
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def unstable_at(losses: list[float], factor: float = UNSTABLE) -> int | None:
    """The step where the run became unstable, or None (see the module docstring).

    >>> unstable_at([2.0] * 10 + [9.0] * 5), unstable_at([2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4])
    (12, None)
    """
    best = math.inf
    for i, v in enumerate(smoothed(losses)):
        if not math.isfinite(v):
            return i
        if i >= 5 and v > factor * best:
            return i
        best = min(best, v)
    return None


def oscillating(losses: list[float]) -> bool:
    half = [v for v in losses[len(losses) // 2:] if math.isfinite(v)]
    if len(half) < 6:
        return False
    diffs = [b - a for a, b in zip(half, half[1:], strict=False)]
    flips = sum((a > 0) != (b > 0) for a, b in zip(diffs, diffs[1:], strict=False)) / max(1, len(diffs) - 1)
    size = sum(abs(d) for d in diffs) / len(diffs)
    mean = sum(half) / len(half)
    return flips >= OSCILLATION_FLIPS and size > OSCILLATION_SIZE * abs(mean)
