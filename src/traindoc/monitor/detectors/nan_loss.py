"""`nan-loss`: the first optimizer step with a non-finite loss or non-finite gradients.

What it computes: for each step, whether ``record.loss`` is NaN/Inf or ``record.nonfinite_grads``
is > 0. The first such step is reported (severity ``error``: a NaN is a fact, not a judgement),
with the step, the loss, the number of non-finite gradient elements and the first parameter (model
order) whose gradient went non-finite. The monitor replays the saved batch through the
``nan-forward`` probe to name the module; this detector only says *when*.

Threshold: any non-finite value (threshold 0 non-finite elements; window 1 step).

Why not on every AMP overflow: with a GradScaler, inf/NaN gradients on a few steps are the normal
way the scale is calibrated; the scaler skips those steps. So when ``scaler_scale`` is recorded
(a GradScaler is watched) and the loss itself is finite, non-finite gradients are not reported,
unless they go on for ``amp_skip_streak`` (default 20) consecutive steps, which no healthy scaler
does (it halves the scale on every overflow, so 20 halvings cover a factor of ~1e6).
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, make_finding
from traindoc.monitor.record import StepRecord


class NanLossDetector(Detector):
    ids = ("nan-loss",)

    def __init__(self, amp_skip_streak: int = 20):
        self.amp_skip_streak = amp_skip_streak
        self._amp_streak = 0
        self._first_amp_step: int | None = None
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        if self._fired:
            return []
        loss_bad = record.loss_nonfinite
        grads_bad = record.nonfinite_grads > 0
        if not (loss_bad or grads_bad):
            self._amp_streak = 0
            return []
        if not loss_bad and record.scaler_scale is not None:
            if self._amp_streak == 0:
                self._first_amp_step = record.step
            self._amp_streak += 1
            if self._amp_streak < self.amp_skip_streak:
                return []
        self._fired = True
        what = "loss" if loss_bad else "gradients"
        if loss_bad and grads_bad:
            what = "loss and gradients"
        evidence = {
            "step": record.step,
            "value": record.loss,
            "loss": record.loss,
            "nonfinite_grads": record.nonfinite_grads,
            "count": record.nonfinite_grads,
            "first_nonfinite_param": record.first_nonfinite_param,
            "threshold": 0,
            "window": 1,
        }
        if self._amp_streak >= self.amp_skip_streak:
            evidence["amp_skipped_steps"] = self._amp_streak
            evidence["first_skipped_step"] = self._first_amp_step
            evidence["scaler_scale"] = record.scaler_scale
            evidence["window"] = self._amp_streak
        where = f" (first in {record.first_nonfinite_param})" if record.first_nonfinite_param else ""
        title = f"Non-finite {what} at step {record.step}{where}"
        return [make_finding("nan-loss", "error", title, evidence)]
