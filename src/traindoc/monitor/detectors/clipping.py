"""`aggressive-clipping`: most steps are clipped hard, so the clipping is a disguised LR decrease.

What it counts: a step is *clipped* when clipping shrinks its gradient materially, i.e. its pre-clip
norm exceeds ``margin`` = 1.25 x ``max_norm`` (the update is cut by 20% or more). A norm of 1.03 x
``max_norm`` is clipped by torch, but the update changes by 3%, less than the step-to-step spread of
the gradient norm itself: that is not a habit worth a warning (a Hugging Face run whose median norm
sits at ~1.0 against the default ``max_norm=1`` is healthy).

What it computes: the first ``skip`` = 10 steps on which the user clipped never count (the
gradients of an untrained model are large by nature); after them, over the last ``window`` = 100
such steps, the fraction of clipped steps and the 90th percentile of the pre-clip gradient norms.
It fires (warning) when the window is full and the fraction exceeds ``max_fraction`` = 0.5 (the
Deep Learning Tuning Playbook: clip at the ~90th percentile of the gradient norms; if more than
half of the steps are clipped, lower the LR instead). A run too short to fill the window is judged
at close on its steps after the first fifth of the run (a warmup is usually a fraction of a short
run) and after ``skip``, when at least ``min_steps`` = 20 remain.

Evidence: the fraction, the threshold used, the margin, the window, the p90 of the pre-clip norms
(the suggested clip threshold), the median norm and the median shrink factor of the clipped steps.
"""

from __future__ import annotations

from collections import deque

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, finite, make_finding, median, quantile
from traindoc.monitor.record import RunEnd, StepRecord


class AggressiveClippingDetector(Detector):
    ids = ("aggressive-clipping",)

    def __init__(self, window: int = 100, max_fraction: float = 0.5, min_steps: int = 20, margin: float = 1.25,
                 skip: int = 10):
        self.max_fraction = max_fraction
        self.min_steps = min_steps
        self.margin = margin
        self.skip = skip
        self._window: deque[tuple[int, bool, float | None, float | None]] = deque(maxlen=window)
        self._hard = 0  # clipped steps in the window
        self._seen = 0
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._fired or record.clipped is None:
            return []
        self._seen += 1
        if self._seen <= self.skip:
            return []
        norm = record.grad_norm if finite(record.grad_norm) else None
        threshold = record.clip_threshold
        hard = norm is not None and finite(threshold) and norm > self.margin * threshold  # type: ignore[operator]
        if len(self._window) == self._window.maxlen:
            self._hard -= self._window[0][1]
        self._window.append((record.step, hard, norm, threshold))
        self._hard += hard
        if len(self._window) == self._window.maxlen and self._hard > self.max_fraction * len(self._window):
            return self._judge(list(self._window), record.step)
        return []

    def finalize(self, end: RunEnd | None = None) -> list[Finding]:
        if self._fired:
            return []
        warmup = max(0, self._seen // 5 - self.skip)  # the first fifth of the run, beyond `skip`
        steps = list(self._window)[warmup:]
        if len(steps) < self.min_steps:
            return []
        return self._judge(steps, steps[-1][0])

    def _judge(self, steps: list[tuple[int, bool, float | None, float | None]], step: int) -> list[Finding]:
        clipped = [c for _, c, _, _ in steps]
        fraction = sum(clipped) / len(clipped)
        if fraction <= self.max_fraction:
            return []
        self._fired = True
        norms = [n for _, _, n, _ in steps if n is not None]
        p90 = quantile(norms, 0.9) if norms else None
        threshold = steps[-1][3]
        shrink = [t / n for _, c, n, t in steps if c and n and t]  # type: ignore[operator]
        factor = median(shrink) if shrink else None
        evidence = {"step": step, "value": fraction, "threshold": self.max_fraction, "margin": self.margin,
                    "window": len(clipped), "first_step": steps[0][0], "clipped_fraction": fraction,
                    "clip_threshold": threshold, "grad_norm_p90": p90,
                    "grad_norm_median": median(norms) if norms else None, "suggested_clip_threshold": p90,
                    "median_shrink_factor": factor}
        thr = f" at max_norm={threshold:.3g}" if finite(threshold) else ""
        cut = f" (the update cut to ~{factor:.0%} of the gradient's)" if factor is not None else ""
        advice = (f"Clipping shrinks most updates{cut}, so it acts as a lower LR you did not choose. Lower "
                  "the learning rate instead")
        if factor is not None:
            advice += f" (to about {factor:.2g}x its value, which is what clipping does now)"
        if p90 is not None:
            advice += (f", and keep clipping for rare spikes only: max_norm ~ {p90:.3g}, the 90th percentile of "
                       "the pre-clip norms")
        return [make_finding(
            "aggressive-clipping", "warning",
            f"{fraction:.0%} of the last {len(clipped)} steps were clipped by more than "
            f"{1 - 1 / self.margin:.0%}{thr}", evidence, advice + ".")]
