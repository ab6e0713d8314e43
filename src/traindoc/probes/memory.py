"""Probe ``oom-risk``: will weights + gradients + optimizer state + activations for this batch fit?

No extra pass. The parts:

- **weights**: parameters and buffers, in their own dtype;
- **gradients**: one per trainable parameter (same dtype);
- **optimizer state**: measured where it already exists, else estimated from the optimizer type
  (Adam/AdamW: 2 tensors per parameter, +1 with amsgrad; SGD with momentum: 1; RMSprop: 1 (+1
  momentum, +1 centered); Adagrad: 1; unknown types: 2);
- **activations**: on CPU, the bytes autograd saved for backward in the main pass (read from the
  retained graph, parameters and batch excluded; eval mode, so dropout masks are not included),
  falling back to the sum of module outputs; on CUDA, what the main pass added to
  ``torch.cuda.memory_allocated`` (measured with its graph alive, against the value just before it,
  so neither the user's other tensors nor traindoc's own snapshot count).

The budget is the CUDA device's free + already-reserved memory, or on CPU the available RAM
(``/proc/meminfo`` MemAvailable, the cgroup limit when lower) plus what this setup already holds.
The breakdown always lands in ``report.info["memory"]``; above 90% of the budget it is a warning.

    >>> states_per_param(__import__("torch").optim.SGD([__import__("torch").zeros(1)], lr=0.1, momentum=0.9))
    (1, 'by type SGD')
"""

from __future__ import annotations

import os
from typing import Any

import torch

from traindoc.findings import Finding
from traindoc.state import unique_params

THRESHOLD = 0.9


def states_per_param(opt: torch.optim.Optimizer | None) -> tuple[int, str]:
    """How many parameter-sized tensors this optimizer keeps per parameter, and how we know."""
    if opt is None:
        return 0, "no optimizer"
    name = type(opt).__name__
    d = opt.defaults
    if name in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "SparseAdam"):
        return 2 + int(bool(d.get("amsgrad", False))), f"by type {name}"
    if name == "SGD":
        return int(bool(d.get("momentum", 0))), f"by type {name}"
    if name == "RMSprop":
        return 1 + int(bool(d.get("momentum", 0))) + int(bool(d.get("centered", False))), f"by type {name}"
    if name in ("Adagrad",):
        return 1, f"by type {name}"
    if name in ("Adadelta", "Rprop", "ASGD"):
        return 2, f"by type {name}"
    if name == "LBFGS":
        return 2 * int(d.get("history_size", 100)) + 2, f"by type {name}"
    return 2, f"unknown optimizer {name}: assumed 2 states per parameter like Adam"


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def saved_tensor_bytes(root: torch.Tensor, exclude: set[tuple[str, int]]) -> int:
    """Bytes of the distinct storages autograd saved for backward in ``root``'s graph (minus
    ``exclude``: parameters, buffers and the batch)."""
    seen_nodes: set[int] = set()
    seen: set[tuple[str, int]] = set(exclude)
    total = 0
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except Exception:  # freed buffers, undefined optionals
                continue
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    key = _storage_key(t)
                    if key not in seen:
                        seen.add(key)
                        total += t.untyped_storage().nbytes()
        stack.extend(f for f, _ in node.next_functions if f is not None)
    return total


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_available() -> int | None:
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                raw = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return max(0, int(raw) - usage)
    return None


