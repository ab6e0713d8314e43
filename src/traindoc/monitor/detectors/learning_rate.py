"""`lr-too-low` and `lr-too-high`: judged from the update/weight ratios and the loss's response.

Rule of thumb (Karpathy, CS231n): a healthy step changes each layer's weights by about 1e-3 of
their norm. On every sample of ``layer_update_ratio`` (every ``every`` steps) the detector takes the
median ratio across layers that moved at all (exactly-zero ratios are stalls, ``stalled-layers``'
business) and keeps the rolling median of the last ``loss_window`` = 50 finite losses (and its best
value once the window is full).

* ``lr-too-low`` (warning): median ratio < ``low_ratio`` = 1e-5 on ``min_samples`` = 5 consecutive
  samples spanning >= ``min_steps`` = 50 steps, while the LR is near its peak (largest group LR
  >= ``near_peak`` = 0.5 x the largest seen: an annealed or warming-up LR is meant to be small) and
  the loss is not falling: its rolling median improved by less than ``min_progress`` = 1% over the
  streak. Tiny steps *and* no progress: the optimiser is crawling. Not reported once the run has
  shown large steps (median ratio > 1e-2 at some sample) or ``lr-too-high`` fired: tiny ratios
  after large ones mean the weights have inflated or the units died, not that the LR is low.
* ``lr-too-high`` (warning), any of:

  - median ratio > ``high_ratio`` = 1e-1 on ``high_samples`` = 3 consecutive samples spanning
    >= ``high_min_steps`` = 5 steps (each step rewrites 10% of every weight: no optimiser settles
    like that);
  - median ratio > ``rising_ratio`` = 1e-2 on 3 consecutive samples while the loss's rolling median
    is more than ``rising`` = 50% above its best (large steps and the loss going the wrong way; a
    smaller margin would mistake the noise of tiny mini-batches for a rise);
  - the median over layers of ``weight norm / its first sampled value`` exceeds ``inflation`` = 10
    after large steps (median ratio > 1e-2 at some sample). An Adam-like optimiser moves every
    weight by ~lr per step, so at a far too high LR the weights random-walk to many times their
    initial norm, after which the *ratio* looks small again; healthy training changes weight norms
    by a small factor. Not when the loss has fallen below ``learned`` = 10% of its value at the first
    step, before any update (the median of the last 5 finite losses against the first): weights that grow while the loss falls
    tenfold are being fitted to targets larger than their initial scale (a regression onto values
    ~10), not random-walking.

Each id is reported once, with the step where the streak began, the ratios, the thresholds and the
loss medians. The fix names the LR to try: for ``lr-too-low``, the current one scaled by how far
the median ratio is from ~1e-3; for ``lr-too-high``, 10x lower first, then down towards that scale.
When the steps accumulate several backward passes, an ``lr-too-high`` fix says first that a summed
(not averaged) micro-batch loss inflates the gradient the same way: dividing it is the fix then.
"""

from __future__ import annotations

from collections import deque

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import (
    Detector,
    RollingWindow,
    accumulation_note,
    finite,
    make_finding,
    max_lr,
    median,
)
from traindoc.monitor.record import StepRecord


