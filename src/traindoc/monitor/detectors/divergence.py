"""`divergence`: the loss climbs well above its best level and stays there, or stays non-finite.

What it computes:

* the rolling median of the last ``window`` finite losses (default 50; from the first step on, so
  a run that blows up at step 2 is compared with its initial loss), and ``best``, the lowest
  rolling median seen so far;
* divergence when the rolling median exceeds ``best + rise * |best| + abs_rise * |first loss|``
  (``rise`` = 0.5, i.e. x1.5 for a positive loss; ``abs_rise`` = 0.05 keeps a loss that has
  converged near 0 from "diverging" on noise) for ``sustain`` consecutive steps (default 25).
  Because it is the *median* of 50 steps that must stay that high for 25 more steps, single spikes
  (``loss-spike``) never count; healthy training never sits 50% above its own best median.
  Severity warning (a statistical judgement).
* or the loss (or the gradients) non-finite for ``nonfinite_streak`` consecutive steps (default
  10): severity error, the fact is certain.

The fix follows the kind: a run that stays non-finite has NaN weights now (where the NaN was born
is ``nan-loss``/``nan-forward``'s answer; lowering the LR does not repair weights); a rising loss
gets the LR to try (10x lower than the LR at the start of the rise), warmup and clipping, and the
accumulation caveat when each step accumulates several backward passes.
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import (
    Detector,
    RollingWindow,
    accumulation_note,
    finite,
    make_finding,
    max_lr,
)
from traindoc.monitor.record import StepRecord


class DivergenceDetector(Detector):
    ids = ("divergence",)

    def __init__(self, window: int = 50, rise: float = 0.5, abs_rise: float = 0.05, sustain: int = 25,
                 nonfinite_streak: int = 10):
        self.window = RollingWindow(window)
        self.rise = rise
        self.abs_rise = abs_rise
        self.sustain = sustain
        self.nonfinite_streak = nonfinite_streak
        self._first: float | None = None
        self._best: float | None = None
        self._best_step: int | None = None
        self._above = 0
        self._above_since: int | None = None
        self._bad = 0
        self._bad_since: int | None = None
        self._lr_at_rise: float | None = None
        self._backward_calls = 1
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._fired:
            return []
        self._backward_calls = max(self._backward_calls, record.backward_calls)
        loss = record.loss
        nonfinite = record.nonfinite
        if nonfinite:
            if self._bad == 0:
                self._bad_since = record.step
            self._bad += 1
            if self._bad >= self.nonfinite_streak:
                self._fired = True
                evidence = {"step": self._bad_since, "value": loss, "threshold": self.nonfinite_streak,
                            "window": self._bad, "nonfinite_steps": self._bad,
                            "best_median": self._best, "best_step": self._best_step}
                return [make_finding(
                    "divergence", "error",
                    f"Training diverged: loss/gradients non-finite for {self._bad} consecutive steps "
                    f"from step {self._bad_since}", evidence,
                    f"The run never recovered from the non-finite values of step {self._bad_since}: the weights "
                    "are NaN/Inf now, and no LR change repairs them. Fix where the NaN was born (the nan-loss "
                    "and nan-forward findings name the step, the module and the samples), then restart from a "
                    f"checkpoint taken before step {self._bad_since}.")]
            return []
        self._bad = 0
        if not finite(loss):
            return []
        if self._first is None:
            self._first = loss
        self.window.push(loss)
        m = self.window.median()
        if self._best is None or m < self._best:
            self._best, self._best_step = m, record.step
        limit = self._best + self.rise * abs(self._best) + self.abs_rise * abs(self._first)
        if m > limit:
            if self._above == 0:
                self._above_since = record.step
                self._lr_at_rise = max_lr(record)
            self._above += 1
        else:
            self._above = 0
        if self._above >= self.sustain:
            self._fired = True
            evidence = {"step": self._above_since, "value": m, "threshold": limit,
                        "window": self.window.size, "sustained_steps": self._above,
                        "best_median": self._best, "best_step": self._best_step,
                        "first_loss": self._first, "last_step": record.step}
            lr = self._lr_at_rise
            evidence["lr"] = lr
            try_lr = f" from {lr:.3g} to ~{lr / 10:.2g}" if lr else " (10x)"
            return [make_finding(
                "divergence", "warning",
                f"Loss diverging since step {self._above_since}: rolling median {m:.4g} vs best "
                f"{self._best:.4g}", evidence,
                f"Lower the LR{try_lr}, warm it up over the first few hundred steps and clip gradients near the "
                "90th percentile of their norms (`traindoc tune lr`, `tune warmup` and `tune clip` measure each "
                "on your script); in deep transformers, pre-norm blocks (x + f(Norm(x))) are the stable form."
                + accumulation_note(self._backward_calls))]
        return []
