"""`loss-spike`: the loss jumps far above its recent level (robust statistics, not mean/sigma).

What it computes: the rolling median ``m`` and the median absolute deviation ``MAD`` of the
previous ``window`` finite losses (default 50; judged once at least ``min_samples`` = 20 are
there). A step is a spike when both hold:

* ``loss > m + k * 1.4826 * MAD`` with ``k = 6`` (1.4826 * MAD estimates sigma for Gaussian
  noise, so this is a "6 sigma" event that mini-batch noise practically never produces, and the
  median/MAD ignore earlier spikes instead of being dragged by them as mean/std are), and
* ``loss - m > rel_jump * |m|`` with ``rel_jump = 0.3``, so that a window whose MAD is
  tiny (a loss that has become very smooth) does not turn a meaningless wiggle into a spike,

and the loss stays above that same threshold (frozen at the first step) for ``persist`` = 3
consecutive steps. One hard mini-batch is not an instability: with tiny batches the per-batch loss
is heavy-tailed (one confidently wrong sample in a batch of 4 can triple it), but such outliers do
not come three in a row, whereas an optimisation spike (the weights were kicked) lasts several
steps.

The first spike is reported (warning) with its step, value, the median, the MAD, the threshold and
the window. Non-finite losses are left to ``nan-loss``. A spike that lasts a few steps comes from the
data (a shard of another scale, corrupt samples) as often as from the optimisation, and the monitor
cannot tell which: the fix names the batches to look at first, then the optimisation remedies.
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, RollingWindow, finite, make_finding
from traindoc.monitor.record import StepRecord


class LossSpikeDetector(Detector):
    ids = ("loss-spike",)

    def __init__(self, window: int = 50, k: float = 6.0, rel_jump: float = 0.3, min_samples: int = 20,
                 persist: int = 3):
        self.window = RollingWindow(window)
        self.persist = persist
        self._candidate: dict | None = None
        self.k = k
        self.rel_jump = rel_jump
        self.min_samples = min_samples
        self._fired = False

    def update(self, record: StepRecord) -> list[Finding]:
        loss = record.loss
        if self._fired or not finite(loss):
            return []
        found: list[Finding] = []
        cand = self._candidate
        if cand is not None and loss > cand["threshold"]:
            cand["values"].append(loss)
        elif len(self.window) >= self.min_samples:
            m = self.window.median()
            cand = self._candidate = None
            if loss > m + self.rel_jump * abs(m):  # below this bound no threshold is crossed: skip the MAD
                mad = self.window.mad()
                threshold = max(m + self.k * 1.4826 * mad, m + self.rel_jump * abs(m))
                if loss > threshold:
                    cand = self._candidate = {"step": record.step, "threshold": threshold, "median": m, "mad": mad,
                                              "values": [loss]}
        else:
            cand = self._candidate = None
        if cand is not None and len(cand["values"]) >= self.persist:
            self._fired = True
            m, peak = cand["median"], max(cand["values"])
            evidence = {
                "step": cand["step"], "value": peak, "threshold": cand["threshold"],
                "window": len(self.window), "median": m, "mad": cand["mad"], "k": self.k,
                "rel_jump": self.rel_jump, "persist": self.persist, "losses": cand["values"],
                "jump_ratio": (peak / m) if m > 0 else None,
            }
            steps = f"{cand['step']}-{record.step}"
            found.append(make_finding(
                "loss-spike", "warning",
                f"Loss spike at step {cand['step']}: {peak:.4g} vs rolling median {m:.4g}", evidence,
                f"Look at the batches of steps {steps} first: a batch or shard of another scale, corrupt samples "
                "or wrong labels spike the loss like this. If they are ordinary, the weights were kicked: warm "
                "up the LR, clip gradients near the 90th percentile of their norms, or lower the LR."))
        self.window.push(loss)
        return found
