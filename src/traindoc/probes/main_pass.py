"""The main pass: one instrumented run of the user's own ``forward`` (and ``loss_fn``) that every
probe reads.

It runs once, in eval mode with grad enabled, while it observes:

- **token streams** — every ``nn.Embedding`` call on a (B, T) integer input; its output is kept
  (made a grad leaf if the embedding is frozen) so that probes can ask autograd what each output
  depends on (Karpathy's "use backprop to chart dependencies"). Float inputs with a batch axis are
  replaced by grad leaves the same way;
- **attention calls** — what every ``nn.MultiheadAttention`` actually received (masks, their dtype
  and polarity, ``is_causal``, the shape it attends over);
- **loss calls** — the tensors that reach ``cross_entropy`` / ``nll_loss`` / BCE / MSE, through a
  `TorchFunctionMode`, so the real targets, ignore_index and logits are seen even when the loss is
  computed inside the model or by a user function;
- **finiteness** of every module's output (device-side flags, one host sync at the end) and the
  activation bytes (for the memory estimate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from traindoc.errors import TraindocInputError
from traindoc.setup import Setup, output_logits, output_loss, replace_tensors

LOSS_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll_loss",
    F.binary_cross_entropy: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits",
    F.mse_loss: "mse_loss",
    F.l1_loss: "l1_loss",
    F.smooth_l1_loss: "smooth_l1_loss",
    F.huber_loss: "huber_loss",
    F.kl_div: "kl_div",
}
_LOSS_DEFAULT_IGNORE = {"cross_entropy": -100, "nll_loss": -100}


@dataclass
class LossCall:
    """One call of a loss function seen during the main pass."""

    fn: str
    input: torch.Tensor
    target: torch.Tensor
    ignore_index: int | None
    reduction: str
    label_smoothing: float = 0.0
    weight: torch.Tensor | None = None
    output: torch.Tensor | None = None  # what the call returned (per-element losses for reduction="none")

    def per_element(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
        """Recompute a loss call element by element, without ever raising on bad targets.

        Returns ``(losses, ignored, out_of_range, num_classes)``: per-target losses (out-of-range
        targets give NaN, ignored ones 0), and the boolean masks, all shaped like the targets (for soft
        targets and regression losses, like the loss's ``reduction='none'`` output).
        """
        x = self.input.detach()
        tgt = self.target
        if self.fn in ("cross_entropy", "nll_loss"):
            cdim = 1 if x.dim() >= 2 else 0
            C = x.shape[cdim]
            logp = x.float().log_softmax(cdim) if self.fn == "cross_entropy" else x.float()
            if tgt.is_floating_point() and tgt.shape == x.shape:  # probability targets
                losses = -(tgt.float() * logp).sum(cdim)
                none = torch.zeros_like(losses, dtype=torch.bool)
                return losses, none, none, C
            t = tgt.long()
            ignored = t == self.ignore_index if self.ignore_index is not None else torch.zeros_like(t, dtype=torch.bool)
            oor = ~ignored & ((t < 0) | (t >= C))
            safe = torch.where(ignored | oor, torch.zeros_like(t), t)
            picked = logp.gather(1, safe.unsqueeze(1)).squeeze(1) if x.dim() >= 2 else logp[safe]
            losses = -picked
            losses = torch.where(ignored, torch.zeros_like(losses), losses)
            losses = torch.where(oor, torch.full_like(losses, float("nan")), losses)
            return losses, ignored, oor, C
        fn = getattr(F, self.fn)
        losses = fn(x.float(), self.target.float(), reduction="none")
        none = torch.zeros_like(losses, dtype=torch.bool)
        return losses, none, none, None


@dataclass
class Stream:
    """A token (or feature) stream that enters the model: one embedding call or one float input."""

    name: str  # batch tensor name, or "<module path>(input)" for ids the model derived itself
    module: str | None  # embedding module path (None for float inputs)
    ids: torch.Tensor | None  # (B, T) token ids, None for float inputs
    value: torch.Tensor  # what autograd differentiates against: (B, T, E) or (B, ...)
    from_batch: bool

    @property
    def is_tokens(self) -> bool:
        return self.ids is not None and self.value.dim() >= 3


@dataclass
class AttentionCall:
    module: str
    batch_first: bool
    query_shape: tuple[int, ...]
    key_shape: tuple[int, ...]
    self_attention: bool
    attn_mask: torch.Tensor | None
    key_padding_mask: torch.Tensor | None
    is_causal: bool
    in_decoder: bool
    in_encoder: bool


@dataclass
class MainPass:
    output: Any
    logits: torch.Tensor | None
    loss: torch.Tensor | None
    loss_source: str
    streams: list[Stream] = field(default_factory=list)
    attention: list[AttentionCall] = field(default_factory=list)
    loss_calls: list[LossCall] = field(default_factory=list)
    nonfinite_modules: list[str] = field(default_factory=list)
    activation_bytes: int = 0
    module_classes: dict[str, str] = field(default_factory=dict)


class LossObserver(TorchFunctionMode):
    def __init__(self, calls: list[LossCall]):
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = LOSS_FUNCTIONS.get(func)
        recorded = len(self.calls)
        if name is not None and len(args) + len(kwargs) >= 2:
            try:
                inp = args[0] if args else kwargs.get("input")
                tgt = args[1] if len(args) > 1 else kwargs.get("target")
                if isinstance(inp, torch.Tensor) and isinstance(tgt, torch.Tensor):
                    # cross_entropy / nll_loss(input, target, weight, size_average, ignore_index, reduce,
                    # reduction, ...): read positional arguments too
                    positional = name in _LOSS_DEFAULT_IGNORE
                    ignore = kwargs.get("ignore_index", args[4] if positional and len(args) > 4
                                        else _LOSS_DEFAULT_IGNORE.get(name))
                    self.calls.append(LossCall(
                        fn=name, input=inp, target=tgt.detach(), ignore_index=ignore,
                        reduction=kwargs.get("reduction", args[6] if positional and len(args) > 6 else "mean"),
                        label_smoothing=float(kwargs.get("label_smoothing", 0.0) or 0.0),
                        weight=kwargs.get("weight", args[2] if positional and len(args) > 2 else None)))
                    if name in _LOSS_DEFAULT_IGNORE and not tgt.is_floating_point() and inp.dim() >= 1:
                        args, kwargs = _in_range_targets(inp, tgt, ignore, args, kwargs)
            except Exception:  # observation must never change what the user's code does
                pass
        result = func(*args, **kwargs)
        if len(self.calls) > recorded and isinstance(result, torch.Tensor):
            self.calls[-1].output = result
        return result


def _in_range_targets(inp: torch.Tensor, tgt: torch.Tensor, ignore: int | None, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Out-of-range class targets raise on CPU ("Target 2 is out of bounds") and kill the CUDA context
    (device-side assert). The call is recorded with its real targets (the label-out-of-range probe
    reports them); the loss itself is computed with those targets ignored, so the check goes on.
    No host sync: the replacement is a ``torch.where``."""
    n_classes = inp.shape[1] if inp.dim() >= 2 else inp.shape[0]
    fill = -100 if ignore is None else ignore
    bad = (tgt >= n_classes) | ((tgt < 0) & (tgt != fill))
    safe = torch.where(bad, torch.full_like(tgt, fill), tgt)
    if len(args) > 1:
        return (args[0], safe, *args[2:]), kwargs
    return args, {**kwargs, "target": safe}


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    return bool(torch.equal(a, b))


@contextlib.contextmanager
def _reentrant_checkpoints_as_nonreentrant() -> Iterator[None]:
    """``torch.utils.checkpoint(..., use_reentrant=True)`` cannot be differentiated with
    ``torch.autograd.grad``, which every gradient probe uses: during the main pass such a call runs as
    its non-reentrant twin (the same values, the same memory savings, recomputed in backward)."""
    from torch.utils import checkpoint as ckpt

    holder = getattr(ckpt, "CheckpointFunction", None)
    if holder is None:  # pragma: no cover - a torch without the reentrant implementation
        yield
        return

    def apply(function: Callable[..., Any], preserve: bool, *args: Any) -> Any:
        return ckpt.checkpoint(function, *args, use_reentrant=False, preserve_rng_state=preserve)

    holder.apply = staticmethod(apply)  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        del holder.apply  # back to torch.autograd.Function.apply


def run_main_pass(setup: Setup, paths: dict[int, str], passes: dict[str, int]) -> MainPass:
    """Run the user's forward (and loss) once, observing everything the probes need (module docstring).
    Counts the forward in ``passes``; a forward or loss_fn that raises is the user's input to fix."""
    model = setup.model
    B = setup.batch_size
    streams: list[Stream] = []
    attention: list[AttentionCall] = []
    finite_flags: list[tuple[str, torch.Tensor]] = []
    activation_bytes = [0]
    module_classes = {paths[id(m)]: type(m).__name__ for m in model.modules()}
    batch_ids = {n: t for n, t in setup.tensors.items() if not t.is_floating_point() and t.dim() == 2}

    decoder_types = (nn.TransformerDecoderLayer, nn.TransformerDecoder)
    encoder_types = (nn.TransformerEncoderLayer, nn.TransformerEncoder)
    in_decoder: set[int] = set()
    in_encoder: set[int] = set()
    for m in model.modules():
        if isinstance(m, decoder_types):
            in_decoder.update(id(x) for x in m.modules())
        elif isinstance(m, encoder_types):
            in_encoder.update(id(x) for x in m.modules())

    def embedding_hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        ids = args[0] if args else None
        if not (isinstance(ids, torch.Tensor) and isinstance(out, torch.Tensor)):
            return None
        if ids.dim() != 2 or ids.shape[0] != B or out.shape[0] != B or B < 1:
            return None  # position ids (1, T), flattened inputs: not a per-sample stream
        name = next((n for n, t in batch_ids.items() if same_tensor(t, ids)), None)
        if not out.requires_grad:
            out = out.detach().requires_grad_()
        path = paths.get(id(module), type(module).__name__)
        streams.append(Stream(name=name or f"{path}(input)", module=path, ids=ids.detach(), value=out,
                              from_batch=name is not None))
        return out

    def mha_pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        q = args[0] if args else kwargs.get("query")
        k = args[1] if len(args) > 1 else kwargs.get("key")
        if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
            return
        attention.append(AttentionCall(
            module=paths.get(id(module), type(module).__name__),
            batch_first=bool(getattr(module, "batch_first", False)),
            query_shape=tuple(q.shape), key_shape=tuple(k.shape), self_attention=q is k,
            attn_mask=(args[5] if len(args) > 5 else kwargs.get("attn_mask")),
            key_padding_mask=(args[3] if len(args) > 3 else kwargs.get("key_padding_mask")),
            is_causal=bool(args[7] if len(args) > 7 else kwargs.get("is_causal", False)),
            in_decoder=id(module) in in_decoder, in_encoder=id(module) in in_encoder))

    def finite_hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        t = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            finite_flags.append((paths.get(id(module), type(module).__name__), torch.isfinite(t.detach()).all()))
            if not any(True for _ in module.children()):
                activation_bytes[0] += t.numel() * t.element_size()

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                handles.append(m.register_forward_hook(embedding_hook))
            if isinstance(m, nn.MultiheadAttention):
                handles.append(m.register_forward_pre_hook(mha_pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(finite_hook))

        def leafify(name: str, t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point() and t.dim() >= 2 and t.shape[0] == B and not t.requires_grad:
                leaf = t.detach().clone().requires_grad_()
                streams.append(Stream(name=name, module=None, ids=None, value=leaf, from_batch=True))
                return leaf
            return t

        batch = replace_tensors(setup.batch, leafify)
        loss_calls: list[LossCall] = []
        model.eval()
        with torch.enable_grad(), LossObserver(loss_calls), _reentrant_checkpoints_as_nonreentrant():
            passes["forward"] += 1
            try:
                output = setup.forward(model, batch)
            except Exception as e:
                raise TraindocInputError(
                    "forward" if setup.user_forward else "batch",
                    f"calling the model as {setup.called_as} raised {type(e).__name__}: {e}. "
                    + ("Fix forward(model, batch)." if setup.user_forward else
                       "Pass forward=lambda model, batch: model(...) to call it as your loop does."),
                ) from e
            loss, source = None, "none"
            if setup.loss_fn is not None:
                try:
                    loss = setup.loss_fn(output, batch)
                except Exception as e:
                    raise TraindocInputError(
                        "loss_fn", f"loss_fn(output, batch) raised {type(e).__name__}: {e}") from e
                source = "loss_fn"
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TraindocInputError("loss_fn", "must return a scalar tensor")
            else:
                loss, source = output_loss(output)
    finally:
        for h in handles:
            h.remove()

    nonfinite: list[str] = []
    if finite_flags:
        ok = torch.stack([f for _, f in finite_flags]).cpu().tolist()  # the one host sync
        nonfinite = [path for (path, _), good in zip(finite_flags, ok, strict=True) if not good]
    return MainPass(output=output, logits=output_logits(output), loss=loss, loss_source=source,
                    streams=streams, attention=attention, loss_calls=loss_calls, nonfinite_modules=nonfinite,
                    activation_bytes=activation_bytes[0], module_classes=module_classes)
