"""`params-not-in-optimizer` (during training): trainable parameters that no param group holds, said
as soon as it is known, and proved at close.

What it computes: `RunStart.outside_optimizer` names the trainable model parameters that the
watched optimizer does not hold; the monitor fingerprints them on the device (their sum and L2
norm) when the watch starts, and hands the `RunStart` over after the first optimizer step, when
every watch of the run exists. Two claims, each made when it becomes true:

* at the start (severity warning): the parameters are in no param group of this optimizer, no
  other open watch's optimizer holds them (`RunStart.held_elsewhere`), and they did not move in the
  first step(s) (`RunStart.moved`). That is the classical "head built after the optimizer", but it
  is not yet proved that they never move: an optimizer that is not watched may train them later (a
  GAN whose discriminator's optimizer is not watched). Parameters held by another watch are that
  watch's to judge; parameters that already moved have an optimizer.
* at close (severity error): the parameters' fingerprints did not change over the run
  (`RunEnd.unmoved_outside`, at least one step): no optimizer updated them, proved on the user's
  own run. This replaces the start warning (withdrawn, so the final `Report` says it once); if the
  warned parameters moved after all, the warning is withdrawn and nothing is reported.

* at close (severity warning): parameters the model gained after the start (a head replaced after
  the first training phase, with the old optimizer kept) that no open watch's optimizer holds
  (`RunEnd.added_outside`). Not fingerprinted at the start, so not proved unmoved: an unwatched
  optimizer could train them.

The evidence lists the stuck parameters and their modules, how many values they hold, and (at
close) which of them hold a non-zero gradient (the loss reaches them; only the optimizer is missing).

    >>> from traindoc.monitor.record import RunEnd, RunStart
    >>> d = ParamsOutsideOptimizerDetector()
    >>> [(f.id, f.severity) for f in d.start(RunStart(outside_optimizer=["head.weight", "head.bias"], steps=1))]
    [('params-not-in-optimizer', 'warning')]
    >>> [(f.id, f.severity) for f in d.finalize(RunEnd(steps=5, unmoved_outside=["head.weight", "head.bias"]))]
    [('params-not-in-optimizer', 'error')]
    >>> [f.severity for f in d.take_withdrawn()]
    ['warning']
    >>> [(f.id, f.severity) for f in ParamsOutsideOptimizerDetector().finalize(RunEnd(steps=9, added_outside=["fc.weight"]))]
    [('params-not-in-optimizer', 'warning')]
"""

from __future__ import annotations

from traindoc.findings import Finding
from traindoc.monitor.detectors.base import Detector, make_finding
from traindoc.monitor.record import RunEnd, RunStart


def _modules(names: list[str]) -> list[str]:
    return sorted({n.split(" (also ")[0].rsplit(".", 1)[0] if "." in n else "(root)" for n in names})


def python_path(path: str) -> str:
    """A module or parameter path as Python reaches it from the model (a child of an ``nn.Sequential``
    or ``nn.ModuleList`` is indexed).

    >>> python_path("body.0.weight"), python_path("head")
    ('model.body[0].weight', 'model.head')
    """
    return "model" + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in path.split("."))


def _fix(modules: list[str], names: list[str]) -> str:
    shown = ", ".join(f"`{m}`" for m in modules[:3])
    if modules[0] != "(root)":
        params = f"{python_path(modules[0])}.parameters()"
    else:
        params = "[" + ", ".join(python_path(n.split(" (also ")[0]) for n in names[:3]) + "]"
    return (f"Build the optimizer after the model is complete (`optimizer = AdamW(model.parameters(), ...)` "
            f"once {shown} exist), or add them: `optimizer.add_param_group({{'params': {params}}})`. "
            "If they are frozen on purpose, `requires_grad_(False)` says so.")


class ParamsOutsideOptimizerDetector(Detector):
    ids = ("params-not-in-optimizer",)

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._early: Finding | None = None

    def start(self, run: RunStart) -> list[Finding]:
        self._held = set(run.held_elsewhere)
        moved = set(run.moved)
        stuck = [n for n in run.outside_optimizer if n not in self._held and n not in moved]
        if not stuck or run.steps < 1:
            return []
        modules = _modules(stuck)
        evidence = {"step": 0, "value": len(stuck), "threshold": 0, "window": run.steps,
                    "checked_steps": run.steps, "modules": modules[:20], "parameters": stuck[:50],
                    "count": len(stuck), "held_by_other_watches": sorted(self._held)[:50],
                    "proved": False}
        shown = ", ".join(modules[:3]) + ("..." if len(modules) > 3 else "")
        self._early = make_finding(
            "params-not-in-optimizer", "warning",
            f"{len(stuck)} trainable parameter(s) in {shown} are in no param group of the watched optimizer "
            f"(nor of another watched one) and did not move in the first {run.steps} step(s); unless an "
            "unwatched optimizer trains them, they never will (checked again at close)",
            evidence, _fix(modules, stuck))
        return [self._early]

    def finalize(self, end: RunEnd | None = None) -> list[Finding]:
        if end is None or end.steps == 0:
            return []
        found = self._added(end)
        stuck = [n for n in end.unmoved_outside if n not in self._held]
        if self._early is not None:
            self.withdraw(self._early)  # replaced by the proof below, or proved wrong: they moved
        if not stuck:
            return found
        modules = _modules(stuck)
        with_grad = [n for n in end.unmoved_with_grad if n not in self._held]
        evidence = {"step": end.steps, "value": len(stuck), "threshold": 0, "window": end.steps,
                    "steps": end.steps, "modules": modules[:20], "parameters": stuck[:50],
                    "count": len(stuck), "numel": end.unmoved_outside_numel,
                    "receiving_gradients": with_grad[:50], "proved": True,
                    "first_reported_step": 0 if self._early is not None else None}
        shown = ", ".join(modules[:3]) + ("..." if len(modules) > 3 else "")
        return [make_finding(
            "params-not-in-optimizer", "error",
            f"{len(stuck)} trainable parameter(s) in {shown} are in no param group and never moved in "
            f"{end.steps} steps" + (f" although {len(with_grad)} receive gradients" if with_grad else ""),
            evidence, _fix(modules, stuck))] + found

    def _added(self, end: RunEnd) -> list[Finding]:
        added = end.added_outside
        if not added:
            return []
        modules = _modules(added)
        shown = ", ".join(modules[:3]) + ("..." if len(modules) > 3 else "")
        evidence = {"step": end.steps, "value": len(added), "threshold": 0, "window": end.steps,
                    "modules": modules[:20], "parameters": added[:50], "count": len(added),
                    "receiving_gradients": end.added_with_grad[:50], "proved": False,
                    "added_after_start": True}
        return [make_finding(
            "params-not-in-optimizer", "warning",
            f"{len(added)} trainable parameter(s) in {shown} were added to the model after the optimizer was "
            "built (a module replaced during the run) and are in no param group"
            + (f"; {len(end.added_with_grad)} receive gradients" if end.added_with_grad else "")
            + ": no watched optimizer updates them",
            evidence, _fix(modules, added))]
