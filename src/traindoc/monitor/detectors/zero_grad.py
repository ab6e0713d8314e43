"""`missing-zero-grad`: gradients are not reset between optimizer steps.

Two signals:

* certain (severity error): ``record.grad_was_stale`` is True, i.e. the monitor saw non-zero
  gradients already present before the step's first backward, on ``stale_steps`` = 3 consecutive
  checked steps (one stale step can be a deliberate trick; three in a row is a loop without
  ``zero_grad``). The monitor checks each of the first steps, then every K-th step
  (`traindoc.monitor.recorder.STALE_FIRST_STEPS`); a step it did not check (``None``) neither
  extends nor breaks the streak, so a loop without ``zero_grad`` from the start is proved at step 2.
  Gradient accumulation does not trigger it: the monitor only looks before the *first* backward
  after an optimizer step.
* heuristic (severity warning, only when the monitor cannot tell staleness, i.e.
  ``grad_was_stale`` is None on every step, e.g. the watched parameter never gets a gradient): the global gradient norm grows like the running sum
  it is when never reset, i.e. linearly with the step count from the start of the run. Judged once,
  on the first ``window`` = 20 steps: the norm must rise on at least ``monotone`` = 90% of
  consecutive pairs, end at least ``growth`` = 5x its first value, and the per-step average
  ``g_i / (i + 1)`` must stay within a factor ``linear_spread`` = 2 over the second half of the
  window. Fresh mini-batch gradients go up and down about half the time; an accumulating sum is
  smooth and rises like i; an exploding run (LR too high) rises geometrically, and its per-step
  average is far from constant, so it is left to ``divergence``/``exploding-gradients``.
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, finite, make_finding
from traindoc.monitor.record import StepRecord

_FIX = ("Call `optimizer.zero_grad(set_to_none=True)` once per optimizer step, right after `optimizer.step()` "
        "(with gradient accumulation: after the step, not after each micro-batch).")


class MissingZeroGradDetector(Detector):
    ids = ("missing-zero-grad",)

    def __init__(self, stale_steps: int = 3, window: int = 20, monotone: float = 0.9, growth: float = 5.0,
                 linear_spread: float = 2.0):
        self.stale_steps = stale_steps
        self.window = window
        self.monotone = monotone
        self.growth = growth
        self.linear_spread = linear_spread
        self._norms: list[tuple[int, float]] = []
        self._judged = False
        self._stale = 0
        self._stale_since: int | None = None
        self._stale_known = False
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._fired:
            return []
        if record.grad_was_stale is not None:
            self._stale_known = True
        if record.grad_was_stale:
            if self._stale == 0:
                self._stale_since = record.step
            self._stale += 1
            if self._stale >= self.stale_steps:
                self._fired = True
                evidence = {"step": self._stale_since, "value": self._stale, "threshold": self.stale_steps,
                            "window": self._stale, "stale_steps": self._stale, "last_step": record.step,
                            "grad_norm": record.grad_norm}
                return [make_finding(
                    "missing-zero-grad", "error",
                    f"Gradients are never reset: they were already non-zero before the first backward "
                    f"of {self._stale} checked steps in a row (steps {self._stale_since}-{record.step})", evidence, _FIX)]
        elif record.grad_was_stale is False:
            self._stale = 0
        if self._stale_known or self._judged or not finite(record.grad_norm):
            return []
        self._norms.append((record.step, record.grad_norm))  # type: ignore[arg-type]
        if len(self._norms) < self.window:
            return []
        self._judged = True
        values = [g for _, g in self._norms]
        self._norms = []
        rises = sum(b > a for a, b in zip(values[:-1], values[1:], strict=True)) / (len(values) - 1)
        growth = values[-1] / values[0] if values[0] > 0 else float("inf")
        per_step = [g / (i + 1) for i, g in enumerate(values)][len(values) // 2:]
        spread = max(per_step) / min(per_step) if min(per_step) > 0 else float("inf")
        if rises >= self.monotone and growth >= self.growth and spread <= self.linear_spread:
            self._fired = True
            evidence = {"step": record.step - len(values) + 1, "value": growth, "threshold": self.growth,
                        "window": len(values), "rising_fraction": rises, "monotone_threshold": self.monotone,
                        "grad_norm_start": values[0], "grad_norm_end": values[-1], "last_step": record.step,
                        "per_step_spread": spread}
            return [make_finding(
                "missing-zero-grad", "warning",
                f"Gradient norm keeps growing like an accumulating sum: x{growth:.3g} over {len(values)} steps, "
                f"rising on {rises:.0%} of them", evidence, _FIX)]
        return []
