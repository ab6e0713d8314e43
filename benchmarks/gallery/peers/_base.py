"""What a peer adapter returns, and the subprocess launcher every adapter shares."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.gallery.runs import quiet_env

REPO = Path(__file__).resolve().parents[3]
DEFAULT_TIMEOUT = 120.0
MULTIPROCESS = "multi-process case: not supported"


@dataclass
class PeerResult:
    ids: list[str]
    """Catalog ids this peer's output amounts to (mapped by the adapter's table)."""
    step: int | None
    """Optimizer steps the script had taken when the peer first reported one of `ids` (None: nothing
    reported). One-batch tools: 0. Monitors: the index of the log row at which the peer reported it,
    or the number of rows logged when the peer reports only at the end of the run."""
    line: int | None
    """The script line the peer names (None: this peer names no line)."""
    wall_s: float
    messages: list[str]
    """The peer's own words, for the report."""
    error: str = ""
    """Why the adapter or the peer failed or could not apply ("" when it ran)."""
    id_steps: dict[str, int] = field(default_factory=dict)
    """For each of `ids`, the step at which the peer first reported it (same convention as `step`)."""


class Peer(Protocol):
    name: str
    version: str
    expressible: frozenset[str]
    """Catalog ids this peer can report at all (the values of its mapping table)."""

    def run(self, script: Path, fixed: bool, run_options: list[str], timeout: float = DEFAULT_TIMEOUT
            ) -> PeerResult: ...


@dataclass
class Launch:
    """One harness run of a script: its JSON (None when there is none) or why it failed."""

    data: dict[str, Any] | None
    error: str
    wall_s: float
    log_tail: str
    timed_out: bool = False


def launch(peer: str, script: Path, fixed: bool, timeout: float) -> Launch:
    """Run ``script`` (with ``--fixed`` for its healthy twin) under `_harness` for ``peer``, in a
    subprocess with the environment of the gallery's traindoc runs (`runs.quiet_env`: one thread,
    offline), in a temporary working directory as those runs are; kill it after ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix=f"peer-{peer}-") as tmp:
        out, log = Path(tmp) / "out.json", Path(tmp) / "log.txt"
        cmd = [sys.executable, "-m", "benchmarks.gallery.peers._harness", peer, str(out), str(Path(script).resolve())]
        if fixed:
            cmd.append("--fixed")
        env = {**quiet_env(), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
               "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        t0 = time.perf_counter()
        timed_out = False
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.perf_counter() - t0
        tail = log.read_text(errors="replace")[-4000:]
        data = None
        if out.exists():
            try:
                data = json.loads(out.read_text())
            except ValueError:
                data = None
        if timed_out:
            error = f"timeout: the script ran for more than {timeout:g} s and was killed"
        elif data is None:
            last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            error = f"the harness failed (exit {proc.returncode}): {last[0]}"
        else:
            error = ""
        return Launch(data, error, wall, tail, timed_out)


def active_records(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The harness's records of the optimizers of the run's final training phase."""
    by_index = {o["index"]: o for o in data.get("optimizers", [])}
    return [by_index[i] for i in data.get("active", []) if i in by_index]


def no_step(data: dict[str, Any]) -> str:
    """Why nothing was captured: the script took no optimizer step (and how it ended)."""
    how = f" (it raised {data['exception']})" if data.get("exception") else ""
    return f"the script took no optimizer step{how}: nothing to feed the peer"


def multiprocess(run_options: list[str]) -> bool:
    return any(opt == "--nproc" or opt.startswith("--nproc=") for opt in run_options)


def cannot_run(run_options: list[str], *modules: str) -> PeerResult | None:
    """The result of a peer that cannot run this case (a multi-process case, or a module it needs is not
    installed), else None."""
    if multiprocess(run_options):
        return PeerResult([], None, None, 0.0, [], MULTIPROCESS)
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return PeerResult([], None, None, 0.0, [], f"not installed: {', '.join(missing)}")
    return None


def installed_version(distribution: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
