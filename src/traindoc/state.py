"""Leave the user's training exactly as we found it.

`preserved(model, optimizer)` snapshots parameters, buffers, ``.grad``s, optimizer state and param
groups, RNG state (torch CPU/CUDA, `random`, numpy) and every module's train/eval flag, and restores
them bit for bit on exit, whatever happened inside. `fingerprint` hashes all of it, so tests can
prove a probe changed nothing.

    >>> import torch
    >>> m = torch.nn.Linear(3, 2); opt = torch.optim.AdamW(m.parameters())
    >>> before = fingerprint(m, opt)
    >>> with preserved(m, opt):
    ...     m(torch.randn(4, 3)).sum().backward(); opt.step(); _ = m.eval()
    >>> fingerprint(m, opt) == before
    True
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return copy.deepcopy(value)


class _RngState:
    def __init__(self) -> None:
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.python = random.getstate()
        try:
            import numpy as np

            self.numpy: Any = np.random.get_state()
        except ImportError:  # pragma: no cover - numpy is a dependency
            self.numpy = None

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        if self.numpy is not None:
            import numpy as np

            np.random.set_state(self.numpy)


class TrainingState:
    """A snapshot of everything a probe could disturb."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        self.model = model
        self.optimizer = optimizer
        with torch.no_grad():
            self.params = [(p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone(),
                            p.requires_grad) for p in unique_params(model, optimizer)]
            self.buffers = [(m, name, None if b is None else b.detach().clone())
                            for m in model.modules() for name, b in m._buffers.items()]
        self.modes = [(m, m.training) for m in model.modules()]
        self.rng = _RngState()
        if optimizer is not None:
            self.opt_state = {p: _clone(s) for p, s in optimizer.state.items()}
            self.opt_groups = [{k: _clone(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            self.opt_group_params = [list(g["params"]) for g in optimizer.param_groups]

    def restore(self) -> None:
        with torch.no_grad():
            for p, data, grad, requires_grad in self.params:
                if p.data.shape != data.shape or p.data.dtype != data.dtype:
                    p.data = data
                else:
                    p.data.copy_(data)
                p.grad = grad
                p.requires_grad_(requires_grad)
            for m, name, b in self.buffers:
                current = m._buffers.get(name)
                if b is None or current is None or current.shape != b.shape or current.dtype != b.dtype:
                    m._buffers[name] = b
                else:
                    current.copy_(b)
        for m, training in self.modes:
            m.training = training
        self.rng.restore()
        opt = self.optimizer
        if opt is not None:
            opt.state.clear()
            opt.state.update({p: _clone(s) for p, s in self.opt_state.items()})
            del opt.param_groups[len(self.opt_groups):]
            for group, saved, params in zip(opt.param_groups, self.opt_groups, self.opt_group_params, strict=False):
                group.clear()
                group.update(_clone(saved))
                group["params"] = list(params)


def unique_params(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The model's parameters and the optimizer's, each once (by identity), model order first."""
    seen: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    if optimizer is not None:
        for g in optimizer.param_groups:
            for p in g["params"]:
                seen.setdefault(id(p), p)
    return list(seen.values())


@contextmanager
def preserved(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[TrainingState]:
    """Run the body, then put weights, buffers, grads, optimizer, RNG and modes back exactly."""
    state = TrainingState(model, optimizer)
    try:
        yield state
    finally:
        state.restore()


def fingerprint(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """A hash of weights, buffers, grads, optimizer state, RNG state and train/eval flags."""
    h = hashlib.sha256()

    def add_tensor(t: torch.Tensor | None) -> None:
        if t is None:
            h.update(b"none")
            return
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    for name, p in model.named_parameters():
        h.update(name.encode())
        add_tensor(p)
        add_tensor(p.grad)
        h.update(str(p.requires_grad).encode())
    for name, b in model.named_buffers():
        h.update(name.encode())
        add_tensor(b)
    for name, m in model.named_modules():
        h.update(f"{name}:{m.training}".encode())
    add_tensor(torch.get_rng_state())
    h.update(repr(random.getstate()).encode())
    import numpy as np

    st = np.random.get_state()
    h.update(repr((st[0], st[2], st[3], st[4])).encode())
    h.update(np.asarray(st[1]).tobytes())
    if optimizer is not None:
        index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        for p, s in sorted(optimizer.state.items(), key=lambda kv: index.get(id(kv[0]), -1)):
            h.update(str(index.get(id(p), -1)).encode())
            for k in sorted(s):
                h.update(k.encode())
                v = s[k]
                add_tensor(v) if isinstance(v, torch.Tensor) else h.update(repr(v).encode())
        for g in optimizer.param_groups:
            h.update(repr(sorted((k, repr(v)) for k, v in g.items() if k != "params")).encode())
            h.update(repr([index[id(p)] for p in g["params"]]).encode())
    return h.hexdigest()
