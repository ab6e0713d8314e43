"""`aggressive-clipping`: most steps are clipped, so the clipping is a disguised LR decrease.

What it computes: over the last ``window`` = 100 steps on which the user clipped
(``record.clipped`` not None), the fraction of steps with ``grad_norm > clip_threshold``, and the
90th percentile of the pre-clip gradient norms. It fires (warning) when the window is full and the
fraction exceeds ``max_fraction`` = 0.5 (the Deep Learning Tuning Playbook: clip at the ~90th
percentile of the gradient norms; if more than 50% of the steps are clipped, lower the LR
instead). Runs with fewer than ``window`` but at least ``min_steps`` = 20 clipped-or-not steps are
judged at ``finalize`` on all their steps. A full window (not the first 20 steps) keeps the large
gradients of the first few steps of a healthy run from counting as a habit.

Evidence: the fraction, the threshold used, the window, the p90 of the pre-clip norms (the
suggested clip threshold) and the median norm.
"""

from __future__ import annotations

from collections import deque

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, finite, make_finding, median, quantile
from traindoc.monitor.record import RunEnd, StepRecord


class AggressiveClippingDetector(Detector):
    ids = ("aggressive-clipping",)

    def __init__(self, window: int = 100, max_fraction: float = 0.5, min_steps: int = 20):
        self.max_fraction = max_fraction
        self.min_steps = min_steps
        self._window: deque[tuple[int, bool, float | None, float | None]] = deque(maxlen=window)
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._fired or record.clipped is None:
            return []
        norm = record.grad_norm if finite(record.grad_norm) else None
        self._window.append((record.step, bool(record.clipped), norm, record.clip_threshold))
        if len(self._window) == self._window.maxlen:
            return self._judge(record.step)
        return []

    def finalize(self, end: RunEnd | None = None) -> list[Finding]:
        if self._fired or len(self._window) < self.min_steps:
            return []
        return self._judge(self._window[-1][0])

    def _judge(self, step: int) -> list[Finding]:
        clipped = [c for _, c, _, _ in self._window]
        fraction = sum(clipped) / len(clipped)
        if fraction <= self.max_fraction:
            return []
        self._fired = True
        norms = [n for _, _, n, _ in self._window if n is not None]
        p90 = quantile(norms, 0.9) if norms else None
        threshold = self._window[-1][3]
        evidence = {"step": step, "value": fraction, "threshold": self.max_fraction,
                    "window": len(clipped), "first_step": self._window[0][0], "clipped_fraction": fraction,
                    "clip_threshold": threshold, "grad_norm_p90": p90,
                    "grad_norm_median": median(norms) if norms else None, "suggested_clip_threshold": p90}
        advice = "Lower the learning rate instead of clipping this often"
        if p90 is not None:
            advice += f"; if you keep clipping, use max_norm ~ {p90:.3g} (the p90 of the pre-clip norms)"
        thr = f" at max_norm={threshold:.3g}" if finite(threshold) else ""
        return [make_finding(
            "aggressive-clipping", "warning",
            f"{fraction:.0%} of the last {len(clipped)} steps were clipped{thr}", evidence, advice + ".")]
