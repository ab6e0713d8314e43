"""One trial: a copy of the user's model trained for a bounded number of steps under one `Setting`.

A `Plan` holds what every trial starts from: the user's model and optimizer (never trained: each
trial deep-copies them, optimizer state included), the batches (taken once from the user's iterable
and reused, so that every trial sees the same data), and how the loop computes the loss (the same
rules as `traindoc.check`: ``model(**batch)`` / ``model(*batch)`` / ``forward``, the model's own
``output.loss`` or ``loss_fn``). `Plan.run` trains the copy:

* the learning rate of the setting replaces group 0's peak LR (`traindoc.probes.optimizer.group_lr`:
  the largest of ``lr``, a scheduler's ``initial_lr`` and ``max_lr``) and the other groups keep their
  ratio to it (a head at 10x stays at 10x); a warmup
  multiplies it by ``(t + 1) / warmup`` over the first steps; a ramp goes exponentially from ``lr`` to
  ``lr_end`` over the trial (the LR range test);
* each step: ``zero_grad`` (unless the setting reproduces a loop without it), forward, loss,
  backward, the pre-clip gradient norm, clipping when the setting clips, ``optimizer.step()``;
* the seed fixes dropout and the order of the batches (seed 0 starts in the user's order); the
  user's RNG state is restored after.

The losses and norms stay on the device and are read every `CHECK_EVERY` steps (one copy), where a
trial that stops on divergence looks at them (`traindoc.experiments.measures.unstable_at` with
factor `DIVERGE`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from traindoc.errors import TraindocInputError
from traindoc.experiments.measures import unstable_at
from traindoc.probes.optimizer import group_lr
from traindoc.setup import ForwardFn, LossFn, Setup, named_tensors, output_loss, unwrap_optimizer

CHECK_EVERY = 10
"""Steps between two reads of a trial's losses (the divergence stop looks then)."""

DIVERGE = 4.0
"""A ramp stops once its smoothed loss exceeds this multiple of the best smoothed loss."""

MAX_BATCHES = 512
"""At most this many batches are taken from the user's iterable; longer trials cycle through them."""

SMOOTHING = 0.9
"""The exponential moving average of the losses a ramp is judged on (bias-corrected)."""


@dataclass(frozen=True)
class Setting:
    """What one trial changes: the LR (group 0's peak; None keeps the user's), an exponential ramp to
    ``lr_end``, a linear warmup, a clipping threshold, whether ``zero_grad`` is called, one fixed batch,
    the seed and the number of steps."""

    steps: int
    lr: float | None = None
    lr_end: float | None = None
    warmup: int = 0
    clip: float | None = None
    zero_grad: bool | None = None
    """None: as the loop does (a trial of a copy zeroes every step); False: never (a copy's trial
    reproduces a loop without ``zero_grad``); True: zeroed after every step (added to a script)."""
    one_batch: bool = False
    seed: int = 0
    stop_on_divergence: bool = False
    ignore_index: int | None = None
    """Cross-entropy ignores this target value (the fix for pads counted in the loss)."""
    scheduler_per_step: bool = False
    """A script's LR schedulers step after every optimizer step, and its own ``scheduler.step()``
    calls do nothing (the fix for a per-step schedule stepped once per epoch; script trials only)."""
    score_ignore_index: int | None = None
    """Also record each step's cross-entropy without this target value (`Curve.scores`), so that two
    arms that count different targets are compared on the same ones."""

    def lr_at(self, step: int, base: float) -> float:
        lr = base if self.lr is None else self.lr
        if self.lr_end is not None and self.steps > 1:
            lr = lr * (self.lr_end / lr) ** (step / (self.steps - 1))
        if self.warmup > 0 and step < self.warmup:
            lr = lr * (step + 1) / self.warmup
        return lr


@dataclass
class Curve:
    """What a trial measured, one value per step run: the loss (NaN when non-finite), the pre-clip
    gradient norm, the LR of group 0."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    stopped_early: bool = False
    clip: float | None = None
    """The clipping threshold the run used (the setting's, or the script's own)."""
    scores: list[float] = field(default_factory=list)
    """Each step's cross-entropy over the targets other than ``Setting.score_ignore_index`` (empty when
    the setting asks for none): what two arms that count different targets are compared on."""

    @property
    def compared(self) -> list[float]:
        """The per-step values an experiment scores: `scores` when recorded, else the losses."""
        return self.scores or self.losses

    @property
    def steps(self) -> int:
        return len(self.losses)

    def to_dict(self) -> dict[str, Any]:
        out = {"losses": self.losses, "grad_norms": self.grad_norms, "lrs": self.lrs,
               "stopped_early": self.stopped_early}
        if self.scores:
            out["scores"] = self.scores
        return out


def _target_variety(batch: Any) -> int:
    """How many distinct target values a batch holds (labels, targets, y, or a tuple's last tensor)."""
    tensors = named_tensors(batch)
    named = [t for n, t in tensors.items() if n.rsplit(".", 1)[-1] in ("labels", "label", "targets", "target", "y")]
    if not named and isinstance(batch, (tuple, list)) and isinstance(batch[-1], torch.Tensor):
        named = [batch[-1]]
    t = next((t for t in named if not t.is_floating_point()), None)
    return int(torch.unique(t).numel()) if t is not None else 0


class Plan:
    """What every trial starts from (see the module docstring): the batches for ``steps`` steps are
    taken from the user's iterable here (at most `MAX_BATCHES`). Raises `TraindocInputError` for input
    a trial cannot train: no batch, a model without parameters, no optimizer."""

    def __init__(self, model: nn.Module, batches: Any, *, optimizer: Any = None,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                 forward: ForwardFn | None = None, loss_fn: LossFn | None = None, steps: int = 1):
        if optimizer is None and make_optimizer is None:
            raise TraindocInputError("optimizer", "pass the optimizer the loop uses (or make_optimizer=model -> "
                                                  "optimizer): the trials train copies with it")
        if make_optimizer is not None and not callable(make_optimizer):
            raise TraindocInputError("make_optimizer", "must be a callable make_optimizer(model) -> optimizer")
        self.model = model
        self.optimizer = unwrap_optimizer(optimizer) if optimizer is not None else None
        self.make_optimizer = make_optimizer
        self._source = _batch_iterator(batches)
        self.batches: list[Any] = []
        first = self.batch(0)
        self.batch(min(max(steps, 1), MAX_BATCHES) - 1)  # taken once: every trial orders the same batches
        self.setup = Setup.build(model, first, forward=forward, loss_fn=loss_fn, optimizer=self.optimizer)
        self.forward = self.setup.forward
        self.loss_fn = loss_fn

    def __getstate__(self) -> dict[str, Any]:
        """For a Ray worker: the batches taken so far travel, the user's iterator does not."""
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    # ------------------------------------------------------------------ data
    def batch(self, i: int) -> Any:
        """Batch ``i`` of the user's iterable (taken once, then kept), cycling when it is shorter."""
        while len(self.batches) <= i and self._source is not None:
            try:
                self.batches.append(next(self._source))
            except StopIteration:
                self._source = None
        if not self.batches:
            raise TraindocInputError("batches", "gave no batch")
        return self.batches[i % len(self.batches)]

    def richest_batch(self, among: int = 8) -> Any:
        """Of the first ``among`` batches, the one with the most distinct targets (all classes present
        where possible); the first on a tie."""
        candidates = [self.batch(i) for i in range(among)]
        candidates = candidates[:len(self.batches)]
        return max(candidates, key=_target_variety)

    # ------------------------------------------------------------------ the copies
    @property
    def base_lr(self) -> float:
        """Group 0's peak LR in the user's optimizer (what a setting's LR replaces)."""
        opt = self.optimizer if self.optimizer is not None else self._fresh_optimizer(self.model)
        return group_lr(opt.param_groups[0])

    def _fresh_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        assert self.make_optimizer is not None
        return unwrap_optimizer(self.make_optimizer(model))

    def copies(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A deep copy of the model and an optimizer over it: the factory's, or the user's optimizer
        rebuilt on the copy's parameters with a deep copy of its state."""
        model = copy.deepcopy(self.model)
        if self.make_optimizer is not None:
            return model, self._fresh_optimizer(model)
        assert self.optimizer is not None
        opt = self.optimizer
        mine = {id(p): q for p, q in zip(self.model.parameters(), model.parameters(), strict=True)}
        groups = []
        for g in opt.param_groups:
            # a parameter that is not the model's (an optimizer built on an earlier model) gets a copy of
            # its own: the trial steps it, as the loop does, and the model's copy does not move
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": [mine[id(p)] if id(p) in mine else nn.Parameter(p.detach().clone())
                                      for p in g["params"]]})
        clone = type(opt)(groups, **_accepted(type(opt), opt.defaults))
        clone.load_state_dict(copy.deepcopy(opt.state_dict()))
        return model, clone

    # ------------------------------------------------------------------ a trial
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        out = self.forward(model, batch)
        if self.loss_fn is not None:
            return self.loss_fn(out, batch)
        loss, _ = output_loss(out)
        if loss is None:
            raise TraindocInputError("loss_fn", "the model returns no loss: pass loss_fn(output, batch) -> scalar")
        return loss

    def run(self, setting: Setting, one: Any = None) -> Curve:
        """Train a copy under ``setting`` (on batch ``one`` at every step when given, or on
        `richest_batch` for a one-batch setting) and return what it measured; the user's model,
        optimizer and RNG state are untouched."""
        if setting.one_batch and one is None:
            one = self.richest_batch()
        devices = [self.setup.device.index or 0] if self.setup.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), TargetsPatch(setting) as targets:
            torch.manual_seed(setting.seed)
            curve = self._train(setting, one, targets)
        return curve

    def _train(self, setting: Setting, one: Any, targets: TargetsPatch) -> Curve:
        model, opt = self.copies()
        model.train()
        params = [p for g in opt.param_groups for p in g["params"]]
        peak = group_lr(opt.param_groups[0])
        ratios = [(group_lr(g) / peak if peak > 0 else 1.0) for g in opt.param_groups]
        order = _order(len(self.batches) or 1, setting.seed)
        curve = Curve(clip=setting.clip)
        losses: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        for t in range(setting.steps):
            lr = setting.lr_at(t, peak)
            for g, r in zip(opt.param_groups, ratios, strict=True):
                g["lr"] = lr * r
            curve.lrs.append(lr)
            batch = one if one is not None else self.batch(order(t))
            if setting.zero_grad is not False:
                opt.zero_grad(set_to_none=True)
            loss = self.loss(model, batch)
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
            if setting.clip is not None and grads:
                torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], setting.clip, norm)
            opt.step()
            targets.end_step()
            losses.append(loss.detach().float().reshape(()))
            norms.append(norm.detach().float().reshape(()))
            if (t + 1) % CHECK_EVERY == 0 or t + 1 == setting.steps:
                _read(curve, losses, norms)
                if setting.stop_on_divergence and unstable_at(curve.losses, DIVERGE) is not None:
                    curve.stopped_early = t + 1 < setting.steps
                    break
        _read(curve, losses, norms)
        curve.scores = targets.scores()
        return curve


