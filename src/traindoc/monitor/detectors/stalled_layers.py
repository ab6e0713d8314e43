"""`stalled-layers`: layers whose weights barely move while the rest of the model trains.

The question "do the head's weights move?", answered with numbers. Needs the per-layer
dicts (filled every ``every`` steps). On every sample of ``layer_update_ratio`` (||w_after - w_before|| /
||w_before|| of that step), a layer counts as *tiny* when its ratio is < ``tiny`` = 1e-6 (a healthy
update is ~1e-3; 1e-6 means the layer needs ~1e6 steps to change by its own size). A layer is
*stalled* when it was tiny on ``min_samples`` = 5 consecutive samples spanning at least
``min_steps`` = 20 optimizer steps, while the layers that are not tiny move: their median ratio is
at least ``moving`` = 1e-4 (otherwise the whole model is slow, which is ``lr-too-low``'s call, or
the LR is in warmup / annealed to ~0).

Reported (warning) when the first stalled layers appear, with the layer names, each one's median
ratio, gradient norm, param groups and their LR, the median ratio of the moving layers, the
threshold and the window. The fix follows what the numbers show (every watched parameter is in the
optimizer, so "add it to the optimizer" is never the answer here): a zero gradient means "not
connected to the loss" (use its output, or freeze the module); a gradient with an LR of ~0 for its
param group (below ``lr_off`` = 1e-3 x the largest group LR) means "give that group an LR"; a
gradient and an ordinary LR mean the gradient is tiny next to the weights (vanishing gradients, or
weights scaled far too large). Layers that stall later are reported once more at
``finalize`` (at most two findings in all). Layers with non-finite ratios (zero weights) are
skipped. The monitor must leave intentionally frozen modules (no trainable parameter) out of the
dicts.
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, finite, make_finding, median
from traindoc.monitor.record import RunEnd, StepRecord


class StalledLayersDetector(Detector):
    ids = ("stalled-layers",)

    def __init__(self, tiny: float = 1e-6, moving: float = 1e-4, min_samples: int = 5,
                 min_steps: int = 20, lr_off: float = 1e-3):
        self.tiny = tiny
        self.moving = moving
        self.lr_off = lr_off
        self.min_samples = min_samples
        self.min_steps = min_steps
        self._streak: dict[str, tuple[int, int, list[float]]] = {}  # layer -> (count, first step, ratios)
        self._grad: dict[str, float | None] = {}
        self._stalled: dict[str, dict[str, float | int | None]] = {}
        self._reported: set[str] = set()
        self._moving_median: float | None = None
        self._findings = 0

    def update(self, record: StepRecord) -> list[Finding]:
        ratios = record.layer_update_ratio
        if not ratios:
            return []
        grads = record.layer_grad_norm or {}
        groups = record.layer_groups or {}
        tiny, moving = [], []
        for name, r in ratios.items():
            if not finite(r):
                continue
            if r < self.tiny:
                tiny.append(name)
            else:
                moving.append(r)
                self._streak.pop(name, None)
        if not moving:
            for name in tiny:  # the whole model is still: no judgement about single layers
                self._streak.pop(name, None)
            return []
        moving_median = median(moving)
        if moving_median < self.moving:
            return []
        self._moving_median = moving_median
        new: list[str] = []
        for name in tiny:
            count, since, history = self._streak.get(name, (0, record.step, []))
            history = (history + [ratios[name]])[-self.min_samples * 4:]
            self._streak[name] = (count + 1, since, history)
            if count + 1 >= self.min_samples and record.step - since >= self.min_steps:
                lrs = [record.lr[gi] for gi in groups.get(name, []) if gi < len(record.lr) and finite(record.lr[gi])]
                self._stalled[name] = {"median_ratio": median(history), "since_step": since,
                                       "grad_norm": grads.get(name), "samples": count + 1,
                                       "param_groups": groups.get(name), "lr": max(lrs) if lrs else None,
                                       "max_group_lr": max((x for x in record.lr if finite(x)), default=None)}
                if name not in self._reported:
                    new.append(name)
        if new and self._findings == 0:
            return [self._finding(new, record.step)]
        return []

    def finalize(self, end: RunEnd | None = None) -> list[Finding]:
        late = [n for n in self._stalled if n not in self._reported]
        if late and self._findings < 2:
            return [self._finding(late, None)]
        return []

    def _finding(self, names: list[str], step: int | None) -> Finding:
        self._reported.update(names)
        self._findings += 1
        layers = {n: self._stalled[n] for n in names}
        worst = max(v["median_ratio"] for v in layers.values())  # type: ignore[type-var]
        evidence = {"step": step if step is not None else min(v["since_step"] for v in layers.values()),
                    "value": worst, "threshold": self.tiny, "window": self.min_samples,
                    "min_steps": self.min_steps, "layers": layers,
                    "moving_layers_median_ratio": self._moving_median}
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return make_finding(
            "stalled-layers", "warning",
            f"{len(names)} layer(s) do not move (update/weight ratio <= {worst:.2g}, others "
            f"~{self._moving_median:.2g}): {shown}", evidence, self._fix(layers))

    def _fix(self, layers: dict[str, dict]) -> str:
        """One sentence per cause the numbers show (see the module docstring)."""
        no_grad, lr_off, small = [], {}, []
        for n, v in layers.items():
            top = v["max_group_lr"]
            if not v["grad_norm"]:
                no_grad.append(n)
            elif v["lr"] is not None and top and v["lr"] < self.lr_off * top:
                lr_off.setdefault(tuple(v["param_groups"] or ()), []).append(n)
            else:
                small.append(n)
        def receive(names: list[str]) -> str:
            return f"{', '.join(names)} receive{'s' if len(names) == 1 else ''}"

        parts = []
        if no_grad:
            parts.append(f"{receive(no_grad)} no gradient: make sure the output is used by the loss (remove a "
                         "`.detach()` or `torch.no_grad()` that cuts it off), or delete or freeze "
                         "(`requires_grad_(False)`) the unused module.")
        for groups, names in lr_off.items():
            lr = layers[names[0]]["lr"]
            which = "param group " + ", ".join(str(g) for g in groups) if groups else "the param group"
            parts.append(f"{receive(names)} gradients but {which} of the optimizer has LR {lr:.3g}, ~0 next to "
                         "the others: give it a real LR, or freeze these layers (`requires_grad_(False)`) if "
                         "they are meant to stay fixed.")
        if small:
            parts.append(f"{receive(small)} gradients at an ordinary LR, but the updates are tiny next to the "
                         "weights: the gradients vanish before reaching them, or the weights are scaled far too "
                         "large; check the initialisation and what feeds these layers.")
        return " ".join(parts)
