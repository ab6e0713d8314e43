"""``torch.autograd.detect_anomaly`` (built into PyTorch): the whole script under anomaly mode.

How it is used. PyTorch's documentation: ``torch.autograd.set_detect_anomaly(True)`` (or ``with
torch.autograd.detect_anomaly():`` around the training loop) makes any backward function that returns
NaN raise ``RuntimeError: Function 'XBackward0' returned nan values in its 0th output.``, after a
warning that prints the traceback of the forward call that created it. The harness turns anomaly mode on
before the script starts and records that warning; the script runs unmodified.

Mapping. The anomaly error says a gradient became NaN, which comes from a NaN/Inf in the forward pass
or the loss (the forward traceback names the operation):

=================================================  ============================
what detect_anomaly says                            ids
=================================================  ============================
RuntimeError "Function ... returned nan values"     nan-loss, nan-forward
=================================================  ============================

It says nothing otherwise. ``step``: the optimizer steps taken when the error was raised (of the
optimizer that started last). ``line``: the innermost frame in the script of the forward traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.gallery.peers._base import DEFAULT_TIMEOUT, PeerResult, cannot_run, installed_version, launch

TRACE = False
NAME = "detect_anomaly"
IDS = ("nan-loss", "nan-forward")
ANOMALY = re.compile(r"Function '[^']+' returned nan values in its \d+(st|nd|rd|th) output")


# ---------------------------------------------------------------------------------------------------
# in the script's process (see _harness)


def setup(harness: Any) -> dict[str, Any]:
    import warnings

    import torch

    state: dict[str, Any] = {"warnings": []}
    original = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "Traceback of forward call" in text:
            state["warnings"].append(text)
        return original(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    # the gallery's runs ignore warnings (PYTHONWARNINGS=ignore); this one is the tool's output
    warnings.filterwarnings("always", message="Error detected in")
    torch.autograd.set_detect_anomaly(True)
    return state


def _chain(error: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while error is not None and error not in out:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def finish(harness: Any, state: dict[str, Any], error: BaseException | None) -> dict[str, Any]:
    anomaly = next((str(e).strip().splitlines()[0] for e in _chain(error) if ANOMALY.search(str(e))), None)
    recs = [r for r in harness.opts.values()]
    last = max(recs, key=lambda r: r.first_global) if recs else None
    return {"anomaly": anomaly, "forward_traceback": state["warnings"][:1],
            "steps": last.steps if last is not None else 0}


def script_line(traceback_text: str, script: Path) -> int | None:
    """The innermost frame of ``script`` in a forward traceback."""
    line = None
    for m in re.finditer(r'File "([^"]+)", line (\d+)', traceback_text):
        if Path(m.group(1)).resolve() == script.resolve():
            line = int(m.group(2))
    return line


# ---------------------------------------------------------------------------------------------------
# in the scorer's process


class DetectAnomalyPeer:
    name = NAME
    expressible = frozenset(IDS)

    @property
    def version(self) -> str:
        return "torch " + installed_version("torch")

    def run(self, script: Path, fixed: bool, run_options: list[str], timeout: float = DEFAULT_TIMEOUT
            ) -> PeerResult:
        refused = cannot_run(run_options)
        if refused is not None:
            return refused
        got = launch(NAME, script, fixed, timeout)
        if got.data is None or got.timed_out:
            return PeerResult([], None, None, got.wall_s, [], got.error)
        payload = got.data.get("payload", {})
        if not payload.get("anomaly"):
            how = got.data.get("exception") or "the script ended normally"
            return PeerResult([], None, None, got.wall_s, [f"no anomaly ({how})"])
        tb = "\n".join(payload.get("forward_traceback", []))
        line = script_line(tb, Path(script))
        messages = [f"RuntimeError: {payload['anomaly']}"]
        if tb:
            messages.append(tb.split("\n (Triggered internally")[0])
        steps = int(payload.get("steps", 0))
        return PeerResult(sorted(IDS), steps, line, got.wall_s, messages, "", dict.fromkeys(IDS, steps))
