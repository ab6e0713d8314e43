"""Run one gallery script, unmodified, and capture what a peer tool needs from it.

    python -m benchmarks.gallery.peers._harness PEER OUT.json SCRIPT [SCRIPT ARGS...]

The script runs as ``python SCRIPT ARGS`` would (``runpy.run_path`` with ``__name__ == "__main__"``,
``sys.argv = [SCRIPT, *ARGS]``, the script's folder first on ``sys.path``, the working directory left
as the caller set it), with global hooks that do not change what it computes:

* ``torch.autograd.backward`` (which ``Tensor.backward`` calls) is wrapped to record the value of each
  tensor the script backpropagates: the loss;
* ``torch.nn.utils.clip_grad_norm_`` (and ``clip_grads_with_norm_``, which accelerate calls) is wrapped
  to record the total norm (the pre-clip norm, which is what a training loop logs);
* the global optimizer step hooks (`torch.optim.optimizer.register_optimizer_step_pre_hook` / ``_post_``)
  count the steps of every optimizer and log, after each step, one row per step: the mean of the losses
  backpropagated since the previous step, the total gradient norm of the optimizer's parameters, and
  the LR of its first param group (the post-hook also covers optimizers that run the script's closure
  inside ``step()``, as Lightning does);
* the global module forward hooks (`torch.nn.modules.module.register_module_forward_hook`) see every
  top-level call of a module that owns parameters (not inside another module's forward);
* for one-batch tools (``TRACE = True`` in the peer's module) the harness also captures a *batch* per
  optimizer (`Batch`): the inputs of the model call that produced the loss, the operations from that
  call's outputs to the tensor the script backpropagated (recorded by a ``TorchFunctionMode`` that is
  active only in that window and only keeps operations on tensors derived from the model's outputs),
  and deep copies of the model and the optimizer with the parameter values and optimizer state they
  had before the optimizer's first update. The window is the optimizer's first step (from the first
  top-level module call of the script), or its second step for an optimizer that starts after another
  one. When the parameters an optimizer updates, or those of its model, change (a head replaced, a
  param group added: a new training phase with the same optimizer), its batch is captured again in the
  next step, with the values before the first update of that phase. `Batch.replay` re-runs the
  recorded operations on new outputs: it is the script's own loss function, so a peer can be given the
  loss exactly as the script computes it.

The peer's module (``INPROC[PEER]``) plugs into this process: its ``setup(harness)`` adds callbacks to
``harness.row_callbacks`` (called after each optimizer step with its `OptRecord`) and
``harness.batch_callbacks`` (called with each `Batch`), and its ``finish(harness, state, error)`` returns
the JSON-able payload written to OUT.json with the logs (`Harness.result`). Every hook is disabled while a peer's own code runs (``harness.suspended``).

An optimizer "starts" at its first step. The optimizers still stepping after the last one started
(``active`` in the output) are the run's final training phase: a script that pre-trains a model and then
fine-tunes it with a new optimizer is judged on the fine-tuning; a GAN's two optimizers are both active.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import math
import os
import runpy
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules import module as _module
from torch.optim import optimizer as _optimizer
from torch.overrides import TorchFunctionMode

INPROC = {
    "torchtest2": "benchmarks.gallery.peers.torchtest2_peer",
    "gradsnitch": "benchmarks.gallery.peers.gradsnitch_peer",
    "trainspotter": "benchmarks.gallery.peers.trainspotter_peer",
    "detect_anomaly": "benchmarks.gallery.peers.anomaly_peer",
}

Path_ = tuple[Any, ...]
Key = tuple[Any, ...]
"""("root", call index, path in the call's output) or ("node", node index, path in the node's result)."""


# ---------------------------------------------------------------------------------------------------
# nested structures (tuples, lists, dicts, Hugging Face ModelOutputs, dataclasses)


def leaves(obj: Any, path: Path_ = ()) -> Iterator[tuple[Path_, torch.Tensor]]:
    """Every tensor in ``obj`` with its path (ints index sequences, strings key mappings, ``(".", name)``
    names a dataclass field)."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in list(obj.items()):
            yield from leaves(v, (*path, k))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from leaves(v, (*path, i))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from leaves(getattr(obj, f.name, None), (*path, (".", f.name)))


