"""Overhead of `traindoc run` on a clean training script: the script's whole wall time, plain
(``python SCRIPT``) and traced (``python -m traindoc run SCRIPT``), the runs interleaved (plain,
traced, plain, traced, ...) so that drift of the machine hits both; the doctor's one-off cost at the
first optimizer step is included, as is Python's and torch's start-up (the same in both).

    python benchmarks/run_overhead.py                                  # scripts/lm_loop.py, 300 steps
    python benchmarks/run_overhead.py --rounds 5 -- SCRIPT [ARGS...]   # any script
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    argv = sys.argv[1:]
    script_cmd = argv[argv.index("--") + 1:] if "--" in argv else [str(HERE / "scripts" / "lm_loop.py"), "300"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    plain, traced = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            plain.append(timed([sys.executable, *script_cmd]))
            traced.append(timed([sys.executable, "-m", "traindoc", "run", script_cmd[0], "--run-dir",
                                 f"{tmp}/run{r}", "--", *script_cmd[1:]]))
            print(f"round {r + 1}: plain {plain[-1]:.2f} s, traced {traced[-1]:.2f} s "
                  f"({traced[-1] / plain[-1]:.3f}x)", file=sys.stderr, flush=True)
    ratios = [t / p for p, t in zip(plain, traced, strict=True)]
    print(f"{Path(script_cmd[0]).name}: plain {statistics.median(plain):.2f} s, traced {statistics.median(traced):.2f} s "
          f"(medians of {args.rounds}); traced/plain: median {statistics.median(ratios):.3f}x, "
          f"total {sum(traced) / sum(plain):.3f}x, per round {min(ratios):.3f}-{max(ratios):.3f}x")


if __name__ == "__main__":
    main()
