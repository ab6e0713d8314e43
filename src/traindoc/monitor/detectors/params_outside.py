"""`params-not-in-optimizer` (during training): trainable parameters that no param group holds and
that never moved.

What it computes: when the watch starts, `RunStart.outside_optimizer` names the trainable model
parameters that the watched optimizer does not hold; the monitor fingerprints them on the device
(their sum and L2 norm) and compares again at close (`RunEnd.unmoved_outside`). A parameter whose
fingerprint did not change over at least one optimizer step is stuck: no optimizer updated it —
the classical "head built after the optimizer, its weights never move". Severity error: the
parameter is trainable, the run took steps, and it is exactly where it started (proved on the
user's own run). Parameters that a second optimizer updates moved, and are not reported. The
evidence lists the stuck parameters and their modules, how many values they hold, and which of
them hold a non-zero gradient at close (the loss reaches them; only the optimizer is missing).

    >>> from traindoc.monitor.record import RunEnd, RunStart
    >>> d = ParamsOutsideOptimizerDetector()
    >>> d.start(RunStart(outside_optimizer=["head.weight", "head.bias"]))
    []
    >>> [f.id for f in d.finalize(RunEnd(steps=5, unmoved_outside=["head.weight", "head.bias"]))]
    ['params-not-in-optimizer']
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, make_finding
from traindoc.monitor.record import RunEnd, RunStart


class ParamsOutsideOptimizerDetector(Detector):
    ids = ("params-not-in-optimizer",)

    def __init__(self) -> None:
        self._outside: list[str] = []

    def start(self, run: RunStart) -> list[Finding]:
        self._outside = list(run.outside_optimizer)
        return []

    def finalize(self, end: RunEnd | None = None) -> list[Finding]:
        if end is None or end.steps == 0 or not end.unmoved_outside:
            return []
        stuck = end.unmoved_outside
        modules = sorted({n.rsplit(".", 1)[0] if "." in n else "(root)" for n in stuck})
        with_grad = end.unmoved_with_grad
        evidence = {"step": end.steps, "value": len(stuck), "threshold": 0, "window": end.steps,
                    "steps": end.steps, "modules": modules[:20], "parameters": stuck[:50],
                    "count": len(stuck), "numel": end.unmoved_outside_numel,
                    "receiving_gradients": with_grad[:50]}
        shown = ", ".join(modules[:3]) + ("..." if len(modules) > 3 else "")
        return [make_finding(
            "params-not-in-optimizer", "error",
            f"{len(stuck)} trainable parameter(s) in {shown} are in no param group and never moved in "
            f"{end.steps} steps" + (f" although {len(with_grad)} receive gradients" if with_grad else ""),
            evidence)]