class TargetsPatch:
    """While a trial runs: ``torch.nn.functional.cross_entropy`` ignores ``setting.ignore_index``, and
    records (without gradient) each step's cross-entropy over the targets other than
    ``setting.score_ignore_index``. Nothing is patched when the setting asks for neither."""

    def __init__(self, setting: Setting):
        self.setting = setting
        self._last: torch.Tensor | None = None
        self._steps: list[torch.Tensor] = []
        self._original: Any = None

    def __enter__(self) -> TargetsPatch:
        s = self.setting
        if s.ignore_index is None and s.score_ignore_index is None:
            return self
        import torch.nn.functional as F  # noqa: N812

        original = self._original = F.cross_entropy

        def cross_entropy(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A002
            # the value is skipped by turning it into the call's own ignore_index (-100 by default), so that
            # the targets the call already skipped stay skipped
            skipped = kwargs.get("ignore_index", -100)
            if not isinstance(target, torch.Tensor) or target.is_floating_point():
                return original(input, target, *args, **kwargs)
            if s.score_ignore_index is not None and isinstance(input, torch.Tensor) and input.requires_grad:
                with torch.no_grad():
                    real = target.masked_fill(target == s.score_ignore_index, skipped)
                    self._last = original(input.detach(), real, ignore_index=skipped)
            if s.ignore_index is not None:
                target = target.masked_fill(target == s.ignore_index, skipped)
            return original(input, target, *args, **kwargs)

        F.cross_entropy = cross_entropy
        return self

    def end_step(self) -> None:
        if self._last is not None:
            self._steps.append(self._last.float().reshape(()))
            self._last = None

    def scores(self) -> list[float]:
        if not self._steps:
            return []
        return [v if math.isfinite(v) else math.nan for v in torch.stack(self._steps).tolist()]

    def __exit__(self, *exc: Any) -> None:
        if self._original is not None:
            import torch.nn.functional as F  # noqa: N812

            F.cross_entropy = self._original


def _accepted(cls: type, defaults: dict[str, Any]) -> dict[str, Any]:
    """The defaults the optimizer's constructor takes as keywords (``defaults`` may hold more: AdamW's
    ``decoupled_weight_decay``); every group carries its own values anyway."""
    try:
        names = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in names.values()):
        return dict(defaults)
    return {k: v for k, v in defaults.items() if k in names}


def _read(curve: Curve, losses: list[torch.Tensor], norms: list[torch.Tensor]) -> None:
    """Move the steps measured since the last read to the curve (one copy each)."""
    if not losses:
        return
    values = torch.stack(losses).tolist()
    curve.losses += [v if math.isfinite(v) else math.nan for v in values]
    curve.grad_norms += torch.stack(norms).tolist()
    losses.clear()
    norms.clear()


def _order(n: int, seed: int) -> Callable[[int], int]:
    """Step -> batch index: seed 0's first pass is the user's order (a sudden instability stays at its
    step), every other pass and seed a seeded permutation of the batches."""
    cache: dict[int, list[int]] = {}

    def index(step: int) -> int:
        epoch, i = divmod(step, n)
        if epoch == 0 and seed == 0:
            return i
        if epoch not in cache:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            cache[epoch] = torch.randperm(n, generator=g).tolist()
        return cache[epoch][i]

    return index


def _batch_iterator(batches: Any) -> Iterator[Any] | None:
    """The batches as an iterator: one batch (a tensor, a dict, or a tuple of tensors) alone, or an
    iterable of them (a DataLoader, a list)."""
    one = isinstance(batches, (torch.Tensor, dict)) or hasattr(batches, "keys") or (
        isinstance(batches, tuple) and all(isinstance(t, torch.Tensor) for t in batches))
    if one:
        return iter([batches])
    if isinstance(batches, Iterable):
        return iter(batches)
    raise TraindocInputError("batches", f"must be a batch or an iterable of batches (a DataLoader), got "
                                        f"{type(batches).__name__}")
