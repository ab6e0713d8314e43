"""`loss-plateau` and `loss-at-chance`: the loss stopped improving while the LR is not ~0.

What it computes, at every step, over the last ``2h`` finite losses split in two blocks of ``h``
(``old`` and ``new``: the medians of the earlier and the later block, ``h`` steps apart), after
``n`` losses in all: the loss is *flat* when, at the rate seen between the blocks, it would improve
by less than ``rel_improvement`` = 5% over a horizon as long as the run so far, and at least
``min_horizon`` = 300 steps: ``(old - new) * H / h < rel_improvement * |old|`` with
``H = max(n, 300)``. A slow but steady learner (1% every 50 steps) is not flat, even early; a loss
that moved 1% over the last half of a 300-step run is. Comparing the medians of
two blocks, rather than tracking the lowest value ever seen, keeps mini-batch noise from producing
fake "new bests" that reset the clock.

How long the blocks are (``h``) scales with the run and with the loss's own noise:

* with the run: ``h >= n / 4``, so the two blocks cover the last half of the run (a 100-step run is
  judged on its last 50 steps, a 600-step run on its last 300), and they never reach into the
  first quarter of the run (``2h <= 3n / 4``: the fast early fall, a warmup);
* with the noise: the blocks must be long enough to see the tolerance through the noise. With
  ``sigma`` the per-step noise of the loss (``1.4826 * median |x_i - x_(i-1)| / sqrt 2``: robust to
  outliers, blind to a slow trend), the difference of two medians of ``h`` values has a standard
  error ``1.2533 sigma sqrt(2 / h)``, which must not exceed the tolerance on that difference,
  ``rel_improvement * (h / H) * |level|`` (`block_length`; ``sigma`` over the last 300 losses). A
  noisy loss (small batches) waits for long blocks; a smooth one (a blind model's loss sits at ln C
  with a tiny spread) is judged on ``h_min`` = 15.

``h`` is capped at ``h_max`` = 150 (O(300) memory); a loss too noisy for blocks of 150 is not
judged. The blocks are judged every ``max(1, h / 8)`` steps (a few microseconds per step in all),
and a plateau is the flat condition on every judgement over ``sustain = max(5, h / 3)`` steps, with:

* the LR not ~0: the largest param-group LR at least ``lr_floor`` = 1e-2 x the largest seen (a
  schedule that has annealed the LR is expected to flatten the loss);
* the LR not rising anywhere in the two blocks (a warmup is not a plateau);
* the loss not converged: above ``converged`` = 5% of its start (the median of the first 10 losses).

What is reported, once, and how sure it is:

* ``loss-at-chance`` (warning) when the record carries ``num_classes`` = C and the plateau level is
  within ``chance_tol`` = 5% of ln(C) (the loss of uniform guessing): the model has learned nothing
  from its inputs. A blind model (inputs never reaching it) is reported after ~50 steps.
* ``loss-plateau`` (warning) when the level is still at least ``stuck`` = 2/3 of the start: the
  run stopped after learning little (the class prior, say) — something blocks learning.
* ``loss-plateau`` (hint) when the level is lower (the loss fell by more than a third, then
  stopped) and the LR was constant over both blocks: the run has converged at this LR, which is
  healthy or not depending on what the task allows; the monitor cannot tell, so it only says what
  is left (decay the LR, or stop). With a decaying LR, such a plateau is the schedule's business and
  nothing is reported.
"""

from __future__ import annotations

import math
from collections import deque

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, RollingWindow, finite, make_finding, max_lr, median
from traindoc.monitor.record import StepRecord

_FIRST = 10
"""Losses whose median is the start level."""


def block_length(sigma: float, level: float, n: int, rel: float) -> int:
    """The shortest block length ``h`` at which the difference of two block medians (standard error
    ``1.2533 sigma sqrt(2 / h)``) is resolved to its tolerance ``rel * (h / n) * |level|``.

    >>> block_length(0.0, 2.3, 300, 0.05), block_length(0.149, 1.79, 300, 0.05)
    (1, 93)
    """
    if rel * abs(level) <= 0:
        return 1 << 30
    return max(1, math.ceil((1.2533 * sigma * math.sqrt(2.0) * n / (rel * abs(level))) ** (2 / 3)))


class LossPlateauDetector(Detector):
    ids = ("loss-plateau", "loss-at-chance")

    def __init__(self, rel_improvement: float = 0.05, h_min: int = 15, h_max: int = 150,
                 lr_floor: float = 1e-2, chance_tol: float = 0.05, converged: float = 0.05,
                 stuck: float = 2 / 3, min_horizon: int = 300):
        self.rel_improvement = rel_improvement
        self.min_horizon = min_horizon
        self.h_min = h_min
        self.h_max = h_max
        self.lr_floor = lr_floor
        self.chance_tol = chance_tol
        self.converged = converged
        self.stuck = stuck
        self._recent: deque[tuple[int, float]] = deque(maxlen=2 * h_max)
        self._noise = RollingWindow(2 * h_max - 1)  # |x_i - x_(i-1)| of the last 2 h_max losses
        self._h = h_min
        self._first: list[float] = []
        self._n = 0
        self._lr_max = 0.0
        self._lr_last: float | None = None
        self._lr_rise_step = -1
        self._lr_change_step = -1
        self._flat_since: int | None = None
        self._flat_judged = 0
        self._num_classes: int | None = None
        self._fired = False

    def _track_lr(self, record: StepRecord) -> float | None:
        lr = max_lr(record)
        if lr is None:
            return None
        if self._lr_last is not None and abs(lr - self._lr_last) > 1e-6 * max(abs(self._lr_last), 1e-30):
            self._lr_change_step = record.step
            if lr > self._lr_last:
                self._lr_rise_step = record.step
        self._lr_last = lr
        self._lr_max = max(self._lr_max, lr)
        return lr

    def update(self, record: StepRecord) -> list[Finding]:
        lr = self._track_lr(record)
        if record.num_classes:
            self._num_classes = record.num_classes
        loss = record.loss
        if self._fired or not finite(loss):
            return []
        if self._recent:
            self._noise.push(abs(loss - self._recent[-1][1]))  # type: ignore[operator]
        self._n += 1
        self._recent.append((record.step, loss))  # type: ignore[arg-type]
        if len(self._first) < _FIRST:
            self._first.append(loss)  # type: ignore[arg-type]
        if self._n % max(1, self._h // 8):
            return []  # between judgements: the streak stands
        judged = self._judge(lr)
        if judged is None:
            self._flat_since = None
            return []
        h, old, new, sigma, start_step = judged
        if self._flat_since is None:
            self._flat_since = start_step
            self._flat_judged = record.step
        if record.step - self._flat_judged < max(5, h // 3):
            return []
        return self._report(record, lr, h, old, new, sigma, start_step)

    def _judge(self, lr: float | None) -> tuple[int, float, float, float, int] | None:
        """(h, old, new, sigma, first step of the blocks) when the loss is flat now, else None."""
        usable = min(len(self._recent), (3 * self._n) // 4)
        if usable < 2 * self.h_min:
            return None
        sigma = 1.4826 * self._noise.median() / math.sqrt(2)
        horizon = max(self._n, self.min_horizon)
        level = median(x for _, x in list(self._recent)[-self.h_min:])
        h = self._h = max(self.h_min, self._n // 4, block_length(sigma, level, horizon, self.rel_improvement))
        if h > self.h_max or 2 * h > usable:
            return None
        blocks = list(self._recent)[-2 * h:]
        start_step = blocks[0][0]
        old, new = median(x for _, x in blocks[:h]), median(x for _, x in blocks[h:])
        if (old - new) * horizon / h >= self.rel_improvement * abs(old):
            return None  # improving
        if lr is not None and lr < self.lr_floor * self._lr_max:
            return None  # annealed
        if self._lr_rise_step >= start_step:
            return None  # warming up
        if abs(new) < self.converged * abs(median(self._first)):
            return None  # converged
        return h, old, new, sigma, start_step

    def _report(self, record: StepRecord, lr: float | None, h: int, old: float, new: float,
                sigma: float, blocks_start: int) -> list[Finding]:
        first = median(self._first)
        since = self._flat_since if self._flat_since is not None else record.step
        improvement = (old - new) / abs(old) if old else 0.0
        horizon = max(self._n, self.min_horizon)
        projected = improvement * horizon / h
        evidence = {"step": since, "value": new, "earlier_median": old, "improvement": improvement,
                    "projected_improvement": projected, "threshold": self.rel_improvement, "window": 2 * h,
                    "block": h, "blocks_start": blocks_start, "steps_seen": self._n, "horizon": horizon,
                    "noise_sigma": sigma, "sustain": record.step - self._flat_judged, "last_step": record.step,
                    "lr": lr, "max_lr": self._lr_max, "first_loss": first,
                    "fraction_of_start": new / first if first else None}
        C = self._num_classes
        if C and C >= 2:
            chance = math.log(C)
            evidence.update(num_classes=C, chance_loss=chance)
            if abs(new - chance) <= self.chance_tol * chance:
                self._fired = True
                evidence["chance_tol"] = self.chance_tol
                return [make_finding(
                    "loss-at-chance", "warning",
                    f"Loss stuck at chance level: {new:.4g} ~ ln({C}) = {chance:.4g} over steps {since}-"
                    f"{record.step}: the model predicts as if it saw nothing", evidence,
                    "The model learns nothing from its inputs. Run `traindoc.check(model, batch)` on one "
                    "batch: it proves or rules out inputs that never reach the loss, labels that do not "
                    "match the inputs and masks that hide every token. Decode a batch and look at it, and "
                    "check that the model can overfit that one batch (its loss should fall towards 0 in a "
                    "few hundred steps).")]
        evidence["stuck_fraction"] = self.stuck
        if first and new >= self.stuck * first:
            self._fired = True
            return [make_finding(
                "loss-plateau", "warning",
                f"Loss plateau at {new:.4g} ({new / first:.0%} of its start {first:.4g}): it improved "
                f"{improvement:.1%} between the last two {h}-step blocks, {projected:.1%} at that rate over "
                f"another {horizon} steps (< {self.rel_improvement:.0%}; LR "
                f"{lr if lr is not None else 'unknown'})", evidence,
                "The run stopped after learning little (the class prior, say): something blocks learning. "
                "Run `traindoc.check(model, batch)` on one batch (labels, masks, batch layout, the loss "
                "wiring) and check that the model can overfit that one batch; if it can, tune the LR "
                "(try 3x higher and 3x lower).")]
        if self._lr_change_step >= since:
            return []  # a lower level under a moving LR: the schedule's business; keep watching
        self._fired = True
        return [make_finding(
            "loss-plateau", "hint",
            f"Loss flat at {new:.4g} over the last {2 * h} steps at a constant LR "
            f"{lr if lr is not None else 'unknown'} (it fell from {first:.4g}): converged at this LR",
            evidence,
            f"If {new:.3g} is about what this task allows, the run has converged at this LR: decay the LR "
            "(a cosine or step schedule) to go lower, or stop here. If it should go much lower, run "
            "`traindoc.check(model, batch)` on one batch.")]
