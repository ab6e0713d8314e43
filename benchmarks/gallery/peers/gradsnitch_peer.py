"""gradsnitch (github devangpratap/gradsnitch): ``watch(model, optimizer)`` and ``log()`` at every step.

How it is used. gradsnitch's README, for a raw PyTorch loop::

    mon = gradsnitch.watch(model, optimizer, check_every=50)  # prints errors live
    ... loss.backward(); mon.log(step, loss.item()); optimizer.step() ...
    mon.report()                                              # verdicts at the end

In the script's process, one monitor per optimizer is created at its first step with the top-level
module that owns most of its parameters (a stand-in exposing the optimizer's parameters when no module
was called), and ``mon.log(step, loss)`` is called after every step of that optimizer with the mean of
the losses the script backpropagated in the step; ``log`` reads the gradient norm (the gradients are
still there after ``step()``), the LR and the update/weight ratio itself. When the script clipped the
gradients, the norm ``clip_grad_norm_`` returned (the pre-clip norm, which ``log`` would have read right
after ``backward()``) is passed as ``grad_norm=``. Live alerts are on: ``check_every=1`` (5 after 500
rows, 20 after 2000, to bound lint's cost), each alert recorded with the row it fired at; at the end
``mon.report()`` gives every verdict. There is no validation loss: scripts do not backpropagate it.

Which monitors count. Those of the optimizers of the run's final training phase (see _harness).
``step``: the row at which a live alert (gradsnitch raises live only its errors: GS001, GS002, GS006)
first fired; for a verdict given only by ``report()``, the number of rows logged.

Mapping (rule id -> catalog ids). gradsnitch names no line.

=====  ==========================================  ===============================================
rule   gradsnitch's finding                          ids
=====  ==========================================  ===============================================
GS001  Loss became NaN/Inf                           nan-loss, nan-forward, divergence
GS002  Gradient norm exploded (inf)                  exploding-gradients, nan-loss
GS003  Gradient-norm spike                           exploding-gradients
GS004  Train/val divergence (overfitting)            (none; no validation loss is logged anyway)
GS005  Loss plateau (no early progress)              loss-plateau
GS006  Loss divergence (sustained rise)              divergence
GS007  Vanishing gradients                           vanishing-gradients
GS008  LR too high / too low (update/weight ratio)   lr-too-high / lr-too-low (by the finding's name)
GS009  Loss oscillation (growing amplitude)          lr-too-high (its stated likely cause)
GS010  LR schedule collapsed early                   scheduler-misuse
=====  ==========================================  ===============================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.gallery.peers._base import (
    DEFAULT_TIMEOUT,
    PeerResult,
    active_records,
    cannot_run,
    installed_version,
    launch,
    no_step,
)

TRACE = False
NAME = "gradsnitch"

TABLE: dict[str, tuple[str, ...]] = {
    "GS001": ("nan-loss", "nan-forward", "divergence"),
    "GS002": ("exploding-gradients", "nan-loss"),
    "GS003": ("exploding-gradients",),
    "GS004": (),
    "GS005": ("loss-plateau",),
    "GS006": ("divergence",),
    "GS007": ("vanishing-gradients",),
    "GS008": ("lr-too-high", "lr-too-low"),
    "GS009": ("lr-too-high",),
    "GS010": ("scheduler-misuse",),
}


def ids_for(code: str, name: str) -> list[str]:
    if code == "GS008":
        return ["lr-too-high"] if "too high" in name.lower() else ["lr-too-low"] if "too low" in name.lower() else []
    return list(TABLE.get(code, ()))


# ---------------------------------------------------------------------------------------------------
# in the script's process (see _harness)


class _Params:
    """What ``watch`` needs of a model when the script called none: its parameters."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer

    def parameters(self) -> Any:
        return iter([p for g in self.optimizer.param_groups for p in g["params"]])


def setup(harness: Any) -> dict[str, Any]:
    import gradsnitch

    state: dict[str, Any] = {"monitors": {}, "alerts": {}}

    def on_row(rec: Any) -> None:
        key = str(rec.index)
        mon = state["monitors"].get(key)
        if mon is None:
            alerts = state["alerts"].setdefault(key, [])
            model = rec.model if rec.model is not None else _Params(rec.optimizer)

            def on_alert(finding: Any, alerts: list = alerts) -> None:
                alerts.append({"row": len(state["monitors"][key].rows) - 1, "code": finding.code,
                               "name": finding.name, "text": str(finding)})

            mon = state["monitors"][key] = gradsnitch.watch(model, rec.optimizer, check_every=1, on_alert=on_alert)
        extra = {"grad_norm": rec.clip_norm[-1]} if rec.clip_norm[-1] is not None else {}
        mon.log(rec.steps - 1, rec.loss[-1], **extra)
        n = len(mon.rows)
        mon.check_every = 1 if n < 500 else 5 if n < 2000 else 20

    harness.row_callbacks.append(on_row)
    return state


def finish(harness: Any, state: dict[str, Any], error: BaseException | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, mon in state["monitors"].items():
        try:
            findings = mon.report()
            report = [{"code": f.code, "name": f.name, "severity": f.severity, "text": str(f)} for f in findings]
            err = ""
        except Exception as e:  # gradsnitch's own failure on this log
            report, err = [], f"{type(e).__name__}: {e}"
        out[key] = {"rows": len(mon.rows), "alerts": state["alerts"].get(key, []), "report": report, "error": err,
                    "model": type(mon.model).__name__}
    return {"monitors": out}


# ---------------------------------------------------------------------------------------------------
# in the scorer's process


class GradsnitchPeer:
    name = NAME
    expressible = frozenset(i for ids in TABLE.values() for i in ids)

    @property
    def version(self) -> str:
        return installed_version("gradsnitch")

    def run(self, script: Path, fixed: bool, run_options: list[str], timeout: float = DEFAULT_TIMEOUT
            ) -> PeerResult:
        refused = cannot_run(run_options, "gradsnitch", "pandas")
        if refused is not None:
            return refused
        got = launch(NAME, script, fixed, timeout)
        if got.data is None or got.timed_out:
            return PeerResult([], None, None, got.wall_s, [], got.error)
        monitors = got.data.get("payload", {}).get("monitors", {})
        chosen = [str(o["index"]) for o in active_records(got.data) if str(o["index"]) in monitors]
        if not chosen:
            return PeerResult([], None, None, got.wall_s, [], no_step(got.data))
        id_steps: dict[str, int] = {}
        messages: list[str] = []
        errors: list[str] = []
        for key in chosen:
            mon = monitors[key]
            if mon["error"]:
                errors.append(mon["error"])
            for a in mon["alerts"]:
                messages.append(f"live alert at row {a['row']}: {a['text']}")
                for i in ids_for(a["code"], a["name"]):
                    id_steps[i] = min(id_steps.get(i, a["row"]), a["row"])
            for f in mon["report"]:
                messages.append(f"report() after {mon['rows']} rows: {f['text']}")
                for i in ids_for(f["code"], f["name"]):
                    id_steps.setdefault(i, mon["rows"])
        if not messages:
            messages.append(f"report(): no findings ({', '.join(str(monitors[k]['rows']) for k in chosen)} rows)")
        ids = sorted(id_steps)
        step = min(id_steps.values()) if id_steps else None
        error = "; ".join(errors) if errors and not ids else ""
        return PeerResult(ids, step, None, got.wall_s, messages, error, id_steps)
