"""Running `traindoc run` on a gallery script, as a user would, and reading what it reported.

Each run is its own process: ``python -m traindoc run [RUN OPTIONS] SCRIPT --json OUT --run-dir DIR --
[--fixed]`` with one intra-op thread (``OMP_NUM_THREADS=1``; the gallery's scripts also set it), from
the repository's root, with a wall-clock limit. The outcome is what the JSON says: every finding's
id, severity, named line and the optimizer step at which traindoc had it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gallery.case import FIXED_FLAG, Case
from benchmarks.gallery.score import Outcome, Reported

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180.0


def quiet_env() -> dict[str, str]:
    """The environment of every gallery run: one thread, offline, no colour, no progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}


def run_traindoc(case: Case, *, fixed: bool, timeout: float = TIMEOUT_S) -> Outcome:
    """`traindoc run` on the case's buggy script (``fixed=False``) or on its healthy twin."""
    with tempfile.TemporaryDirectory(prefix="traindoc-gallery-") as tmp:
        out = Path(tmp) / "findings.json"
        cmd = [sys.executable, "-m", "traindoc", "run", *case.run_options, str(case.path), "--json", str(out),
               "--run-dir", str(Path(tmp) / "run"), "--", *([FIXED_FLAG] if fixed else [])]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=quiet_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome("traindoc", [], time.perf_counter() - t0, f"timed out after {timeout:.0f} s")
        wall = time.perf_counter() - t0
        if not out.exists():
            tail = (proc.stderr or proc.stdout)[-600:].strip()
            return Outcome("traindoc", [], wall, f"no JSON written (exit {proc.returncode}): {tail}",
                           proc.returncode)
        data = json.loads(out.read_text())
    reported = []
    for f in data["findings"]:
        loc = f.get("location") or {}
        reported.append(Reported(f["id"], f["severity"], loc.get("line"), f.get("step"), loc.get("file")))
    return Outcome("traindoc", reported, wall, "", data.get("exit_code"))