def device_memory(device: torch.device) -> dict[str, Any]:
    """``{"capacity", "available", "source"}`` in bytes for the device the model lives on."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        return {"capacity": int(total), "available": int(free + reserved),
                "source": f"torch.cuda.mem_get_info({device}) + this process's reserved memory"}
    info = _meminfo()
    capacity = info.get("MemTotal")
    available = info.get("MemAvailable")
    source = "/proc/meminfo MemAvailable"
    if capacity is None:
        try:
            capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
            source = "os.sysconf"
        except (ValueError, OSError, AttributeError):
            return {"capacity": None, "available": None, "source": "unknown"}
    cg = _cgroup_available()
    if cg is not None and (available is None or cg < available):
        available, source = cg, "cgroup memory limit"
    return {"capacity": capacity, "available": available, "source": source}


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_estimate(ctx: Any) -> dict[str, Any]:
    """The breakdown (bytes) of what one training step on this batch needs, and the budget."""
    setup = ctx.setup
    model, opt = setup.model, setup.optimizer
    params = {id(p): p for p in unique_params(model, opt)}
    buffers = [b for b in model.buffers() if b is not None]
    weights = sum(_bytes(p) for p in params.values()) + sum(_bytes(b) for b in buffers)
    trainable = [p for p in params.values() if p.requires_grad]
    grads = sum(_bytes(p) for p in trainable)
    grads_held = sum(_bytes(p.grad) for p in params.values() if p.grad is not None)

    n_states, state_source = states_per_param(opt)
    state_measured = state_estimated = 0
    if opt is not None:
        seen: set[tuple[str, int]] = set()
        for g in opt.param_groups:
            for p in g["params"]:
                st = opt.state.get(p)
                if st:
                    for v in st.values():
                        if isinstance(v, torch.Tensor) and v.numel() > 1:
                            key = _storage_key(v)
                            if key not in seen:
                                seen.add(key)
                                state_measured += v.untyped_storage().nbytes()
                elif p.requires_grad:
                    state_estimated += n_states * _bytes(p)
    optimizer_state = state_measured + state_estimated

    exclude = {_storage_key(t) for t in list(params.values()) + buffers + list(setup.tensors.values())}
    root = ctx.main.loss if isinstance(ctx.main.loss, torch.Tensor) and ctx.main.loss.grad_fn is not None \
        else ctx.main.logits
    activations, act_source = 0, "none"
    if setup.device.type == "cuda" and torch.cuda.is_available() and ctx.memory_before_main is not None:
        allocated = torch.cuda.memory_allocated(setup.device)
        activations = max(0, allocated - ctx.memory_before_main)
        act_source = "torch.cuda.memory_allocated with the main pass's graph alive, minus what it was before"
    elif isinstance(root, torch.Tensor) and root.grad_fn is not None:
        activations = saved_tensor_bytes(root, exclude)
        act_source = "bytes saved for backward in the main pass (eval mode)"
    if activations == 0 and ctx.main.activation_bytes:
        activations, act_source = ctx.main.activation_bytes, "sum of module outputs in the main pass"
    total = weights + grads + optimizer_state + activations
    dropouts = sum(1 for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
    dev = device_memory(setup.device)
    held_now = weights + grads_held + state_measured + activations
    budget = None if dev["available"] is None else dev["available"] + (held_now if setup.device.type != "cuda" else 0)
    est = {
        "device": str(setup.device),
        "weights": weights, "gradients": grads, "optimizer_state": optimizer_state,
        "optimizer_state_measured": state_measured, "optimizer_state_estimated": state_estimated,
        "optimizer_states_per_param": n_states, "optimizer_state_from": state_source,
        "activations": activations, "activations_from": act_source,
        "activations_note": (f"eval mode: in training the {dropouts} dropout modules also keep their masks "
                             "(about +1 byte per activation element they see)") if dropouts else "",
        "batch_size": setup.batch_size, "total": total,
        "device_capacity": dev["capacity"], "budget": budget, "budget_from": dev["source"],
        "fraction_of_budget": (total / budget) if budget else None,
        "summary": (f"weights {_human(weights)} + grads {_human(grads)} + optimizer {_human(optimizer_state)} + "
                    f"activations {_human(activations)} = {_human(total)} of {_human(budget)} available"),
    }
    if budget and activations and setup.batch_size:
        per_sample = activations / setup.batch_size
        room = THRESHOLD * budget - (weights + grads + optimizer_state)
        est["activations_per_sample"] = int(per_sample)
        est["max_batch_size_that_fits"] = max(0, int(room // per_sample)) if per_sample else None
    return est


def oom_risk(ctx: Any) -> list[Finding]:
    """``oom-risk``: the step's memory estimate above 90% of the device's budget (warning)."""
    est = memory_estimate(ctx)
    ctx.notes["memory"] = est
    frac = est["fraction_of_budget"]
    if frac is None or frac <= THRESHOLD:
        return []
    fits = est.get("max_batch_size_that_fits")
    return [Finding(
        "oom-risk", "warning",
        f"One training step needs ~{_human(est['total'])}, {frac:.0%} of the {_human(est['budget'])} "
        f"available on {est['device']}" + (f"; a batch of about {fits} would fit" if fits is not None else ""),
        est,
        "Halve the batch and accumulate gradients (`loss = loss / accum; loss.backward()` and step every "
        "`accum` batches), enable gradient checkpointing (`model.gradient_checkpointing_enable()` in "
        "Hugging Face, `torch.utils.checkpoint` otherwise), or train in mixed precision "
        "(`torch.autocast('cuda', dtype=torch.bfloat16)`); a lighter optimizer state (SGD with momentum, "
        "8-bit Adam) saves 1-2x the weights.")]