def get_path(obj: Any, path: Path_) -> Any:
    for k in path:
        obj = getattr(obj, k[1]) if isinstance(k, tuple) else obj[k]
    return obj


def clone_tree(obj: Any) -> Any:
    """``obj`` with every tensor detached and copied (mappings become dicts, e.g. a BatchEncoding)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, Mapping):
        return {k: clone_tree(v) for k, v in obj.items()}
    if type(obj) in (tuple, list):
        return type(obj)(clone_tree(v) for v in obj)
    return obj


def _map_plain(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to the leaves of plain tuples, lists and dicts (what torch functions take)."""
    if type(obj) in (tuple, list):
        return type(obj)(_map_plain(v, fn) for v in obj)
    if type(obj) is dict:
        return {k: _map_plain(v, fn) for k, v in obj.items()}
    return fn(obj)


def _plain_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif type(obj) in (tuple, list):
        for v in obj:
            yield from _plain_tensors(v)
    elif type(obj) is dict:
        for v in obj.values():
            yield from _plain_tensors(v)


def owns_parameters(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def is_loss_module(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.loss._Loss)


# ---------------------------------------------------------------------------------------------------
# the loss chain: operations from a model call's outputs to the backpropagated tensor


@dataclass(frozen=True)
class Ref:
    key: Key


@dataclass
class Call:
    """A top-level call of a module that owns parameters, in a trace window."""

    module: nn.Module
    args: tuple
    kwargs: dict
    """Copies of the call's arguments (tensors detached and cloned)."""


@dataclass
class Node:
    func: Callable[..., Any]
    args: tuple
    kwargs: dict
    """With every tensor derived from a model output replaced by its `Ref`."""
    deps: set[Key]
    mutates: bool = False
    """The result is the (mutated) first argument: ``x[i] = v``, ``x.add_(y)``."""

    @property
    def name(self) -> str:
        return getattr(self.func, "__qualname__", None) or getattr(self.func, "__name__", repr(self.func))


class Tracer(TorchFunctionMode):
    """Records, during one window, the operations on tensors derived from registered model outputs."""

    def __init__(self, harness: Harness):
        super().__init__()
        self.harness = harness
        self.active = True
        self.calls: list[Call] = []
        self.nodes: list[Node] = []
        self.taint: dict[int, Key] = {}
        self.keep: list[Any] = []  # tainted tensors stay alive, so that their ids stay theirs
        self.loss: torch.Tensor | None = None

    def add_root(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        index = len(self.calls)
        self.calls.append(Call(module, clone_tree(args), clone_tree(kwargs)))
        for path, t in leaves(output):
            self.taint[id(t)] = ("root", index, path)
            self.keep.append(t)

    def tainted(self, obj: Any) -> bool:
        return any(id(t) in self.taint for t in _plain_tensors(obj))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.active or self.harness.suspended or not self.taint:
            return out
        if not (self.tainted(args) or self.tainted(kwargs)):
            return out
        name = getattr(func, "__name__", "")
        mutates = (name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))) and bool(args) \
            and isinstance(args[0], torch.Tensor)
        produced = list(leaves(out)) if not mutates else [((), args[0])]
        if not produced:
            return out  # .shape, .item(), .backward(): used as constants, or not part of the loss
        deps: set[Key] = set()

        def ref(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and id(x) in self.taint:
                deps.add(self.taint[id(x)])
                return Ref(self.taint[id(x)])
            return x

        node = Node(func, _map_plain(tuple(args), ref), _map_plain(dict(kwargs), ref), deps, mutates)
        index = len(self.nodes)
        self.nodes.append(node)
        for path, t in produced:
            self.taint[id(t)] = ("node", index, path)
            self.keep.append(t)
        return out


@dataclass
class Batch:
    """One batch of one optimizer, as the script trained on it (see the module's docstring)."""

    optimizer: torch.optim.Optimizer
    """A copy, made with `model`, in the state it had before its first update, with the LR it was created
    with (the live optimizer when they cannot be copied: `copied`)."""
    model: nn.Module | None
    """Copy of the module whose call produced the loss (or of the top-level module owning most of the
    optimizer's parameters when no single call did), its parameters as before the optimizer's first
    update (its buffers, e.g. BatchNorm statistics, as they are at the window's end); None when no module
    was called."""
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    loss_key: Key | None = None
    """Where the backpropagated tensor came from: a root (an output of the call) or a node."""
    nodes: list[Node] = field(default_factory=list)
    needed: list[int] = field(default_factory=list)
    """Indices of the nodes between the call's outputs and the loss, in order."""
    copied: bool = True
    note: str = ""
    source: nn.Module | None = None
    """The live module `model` is a copy of."""
    phase: int = 0
    """The optimizer's phase (`OptRecord.phase`) the batch belongs to."""

    def replay(self, outputs: Any, upto: Key | None = None) -> Any:
        """The script's operations from the call's ``outputs`` to the loss (or to ``upto``)."""
        env: dict[Key, Any] = {}
        target = upto or self.loss_key
        assert target is not None
        if target[0] == "root":
            return get_path(outputs, target[2])

        def value(x: Any) -> Any:
            if isinstance(x, Ref):
                if x.key[0] == "root":
                    return get_path(outputs, x.key[2])
                return env[x.key]
            return x

        for i in self.needed:
            node = self.nodes[i]
            args = _map_plain(node.args, value)
            kwargs = _map_plain(node.kwargs, value)
            out = node.func(*args, **kwargs)
            if node.mutates:
                env[("node", i, ())] = args[0]
            else:
                for path, t in leaves(out):
                    env[("node", i, path)] = t
            if target[1] == i and target[0] == "node":
                break
        return env[target]


def _needed_nodes(nodes: list[Node], key: Key) -> tuple[list[int], set[int]]:
    """Node indices the value at ``key`` depends on, in order, and the root calls it reaches."""
    needed: set[int] = set()
    roots: set[int] = set()
    todo = [key]
    while todo:
        k = todo.pop()
        if k[0] == "root":
            roots.add(k[1])
            continue
        if k[1] in needed:
            continue
        needed.add(k[1])
        todo.extend(nodes[k[1]].deps)
    return sorted(needed), roots


# ---------------------------------------------------------------------------------------------------
# per-optimizer records


@dataclass
class OptRecord:
    index: int
    optimizer: torch.optim.Optimizer
    first_global: int
    steps: int = 0
    last_global: int = 0
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    clip_norm: list[float | None] = field(default_factory=list)
    """The norm ``clip_grad_norm_`` returned in this step (None: not called)."""
    model: nn.Module | None = None
    """The live top-level module that owns most of the optimizer's parameters (None: none seen)."""
    signature: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    phase: int = 0
    """How many times its parameters or its model's parameters changed (`Harness._pre_step`)."""
    initial: dict[int, torch.Tensor] | None = None
    """The values of its parameters before its first update, by id of the parameter."""
    initial_state: dict[str, Any] | None = None
    """Its ``state_dict()`` before its first update."""

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "class": type(self.optimizer).__name__, "first_global": self.first_global,
                "steps": self.steps, "last_global": self.last_global, "clip_norm": self.clip_norm,
                "model": type(self.model).__name__ if self.model is not None else None,
                "log": {"loss": self.loss, "grad_norm": self.grad_norm, "lr": self.lr}}


