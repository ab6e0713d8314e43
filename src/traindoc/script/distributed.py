"""Findings that exist only when a script trains in several processes (torchrun, DistributedDataParallel).

Each rank of a ``torchrun ... -m traindoc run`` measures, while its script runs (`RankMeasures`):

* the fingerprints (`traindoc.monitor.recorder.BatchFingerprint`) of the batches its model takes at its
  first `BATCHES_COMPARED` training calls;
* the fingerprint of every parameter (sum and L2 norm, `traindoc.monitor.stats.param_fingerprints`)
  at the first optimizer step, before it updates anything, and at the end of the run;
* whether the model is trained through a DistributedDataParallel wrapper.

Rank 0 gathers them (`traindoc.script.ranks`) and judges (`cross_rank_findings`):

``ddp-same-data`` (error)
    Two ranks whose batches are equal at every compared position, with at least 2 positions compared.
    The fingerprint is a weighted sum of a strided sample of each batch tensor: equal batches give
    equal values bit for bit; unequal batches give equal values only by accident, and 2 or more
    accidents in a row at the same positions are not one. Evidence: the positions compared, the
    ranks, the sampler types of the DataLoaders the script built, whether the processes joined a process
    group, what built the DDP wrapper, and Accelerate's own view (its distributed type and process
    count) when the script uses it: each changes the fix (shard with DistributedSampler; pass the
    DataLoader to ``accelerator.prepare``; make Accelerate see the launch).

``ddp-replicas-diverged`` (error under DDP, warning without it)
    Ranks that ran the same number of optimizer steps and whose parameters were equal at the first
    step (within ``REPLICA_TOLERANCE``) but differ at the end by more than ``REPLICA_TOLERANCE`` of
    the parameter's L2 norm, in its sum or norm. DDP broadcasts rank 0's weights when it is built
    and averages the gradients bit-identically on every rank, so under DDP any difference is a
    defect; without DDP, separate models may be intended, hence a warning. Parameters that differ
    already at the first step (sharded or tensor-parallel models, different seeds without DDP) are
    not judged: nothing shows that they should be equal. When the same run has
    ``ddp-wrapper-bypassed``, the divergence is its evidence rather than a second finding.

Judged on each rank from what its own capture saw:

``ddp-wrapper-bypassed`` (error, `bypass_finding`)
    A DistributedDataParallel wrapper was built around the model, and the training call that the
    first optimizer step follows went to the module inside it: DDP's forward did not run, so its
    reducer expected no gradients and averaged none.

``ddp-set-epoch-missing`` (warning, `set_epoch_findings`)
    A DistributedSampler with ``shuffle=True`` started 2 or more iterations, all at the same epoch.
    Its permutation depends only on ``seed + epoch``: every epoch repeats the first one's order.

``ddp-unused-parameters`` (error, `unused_parameters_finding`)
    The script crashed with DDP's "Expected to have finished reduction in the prior iteration"; the
    parameter indices its message lists are mapped to the names of the parameters the wrapper holds
    (DDP numbers the parameters that require gradients, in ``named_parameters`` order).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from traindoc.findings import Finding, listed
from traindoc.monitor.recorder import BatchFingerprint
from traindoc.monitor.stats import param_fingerprints
from traindoc.script.capture import Seen

DISTRIBUTED_IDS = ("ddp-same-data", "ddp-set-epoch-missing", "ddp-wrapper-bypassed", "ddp-replicas-diverged",
                   "ddp-unused-parameters")
"""The finding ids of this module (see the module docstring)."""

BATCHES_COMPARED = 8
"""How many of each rank's first training batches are fingerprinted and compared across ranks."""

REPLICA_TOLERANCE = 1e-5
"""Relative to a parameter's L2 norm: how far the sum or norm of two ranks' copies may differ."""


def ddp_type() -> type | None:
    """``DistributedDataParallel`` where this PyTorch build has ``torch.distributed``, else None."""
    if not torch.distributed.is_available():
        return None
    return torch.nn.parallel.DistributedDataParallel


def wrapper_of(model: torch.nn.Module, seen: Seen) -> torch.nn.Module | None:
    """The DistributedDataParallel wrapper the script built around ``model`` (or around a module that holds
    it: a loop calling ``ddp.module.encoder(x)`` trains a part of the wrapped model), if any."""
    for ref, _ in seen.created.get("ddp", []):
        wrapper = ref()
        inner = getattr(wrapper, "module", None) if wrapper is not None else None
        if isinstance(inner, torch.nn.Module) and any(m is model for m in inner.modules()):
            return wrapper
    return None


def declared_unused(findings: list[Finding], wrapper: torch.nn.Module | None) -> list[Finding]:
    """A model wrapped with ``DistributedDataParallel(find_unused_parameters=True)``: the script declared
    that some parameters get no gradient in a step, so ``no-grad-params`` for parameters the loss does
    not reach is a hint (what is unused), not an error."""
    if wrapper is None or not getattr(wrapper, "find_unused_parameters", False):
        return findings
    out = []
    for f in findings:
        if f.id == "no-grad-params" and f.severity == "error" and str(f.evidence.get("gradient", "")).startswith("None"):
            f = Finding(f.id, "hint", f.title + " (declared: DistributedDataParallel(find_unused_parameters=True))",
                        {**f.evidence, "declared_by": "find_unused_parameters=True"}, f.fix)
        out.append(f)
    return out


def parameter_prints(model: torch.nn.Module) -> dict[str, list[float]]:
    """Each parameter's ``[sum, L2 norm, numel]`` (one device-to-host copy)."""
    named = [(n, p) for n, p in model.named_parameters()]
    if not named:
        return {}
    values = param_fingerprints([p for _, p in named]).tolist()
    return {n: [float(v[0]), float(v[1]), float(p.numel())] for (n, p), v in zip(named, values, strict=True)}


@dataclass
class RankMeasures:
    """What one rank measures for `cross_rank_findings` (see the module docstring)."""

    batches: list[torch.Tensor | None] = field(default_factory=list)
    params_start: dict[str, list[float]] | None = None
    params_end: dict[str, list[float]] | None = None
    ddp: bool = False
    wrapped_by: str = ""
    """The package whose call built the DDP wrapper: ``accelerate`` for ``accelerator.prepare``, ``torch``
    for the script's own ``DistributedDataParallel(...)``; "" without a wrapper."""
    process_group: bool = False
    """``torch.distributed`` was initialised at the first optimizer step."""
    accelerate: dict[str, Any] | None = None
    """Accelerate's view of the run (``distributed_type``, ``num_processes``) when the script uses it."""
    samplers: list[str] = field(default_factory=list)
    """The sampler classes of the DataLoaders the script built, at the first optimizer step."""
    _fingerprint: BatchFingerprint = field(default_factory=BatchFingerprint)

    def take_batch(self, batch: Any) -> None:
        if len(self.batches) < BATCHES_COMPARED:
            self.batches.append(self._fingerprint(batch))

    def to_dict(self, steps: int, crashed: bool) -> dict[str, Any]:
        batches = [None if b is None else float(b) for b in self.batches]
        return {"steps": steps, "crashed": crashed, "ddp": self.ddp, "wrapped_by": self.wrapped_by,
                "process_group": self.process_group, "accelerate": self.accelerate, "samplers": self.samplers,
                "batches": batches,
                "params_start": self.params_start, "params_end": self.params_end}


# ---------------------------------------------------------------------------- one rank


def bypass_finding(model: torch.nn.Module, outer: torch.nn.Module, seen: Seen) -> Finding | None:
    """``ddp-wrapper-bypassed`` when ``outer`` (the module the training call went to) is not the DDP
    wrapper the script built around ``model``."""
    wrapper = wrapper_of(model, seen)
    if wrapper is None or outer is wrapper:
        return None
    built = next((loc for ref, loc in seen.created.get("ddp", []) if ref() is wrapper), None)
    call = seen.lines.get("model")
    evidence: dict[str, Any] = {"called": type(outer).__name__, "wrapper": type(wrapper).__name__}
    if built is not None:
        evidence["wrapper_built_at"] = built.short()
    if call is not None:
        evidence["training_call"] = call.short()
    return Finding(
        "ddp-wrapper-bypassed", "error",
        f"The training loop calls the {type(outer).__name__} inside DistributedDataParallel, not the wrapper: "
        "its gradients are never averaged across ranks",
        evidence,
        "Call the DDP wrapper in the training loop (`out = ddp_model(x)`, not `ddp_model.module(x)` or the "
        "model it wraps); keep `.module` for saving and evaluation.")