class LearningRateDetector(Detector):
    ids = ("lr-too-low", "lr-too-high")

    def __init__(self, low_ratio: float = 1e-5, high_ratio: float = 1e-1, rising_ratio: float = 1e-2,
                 rising: float = 0.5, min_samples: int = 5, min_steps: int = 50, high_samples: int = 3,
                 high_min_steps: int = 5, min_progress: float = 0.01, near_peak: float = 0.5,
                 loss_window: int = 50, inflation: float = 10.0, learned: float = 0.1):
        self.low_ratio = low_ratio
        self.high_ratio = high_ratio
        self.rising_ratio = rising_ratio
        self.rising = rising
        self.min_samples = min_samples
        self.min_steps = min_steps
        self.high_samples = high_samples
        self.high_min_steps = high_min_steps
        self.min_progress = min_progress
        self.near_peak = near_peak
        self.loss = RollingWindow(loss_window)
        self.inflation = inflation
        self.learned = learned
        self._first_loss: float | None = None
        self._recent_losses: deque[float] = deque(maxlen=5)
        self._first_weight: dict[str, float] = {}
        self._seen_large = False
        self._max_ratio = 0.0
        self._best_loss: float | None = None
        self._lr_max = 0.0
        self._low: list[tuple[int, float, float | None]] = []  # (step, ratio, loss median)
        self._high: list[tuple[int, float, float | None]] = []
        self._fired: set[str] = set()
        self._backward_calls = 1

    def update(self, record: StepRecord) -> list[Finding]:
        self._backward_calls = max(self._backward_calls, record.backward_calls)
        lr = max_lr(record)
        if lr is not None:
            self._lr_max = max(self._lr_max, lr)
        loss_median = None
        if finite(record.loss):
            self.loss.push(record.loss)  # type: ignore[arg-type]
            if self._first_loss is None:
                self._first_loss = record.loss
            self._recent_losses.append(record.loss)  # type: ignore[arg-type]
        if len(self.loss):
            loss_median = self.loss.median()
            if self.loss.full and (self._best_loss is None or loss_median < self._best_loss):
                self._best_loss = loss_median
        ratios = [r for r in (record.layer_update_ratio or {}).values() if finite(r) and r > 0]
        if not ratios:
            return []
        ratio = median(ratios)
        self._max_ratio = max(self._max_ratio, ratio)
        self._seen_large = self._seen_large or ratio > self.rising_ratio
        found: list[Finding] = []
        if "lr-too-high" not in self._fired and record.layer_weight_norm:
            found += self._judge_inflation(record, lr)
        near_peak = lr is None or lr >= self.near_peak * self._lr_max
        if ratio < self.low_ratio and near_peak:
            self._low.append((record.step, ratio, loss_median))
            if len(self._low) > 40:  # O(1) memory: the streak's start and its recent samples
                self._low = [self._low[0]] + self._low[-39:]
            if "lr-too-low" not in self._fired and not self._seen_large and "lr-too-high" not in self._fired:
                found += self._judge_low(record, lr)
        else:
            self._low.clear()
        if ratio > self.rising_ratio:
            self._high.append((record.step, ratio, loss_median))
            if "lr-too-high" not in self._fired:
                found += self._judge_high(record, lr)
        else:
            self._high.clear()
        return found

    def _judge_low(self, record: StepRecord, lr: float | None) -> list[Finding]:
        streak = self._low
        if len(streak) < self.min_samples or streak[-1][0] - streak[0][0] < self.min_steps:
            return []
        start, end = streak[0][2], streak[-1][2]
        if start is None or end is None:
            return []
        progress = (start - end) / abs(start) if start else 0.0
        if progress >= self.min_progress:
            return []
        self._fired.add("lr-too-low")
        ratios = [r for _, r, _ in streak]
        evidence = {"step": streak[0][0], "value": median(ratios), "threshold": self.low_ratio,
                    "window": len(streak), "last_step": record.step, "lr": lr,
                    "loss_median_start": start, "loss_median_end": end, "loss_progress": progress,
                    "min_progress": self.min_progress, "update_ratios": ratios[-20:]}
        return [make_finding(
            "lr-too-low", "warning",
            f"LR too low: median update/weight ratio {median(ratios):.2g} (healthy ~1e-3) and the loss "
            f"moved {progress:.1%} over steps {streak[0][0]}-{record.step}", evidence,
            self._raise_fix(lr, median(ratios)))]

    @staticmethod
    def _raise_fix(lr: float | None, ratio: float) -> str:
        if not lr:
            return ""
        factor = 1e-3 / ratio
        return (f"Raise the LR from {lr:.3g}: updates would reach ~1e-3 of the weights near {lr * factor:.2g} "
                f"(~{factor:.0f}x); go up by 3-10x at a time and keep the largest LR whose loss still falls "
                "smoothly.")

    def _lower_fix(self, lr: float | None, factor: float) -> str:
        if not lr:
            return ""
        advice = (f"Lower the LR from {lr:.3g}: try {lr / 10:.2g} (10x lower) first, with a warmup over the first "
                  "few hundred steps, and go further down until updates are ~1e-3 of the weights per step "
                  f"(~{lr / max(factor, 10.0):.2g} at the ratio seen); `traindoc tune lr` measures the best LR "
                  "of a script by short runs.")
        note = accumulation_note(self._backward_calls).strip()
        return f"{note} Otherwise: {advice[0].lower()}{advice[1:]}" if note else advice

    def _judge_inflation(self, record: StepRecord, lr: float | None) -> list[Finding]:
        growth = {}
        for name, w in (record.layer_weight_norm or {}).items():
            if not finite(w):
                continue
            first = self._first_weight.setdefault(name, w)
            if first > 0:
                growth[name] = w / first
        if not growth or not self._seen_large:
            return []
        inflation = median(growth.values())
        if inflation <= self.inflation:
            return []
        first_loss = self._first_loss
        now = median(self._recent_losses) if self._recent_losses else None
        if first_loss is not None and now is not None and first_loss > 0 and now < self.learned * first_loss:
            return []  # the weights grew while the loss fell tenfold: fitted, not inflated
        self._fired.add("lr-too-high")
        evidence = {"step": record.step, "value": inflation, "threshold": self.inflation,
                    "window": len(self._first_weight), "lr": lr, "weight_norm_growth": growth,
                    "max_median_update_ratio": self._max_ratio, "reason": "weights inflated by large updates",
                    "first_loss_median": first_loss, "loss_median": now}
        return [make_finding(
            "lr-too-high", "warning",
            f"LR too high: the weight norms grew {inflation:.3g}x under updates of up to "
            f"{self._max_ratio:.2g} of the weights per step (healthy ~1e-3)", evidence,
            self._lower_fix(lr, self._max_ratio / 1e-3))]

    def _judge_high(self, record: StepRecord, lr: float | None) -> list[Finding]:
        self._high = self._high[-64:]
        trailing = 0
        for _, r, _ in reversed(self._high):
            if r <= self.high_ratio:
                break
            trailing += 1
        very = self._high[len(self._high) - trailing:]
        very_high = trailing >= self.high_samples and very[-1][0] - very[0][0] >= self.high_min_steps
        recent = very if very_high else self._high[-self.high_samples:]
        if len(recent) < self.high_samples:
            return []
        ratios = [r for _, r, _ in recent]
        loss_median = recent[-1][2]
        rising = (loss_median is not None and self._best_loss is not None
                  and loss_median > self._best_loss + self.rising * abs(self._best_loss))
        if not (very_high or rising):
            return []
        self._fired.add("lr-too-high")
        evidence = {"step": recent[0][0], "value": median(ratios),
                    "threshold": self.high_ratio if very_high else self.rising_ratio,
                    "window": len(recent), "last_step": record.step, "lr": lr, "update_ratios": ratios[-20:],
                    "loss_median": loss_median, "best_loss_median": self._best_loss,
                    "reason": "update ratio > 0.1" if very_high else "update ratio > 0.01 with the loss rising"}
        return [make_finding(
            "lr-too-high", "warning",
            f"LR too high: median update/weight ratio {median(ratios):.2g} (healthy ~1e-3) at steps "
            f"{recent[0][0]}-{record.step}" + (", loss rising" if rising else ""), evidence,
            self._lower_fix(lr, median(ratios) / 1e-3))]
