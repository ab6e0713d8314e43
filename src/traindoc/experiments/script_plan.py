"""Trials of an unmodified training script: each one ``traindoc run`` of it, in a process of its own.

A `ScriptPlan` runs ``python -m traindoc run SCRIPT --max-steps N --run-dir DIR --json FILE --trial
SETTING -- ARGS`` per trial (`traindoc.script.trial` applies the setting through PyTorch's hooks,
the script's source is not touched), in the working directory the command was started in, with its
output kept in ``DIR/../output.txt``. What the trial measured comes back from its run directory:
each optimizer step's loss (the script's own, as the monitor logged it), its gradient norm before
clipping, group 0's LR, and the script's clipping threshold. A fresh process per trial means the
script's global state (seeds, caches, Accelerate's singletons) starts clean each time, and trials run
side by side in a pool of ``jobs`` processes (`concurrent.futures`), or as tasks on a Ray cluster. The first trial's doctor
findings (``traindoc run`` runs the one-batch doctor at the first step) explain a loss that does
not learn one batch (`traindoc.experiments.overfit.doctor_errors`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from traindoc.errors import TraindocInputError
from traindoc.experiments.trial import Curve, Setting


class ScriptPlan:
    def __init__(self, script: str | os.PathLike[str], args: Sequence[str] = (), *,
                 workdir: str | os.PathLike[str] | None = None, threads: int | None = None):
        path = Path(script)
        if not path.is_file():
            raise TraindocInputError("SCRIPT", f"{script} is not a file")
        self.script = str(path)
        self.args = list(args)
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="traindoc-trials-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.cwd = os.getcwd()
        self._count = 0
        self._base_lr: float | None = None
        self.findings: list[dict[str, Any]] = []
        """The doctor's findings on the script (from the first trial that ran it), with their lines."""
        self.lines: dict[str, dict[str, Any]] | None = None
        """Where an experiment's finding on the script points, by id, as the first trial located it (the
        line of the setting itself: ``lr=`` in the optimizer's construction, ``learning_rate=`` in a
        Hugging Face Trainer's arguments)."""

    # ------------------------------------------------------------------ one trial
    def run(self, setting: Setting, *, bounded: bool = True) -> Curve:
        """One trial; ``bounded=False`` lets the script run to its own end (its planned length)."""
        self._count += 1
        return self._record(*self.execute(self._count, setting, bounded=bounded))

    def execute(self, index: int, setting: Setting, *, bounded: bool = True) -> tuple[Curve, dict[str, Any]]:
        """Trial number ``index`` in a process of its own: its curve and its ``traindoc run`` JSON. Touches
        nothing of the plan (it may run in a pool or on a Ray worker)."""
        here = self.workdir / f"trial-{index:03d}"
        here.mkdir(parents=True, exist_ok=True)
        out = here / "findings.json"
        command = [sys.executable, "-m", "traindoc", "run", self.script, "--run-dir", str(here / "run"),
                   "--json", str(out), "--trial", json.dumps(asdict(setting))]
        if bounded:
            command += ["--max-steps", str(setting.steps)]
        env = dict(os.environ)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        with open(here / "output.txt", "wb") as log:
            code = subprocess.call([*command, "--", *self.args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=self.cwd)
        if not out.is_file():
            raise TraindocInputError("SCRIPT", f"a trial of {self.script} did not run (exit status {code}); its "
                                               f"output is in {here / 'output.txt'}")
        data = json.loads(out.read_text())
        info = data.get("info", {})
        if setting.one_batch and not (info.get("trial") or {}).get("one_batch_applied"):
            raise TraindocInputError("SCRIPT", f"{self.script} reads no data through a torch DataLoader, so a trial "
                                               "cannot hold it to one batch: use traindoc.experiments.overfit_batch "
                                               "from Python")
        if not info.get("optimizer_steps"):
            raise TraindocInputError("SCRIPT", f"a trial of {self.script} made no optimizer step; its output is in "
                                               f"{here / 'output.txt'}")
        curve = self._curve(here / "run")
        curve.scores = [float(v) if isinstance(v, (int, float)) else float("nan")
                        for v in (info.get("trial") or {}).get("scores") or []]
        return curve, data

    def _record(self, curve: Curve, data: dict[str, Any]) -> Curve:
        """Keep what the first trials tell about the script: the doctor's findings, the base LR, the lines."""
        info = data.get("info", {})
        if not self.findings:
            self.findings = [f for f in data.get("findings", []) if f["id"] != "probe-failed"]
        if self._base_lr is None and isinstance(info.get("lr"), (int, float)):
            self._base_lr = float(info["lr"])
        if self.lines is None:
            self.lines = (info.get("trial") or {}).get("lines") or {}
        return curve

    @staticmethod
    def _curve(run_dir: Path) -> Curve:
        from traindoc.rundir import read_run

        rows = read_run(run_dir).scalars
        nan = float("nan")

        def number(v: Any) -> float:
            return float(v) if isinstance(v, (int, float)) else nan

        return Curve(losses=[number(r.get("loss")) for r in rows],
                     grad_norms=[number(r.get("grad_norm")) for r in rows],
                     lrs=[number((r.get("lr") or [nan])[0]) for r in rows],
                     clip=next((r["clip_threshold"] for r in rows if r.get("clip_threshold") is not None), None))

    def run_many(self, settings: Sequence[Setting], *, jobs: int = 1, backend: str = "pool",
                 progress: Callable[[int, int], None] | None = None) -> list[Curve]:
        """The settings' trials, numbered in order, ``jobs`` at a time (each a process of its own), or as
        Ray tasks (``backend="ray"``)."""
        indices = list(range(self._count + 1, self._count + 1 + len(settings)))
        self._count += len(settings)
        if backend == "ray":
            from traindoc.experiments.jobs import ray_map

            results = ray_map(lambda plan, i, s: plan.execute(i, s), self, list(zip(indices, settings, strict=True)),
                              progress=progress)
        else:
            total, done = len(settings), [0]

            def one(item: tuple[int, Setting]) -> tuple[Curve, dict[str, Any]]:
                result = self.execute(*item)
                done[0] += 1
                if progress is not None:
                    progress(done[0], total)
                return result

            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                results = list(pool.map(one, zip(indices, settings, strict=True)))
        return [self._record(*r) for r in results]

    # ------------------------------------------------------------------ what the experiments ask
    @property
    def base_lr(self) -> float:
        """Group 0's peak LR in the script (a one-step trial reads it when no trial has yet)."""
        if self._base_lr is None:
            self.run(Setting(steps=1))
        return self._base_lr if self._base_lr is not None else 0.0

    def planned_steps(self) -> int:
        """How many optimizer steps the script makes when it runs to its end (one unbounded trial)."""
        return len(self.run(Setting(steps=1), bounded=False).losses)

EXPERIMENTS = ("lr", "warmup", "clip", "instability", "overfit", "fix")

def script_experiment(kind: str, script: str | os.PathLike[str], args: Sequence[str] = (), *,
                      max_steps: int | None = None, trials: int = 7, seeds: int = 2, planned_steps: int | None = None,
                      lr: float | None = None, jobs: int = 1, workdir: str | os.PathLike[str] | None = None,
                      change: dict[str, Any] | None = None, backend: str = "pool",
                      progress: Callable[[int, int], None] | None = None) -> Any:
    """Run experiment ``kind`` (`EXPERIMENTS`) on an unmodified script; each trial at most ``max_steps``
    optimizer steps. Returns the `traindoc.experiments.result.ExperimentResult`, its findings placed on
    the script's lines (the optimizer's construction, the optimizer step)."""
    from traindoc.experiments.clipping import clip_experiment
    from traindoc.experiments.learning_rate import lr_experiment
    from traindoc.experiments.overfit import overfit_experiment
    from traindoc.experiments.stability import instability_experiment, warmup_experiment
    from traindoc.experiments.verify import fix_experiment

    if kind not in EXPERIMENTS:
        raise TraindocInputError("experiment", f"must be one of {', '.join(EXPERIMENTS)}, got {kind!r}")
    for name, value in (("--max-steps", max_steps), ("--trials", trials), ("--seeds", seeds),
                        ("--planned-steps", planned_steps), ("--jobs", jobs)):
        if value is not None and value < 1:
            raise TraindocInputError(name, f"must be >= 1, got {value}")
    plan = ScriptPlan(script, args, workdir=workdir, threads=1 if jobs > 1 else None)
    if kind == "lr":
        steps = max_steps or 100
        planned = planned_steps or plan.planned_steps()
        result = lr_experiment(plan, max_steps=steps, trials=trials, seeds=seeds, planned_steps=planned, jobs=jobs,
                               backend=backend, progress=progress)
    elif kind == "warmup":
        planned = planned_steps or plan.planned_steps()
        result = warmup_experiment(plan, planned_steps=planned, lr=lr, max_steps=max_steps, jobs=jobs,
                                   backend=backend, progress=progress)
    elif kind == "fix":
        if change and change.get("zero_grad") is False:
            raise TraindocInputError("--zero-grad", "a trial can add zero_grad to a script, not take it away")
        result = fix_experiment(plan, change=change or {}, steps=max_steps or 100, seeds=seeds, jobs=jobs,
                                backend=backend)
    elif kind == "clip":
        result = clip_experiment(plan, steps=max_steps or 100)
    elif kind == "instability":
        result = instability_experiment(plan, lr=lr, steps=max_steps or 500)
    else:
        result = overfit_experiment(plan, steps=max_steps or 200, lr=lr)
    result.info.update({"script": str(script), "trial_runs": plan._count, "trials_directory": str(plan.workdir)})
    result.locations = [f.evidence.pop("location", None) or (plan.lines or {}).get(f.id) for f in result.findings]
    if kind == "overfit":
        result.info["doctor"] = [{"id": f["id"], "severity": f["severity"], "message": f["message"]}
                                 for f in plan.findings]
    return result