def set_epoch_findings(seen: Seen) -> list[Finding]:
    """``ddp-set-epoch-missing`` for each shuffling DistributedSampler iterated at one epoch only."""
    found = []
    for ref, epochs in seen.sampler_epochs.values():
        sampler = ref()
        if len(epochs) >= 2 and len(set(epochs)) == 1 and getattr(sampler, "shuffle", False):
            found.append(Finding(
                "ddp-set-epoch-missing", "warning",
                f"The DistributedSampler was iterated {len(epochs)} times, every time at epoch {epochs[0]}: "
                "each epoch repeats the same order",
                {"iterations": len(epochs), "epoch": epochs[0], "seed": getattr(sampler, "seed", None),
                 "num_replicas": getattr(sampler, "num_replicas", None)},
                "Call `sampler.set_epoch(epoch)` at the start of each epoch, before iterating the DataLoader."))
    return found


_UNREDUCED = re.compile(r"Expected to have finished reduction in the prior iteration", re.I)
_INDICES = re.compile(r"Parameter indices which did not receive grad for rank \d+:\s*([\d ]+)")


def unused_parameters_finding(error: BaseException, seen: Seen) -> Finding | None:
    """``ddp-unused-parameters`` from DDP's own crash message (see the module docstring)."""
    text = str(error)
    if not _UNREDUCED.search(text):
        return None
    wrappers = [ref() for ref, _ in seen.created.get("ddp", []) if ref() is not None]
    wrapper = wrappers[-1] if wrappers else None
    names: list[str] = []
    indices: list[int] = []
    match = _INDICES.search(text)
    if match:
        indices = [int(i) for i in match.group(1).split()]
    if wrapper is not None and indices:
        trainable = [n for n, p in wrapper.module.named_parameters() if p.requires_grad]
        names = [trainable[i] for i in indices if 0 <= i < len(trainable)]
    evidence: dict[str, Any] = {"parameter_indices": listed(indices), "parameters": listed(names),
                                "find_unused_parameters": getattr(wrapper, "find_unused_parameters", None),
                                "error": text.strip().splitlines()[0][:200]}
    what = ", ".join(listed(names)) if names else "some parameters"
    return Finding(
        "ddp-unused-parameters", "error",
        f"DistributedDataParallel stopped the run: {what} took no part in the loss, and it was built with "
        "find_unused_parameters=False",
        evidence,
        "Use or remove the modules the forward skips, freeze them with `requires_grad_(False)` before wrapping, "
        "or pass `find_unused_parameters=True` to DistributedDataParallel (one extra graph traversal per step).")


# ---------------------------------------------------------------------------- across ranks


def accelerate_state() -> dict[str, Any] | None:
    """Accelerate's distributed type and process count, when the script imported Accelerate and its
    state is set up (read, never created); None otherwise."""
    state = sys.modules.get("accelerate.state")
    shared = getattr(getattr(state, "PartialState", None), "_shared_state", None)
    if not shared:
        return None
    kind = shared.get("distributed_type")
    return {"distributed_type": getattr(kind, "value", str(kind)), "num_processes": shared.get("num_processes")}


def _same_batches(ranks: dict[int, dict[str, Any]]) -> Finding | None:
    base = ranks.get(0, {}).get("batches") or []
    equal_to_0, compared = [], 0
    for r, m in sorted(ranks.items()):
        if r == 0:
            continue
        pairs = [(a, b) for a, b in zip(base, m.get("batches") or [], strict=False)
                 if a is not None and b is not None]
        if len(pairs) >= 2 and all(a == b for a, b in pairs):
            equal_to_0.append(r)
            compared = len(pairs) if not compared else min(compared, len(pairs))
    if not equal_to_0:
        return None
    m0 = ranks[0]
    accelerate = m0.get("accelerate")
    evidence = {"ranks_with_rank_0_batches": listed(equal_to_0), "world_size": len(ranks),
                "batches_compared": compared, "samplers": m0.get("samplers"), "process_group": m0.get("process_group"),
                "wrapped_by": m0.get("wrapped_by") or None, "accelerate": accelerate}
    title = (f"Ranks 0 and {listed(equal_to_0)} trained on the same batches ({compared} of {compared} compared): "
             f"{len(equal_to_0) + 1} processes do the work of one")
    if accelerate and accelerate.get("num_processes") == 1:
        title += (f"; Accelerate runs each as a single process (distributed_type {accelerate.get('distributed_type')}, "
                  "num_processes 1)")
        fix = ("Make Accelerate see the distributed launch: `accelerate launch` (with `--cpu` on a machine "
               "without GPUs), or set `ACCELERATE_USE_CPU=1` under torchrun on CPU; then "
               "`accelerator.num_processes` is the number of processes and `accelerator.prepare` shards the data.")
    elif not m0.get("process_group"):
        title += ", and they never joined one distributed job (torch.distributed is not initialised)"
        fix = ("Make the processes one job: `torch.distributed.init_process_group(...)`, the model wrapped in "
               "`DistributedDataParallel`, the data sharded with `DistributedSampler`.")
    elif m0.get("wrapped_by") == "accelerate":
        fix = ("Pass the training DataLoader to `accelerator.prepare(...)` with the model and optimizer: Accelerate "
               "then gives each rank its own shard (and sets the sampler's epoch).")
    else:
        fix = ("Shard the data per rank: `sampler = DistributedSampler(dataset, shuffle=True)` and "
               "`DataLoader(dataset, batch_size=..., sampler=sampler)`, with `sampler.set_epoch(epoch)` each epoch.")
    return Finding("ddp-same-data", "error", title, evidence, fix)


def _relative(a: list[float], b: list[float]) -> float:
    scale = max(abs(a[1]), abs(b[1]), 1e-12)
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) / scale


def _diverged(ranks: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """Evidence of replicas that were equal at the first step and differ at the end (None if none)."""
    base = ranks.get(0)
    if base is None or base.get("crashed") or not base.get("params_start") or not base.get("params_end"):
        return None
    worst: dict[str, float] = {}
    differing = []
    for r, m in sorted(ranks.items()):
        if r == 0 or m.get("crashed") or m.get("steps") != base["steps"] or not m.get("params_end"):
            continue
        start, end = m.get("params_start") or {}, m["params_end"]
        if set(start) != set(base["params_start"]) or set(end) != set(base["params_end"]):
            continue  # another model (pipeline stages): nothing to compare
        moved = {}
        for name, v0 in base["params_end"].items():
            if start[name][2] != base["params_start"][name][2] \
                    or _relative(start[name], base["params_start"][name]) > REPLICA_TOLERANCE:
                continue  # not equal at the start: not a replica of rank 0's parameter
            d = _relative(end[name], v0)
            if not math.isfinite(d) or d > REPLICA_TOLERANCE:
                moved[name] = d
        if moved:
            differing.append(r)
            for name, d in moved.items():
                worst[name] = max(worst.get(name, 0.0), d)
    if not differing:
        return None
    top = sorted(worst, key=lambda n: -worst[n] if math.isfinite(worst[n]) else -math.inf)[:5]
    return {"ranks_differing_from_rank_0": listed(differing), "parameters_differing": len(worst),
            "parameters": len(base["params_end"]), "steps": base["steps"],
            "largest_relative_differences": {n: worst[n] for n in top}}


def cross_rank_findings(ranks: dict[int, dict[str, Any]], *, bypassed: Finding | None) -> list[Finding]:
    """Rank 0's judgement of every rank's `RankMeasures` (see the module docstring). ``bypassed`` is the
    run's ``ddp-wrapper-bypassed`` finding, which takes the divergence as its evidence."""
    found = []
    same = _same_batches(ranks)
    if same is not None:
        found.append(same)
    drift = _diverged(ranks)
    if drift is not None:
        if bypassed is not None:
            bypassed.evidence["replicas_at_the_end"] = drift
        else:
            ddp = bool(ranks[0].get("ddp"))
            n = drift["parameters_differing"]
            found.append(Finding(
                "ddp-replicas-diverged", "error" if ddp else "warning",
                f"Ranks {listed(drift['ranks_differing_from_rank_0'])} end the run with weights different from "
                f"rank 0's in {n} of {drift['parameters']} parameters, after starting equal"
                + ("" if ddp else ": the model is not wrapped in DistributedDataParallel, so the ranks train "
                                  "separate copies"),
                {**drift, "ddp": ddp},
                "Wrap the model in `DistributedDataParallel(model)` and call the wrapper in the loop; do not "
                "change parameters on one rank only." if not ddp else
                "Find what changes the weights on one rank only (a parameter update outside the optimizer, a "
                "rank-dependent branch) and remove it; DDP keeps replicas equal only through its own forward "
                "and backward."))
    return found
