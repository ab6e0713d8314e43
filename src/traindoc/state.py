"""Leave the user's training exactly as we found it.

`preserved(model, optimizer)` keeps what a check could disturb (train/eval flags, RNG states of
torch CPU/CUDA, `random` and numpy, buffers, ``.grad`` references, ``requires_grad``, the optimizer's
param groups) and puts it back on exit, whatever happened inside; weights, gradients and optimizer
state are not copied but proved unchanged by checksum (`TrainingState.changed`). `fingerprint`
hashes all of it, so tests can prove a probe changed nothing.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)); opt = torch.optim.AdamW(m.parameters())
    >>> before = fingerprint(m, opt)
    >>> with preserved(m, opt) as state:
    ...     _ = m(torch.randn(4, 3)); _ = m.eval(); _ = torch.rand(1)      # buffers, modes, RNG: put back
    ...     _ = torch.autograd.grad(m(torch.randn(4, 3)).sum(), list(m.parameters()))  # as probes do: no .grad
    >>> fingerprint(m, opt) == before, state.changed()
    (True, [])
    >>> with preserved(m, opt) as state:
    ...     with torch.no_grad(): _ = m[0].bias.add_(1)                   # a write no copy covers: named
    >>> state.changed()
    ['0.bias']
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
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
        self.numpy: Any = np.random.get_state()

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


class TrainingState:
    """What a check could disturb, kept so that it can be put back exactly.

    Probes never write weights, optimizer state or gradients (they ask autograd with
    ``torch.autograd.grad``, which leaves ``.grad`` alone), so those are not copied: a model that fills
    most of a GPU can be checked. They are *proved* untouched instead, by a device-side checksum of
    every tensor (its sum and L2 norm) taken before and compared after (`changed`). What a
    probe can change is kept: every module's train/eval flag, the RNG states, the buffers (copied:
    a forward may update them), each parameter's ``.grad`` (the reference) and ``requires_grad``,
    and the optimizer's param groups (small dicts of hyper-parameters)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        self.model = model
        self.optimizer = optimizer
        params = unique_params(model, optimizer)
        self.params = [(p, p.grad, p.requires_grad) for p in params]
        with torch.no_grad():
            self.buffers = [(m, name, None if b is None else b.detach().clone())
                            for m in model.modules() for name, b in m._buffers.items()]
        self.nbytes = sum(b.numel() * b.element_size() for _, _, b in self.buffers if b is not None)
        """Bytes this snapshot holds (the buffers' copies): the check's memory beyond its passes."""
        self.modes = [(m, m.training) for m in model.modules()]
        self.rng = _RngState()
        self._checked = self._tensors()
        self._checksums = checksums([t for _, t in self._checked])
        if optimizer is not None:
            self.opt_groups = [{k: _clone(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            self.opt_group_params = [list(g["params"]) for g in optimizer.param_groups]
            self.opt_state_keys = [(p, sorted(s)) for p, s in optimizer.state.items()]

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every weight, gradient and optimizer-state tensor: what must not change."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        out = []
        for i, (p, grad, _) in enumerate(self.params):
            name = names.get(id(p), f"param[{i}]")
            out.append((name, p))
            if grad is not None:
                out.append((f"{name}.grad", grad))
        if self.optimizer is not None:
            for p, st in self.optimizer.state.items():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor) and v.numel() > 0:
                        out.append((f"optimizer.state[{names.get(id(p), '?')}][{k!r}]", v))
        return out

    def changed(self) -> list[str]:
        """Names of the weights, gradients and optimizer-state tensors whose checksum changed."""
        now = checksums([t for _, t in self._checked])
        if now.shape != self._checksums.shape:
            return ["(the set of tensors changed)"]
        same = (now == self._checksums) | (now.isnan() & self._checksums.isnan())
        return [n for (n, _), ok in zip(self._checked, same.all(1).cpu().tolist(), strict=True) if not ok]

    def restore(self) -> None:
        with torch.no_grad():
            for p, grad, requires_grad in self.params:
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
            for p, keys in self.opt_state_keys:  # no probe steps; drop state a step would have created
                for k in [k for k in opt.state.get(p, {}) if k not in keys]:
                    del opt.state[p][k]
            for p in [p for p in opt.state if p not in {q for q, _ in self.opt_state_keys}]:
                del opt.state[p]
            del opt.param_groups[len(self.opt_groups):]
            for group, saved, params in zip(opt.param_groups, self.opt_groups, self.opt_group_params, strict=False):
                group.clear()
                group.update(_clone(saved))
                group["params"] = list(params)


CHECKSUM_CHUNK = 1 << 20
"""Values per conversion when a tensor is not float32/float64: the transient copy stays small."""


def _checksum(t: torch.Tensor) -> torch.Tensor:
    """(2,) float32: the sum and the L2 norm, deterministic for the same values on the same device."""
    flat = t.detach().reshape(-1)
    if flat.dtype in (torch.float32, torch.float64):
        return torch.stack([flat.sum(), torch.linalg.vector_norm(flat)]).float()
    acc = torch.zeros(2, dtype=torch.float32, device=flat.device)
    for start in range(0, flat.numel(), CHECKSUM_CHUNK):  # half precision, integers, bools: in pieces
        chunk = flat[start:start + CHECKSUM_CHUNK].to(torch.float32)
        acc[0] += chunk.sum()
        acc[1] += chunk.square().sum()
    return torch.stack([acc[0], acc[1].sqrt()])


def checksums(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(n, 2) on the host: the sum and the L2 norm of each tensor, computed where it lives (a few fused
    passes, never a copy of a whole tensor in another dtype); NaN stays NaN."""
    if not tensors:
        return torch.zeros(0, 2)
    with torch.no_grad():
        rows = [_checksum(t) for t in tensors]
        if all(r.device == rows[0].device for r in rows):
            return torch.stack(rows).cpu()  # one copy to the host
        return torch.stack([r.cpu() for r in rows])


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
    """Run the body, then put modes, RNG, buffers, grads and param groups back exactly (see
    `TrainingState`); ``state.changed()`` after the body names what the body wrote that no copy covers."""
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
