"""`ProbeContext`: the facts about one setup that the probes share, each computed once, on demand.

The probes never compute a shared fact themselves and never keep state between them: they read
these properties. Each is computed the first time a probe asks (``functools.cached_property``), so a
check pays only for what its probes use. The facts, in the order they build on each other:

* `main` — the main pass (`traindoc.probes.main_pass`): one forward of the user's own code;
* `loss_backward` — ONE backward of the user's loss, to every trainable parameter and to the
  per-element outputs of ``reduction="none"`` loss calls: `param_grads` (which parameters the loss
  reaches) and `reaches_loss` (which per-element losses the final loss depends on);
* `loss_call`, `loss_targets`, `target_source`, `target_name` — the main loss call, its class
  targets and which count, and the batch tensor they come from (`traindoc.probes.targets`);
* `token_streams`, `decoder_stream`, `task`, `vocab_size`, `ignore_index` — what the model embeds,
  which stream it predicts, and which task that is (with the reason);
* `attention_mask_for`, `real_tokens`, `real_tokens_of` — the one rule for padding
  (`traindoc.probes.tokens`);
* `pad_targets` — how many loss targets sit on padding (``padding-in-loss``, ``pad-equals-eos``);
* `sample_dependency` — ONE backward of a random projection of one sample's output, to every input
  stream (``batch-mixing``, ``causal-leak``).

Every backward goes through `grad`, which counts it in `passes`; whatever the batch size and the
sequence length, a whole check runs one forward and at most three backward passes (the
``padding-leak`` probe spends the third; `column_dependency` one more, for a (B, B) output only),
plus one replay forward when a NaN/Inf appears.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from traindoc.probes.main_pass import LossCall, MainPass, Stream, run_main_pass, same_tensor
from traindoc.probes.targets import CLASS_LOSSES, LossTargets, TargetSource, class_targets, match_target
from traindoc.probes.tokens import RealTokens, is_binary, mask_fits, real_tokens
from traindoc.setup import AUTOREGRESSIVE, Setup

_SEED = 20240917


@dataclass
class PadTargets:
    """Loss targets that sit at pad positions of the tensor they come from."""

    count: int  # targets proved to sit at pad positions (a lower bound for a masked subset)
    eos_count: int  # of which equal to the eos id
    samples: list[int]
    padding: RealTokens
    source: TargetSource
    pad_positions: int
    exact: bool


@dataclass
class SampleDependency:
    """Gradients of a random projection of sample ``i``'s output (at position ``t0`` for an
    autoregressive task) with respect to every input stream."""

    i: int
    t0: int | None
    streams: list[Stream]
    grads: list[torch.Tensor | None]


def projection(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """A fixed random projection (its own generator: the user's RNG streams are never touched), so
    that no symmetry of the output hides a dependency."""
    g = torch.Generator(device="cpu").manual_seed(_SEED)
    return torch.randn(shape, generator=g).to(device=like.device, dtype=like.dtype)


class ProbeContext:
    """Shared, lazily computed facts about one setup (see the module docstring)."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.passes = {"forward": 0, "backward": 0}
        self.notes: dict[str, Any] = {}
        self.paths: dict[int, str] = {}
        for name, module in setup.model.named_modules():
            self.paths.setdefault(id(module), name or type(module).__name__)
        self._real: dict[int, RealTokens | None] = {}
        self.memory_before_main: int | None = None

    # ------------------------------------------------------------------ the passes
    @cached_property
    def main(self) -> MainPass:
        device = self.setup.device
        if device.type == "cuda" and torch.cuda.is_available():
            # what the device held before the main pass: weights, grads, optimizer state, the user's
            # other tensors; the pass's activations are what it adds (`traindoc.probes.memory`)
            self.memory_before_main = torch.cuda.memory_allocated(device)
        return run_main_pass(self.setup, self.paths, self.passes)

    def grad(self, scalar: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """d scalar / d inputs, keeping the graph for the next probe; counts one backward pass."""
        self.passes["backward"] += 1
        return list(torch.autograd.grad(scalar, inputs, retain_graph=True, allow_unused=True))

    @cached_property
    def loss_backward(self) -> tuple[dict[str, torch.Tensor | None], dict[int, torch.Tensor]]:
        """One backward of the loss: (gradient of every trainable parameter by name, None where the
        loss does not reach it; for each ``reduction="none"`` class loss call, by ``id``, a bool (N,) of
        the per-element losses the final loss depends on)."""
        loss = self.main.loss
        if loss is None or not loss.requires_grad:
            return {}, {}
        named = [(n, p) for n, p in self.setup.model.named_parameters() if p.requires_grad]
        per_element = [c for c in self.main.loss_calls
                       if c.fn in CLASS_LOSSES and c.reduction == "none" and isinstance(c.output, torch.Tensor)
                       and c.output.requires_grad]
        grads = self.grad(loss, [p for _, p in named] + [c.output for c in per_element])
        params = {n: g for (n, _), g in zip(named, grads[:len(named)], strict=True)}
        reaches = {}
        for c, g in zip(per_element, grads[len(named):], strict=True):
            n = c.output.numel()
            reaches[id(c)] = torch.zeros(n, dtype=torch.bool) if g is None else (g.detach().reshape(-1) != 0).cpu()
        return params, reaches

    @property
    def param_grads(self) -> dict[str, torch.Tensor | None]:
        """Gradient of the user's loss for every trainable parameter (None: not reached)."""
        return self.loss_backward[0]

    def reaches_loss(self, call: LossCall) -> torch.Tensor | None:
        """For a ``reduction="none"`` call: which per-element losses reach the final loss."""
        if call.reduction != "none":
            return None
        return self.loss_backward[1].get(id(call))

    @cached_property
    def sample_dependency(self) -> SampleDependency | None:
        """One backward shared by batch-mixing and causal-leak (see `SampleDependency`)."""
        out = self.per_sample_output
        streams = self.batch_streams
        if out is None or not streams:
            return None
        i, t0 = self._anchor()
        use_position = self.autoregressive and t0 is not None and out.dim() >= 3
        target = out[i, t0] if use_position else out[i]
        scalar = (target.float() * projection(target.shape, target).float()).sum()
        return SampleDependency(i, t0 if use_position else None, streams,
                                self.grad(scalar, [s.value for s in streams]))

    @property
    def batch_by_batch(self) -> bool:
        """The output is a (B, B) matrix over pairs of samples (in-batch contrastive similarities):
        each row depends on every sample by design."""
        out = self.per_sample_output
        B = self.setup.batch_size
        return out is not None and out.dim() == 2 and tuple(out.shape) == (B, B)

    @cached_property
    def column_dependency(self) -> SampleDependency | None:
        """For a (B, B) output: the gradient of a projection of column i, the same sample as
        `sample_dependency`'s row i (one more backward, only for such outputs)."""
        sg = self.sample_dependency
        out = self.per_sample_output
        if sg is None or out is None or not self.batch_by_batch:
            return None
        column = out[:, sg.i]
        scalar = (column.float() * projection(column.shape, column).float()).sum()
        return SampleDependency(sg.i, None, sg.streams, self.grad(scalar, [s.value for s in sg.streams]))

    @cached_property
    def per_sample_output(self) -> torch.Tensor | None:
        """The logits as (B, ...), transposed when the model returns sequence-first (T, B, ...)."""
        out = self.main.logits
        B = self.setup.batch_size
        if out is None or not out.requires_grad or out.dim() < 2:
            return None
        if out.shape[0] == B:
            return out
        if out.dim() >= 3 and out.shape[1] == B:
            return out.transpose(0, 1)
        return None

    @cached_property
    def batch_streams(self) -> list[Stream]:
        """Every input stream with a batch axis first (what autograd can differentiate against)."""
        B = self.setup.batch_size
        return [s for s in self.main.streams if s.value.dim() >= 2 and s.value.shape[0] == B]

    def _anchor(self) -> tuple[int, int | None]:
        """(sample i, position t0): the output the dependency probes differentiate.

        For an autoregressive task, t0 is the first position whose prediction counts in the loss (a
        prompt whose targets are ignored, or a prefix that attends both ways by design, is not judged:
        its outputs are not trained), in the sample with the most counted positions; without a mapping
        from loss targets to positions, the first real token of the sample with the most real tokens.
        Among equals, the sample nearest the middle of the batch: a layout bug that runs *causal*
        attention over the batch axis makes sample i depend on samples < i only, so sample 0 would see
        nothing."""
        B = self.setup.batch_size

        def middle(candidates: torch.Tensor) -> int:
            return int(candidates[(candidates.float() - (B - 1) / 2).abs().argmin()])

        counted = self.counted_positions
        if counted is not None and bool(counted.any()):
            per_sample = counted.sum(1)
            i = middle(torch.nonzero(per_sample == per_sample.max()).flatten())
            return i, int(torch.nonzero(counted[i]).flatten()[0])
        dec = self.decoder_stream
        if dec is None:
            return middle(torch.arange(B)), None
        rt = self.real_tokens(dec)
        if rt is None:
            return middle(torch.arange(B)), 0
        real = rt.real.sum(1)
        i = middle(torch.nonzero(real == real.max()).flatten())
        idx = torch.nonzero(rt.real[i]).flatten()
        return i, int(idx[0]) if idx.numel() else 0

    @cached_property
    def counted_positions(self) -> torch.Tensor | None:
        """Bool (B, T) over the output's positions: which predictions count in the loss (their target
        is not ignored and reaches the loss). A target at position p of its batch tensor is predicted at
        p (targets at the same positions) or p - 1 (targets shifted by one: a causal LM). None when the
        targets do not map onto the output's positions."""
        lt, source, out = self.loss_targets, self.target_source, self.per_sample_output
        if lt is None or source is None or out is None or out.dim() < 3 or source.kind not in ("same", "shifted"):
            return None
        Bt, Tt = source.tensor.shape[0], source.row_len
        if Bt != self.setup.batch_size or Tt != out.shape[1]:
            return None
        pos = source.positions[lt.counted & (source.positions >= 0)]
        rows, cols = pos // Tt, pos % Tt - (1 if source.kind == "shifted" else 0)
        keep = cols >= 0
        counted = torch.zeros(Bt, Tt, dtype=torch.bool)
        counted[rows[keep], cols[keep]] = True
        return counted

    # ------------------------------------------------------------------ targets
    @cached_property
    def loss_call(self) -> LossCall | None:
        """The main classification-style loss call (the one with the widest logits)."""
        calls = [c for c in self.main.loss_calls if c.fn in CLASS_LOSSES]
        if not calls:
            return None
        return max(calls, key=lambda c: c.input.shape[-1] if c.input.dim() > 1 else c.input.shape[0])

    def class_targets(self, call: LossCall) -> LossTargets | None:
        """The class targets of any observed loss call, and which of them count."""
        if call is self.loss_call:
            return self.loss_targets
        return class_targets(call, self.reaches_loss(call))

    @cached_property
    def loss_targets(self) -> LossTargets | None:
        call = self.loss_call
        return class_targets(call, self.reaches_loss(call)) if call is not None else None

    def source_of(self, lt: LossTargets) -> TargetSource | None:
        """The batch tensor a loss call's targets come from (`traindoc.probes.targets.match_target`)."""
        if lt is self.loss_targets:
            return self.target_source
        return self._match(lt)

    def _match(self, lt: LossTargets) -> TargetSource | None:
        return match_target(self.setup.tensors, self.setup.batch_size, {s.name for s in self.main.streams},
                            lt.target, lt.counted)

    @cached_property
    def target_source(self) -> TargetSource | None:
        lt = self.loss_targets
        return self._match(lt) if lt is not None else None

    @property
    def target_name(self) -> str | None:
        """The batch tensor the main loss call's targets come from."""
        source = self.target_source
        return source.name if source is not None else None

    @cached_property
    def ignore_index(self) -> int | None:
        call = self.loss_call
        return call.ignore_index if call is not None else -100

    # ------------------------------------------------------------------ streams and task
    @cached_property
    def token_streams(self) -> list[Stream]:
        """Distinct token streams in the order the model embedded them (one per source ids)."""
        seen: list[Stream] = []
        for s in self.main.streams:
            if s.is_tokens and not any(same_tensor(s.ids, o.ids) and s.module == o.module for o in seen):
                seen.append(s)
        return seen

    @cached_property
    def vocab_size(self) -> int | None:
        sizes = [m.num_embeddings for m in self.setup.model.modules() if isinstance(m, nn.Embedding)]
        return max(sizes) if sizes else None

    @cached_property
    def model_vocab_size(self) -> int | None:
        """The vocabulary the model predicts over: ``config.vocab_size``, else the widest embedding."""
        cfg = self.setup.config
        v = getattr(cfg, "vocab_size", None) if cfg is not None else None
        return v if isinstance(v, int) else self.vocab_size

    @cached_property
    def tokenizer_len(self) -> int | None:
        """How many tokens the tokenizer has (its added tokens included)."""
        tok = self.setup.tokenizer
        if tok is None:
            return None
        try:
            return len(tok)
        except Exception:
            v = getattr(tok, "vocab_size", None)
            return v if isinstance(v, int) else None

    def predicts_tokens(self, num_classes: int) -> bool:
        """The targets are token ids (an LM of some kind), not a small label set."""
        task = self.task[0]
        if task in AUTOREGRESSIVE:
            return True
        if task is not None:
            return False
        vocab = self.vocab_size
        return bool(vocab) and num_classes >= vocab // 2

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
        name = self.target_name
        target = self.setup.tensors.get(name) if name else None
        if target is not None and target.dim() == 2:
            for i, st in enumerate(streams):
                rel = sequence_relation(target, st.ids, self.ignore_index)
                if rel == "shifted":
                    if i > 0:
                        return "seq2seq", f"targets {name!r} are decoder input {st.name!r} shifted by one"
                    return "causal-lm", f"targets {name!r} are input {st.name!r} shifted by one"
                if rel == "same" and self.vocab_size and logits.shape[-1] >= self.vocab_size:
                    return "causal-lm", f"targets {name!r} equal the input {st.name!r} over a vocab-wide output"
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
    def decoder_stream(self) -> Stream | None:
        """The stream the model predicts autoregressively (decoder input / the LM's input)."""
        streams = self.token_streams
        logits = self.main.logits
        if not streams or logits is None or logits.dim() != 3:
            return None
        B = self.setup.batch_size
        T = logits.shape[1] if logits.shape[0] == B else logits.shape[0]
        candidates = [s for s in streams if s.ids is not None and s.ids.shape[1] == T]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        for s in candidates:
            if s.module and "decoder" in s.module.lower() or "dec" in s.name.lower() or "tgt" in s.name.lower():
                return s
        name = self.target_name
        target = self.setup.tensors.get(name) if name else None
        if target is not None:
            for s in candidates:
                if sequence_relation(target, s.ids, self.ignore_index) == "shifted":
                    return s
        return candidates[-1]  # an encoder-decoder embeds the encoder's ids first

    def streams_shaped(self, shape: tuple[int, ...]) -> list[Stream]:
        """Token streams of this shape, the decoder's first."""
        out: list[Stream] = []
        ds = self.decoder_stream
        if ds is not None and ds.ids is not None and tuple(ds.ids.shape) == shape:
            out.append(ds)
        out += [s for s in self.token_streams if s.ids is not None and tuple(s.ids.shape) == shape and s not in out]
        return out

    # ------------------------------------------------------------------ padding
    def attention_mask_for(self, stream: Stream) -> tuple[str, torch.Tensor] | None:
        """(name, tensor) of the batch's 0/1 attention mask for this stream: same shape, and paired by
        name when several fit."""
        if stream.ids is None:
            return None
        shape = tuple(stream.ids.shape)
        masks = {n: t for n, t in self.setup.tensors.items()
                 if "mask" in n.lower() and tuple(t.shape) == shape and is_binary(t)}
        if not masks:
            return None
        if len(masks) == 1:
            return next(iter(masks.items()))
        stem = stream.name.lower().replace("input_ids", "").replace("ids", "").replace("inputs", "").strip("_.")
        for n, t in masks.items():
            mstem = n.lower().replace("attention_mask", "").replace("mask", "").strip("_.")
            if mstem and stem and (mstem in stem or stem in mstem):
                return n, t
        plain = [(n, t) for n, t in masks.items() if n.lower() in ("attention_mask", "mask", "src_mask")]
        if stream is self.token_streams[0] and plain:
            return plain[0]
        return None

    def real_tokens(self, stream: Stream) -> RealTokens | None:
        """Real (non-pad) positions of a token stream (`traindoc.probes.tokens.real_tokens`)."""
        key = id(stream)
        if key not in self._real:
            found = self.attention_mask_for(stream)
            name, mask = found if found is not None else (None, None)
            self._real[key] = None if stream.ids is None else real_tokens(
                stream.ids, mask, pad=self.setup.special_id("pad_token_id"),
                eos=self.setup.special_id("eos_token_id"), mask_name=name)
        return self._real[key]

    def real_tokens_of(self, tensor: torch.Tensor) -> RealTokens | None:
        """Real positions of a (B, T) batch tensor (targets, labels), matched to the tensor itself, never
        by shape alone (an encoder and a decoder padded to one length have masks of the same shape):

        1. a batch mask whose zeros sit exactly on this tensor's padding (the pad id or the loss's
           ignore index) — among several, the one of a token stream the tensor is (the same ids, or
           them shifted by one: teacher forcing);
        2. else the mask of such a token stream (checked against that stream's pad ids);
        3. else runs of the pad id in the tensor itself (not proved)."""
        if tensor.dim() != 2:
            return None
        pad, eos, ignore = (self.setup.special_id("pad_token_id"), self.setup.special_id("eos_token_id"),
                            self.ignore_index)
        shape = tuple(tensor.shape)
        t = tensor.detach().cpu()
        related = [s for s in self.streams_shaped(shape)
                   if s.ids is not None and sequence_relation(t, s.ids.cpu(), ignore) in ("same", "shifted")]
        paired = [(s, found) for s in related if (found := self.attention_mask_for(s)) is not None]
        pads = {v for v in (pad, ignore) if v is not None}
        fitting = [(n, m) for n, m in self.setup.tensors.items()
                   if "mask" in n.lower() and tuple(m.shape) == shape and is_binary(m) and pads
                   and mask_fits(t, m, pads)]
        choice = None
        if fitting:
            choice = next((f for f in fitting if any(f[0] == found[0] for _, found in paired)), fitting[0])
        else:
            choice = next((found for s, found in paired if s.ids is not None and mask_fits(s.ids, found[1], pad)),
                          None)
        if choice is not None:
            name, mask = choice
            real = (mask.bool() if mask.dtype == torch.bool else mask != 0).cpu()
            return RealTokens(real, True, name, name)
        return real_tokens(tensor, None, pad=pad, eos=eos)

    @cached_property
    def pad_targets(self) -> PadTargets | None:
        """How many loss targets sit at pad positions of the tensor they come from."""
        lt, source = self.loss_targets, self.target_source
        if lt is None or source is None or source.tensor.dim() != 2:
            return None
        padding = self.real_tokens_of(source.tensor)
        if padding is None:
            return None
        real = padding.real.reshape(-1)
        eos = self.setup.special_id("eos_token_id")
        if source.kind in ("same", "shifted"):
            mapped = lt.counted & (source.positions >= 0)
            at_pad = torch.zeros_like(mapped)
            at_pad[mapped] = ~real[source.positions[mapped]]
            count = int(at_pad.sum())
            eos_count = int((at_pad & (lt.target == eos)).sum()) if eos is not None else 0
            return PadTargets(count, eos_count, source.samples(at_pad), padding, source,
                              int((~padding.real).sum()), exact=True)
        # a masked subset: more targets of a value than real positions hold is a proof
        got = Counter(lt.target[lt.counted].tolist())
        have = Counter(source.tensor.reshape(-1).long()[real].tolist())
        excess = {v: n - have.get(v, 0) for v, n in got.items() if n > have.get(v, 0)}
        count = sum(excess.values())
        eos_count = excess.get(eos, 0) if eos is not None else 0
        # which samples: the greedy alignment's guess (any alignment has at least `count`)
        at_pad = lt.counted & ~real[source.positions.clamp(min=0)] & (source.positions >= 0)
        return PadTargets(count, eos_count, source.samples(at_pad) if count else [], padding, source,
                          int((~padding.real).sum()), exact=False)


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

