"""Trials as independent jobs: one after another, or in a local process pool.

Every trial of an experiment starts from the same `Plan` and changes only its `Setting`, so trials
never talk to each other. ``jobs=1`` runs them in order in this process. ``jobs > 1`` runs them in a
``concurrent.futures.ProcessPoolExecutor`` whose workers are forked from this process (they inherit
the plan, model and batches without pickling them: only the settings and the measured curves cross
the process boundary); where fork is not available (macOS and Windows start processes by spawning),
the trials run in order. ``backend="ray"`` sends each trial to a Ray cluster as a task (the plan is
pickled once into Ray's object store). The user's objects are never trained in any case: a trial
trains a copy.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from traindoc.experiments.trial import Curve, Plan, Setting

_PLAN: Plan | None = None
"""The plan a forked worker inherits (set just before the pool forks)."""


def _run_one(setting: Setting, threads: int) -> Curve:
    assert _PLAN is not None
    torch.set_num_threads(threads)
    return _PLAN.run(setting)


def ray_map(fn: Any, plan: Any, items: Sequence[Any], *, progress: Any = None) -> list[Any]:
    """``fn(plan, *item)`` for each item as Ray tasks, results in order. Connects to the cluster named by
    ``RAY_ADDRESS`` (or the one this process already joined with ``ray.init``), else starts a local
    Ray instance. The plan is put in Ray's object store once."""
    try:
        import ray
    except ImportError as e:
        from traindoc.report.html import MissingExtraError

        raise MissingExtraError("trials on Ray need ray, which is not installed: pip install 'traindoc[ray]'") from e
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False)
    task = ray.remote(lambda p, *item: fn(p, *item))
    shared = ray.put(plan)
    refs = [task.remote(shared, *(item if isinstance(item, tuple) else (item,))) for item in items]
    results: list[Any] = []
    for i, ref in enumerate(refs):
        results.append(ray.get(ref))
        if progress is not None:
            progress(i + 1, len(refs))
    return results


def run_trials(plan: Any, settings: Sequence[Setting], *, jobs: int = 1, progress: Any = None,
               backend: str = "pool") -> list[Curve]:
    """Each setting's curve, in order. ``progress(done, total)`` is called after each trial. A plan that
    runs its trials as processes of their own (`traindoc.experiments.script_plan.ScriptPlan`) runs them
    in a pool of ``jobs``; ``backend="ray"`` runs every trial as a Ray task (`ray_map`)."""
    global _PLAN
    if backend not in ("pool", "ray"):
        from traindoc.errors import TraindocInputError

        raise TraindocInputError("backend", f"must be 'pool' (local processes) or 'ray', got {backend!r}")
    run_many = getattr(plan, "run_many", None)
    if run_many is not None:
        return run_many(settings, jobs=jobs, backend=backend, progress=progress)
    if backend == "ray":
        return ray_map(lambda p, s: p.run(s), plan, list(settings), progress=progress)
    total = len(settings)
    fork = "fork" in multiprocessing.get_all_start_methods() and sys.platform.startswith("linux")
    if jobs <= 1 or total <= 1 or not fork:
        curves = []
        for i, s in enumerate(settings):
            curves.append(plan.run(s))
            if progress is not None:
                progress(i + 1, total)
        return curves
    _PLAN = plan
    threads = max(1, torch.get_num_threads() // jobs)
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_run_one, s, threads) for s in settings]
            curves = []
            for i, f in enumerate(futures):
                curves.append(f.result())
                if progress is not None:
                    progress(i + 1, total)
            return curves
    finally:
        _PLAN = None