def _initial_lr(opt: torch.optim.Optimizer) -> None:
    """An LR scheduler has already set the first step's LR (0 at the start of a warmup): give ``opt``
    the LR the optimizer was created with."""
    for group in opt.param_groups:
        if "initial_lr" in group:
            group["lr"] = group["initial_lr"]


def _copy_pair(modules: list[nn.Module], opt: torch.optim.Optimizer
               ) -> tuple[list[nn.Module], torch.optim.Optimizer]:
    """Deep copies of ``modules`` and ``opt`` that share parameters as the originals do."""
    mods, opt_c = copy.deepcopy((modules, opt))
    # an LR scheduler wraps opt.step in an instance attribute that calls the *original* optimizer
    opt_c.__dict__.pop("step", None)
    opt_c.__dict__.pop("_opt_called", None)
    _initial_lr(opt_c)
    for hooks in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks"):
        if isinstance(getattr(opt_c, hooks, None), dict):
            getattr(opt_c, hooks).clear()
    return mods, opt_c


class Harness:
    """The hooks of one script run (see the module's docstring); ``trace`` captures `Batch` es."""

    def __init__(self, trace: bool):
        self.trace = trace
        self.suspended = False
        self.depth = 0
        self.global_steps = 0
        self.opts: dict[int, OptRecord] = {}
        self.top: dict[int, weakref.ref] = {}  # top-level modules that own parameters, by id
        self.pending_loss: list[float] = []
        self.pending_clip: float | None = None
        self.row_callbacks: list[Callable[[OptRecord], None]] = []
        self.batch_callbacks: list[Callable[[OptRecord, Batch], None]] = []
        # trace windows
        self.tracer: Tracer | None = None
        self.window_for: int | None = None  # optimizer index the open/armed window serves (-1: any)
        self.window_opened = 0
        self.armed: list[int] = [-1] if trace else []
        self.out_path: Path | None = None
        self._handles: list[Any] = []
        self._saved: dict[str, Any] = {}

    # -- installation ---------------------------------------------------------------------------
    def install(self) -> None:
        self._handles += [
            _module.register_module_forward_pre_hook(self._pre_forward),
            _module.register_module_forward_hook(self._post_forward, with_kwargs=True, always_call=True),
            _optimizer.register_optimizer_step_pre_hook(self._pre_step),
            _optimizer.register_optimizer_step_post_hook(self._post_step),
        ]
        self._saved["backward"] = torch.autograd.backward
        self._saved["clip"] = torch.nn.utils.clip_grad_norm_
        self._saved["with_norm"] = torch.nn.utils.clip_grads_with_norm_
        harness = self
        original_backward, original_clip = self._saved["backward"], self._saved["clip"]
        original_with_norm = self._saved["with_norm"]

        def backward(tensors, *args, **kwargs):
            if not harness.suspended:
                for t in (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors or ()):
                    if isinstance(t, torch.Tensor):
                        harness.suspended = True  # not an operation of the script's loss
                        try:
                            with torch.no_grad():
                                harness.pending_loss.append(float(t.detach().float().mean()))
                        finally:
                            harness.suspended = False
                        if harness.tracer is not None and harness.tracer.active:
                            harness.tracer.loss = t
                        break
            return original_backward(tensors, *args, **kwargs)

        def clip_grad_norm_(*args, **kwargs):
            norm = original_clip(*args, **kwargs)
            if not harness.suspended:
                with contextlib.suppress(Exception):
                    harness.pending_clip = float(norm)
            return norm

        def clip_grads_with_norm_(parameters, max_norm, total_norm, *args, **kwargs):
            # what accelerate (the Hugging Face Trainer) calls, with the total norm it computed
            if not harness.suspended:
                with contextlib.suppress(Exception):
                    harness.pending_clip = float(total_norm)
            return original_with_norm(parameters, max_norm, total_norm, *args, **kwargs)

        torch.autograd.backward = backward
        torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
        torch.nn.utils.clip_grad.clip_grad_norm_ = clip_grad_norm_
        torch.nn.utils.clip_grads_with_norm_ = clip_grads_with_norm_

    def uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        torch.autograd.backward = self._saved["backward"]
        torch.nn.utils.clip_grad_norm_ = self._saved["clip"]
        torch.nn.utils.clip_grad.clip_grad_norm_ = self._saved["clip"]
        torch.nn.utils.clip_grads_with_norm_ = self._saved["with_norm"]
        self._close_tracer()

    @contextlib.contextmanager
    def peer_code(self) -> Iterator[None]:
        """Run a peer's own code: no hook records anything meanwhile, the tracer is off."""
        saved, self.suspended = self.suspended, True
        depth = self.depth
        try:
            yield
        finally:
            self.suspended, self.depth = saved, depth

    # -- module hooks ---------------------------------------------------------------------------
    def _pre_forward(self, module: nn.Module, args: tuple) -> None:
        if not self.suspended:
            self.depth += 1

    def _post_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.suspended:
            return
        self.depth = max(0, self.depth - 1)
        if self.depth or is_loss_module(module) or not owns_parameters(module):
            return
        self.top[id(module)] = weakref.ref(module)
        if self.tracer is None and self.armed:
            self._open_tracer(self.armed.pop(0))
        tracer = self.tracer
        if tracer is not None and tracer.active and not tracer.tainted(args) and not tracer.tainted(kwargs):
            with self.peer_code():
                tracer.add_root(module, args, kwargs, output)

    def _open_tracer(self, for_index: int) -> None:
        self.tracer = Tracer(self)
        self.window_for = for_index
        self.window_opened = self.global_steps
        self.tracer.__enter__()

    def _close_tracer(self) -> Tracer | None:
        tracer, self.tracer = self.tracer, None
        if tracer is None:
            return None
        tracer.active = False
        stack = torch.overrides._get_current_function_mode_stack()
        if stack and stack[-1] is tracer:
            tracer.__exit__(None, None, None)
        # otherwise another mode was entered on top of it and is still active: it stays, inactive
        return tracer

    # -- optimizer hooks --------------------------------------------------------------------------
    def _record(self, opt: torch.optim.Optimizer) -> OptRecord:
        rec = self.opts.get(id(opt))
        if rec is None or rec.optimizer is not opt:
            rec = OptRecord(len(self.opts), opt, self.global_steps)
            rec.model = self._owner(rec)
            self.opts[id(opt)] = rec
            if self.trace:
                self._snapshot(rec)
                if not (self.tracer is not None and self.window_for == -1):
                    self.armed.append(rec.index)  # traced at its next step (see `Batch`)
        return rec

    def _owner(self, rec: OptRecord) -> nn.Module | None:
        ids = {id(p) for p in rec.params()}
        best, best_n = None, 0
        for ref in list(self.top.values()):
            m = ref()
            if m is None:
                continue
            n = sum(id(p) in ids for p in m.parameters())
            if n > best_n:
                best, best_n = m, n
        return best

    def _snapshot(self, rec: OptRecord) -> None:
        """Remember the optimizer's parameters and state before its first update (`_batch` copies the
        model and the optimizer, then puts these values back: a closure run inside ``step()``, as in
        Lightning, calls the model only after this pre-step hook)."""
        with self.peer_code(), torch.no_grad():
            rec.initial = {id(p): p.detach().clone() for p in rec.params()}
            try:
                rec.initial_state = copy.deepcopy(rec.optimizer.state_dict())
            except Exception:
                rec.initial_state = None

    def _pre_step(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.suspended:
            return
        rec = self._record(opt)
        if self.trace and rec.model is not None:
            signature = self._signature(rec)
            if rec.signature is None:
                rec.signature = signature
            elif signature != rec.signature:
                # a new phase with the same optimizer (a head replaced, a param group added): its batch
                # is captured again, from the values before this step's update
                rec.signature = signature
                rec.phase += 1
                self._snapshot(rec)
                if rec.index not in self.armed and not (self.tracer is not None and self.window_for == rec.index):
                    self.armed.append(rec.index)

    @staticmethod
    def _signature(rec: OptRecord) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Which tensors the optimizer updates and which parameters its model has."""
        assert rec.model is not None
        return tuple(id(p) for p in rec.params()), tuple(id(p) for p in rec.model.parameters())

    def _post_step(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.suspended:
            return
        rec = self._record(opt)
        rec.steps += 1
        self.global_steps += 1
        rec.last_global = self.global_steps
        losses, self.pending_loss = self.pending_loss, []
        rec.loss.append(sum(losses) / len(losses) if losses else math.nan)
        clip, self.pending_clip = self.pending_clip, None
        rec.clip_norm.append(clip)
        rec.grad_norm.append(clip if clip is not None else self._grad_norm(rec))
        lr = rec.optimizer.param_groups[0].get("lr", math.nan)
        rec.lr.append(float(lr))
        if rec.model is None:
            rec.model = self._owner(rec)
        with self.peer_code():
            for cb in self.row_callbacks:
                cb(rec)
        if self.tracer is not None and self.window_for not in (-1, rec.index) \
                and self.global_steps - self.window_opened > 8:
            self._close_tracer()  # the optimizer it waits for stopped stepping: give up on its batch
        if self.tracer is not None and self.window_for in (-1, rec.index):
            tracer = self._close_tracer()
            assert tracer is not None
            if rec.index in self.armed:
                self.armed.remove(rec.index)
            batch = self._batch(rec, tracer)
            with self.peer_code():
                for cb in self.batch_callbacks:
                    cb(rec, batch)

    @staticmethod
    def _grad_norm(rec: OptRecord) -> float:
        total = 0.0
        seen = False
        with torch.no_grad():
            for p in rec.params():
                if p.grad is not None:
                    seen = True
                    total += float(p.grad.detach().float().norm()) ** 2
        return math.sqrt(total) if seen else math.nan

    def _batch(self, rec: OptRecord, tracer: Tracer) -> Batch:
        batch = Batch(optimizer=rec.optimizer, model=None, copied=False, phase=rec.phase)
        loss = tracer.loss
        key = tracer.taint.get(id(loss)) if loss is not None else None
        call_index: int | None = None
        if key is not None:
            needed, roots = _needed_nodes(tracer.nodes, key)
            if len(roots) == 1:
                call_index = roots.pop()
                batch.loss_key, batch.nodes, batch.needed = key, tracer.nodes, needed
            else:
                batch.note = _join(batch.note, f"the loss depends on {len(roots)} model calls")
        elif loss is None:
            batch.note = _join(batch.note, "no backward call before the step")
        else:
            batch.note = _join(batch.note, "the loss is not computed from a top-level model call's outputs")
        if call_index is None:  # the last call of the module that owns most of the optimizer's parameters
            owner = rec.model
            for i in range(len(tracer.calls) - 1, -1, -1):
                if tracer.calls[i].module is owner:
                    call_index = i
                    break
        if call_index is None:
            return batch
        call = tracer.calls[call_index]
        batch.args, batch.kwargs, batch.model, batch.source = call.args, call.kwargs, call.module, call.module
        with self.peer_code():
            try:
                (model,), opt = _copy_pair([call.module], rec.optimizer)
            except Exception as e:  # a module that cannot be deep-copied: the peer gets the live objects
                batch.note = _join(batch.note, f"could not copy the model and optimizer ({type(e).__name__}: {e})"
                                               ": the live ones are given")
                return batch
            with torch.no_grad():
                initial = rec.initial or {}
                for (_, live), (_, c) in zip(call.module.named_parameters(), model.named_parameters(), strict=True):
                    if id(live) in initial:
                        c.copy_(initial[id(live)])
                live_params, copied_params = rec.params(), [p for g in opt.param_groups for p in g["params"]]
                for live, c in zip(live_params, copied_params, strict=True):
                    if id(live) in initial and c is not None:
                        c.copy_(initial[id(live)])
            if rec.initial_state is not None:
                with contextlib.suppress(Exception):
                    opt.load_state_dict(copy.deepcopy(rec.initial_state))
                    _initial_lr(opt)
        batch.model, batch.optimizer, batch.copied = model, opt, True
        return batch

    # -- running --------------------------------------------------------------------------------
    def result(self, peer: str, payload: Any, **extra: Any) -> dict[str, Any]:
        return {"peer": peer, "global_steps": self.global_steps,
                "optimizers": [r.to_json() for r in self.opts.values()],
                "active": [r.index for r in self.active()], "payload": payload, **extra}

    def write_partial(self, peer: str, payload: Any) -> None:
        """What a peer has found so far, in case the script is killed before it ends (timeout)."""
        if self.out_path is not None:
            self.out_path.write_text(json.dumps(self.result(peer, payload, partial=True), default=str))

    def active(self) -> list[OptRecord]:
        """The optimizers of the final training phase (see the module's docstring)."""
        recs = [r for r in self.opts.values() if r.steps]
        if not recs:
            return []
        last_start = max(r.first_global for r in recs)
        return [r for r in recs if r.last_global > last_start]


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    peer, out_path, script, *script_args = argv
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    plugin = importlib.import_module(INPROC[peer])
    harness = Harness(trace=getattr(plugin, "TRACE", False))
    harness.out_path = Path(out_path)
    state = plugin.setup(harness)
    path = Path(script).resolve()
    sys.argv = [str(path), *script_args]
    sys.path.insert(0, str(path.parent))
    error: BaseException | None = None
    exit_how = "ok"
    t0 = time.perf_counter()
    harness.install()
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        exit_how = f"sys.exit({e.code!r})"
    except BaseException as e:  # the script's own exception (or an anomaly under detect_anomaly)
        error = e
        exit_how = "exception"
        traceback.print_exc()
    finally:
        harness.uninstall()
    script_s = time.perf_counter() - t0
    with harness.peer_code():
        payload = plugin.finish(harness, state, error)
    result = harness.result(
        peer, payload, script=str(path), args=script_args, exit=exit_how, script_s=script_s,
        exception=None if error is None else f"{type(error).__name__}: {_first_line(error)}")
    Path(out_path).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: the peers' modules import its classes
    from benchmarks.gallery.peers._harness import main as _main

    sys.exit(_main(sys.argv[1:]))
