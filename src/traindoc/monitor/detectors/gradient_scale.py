"""`vanishing-gradients` and `exploding-gradients`: gradient norms off by orders of magnitude.

Across depth (from the per-layer dicts, filled every ``every`` steps): on every sample of
``layer_grad_norm`` the layers with a finite, non-zero gradient norm are ordered by
``layer_depth`` (model order when no depth is given; at least ``min_layers`` = 3), and the ratio
``r = median(norms of the first third) / median(norms of the last third)`` is taken (first = nearest
the input). Exactly-zero norms are left out: a layer with no gradient at all is a wiring problem
(``no-grad-params``/``stalled-layers``), not a vanishing one.

* ``vanishing-gradients`` when ``r < vanish_ratio`` = 1e-3 on ``sustain`` = 3 consecutive samples;
* ``exploding-gradients`` when ``r > explode_ratio`` = 1e3 on 3 consecutive samples.

Healthy networks (residual connections, normalisation, sane init) keep this ratio within one or
two orders of magnitude; three orders means the early layers learn ~1000x slower (or faster) than
the late ones.

Over time (every step, from the global ``grad_norm``): the rolling median of the last
``time_window`` = 10 finite norms is compared with the lowest such median seen earlier;
``exploding-gradients`` when it is > ``time_growth`` = 1e3 x that minimum. A rolling *median*
above the threshold means that more than half of the last 10 steps are up there: the growth did not
recover, it is not one spike.

Both are warnings (statistical judgements), each reported once. The fix follows the basis: across
depth, the architecture and the initialisation (clipping does not fix a ratio between layers);
over time, the LR (the one at the step where the growth was seen), warmup and clipping.
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, RollingWindow, finite, make_finding, max_lr, median
from traindoc.monitor.record import StepRecord


def depth_thirds(norms: dict[str, float], depth: dict[str, int] | None,
                 min_layers: int = 3) -> tuple[list[str], list[str]] | None:
    """(first third, last third) of the layers with a finite, non-zero norm, by depth.

    >>> depth_thirds({"a": 1.0, "b": 2.0, "c": 0.0, "d": 3.0}, {"a": 0, "b": 1, "c": 2, "d": 3})
    (['a'], ['d'])
    """
    order = {name: i for i, name in enumerate(norms)}
    names = [n for n, v in norms.items() if finite(v) and v > 0]
    if len(names) < min_layers:
        return None
    names.sort(key=lambda n: ((depth or {}).get(n, order[n]), order[n]))
    third = len(names) // 3
    return names[:third], names[-third:]


class GradientScaleDetector(Detector):
    ids = ("vanishing-gradients", "exploding-gradients")

    def __init__(self, vanish_ratio: float = 1e-3, explode_ratio: float = 1e3, sustain: int = 3,
                 min_layers: int = 3, time_window: int = 10, time_growth: float = 1e3):
        self.vanish_ratio = vanish_ratio
        self.explode_ratio = explode_ratio
        self.sustain = sustain
        self.min_layers = min_layers
        self.time_window = RollingWindow(time_window)
        self.time_growth = time_growth
        self._vanish: list[float] = []
        self._explode: list[float] = []
        self._streak_start: dict[str, int] = {}
        self._min_median: float | None = None
        self._min_step: int | None = None
        self._fired: set[str] = set()

    def update(self, record: StepRecord) -> list[Finding]:
        found = self._over_time(record)
        if record.layer_grad_norm:
            found += self._across_depth(record)
        return found

    def _over_time(self, record: StepRecord) -> list[Finding]:
        g = record.grad_norm
        if "exploding-gradients" in self._fired or not finite(g):
            return []
        self.time_window.push(g)
        if not self.time_window.full:
            return []
        m = self.time_window.median()
        if self._min_median is None or m < self._min_median:
            self._min_median, self._min_step = m, record.step
            return []
        if self._min_median > 0 and m > self.time_growth * self._min_median:
            self._fired.add("exploding-gradients")
            evidence = {"step": record.step, "value": m, "threshold": self.time_growth * self._min_median,
                        "window": self.time_window.size, "growth": m / self._min_median,
                        "min_median": self._min_median, "min_step": self._min_step,
                        "basis": "global gradient norm over steps"}
            lr = max_lr(record)
            evidence["lr"] = lr
            lower = f"from {lr:.3g} to ~{lr / 10:.2g}" if lr else "(10x)"
            return [make_finding(
                "exploding-gradients", "warning",
                f"Gradient norm grew {m / self._min_median:.3g}x (rolling median {m:.3g} at step "
                f"{record.step}, was {self._min_median:.3g} at step {self._min_step})", evidence,
                f"The gradients grow step after step: the LR is past what the loss surface allows. Lower it "
                f"{lower}, warm it up, and clip gradients near the 90th percentile of their norms before the "
                f"growth ({self._min_median:.3g}-ish here).")]
        return []

    def _across_depth(self, record: StepRecord) -> list[Finding]:
        norms = record.layer_grad_norm or {}
        split = depth_thirds(norms, record.layer_depth, self.min_layers)
        if split is None:
            return []
        first, last = split
        early, late = median(norms[n] for n in first), median(norms[n] for n in last)
        ratio = early / late
        found: list[Finding] = []
        for fid, history, bad, limit in (
                ("vanishing-gradients", self._vanish, ratio < self.vanish_ratio, self.vanish_ratio),
                ("exploding-gradients", self._explode, ratio > self.explode_ratio, self.explode_ratio)):
            if not bad:
                history.clear()
                continue
            if not history:
                self._streak_start[fid] = record.step
            history.append(ratio)
            del history[:-20]  # O(1) memory on a long streak
            if len(history) >= self.sustain and fid not in self._fired:
                self._fired.add(fid)
                evidence = {
                    "step": self._streak_start[fid], "value": ratio, "threshold": limit,
                    "window": len(history), "ratios": list(history), "last_step": record.step,
                    "first_layers": first, "last_layers": last,
                    "first_median_grad_norm": early, "last_median_grad_norm": late,
                    "layer_grad_norm": dict(norms), "basis": "per-layer gradient norms across depth",
                }
                word = "shrink" if fid == "vanishing-gradients" else "grow"
                if fid == "vanishing-gradients":
                    fix = (f"The first layers ({', '.join(first[:3])}) get {ratio:.1g}x the gradient of the last: "
                           "they barely learn. Use a non-saturating activation (ReLU/GELU rather than sigmoid or "
                           "tanh), residual connections and normalisation layers, and an init scaled to the "
                           "activation (Kaiming for ReLU).")
                else:
                    fix = (f"The first layers ({', '.join(first[:3])}) get {ratio:.2g}x the gradient of the last: "
                           "the initialisation amplifies the signal through depth. Use a variance-preserving "
                           "init (std ~ 1/sqrt(fan_in): PyTorch's default, Xavier or Kaiming) or add "
                           "normalisation layers; clipping would only hide it.")
                found.append(make_finding(
                    fid, "warning",
                    f"Gradients {word} across depth: first-layers/last-layers norm ratio {ratio:.2g} "
                    f"({first[0]}... vs ...{last[-1]})", evidence, fix))
        return found
