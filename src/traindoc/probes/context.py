"""`ProbeContext`: one instrumented pass over the user's model and batch, shared by every probe.

The *main pass* runs the user's own ``forward`` (and ``loss_fn``) once, in eval mode with grad
enabled, while it observes:

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

Probes then spend a fixed number of extra backward passes (`ProbeContext.grad`), counted in
`ProbeContext.passes`, whatever the batch size and sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from traindoc.errors import TraindocInputError
from traindoc.setup import AUTOREGRESSIVE, Setup, output_logits, output_loss, replace_tensors

LOSS_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll_loss",
    F.binary_cross_entropy: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits",
    F.mse_loss: "mse_loss",
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


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    return bool(torch.equal(a, b))


class ProbeContext:
    """Shared, lazily computed facts about one setup; counts every forward and backward it runs."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.passes = {"forward": 0, "backward": 0}
        self.notes: dict[str, Any] = {}
        self.paths: dict[int, str] = {}
        for name, module in setup.model.named_modules():
            self.paths.setdefault(id(module), name or type(module).__name__)
        self.param_names: dict[int, str] = {}
        for name, p in setup.model.named_parameters():
            self.param_names.setdefault(id(p), name)

    # ------------------------------------------------------------------ main pass
    @cached_property
    def main(self) -> MainPass:
        setup, model = self.setup, self.setup.model
        B = setup.batch_size
        streams: list[Stream] = []
        attention: list[AttentionCall] = []
        finite_flags: list[tuple[str, torch.Tensor]] = []
        activation_bytes = [0]
        module_classes = {self.paths[id(m)]: type(m).__name__ for m in model.modules()}
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
            name = next((n for n, t in batch_ids.items() if _same_tensor(t, ids)), None)
            if not out.requires_grad:
                out = out.detach().requires_grad_()
            path = self.paths.get(id(module), type(module).__name__)
            streams.append(Stream(name=name or f"{path}(input)", module=path, ids=ids.detach(), value=out,
                                  from_batch=name is not None))
            return out

        def mha_pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            q = args[0] if args else kwargs.get("query")
            k = args[1] if len(args) > 1 else kwargs.get("key")
            if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
                return
            attention.append(AttentionCall(
                module=self.paths.get(id(module), type(module).__name__),
                batch_first=bool(getattr(module, "batch_first", False)),
                query_shape=tuple(q.shape), key_shape=tuple(k.shape), self_attention=q is k,
                attn_mask=(args[5] if len(args) > 5 else kwargs.get("attn_mask")),
                key_padding_mask=(args[3] if len(args) > 3 else kwargs.get("key_padding_mask")),
                is_causal=bool(args[7] if len(args) > 7 else kwargs.get("is_causal", False)),
                in_decoder=id(module) in in_decoder, in_encoder=id(module) in in_encoder))

        def finite_hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                finite_flags.append((self.paths.get(id(module), type(module).__name__), torch.isfinite(t).all()))
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
            with torch.enable_grad(), LossObserver(loss_calls):
                self.passes["forward"] += 1
                try:
                    output = setup.forward(model, batch)
                except Exception as e:
                    raise TraindocInputError(
                        "forward" if setup.user_forward else "batch",
                        f"calling the model raised {type(e).__name__}: {e}. "
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
                    loss = output_loss(output)
                    source = "output.loss" if loss is not None else "none"
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

    # ------------------------------------------------------------------ autograd
    def grad(self, scalar: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """d scalar / d inputs, keeping the graph for the next probe; counts one backward pass."""
        self.passes["backward"] += 1
        return list(torch.autograd.grad(scalar, inputs, retain_graph=True, allow_unused=True))

    @cached_property
    def param_grads(self) -> dict[str, torch.Tensor | None]:
        """Gradient of the user's loss for every trainable parameter (None: not reached)."""
        loss = self.main.loss
        if loss is None or not loss.requires_grad:
            return {}
        named = [(n, p) for n, p in self.setup.model.named_parameters() if p.requires_grad]
        grads = self.grad(loss, [p for _, p in named])
        return {n: g for (n, _), g in zip(named, grads, strict=True)}

    # ------------------------------------------------------------------ targets and task
    @cached_property
    def loss_call(self) -> LossCall | None:
        """The main classification-style loss call (the one with the widest logits)."""
        calls = [c for c in self.main.loss_calls if c.fn in ("cross_entropy", "nll_loss")]
        if not calls:
            return None
        return max(calls, key=lambda c: c.input.shape[-1] if c.input.dim() > 1 else c.input.shape[0])

    @cached_property
    def target_name(self) -> str | None:
        """The batch tensor the main loss call's targets come from (same positions, shifted by one,
        or a masked subsequence; `traindoc.probes.targets.match_target`)."""
        from traindoc.probes.targets import match_target

        call = self.loss_call
        if call is None or call.target.is_floating_point():
            return None
        target = call.target.reshape(-1).cpu().long()
        counted = target != call.ignore_index if call.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        source = match_target(self, target, counted)
        return source.name if source is not None else None

    @cached_property
    def token_streams(self) -> list[Stream]:
        """Distinct token streams in the order the model embedded them (one per source ids)."""
        seen: list[Stream] = []
        for s in self.main.streams:
            if s.is_tokens and not any(_same_tensor(s.ids, o.ids) and s.module == o.module for o in seen):
                seen.append(s)
        return seen

    @cached_property
    def vocab_size(self) -> int | None:
        sizes = [m.num_embeddings for m in self.setup.model.modules() if isinstance(m, nn.Embedding)]
        return max(sizes) if sizes else None

    @cached_property
    def task(self) -> tuple[str | None, str]:
        """(task, how it was decided)."""
        s = self.setup
        if s.task:
            return s.task, "given"
        cls = type(s.model).__name__
        cfg = s.config
        if cfg is not None and getattr(cfg, "is_encoder_decoder", False):
            return "seq2seq", "config.is_encoder_decoder"
        for suffix, task in (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
                             ("ForConditionalGeneration", "seq2seq"), ("ForSequenceClassification", "classification"),
                             ("ForMaskedLM", "masked-lm"), ("ForTokenClassification", "token-classification")):
            if cls.endswith(suffix):
                return task, f"model class {cls}"
        logits = self.main.logits
        if logits is None:
            return None, "the output has no logits tensor"
        fns = {c.fn for c in self.main.loss_calls}
        if fns and fns <= {"mse_loss", "kl_div"}:
            return None, f"regression or distillation: the loss is {', '.join(sorted(fns))}"
        if logits.dim() == 2:
            return "classification", f"logits of shape {tuple(logits.shape)} are (batch, classes)"
        if logits.dim() != 3:
            return None, f"logits of shape {tuple(logits.shape)}"
        streams = self.token_streams
        target = self.setup.tensors.get(self.target_name) if self.target_name else None
        if target is not None and target.dim() == 2:
            for i, st in enumerate(streams):
                rel = sequence_relation(target, st.ids, self.ignore_index)
                if rel == "shifted":
                    if i > 0:
                        return "seq2seq", f"targets {self.target_name!r} are decoder input {st.name!r} shifted by one"
                    return "causal-lm", f"targets {self.target_name!r} are input {st.name!r} shifted by one"
                if rel == "same" and self.vocab_size and logits.shape[-1] >= self.vocab_size:
                    return "causal-lm", f"targets {self.target_name!r} equal the input {st.name!r} over a vocab-wide output"
            ignored = (target == self.ignore_index).float().mean().item() if self.ignore_index is not None else 0.0
            if self.vocab_size and logits.shape[-1] >= self.vocab_size and ignored > 0.5:
                return "masked-lm", "vocab-wide output, most targets ignored"
        if self.vocab_size and logits.shape[-1] < self.vocab_size // 2:
            return "token-classification", f"per-token logits of width {logits.shape[-1]}"
        if len(streams) >= 2:
            return "seq2seq", "two token streams and a vocab-wide per-token output"
        if len(streams) == 1:
            return "causal-lm", "one token stream and a vocab-wide per-token output"
        return None, "could not tell"

    @property
    def autoregressive(self) -> bool:
        return self.task[0] in AUTOREGRESSIVE

    @cached_property
    def ignore_index(self) -> int | None:
        call = self.loss_call
        return call.ignore_index if call is not None else -100

    @cached_property
    def decoder_stream(self) -> Stream | None:
        """The stream the model predicts autoregressively (decoder input / the LM's input)."""
        streams = self.token_streams
        logits = self.main.logits
        if not streams or logits is None or logits.dim() != 3:
            return None
        T = _seq_len(logits, self.setup.batch_size)
        candidates = [s for s in streams if s.ids is not None and s.ids.shape[1] == T]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        for s in candidates:
            if s.module and "decoder" in s.module.lower() or "dec" in s.name.lower() or "tgt" in s.name.lower():
                return s
        target = self.setup.tensors.get(self.target_name) if self.target_name else None
        if target is not None:
            for s in candidates:
                if sequence_relation(target, s.ids, self.ignore_index) == "shifted":
                    return s
        return candidates[-1]  # an encoder-decoder embeds the encoder's ids first

    def real_positions(self, stream: Stream) -> torch.Tensor | None:
        """Bool (B, T) of real (non-pad) positions of a token stream, from the batch's attention mask
        that fits it, else from the pad id on trailing/leading runs. None when nothing marks pads."""
        if stream.ids is None:
            return None
        mask = self.attention_mask_for(stream)
        if mask is not None:
            return mask.bool() if mask.dtype == torch.bool else mask != 0
        pad = self.setup.special_id("pad_token_id")
        if pad is None:
            return None
        is_pad = stream.ids == pad
        # only runs of pads at the end (right padding) or start (left padding) are padding; a pad id
        # that starts every sample is a start token (T5's decoder_start_token_id, seed 000's eos), not padding
        trailing = torch.flip(torch.cumprod(torch.flip(is_pad, [1]).int(), 1), [1]).bool()
        leading = torch.cumprod(is_pad.int(), 1).bool()
        if bool(is_pad[:, 0].all()):
            leading = torch.zeros_like(leading)
        return ~(trailing | leading)

    def attention_mask_for(self, stream: Stream) -> torch.Tensor | None:
        """The batch's 0/1 attention mask for this stream (same shape; name paired with the stream's)."""
        if stream.ids is None:
            return None
        shape = tuple(stream.ids.shape)
        masks = {n: t for n, t in self.setup.tensors.items()
                 if "mask" in n.lower() and tuple(t.shape) == shape and _is_binary(t)}
        if not masks:
            return None
        if len(masks) == 1:
            return next(iter(masks.values()))
        stem = stream.name.lower().replace("input_ids", "").replace("ids", "").replace("inputs", "").strip("_.")
        for n, t in masks.items():
            mstem = n.lower().replace("attention_mask", "").replace("mask", "").strip("_.")
            if mstem and stem and (mstem in stem or stem in mstem):
                return t
        plain = [t for n, t in masks.items() if n.lower() in ("attention_mask", "mask", "src_mask")]
        if stream is self.token_streams[0] and plain:
            return plain[0]
        return None


def _seq_len(logits: torch.Tensor, batch_size: int) -> int:
    if logits.shape[0] == batch_size:
        return logits.shape[1]
    return logits.shape[0]


def _is_binary(t: torch.Tensor) -> bool:
    if t.dtype == torch.bool:
        return True
    if t.numel() == 0:
        return False
    return bool(((t == 0) | (t == 1)).all())


def sequence_relation(target: torch.Tensor, ids: torch.Tensor | None, ignore_index: int | None = -100) -> str | None:
    """``"shifted"`` if target[:, t] == ids[:, t+1] (teacher forcing), ``"same"`` if target == ids,
    on at least 90% of the positions that are not ignore_index; None otherwise."""
    if ids is None or target.shape != ids.shape or target.dim() != 2 or target.shape[1] < 2:
        return None
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    if valid.sum() == 0:
        return None
    same = ((target == ids) & valid).sum().item() / valid.sum().item()
    v = valid[:, :-1]
    shifted = ((target[:, :-1] == ids[:, 1:]) & v).sum().item() / max(1, v.sum().item())
    if shifted >= 0.9 and shifted > same:
        return "shifted"
    if same >= 0.9:
        return "same"
    return None


def ln(x: int) -> float:
    return math.log(x) if x > 0 else float("nan")
