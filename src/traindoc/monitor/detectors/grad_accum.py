"""`grad-accum-normalization`: the gradient scale tracks the number of accumulated micro-batches.

What is provable from the records: the gradient at an optimizer step after k backward calls is,
when each micro-batch loss is divided by k (correct averaging), the *mean* of k micro-batch
gradients, whose norm does not grow with k (it is ``sqrt(|mu|^2 + sigma^2 / k)``: flat or falling,
a log-log slope in [-0.5, 0]). When the losses are summed (no division), or divided by a fixed
constant while the count varies, the norm is ``k x`` that mean: a slope in [+0.5, +1]. So the
detector compares steps with *different* counts.

It keeps the modal count ``k0`` (the most frequent ``backward_calls``), a rolling window of the last
``ref_window`` = 20 finite grad norms at ``k0``, and for every step with another count k (at least
1.5x away from k0) once the window holds >= 5 norms, the slope
``log(g / median_k0) / log(k / k0)``. It fires (warning) when the median of the last
``events`` = 50 slopes is > ``slope_threshold`` = 0.35 on at least ``min_events`` = 3 such steps.
A correctly averaged accumulation gives slopes <= 0 up to noise, so it stays quiet.

What these records cannot prove: with a constant count, summing instead of averaging multiplies
every gradient by the same k, which is indistinguishable from a k-times larger LR; the detector
stays silent (``lr-too-high`` may speak). Where the loss can be recomputed from the model's own
output, it is proved another way: the Hugging Face callback compares, on the first micro-batches,
the loss the model returned with the one the Trainer expects (`traindoc.integrations.hf_accumulation`).
Averaging per micro-batch over different *token* counts needs token counts the records do not carry.
"""

from __future__ import annotations

import math
from collections import Counter, deque

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, RollingWindow, finite, make_finding, median
from traindoc.monitor.record import StepRecord


class GradAccumDetector(Detector):
    ids = ("grad-accum-normalization",)

    def __init__(self, slope_threshold: float = 0.35, min_events: int = 3, events: int = 50,
                 ref_window: int = 20, min_ref: int = 5, min_count_ratio: float = 1.5):
        self.slope_threshold = slope_threshold
        self.min_events = min_events
        self.ref_window = ref_window
        self.min_ref = min_ref
        self.min_count_ratio = min_count_ratio
        self._counts: Counter[int] = Counter()
        self._mode: int | None = None
        self._ref: dict[int, RollingWindow] = {}
        self._slopes: deque[tuple[int, int, float, float, float]] = deque(maxlen=events)
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        k, g = record.backward_calls, record.grad_norm
        if self._fired or k < 1 or not finite(g) or g <= 0 or record.skipped:
            return []
        counts = self._counts
        counts[k] += 1
        if len(counts) > 16:  # O(1) memory even for unusual count sequences
            keep = dict(counts.most_common(8))
            counts = self._counts = Counter(keep)
            self._ref = {c: w for c, w in self._ref.items() if c in keep}
            self._mode = counts.most_common(1)[0][0]
        elif self._mode is None or counts[k] > counts[self._mode]:
            self._mode = k  # the count seen most often (on a tie, the one that got there first)
        k0 = self._mode
        if k == k0 or max(k, k0) / min(k, k0) < self.min_count_ratio:
            self._ref.setdefault(k, RollingWindow(self.ref_window)).push(g)  # type: ignore[arg-type]
            return []
        ref = self._ref.get(k0)
        if ref is None or len(ref) < self.min_ref:
            return []
        g0 = ref.median()
        slope = math.log(g / g0) / math.log(k / k0)  # type: ignore[operator]
        self._slopes.append((record.step, k, g, g0, slope))  # type: ignore[arg-type]
        if len(self._slopes) < self.min_events:
            return []
        med = median(s for *_, s in self._slopes)
        if med <= self.slope_threshold:
            return []
        self._fired = True
        examples = [{"step": s, "backward_calls": kk, "grad_norm": gg, "reference_grad_norm": g00,
                     "slope": sl} for s, kk, gg, g00, sl in list(self._slopes)[-5:]]
        evidence = {"step": self._slopes[0][0], "value": med, "threshold": self.slope_threshold,
                    "window": len(self._slopes), "modal_backward_calls": k0,
                    "counts": dict(self._counts), "examples": examples, "last_step": record.step}
        return [make_finding(
            "grad-accum-normalization", "warning",
            f"Gradient norm scales with the accumulation count (log-log slope {med:.2f}; averaged "
            f"accumulation gives <= 0): steps with {k} backward calls have norm {g:.3g} vs {g0:.3g} "
            f"with {k0}", evidence,
            f"Divide each micro-batch loss by the number of micro-batches accumulated for its optimizer step "
            f"({k0} on most steps here, {k} on some: the last group of an epoch is often shorter), or by the "
            "total token count of the accumulated batch; `accelerator.accumulate` does this for you.")]
