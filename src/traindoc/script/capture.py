"""What an unmodified training script builds and calls, seen through traindoc's global hooks.

`Capture.install` puts into PyTorch, for the time the script runs:

* a global module forward pre-hook and forward hook (``torch.nn.modules.module``) that track the
  outermost call of a module with parameters under grad mode in training mode (a loss module such as
  ``nn.CrossEntropyLoss()`` is not the model): the module, its positional and keyword arguments (the
  batch as it enters the model), and the user's line that called it. Once the model
  being trained is known (`narrow_to`), they are replaced by one forward pre-hook on that model;
* wrappers of the loss functions of ``torch.nn.functional`` (which the ``nn`` loss modules and the
  Hugging Face models call): the last call's function, input, target and options, and its line;
* a wrapper of ``torch.Tensor.backward``: the tensor backpropagated (the loss) and its line; a loss
  divided by an integer for gradient accumulation, or multiplied by an AMP scaler, is recorded as it
  was before;
* the line where each attention module (``nn.Transformer``, its encoders, decoders and layers,
  ``nn.MultiheadAttention``) is first called from the script, and where
  ``F.scaled_dot_product_attention`` first is: where a mask is passed or forgotten;
* wrappers of the constructors of the optimizers, LR schedulers, DataLoaders, the transformer
  layers (``nn.Transformer``, its encoder/decoder layers, ``nn.MultiheadAttention``),
  DistributedDataParallel and DistributedSampler, and of ``LRScheduler.step``: where each was created
  or called; a DistributedSampler's epoch each time its iteration starts;
* a listener of the gradient clipping calls (`traindoc.monitor.clip_patch`): the line of the first;
* global optimizer step pre- and post-hooks (``torch.optim.optimizer``): every optimizer step.

Each wrapper records references and a line only (no copy, no device op), calls the original, and is
silent while `paused` (traindoc's own passes). An exception in traindoc's part of a hook is kept in
`Capture.errors`, never raised into the script. `remove` restores everything.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.optim import optimizer as optimizer_hooks

from traindoc.monitor.clip_patch import add_clip_listener
from traindoc.script.frames import Location, user_location
from traindoc.setup import output_loss

LOSS_FUNCTIONS = ("cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
                  "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div")
"""The ``torch.nn.functional`` losses whose calls are recorded (input, target, options)."""

TRANSFORMER_LAYERS = (nn.Transformer, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
ATTENTION_MODULES = (*TRANSFORMER_LAYERS, nn.TransformerEncoder, nn.TransformerDecoder)
DECODERS = (nn.Transformer, nn.TransformerDecoder, nn.TransformerDecoderLayer)


@dataclass
class ModelCall:
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    location: Location | None
    returns_loss: bool = False
    """The output held the loss (``output.loss``, ``(logits, loss)``; `traindoc.setup.output_loss`)."""


@dataclass
class LossCall:
    name: str
    function: Callable[..., Any]
    input: Any
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    location: Location | None
    output: torch.Tensor | None = None
    """The loss the call returned (held, like ``input``, until the next loss call: a framework may keep
    only ``loss / k`` of it, so a weak reference would die before the backward)."""


@dataclass
class Seen:
    """What the script did, with the lines that did it."""

    model_call: ModelCall | None = None
    eval_call: ModelCall | None = None
    """The last call of a module with parameters in eval mode with gradients on: the model, when it is
    trained without ever being put in training mode (a checkpoint loaded in eval mode)."""
    loss_call: LossCall | None = None
    loss: torch.Tensor | None = None
    loss_is_last_call: bool = False
    """The last backward went through the last loss call's output alone (or it divided by an integer):
    that call is the script's loss. False for a sum of several losses (a GAN's real + fake terms)."""
    created: dict[str, list[tuple[Any, Location | None]]] = field(default_factory=dict)
    lines: dict[str, Location] = field(default_factory=dict)
    """The first user line of: "model" (its call), "loss", "backward", "step", "scheduler_step",
    "sampler_iter" (where a DistributedSampler's iteration started: the ``for`` over its DataLoader),
    "model_no_grad" (a call of a model in training mode under ``torch.no_grad()``), "clip" (the first
    gradient clipping call)."""
    sampler_epochs: dict[int, tuple[Any, list[int]]] = field(default_factory=dict)
    """Each DistributedSampler iterated: a weak reference and its epoch at each iteration's start."""
    attention_calls: list[tuple[str, Location]] = field(default_factory=list)
    """(class name, the script's line) of each attention module's first call, and of the first
    ``F.scaled_dot_product_attention`` call ("scaled_dot_product_attention"), in call order."""
    _attention_seen: set[int] = field(default_factory=set)

    def attention_line(self, *, decoder: bool) -> Location | None:
        """Where the script calls its attention: the first decoder (``nn.Transformer``, a decoder or
        decoder layer) when ``decoder`` and one was called, else the first attention call."""
        if decoder:
            names = {c.__name__ for c in DECODERS}
            for name, loc in self.attention_calls:
                if name in names:
                    return loc
        return self.attention_calls[0][1] if self.attention_calls else None

    def first_line(self, kind: str) -> Location | None:
        return self.lines.get(kind)

    def created_line(self, kind: str, obj: Any = None) -> Location | None:
        """Where ``obj`` (or, without it or when it was not seen, the first object of that kind) was built."""
        items = self.created.get(kind) or []
        if obj is not None:
            for ref, loc in items:
                if ref() is obj:
                    return loc
        return items[0][1] if items else None


class Capture:
    """Installs and removes the global hooks (see the module docstring)."""

    def __init__(self, *, on_step: Callable[[torch.optim.Optimizer], None],
                 on_step_end: Callable[[torch.optim.Optimizer], None],
                 on_backward: Callable[[torch.Tensor], None], on_batch: Callable[[ModelCall], None]):
        self.seen = Seen()
        self._on_step, self._on_step_end = on_step, on_step_end
        self._on_backward, self._on_batch = on_backward, on_batch
        self._paused = 0
        self._sdpa_seen = False
        self._depth = 0
        self._pending: tuple[nn.Module, Location | None] | None = None
        self._undo: list[Callable[[], None]] = []
        self._model_hook: Any = None
        self._global_forward: list[Any] = []
        self._unscaled: tuple[Any, torch.Tensor] | None = None
        self._losses: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
        self.errors: dict[str, str] = {}
        """traindoc's own exceptions inside a hook, by place (the first of each): reported, never raised."""

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """traindoc's own passes: nothing is recorded, and ``torch.nn.functional``'s losses are torch's
        own again (the doctor recognises a loss call by the function itself)."""
        self._paused += 1
        swapped = {name: getattr(F, name) for name in self._losses} if self._paused == 1 else {}
        for name, (original, _) in self._losses.items() if swapped else ():
            setattr(F, name, original)
        try:
            yield
        finally:
            for name, current in swapped.items():  # what was there: the wrapper, or a wrapper around it
                setattr(F, name, current)
            self._paused -= 1

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        self._global_forward = [module_hooks.register_module_forward_pre_hook(self._forward_pre),
                                module_hooks.register_module_forward_hook(self._forward_post, with_kwargs=True,
                                                                          always_call=True)]
        self._undo.append(optimizer_hooks.register_optimizer_step_pre_hook(self._step_pre).remove)
        self._undo.append(optimizer_hooks.register_optimizer_step_post_hook(self._step_post).remove)
        for name in LOSS_FUNCTIONS:
            if hasattr(F, name):
                original = getattr(F, name)
                wrapper = self._loss_wrapper(name, original)
                self._losses[name] = (original, wrapper)
                self._patch(F, name, wrapper)
        self._patch(torch.Tensor, "backward", self._backward_wrapper(torch.Tensor.backward))
        self._patch(F, "scaled_dot_product_attention", self._sdpa_wrapper(F.scaled_dot_product_attention))
        self._undo.append(add_clip_listener(self._clipped))
        self._patch_init(torch.optim.Optimizer, "optimizer")
        self._patch_init(torch.optim.lr_scheduler.LRScheduler, "scheduler")
        self._patch_init(torch.utils.data.DataLoader, "dataloader")
        for cls in TRANSFORMER_LAYERS:
            self._patch_init(cls, "transformer")
        self._patch_init(nn.Softmax, "softmax")
        self._patch(torch.optim.lr_scheduler.LRScheduler, "step",
                    self._line_wrapper("scheduler_step", torch.optim.lr_scheduler.LRScheduler.step))
        self._patch(torch.amp.GradScaler, "scale", self._scale_wrapper(torch.amp.GradScaler.scale))
        if torch.distributed.is_available():
            from torch.utils.data.distributed import DistributedSampler

            self._patch_init(torch.nn.parallel.DistributedDataParallel, "ddp")
            self._patch_init(DistributedSampler, "sampler")
            self._patch(DistributedSampler, "__iter__", self._sampler_iter_wrapper(DistributedSampler.__iter__))

    def remove(self) -> None:
        for h in self._global_forward:
            h.remove()
        self._global_forward = []
        if self._model_hook is not None:
            self._model_hook.remove()
            self._model_hook = None
        for undo in reversed(self._undo):
            with contextlib.suppress(Exception):
                undo()
        self._undo.clear()
        self._losses.clear()

    def narrow_to(self, model: nn.Module) -> None:
        """The model is known: one forward pre-hook on it replaces the global forward hooks."""
        for h in self._global_forward:
            h.remove()
        self._global_forward = []
        self._model_hook = model.register_forward_pre_hook(self._model_pre, with_kwargs=True)

    def _patch(self, owner: Any, name: str, wrapper: Any) -> None:
        had_own = name in vars(owner)
        original = vars(owner).get(name) if had_own else getattr(owner, name)
        setattr(owner, name, wrapper)

        def undo() -> None:
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)

        self._undo.append(undo)

    def _patch_init(self, cls: type, kind: str) -> None:
        original = cls.__init__
        capture = self

        @functools.wraps(original)
        def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 (the wrapped constructor)
            original(obj, *args, **kwargs)
            if not capture._paused:
                capture._contained(f"{kind} constructor", capture._created, kind, obj)

        self._patch(cls, "__init__", __init__)

    # ------------------------------------------------------------------ hook bodies
    def _where(self) -> Location | None:
        """The user's line of the current call (`user_location`), or None: a failure to find it costs only
        the line, never the hook."""
        try:
            return user_location()
        except Exception as e:
            self.errors.setdefault("locating the user's line", f"{type(e).__name__}: {e}")
            return None

    def _contained(self, where: str, fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args)``; an exception of traindoc's own is kept in `errors` (reported at the end), never
        raised into the script."""
        try:
            fn(*args)
        except Exception as e:
            self.errors.setdefault(where, f"{type(e).__name__}: {e}")

    def _forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._paused:
            self._contained("forward pre-hook", self._enter_call, module)

    def _enter_call(self, module: nn.Module) -> None:
        self._depth += 1
        if isinstance(module, ATTENTION_MODULES):
            self._attention_called(module, type(module).__name__)
        if self._depth == 1:
            self._pending = (module, self._where())

    def _attention_called(self, key: Any, name: str) -> None:
        seen = self.seen
        if id(key) not in seen._attention_seen:
            seen._attention_seen.add(id(key))
            where = self._where()
            if where is not None:
                seen.attention_calls.append((name, where))

    def _forward_post(self, module: nn.Module, args: tuple[Any, ...], *rest: Any) -> None:
        if self._paused:
            return
        if len(rest) == 2:  # (kwargs, output)
            self._contained("forward hook", self._leave_call, module, args, rest[0], rest[1])
        else:  # the forward raised: torch calls an always-call hook without the kwargs (torch 2.13)
            self._contained("forward hook", self._left_by_exception, module)

    def _left_by_exception(self, module: nn.Module) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._pending is not None and self._pending[0] is module:
            self._pending = None

    def _leave_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._pending is not None and self._pending[0] is module:
            location = self._pending[1]
            self._pending = None
            # a module without parameters (`criterion = nn.CrossEntropyLoss()`, called after the model) is
            # not a model being trained: it must not take the model call's place
            if next(module.parameters(), None) is None:
                return
            if not module.training:
                if torch.is_grad_enabled():
                    self.seen.eval_call = ModelCall(module, args, dict(kwargs), location,
                                                    output_loss(output)[0] is not None)
                return
            if torch.is_grad_enabled():
                returns_loss = output_loss(output)[0] is not None
                self._record_call(ModelCall(module, args, dict(kwargs), location, returns_loss))
            elif location is not None:  # a training-mode call under torch.no_grad(): kept for a crash's diagnosis
                self.seen.lines.setdefault("model_no_grad", location)

    def _model_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._paused and module.training and torch.is_grad_enabled():  # after the doctor: the batch only
            self._contained("model forward pre-hook", self._record_call, ModelCall(module, args, dict(kwargs), None))

    def _record_call(self, call: ModelCall) -> None:
        if call.location is not None:
            self.seen.lines.setdefault("model", call.location)
        self.seen.model_call = call
        self._on_batch(call)

    def _step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._paused:
            self._contained("optimizer step pre-hook", self._step_started, optimizer)

    def _step_started(self, optimizer: torch.optim.Optimizer) -> None:
        if "step" not in self.seen.lines:
            self._line("step")
        self._on_step(optimizer)

    def _step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._paused:
            self._on_step_end(optimizer)

    def _loss_wrapper(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        capture = self

        @functools.wraps(original)
        def loss(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A002 (torch's names)
            if not capture._paused and torch.is_grad_enabled() and isinstance(input, torch.Tensor) \
                    and input.requires_grad:
                call = LossCall(name, original, input, target, args, kwargs, None)
                capture._contained("loss function", capture._loss_called, call)
                out = original(input, target, *args, **kwargs)
                if isinstance(out, torch.Tensor):
                    call.output = out
                return out
            return original(input, target, *args, **kwargs)

        return loss

    def _clipped(self, *_: Any) -> None:
        if not self._paused and "clip" not in self.seen.lines:  # the first clipping call's line only
            self._contained("clip line", self._line, "clip")

    def _sdpa_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        capture = self

        @functools.wraps(original)
        def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Any:
            if not capture._paused and not capture._sdpa_seen:  # the first call's line only
                capture._sdpa_seen = True
                capture._contained("attention", capture._attention_called, original, "scaled_dot_product_attention")
            return original(*args, **kwargs)

        return scaled_dot_product_attention

    def _backward_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        capture = self

        @functools.wraps(original)
        def backward(self_tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if capture._paused or self_tensor.numel() != 1:
                return original(self_tensor, *args, **kwargs)
            recorded: list[torch.Tensor] = []
            capture._contained("backward", capture._backward_called, self_tensor, recorded)
            out = original(self_tensor, *args, **kwargs)
            if recorded:  # after the backward: the loss belongs to the step it feeds
                capture._contained("backward", capture._on_backward, recorded[0])
            return out

        return backward

    def _backward_called(self, self_tensor: torch.Tensor, recorded: list[torch.Tensor]) -> None:
        """The loss a backward starts from (see `_backward_wrapper`), appended to ``recorded``."""
        seen = self.seen
        if "backward" not in seen.lines:  # the first backward's line; no stack walk after it
            loc = self._where()
            if loc is not None:
                seen.lines["backward"] = loc
        tensor, unscaled = self_tensor, self._unscaled
        if unscaled is not None and unscaled[0]() is self_tensor:
            tensor = unscaled[1]  # the loss before the AMP scaler multiplied it
        self._unscaled = None
        root = tensor.grad_fn
        divisor = _accumulation_divisor(tensor)
        if divisor is not None:  # `loss / k` for gradient accumulation: the loss is the undivided one
            root = root.next_functions[0][0] if root is not None and root.next_functions else root
            tensor = tensor.detach() * divisor
        call = seen.loss_call
        last = call.output if call is not None else None
        seen.loss_is_last_call = last is not None and (last is tensor or last.grad_fn is root)
        seen.loss = tensor
        recorded.append(tensor)

    def _line(self, kind: str) -> None:
        loc = self._where()
        if loc is not None:
            self.seen.lines[kind] = loc

    def _loss_called(self, call: LossCall) -> None:
        call.location = self._where()
        self.seen.loss_call = call
        if call.location is not None:
            self.seen.lines.setdefault("loss", call.location)

    def _created(self, kind: str, obj: Any) -> None:
        # a scheduler is held (it is small) so that its plan can be judged after the script's end, when
        # the script's globals are gone (`traindoc.script.schedules`); the rest weakly
        ref = (lambda: obj) if kind == "scheduler" else _ref(obj)
        self.seen.created.setdefault(kind, []).append((ref, self._where()))

    def _scale_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """AMP: ``scaler.scale(loss).backward()`` backpropagates the scaled loss; remember which loss it
        was, so that the loss logged is the real one, not the one times a scale that changes."""
        capture = self

        @functools.wraps(original)
        def scale(scaler: Any, outputs: Any) -> Any:
            scaled = original(scaler, outputs)
            if isinstance(scaled, torch.Tensor) and isinstance(outputs, torch.Tensor) and scaled is not outputs:
                capture._unscaled = (weakref.ref(scaled), outputs)
            return scaled

        return scale

    def _sampler_iter_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        capture = self

        @functools.wraps(original)
        def __iter__(sampler: Any) -> Any:  # noqa: N807 (the wrapped method)
            if not capture._paused:
                capture._contained("sampler iteration", capture._sampler_started, sampler)
            return original(sampler)

        return __iter__

    def _sampler_started(self, sampler: Any) -> None:
        if "sampler_iter" not in self.seen.lines:
            self._line("sampler_iter")
        entry = self.seen.sampler_epochs.setdefault(id(sampler), (_ref(sampler), []))
        entry[1].append(int(getattr(sampler, "epoch", 0)))

    def _line_wrapper(self, kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
        capture = self

        @functools.wraps(original)
        def wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
            # the constructor's own first step() comes before _step_count reaches 1: not the user's call
            if not capture._paused and kind not in capture.seen.lines and getattr(obj, "_step_count", 0) >= 1:
                capture._contained(f"{kind} line", capture._line, kind)
            return original(obj, *args, **kwargs)

        return wrapper


def _accumulation_divisor(loss: torch.Tensor) -> float | None:
    """``k`` when ``loss`` is another scalar divided by a Python integer ``k >= 1`` (how Accelerate's
    ``backward``, the Hugging Face Trainer and hand-written loops scale a micro-batch's loss for
    gradient accumulation; Lightning divides by its accumulation count even when it is 1); None
    otherwise. Read from the autograd node: the divisor is kept there
    as a CPU number, so reading it waits for no device."""
    fn = loss.grad_fn
    if fn is None or type(fn).__name__ != "DivBackward0":
        return None
    other = getattr(fn, "_saved_other", None)
    if not isinstance(other, torch.Tensor) or other.dim() != 0 or other.dtype not in (torch.int64, torch.float64) \
            or other.device.type != "cpu":
        return None  # a tensor divisor (a token count): that division is the loss's own mean
    # (a Python number is kept as a 0-d int64/float64 CPU tensor; a float32 or device tensor was the user's)
    k = float(other)
    return k if k >= 1 and k.is_integer() else None


def _ref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj
