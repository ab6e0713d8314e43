"""Training, the held-out metric and greedy replies for the two demo models.

Both models go through the same loop -- the seed's: forward, loss, ``zero_grad``, backward,
``clip_grad_norm_(1.0)``, AdamW step, StepLR step -- on the same batches in the same order. Only
their forward call (how the masks are passed) and their training loss differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from traindoc.demo.model import (
    BrokenLanguageModel,
    FixedLanguageModel,
    ModelConfig,
    reply_token_loss,
    seed_loss,
)

Batch = dict[str, torch.Tensor]
Forward = Callable[[nn.Module, Batch], torch.Tensor]
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def broken_forward(model: nn.Module, b: Batch) -> torch.Tensor:
    """The seed's call: masks transposed to ``(T, B)`` so their shape fits ``batch_first=False``."""
    return model(b["input_ids"], b["target_inputs"], b["target_labels"],
                 b["attention_mask"].transpose(1, 0), b["target_attention_mask"].transpose(1, 0))


def fixed_forward(model: nn.Module, b: Batch) -> torch.Tensor:
    """The fixed call: Hugging Face masks as they come, ``(B, T)``; the model inverts them."""
    return model(b["input_ids"], b["target_inputs"], b["target_labels"],
                 b["attention_mask"], b["target_attention_mask"])


@dataclass
class Twin:
    """One of the two models with everything its training needs, and what it recorded."""

    name: str
    model: nn.Module
    forward: Forward
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_losses: list[float] = field(default_factory=list)
    heldout: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    watch_report: Any = None  # what traindoc.watch said about this model's training run


def make_twins(cfg: ModelConfig, eos_token_id: int, lr: float, seed: int = 0) -> tuple[Twin, Twin]:
    """The broken and the fixed model, built from the same seed (hence the same initial weights),
    each with the seed's optimizer and scheduler."""
    twins = []
    for name, cls, forward, loss_fn in (
        ("broken", BrokenLanguageModel, broken_forward, partial(seed_loss, eos_token_id=eos_token_id)),
        ("fixed", FixedLanguageModel, fixed_forward, reply_token_loss),
    ):
        torch.manual_seed(seed)
        model = cls(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000, gamma=0.9)
        twins.append(Twin(name, model, forward, loss_fn, optimizer, scheduler))
    return twins[0], twins[1]


def train_step(twin: Twin, batch: Batch, watch: Any = None) -> float:
    """One step of the seed's loop; returns the training loss (and logs it to `watch`, if given)."""
    twin.model.train()
    output = twin.forward(twin.model, batch)
    loss = twin.loss_fn(output, batch)
    twin.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(twin.model.parameters(), max_norm=1.0)
    twin.optimizer.step()
    twin.scheduler.step()
    if watch is not None:
        watch.log(loss=loss.detach())
    value = float(loss.item())
    twin.train_losses.append(value)
    return value


@torch.no_grad()
def heldout_loss(model: nn.Module, forward: Forward, batches: Sequence[Batch]) -> float:
    """Mean cross-entropy per real reply token (the first EOS included), in eval mode.

    The same metric for both models, each called the way it is used: it tells whether a model
    predicts the reply -- and its end -- from the prompt, which is what a chatbot has to do.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for b in batches:
            output = forward(model, b)
            keep = b["target_attention_mask"].bool()
            total += float(F.cross_entropy(output[keep], b["target_labels"][keep], reduction="sum"))
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def with_prompts_shuffled(b: Batch) -> Batch:
    """The batch with every sample given another sample's prompt (rolled by one along the batch)."""
    out = dict(b)
    out["input_ids"] = b["input_ids"].roll(1, 0)
    out["attention_mask"] = b["attention_mask"].roll(1, 0)
    return out


def prompt_dependence(model: nn.Module, forward: Forward, batches: Sequence[Batch]) -> float:
    """How much worse the held-out loss gets when each reply is scored against another sample's prompt.

    Above 0: the model reads its own prompt. Exactly 0 (up to rounding) for the seed's model, whose
    decoder attends to the encoder outputs of the whole batch as one unordered set.
    """
    shuffled = [with_prompts_shuffled(b) for b in batches]
    return heldout_loss(model, forward, shuffled) - heldout_loss(model, forward, batches)


def train_twins(twins: Sequence[Twin], batches: Sequence[Batch], heldout: Sequence[Batch],
                eval_every: int, on_step: Callable[[Twin, int, float], None] | None = None,
                run_dir: Callable[[Twin], Any] | None = None) -> None:
    """Train each twin on `batches` in turn; evaluate the held-out loss at step 0, every
    `eval_every` steps and at the end. With `run_dir`, each run is watched by `traindoc.watch`
    into ``run_dir(twin)`` and its report kept at ``twin.watch_report``."""
    import traindoc

    n = len(batches)
    for twin in twins:
        watch = traindoc.watch(twin.model, twin.optimizer, run_dir=run_dir(twin)) if run_dir else None
        try:
            for step, batch in enumerate(batches):
                if step % eval_every == 0:
                    twin.heldout.append((step, heldout_loss(twin.model, twin.forward, heldout)))
                loss = train_step(twin, batch, watch)
                if on_step is not None:
                    on_step(twin, step, loss)
                if not math.isfinite(loss):
                    break
        finally:
            if watch is not None:
                twin.watch_report = watch.close()
        twin.heldout.append((n, heldout_loss(twin.model, twin.forward, heldout)))


@torch.no_grad()
def greedy_reply(model: nn.Module, forward: Forward, prompt_ids: Sequence[int], eos_token_id: int,
                 block_size: int, max_new_tokens: int = 20) -> tuple[list[int], bool]:
    """Greedy decoding of one reply, batch of one, padded to the block size like training (the broken
    model needs encoder and decoder to share dimension 1). Returns (reply ids, stopped at EOS)."""
    from traindoc.demo.data import build_batch

    was_training = model.training
    model.eval()
    prompt = list(prompt_ids)[-(block_size - 1):]
    reply: list[int] = []
    stopped = False
    try:
        for _ in range(min(max_new_tokens, block_size - 1)):
            b = build_batch([(prompt, reply)], _EosOnly(eos_token_id), block_size)
            logits = forward(model, b)[0, len(reply)]
            nxt = int(logits.argmax())
            if nxt == eos_token_id:
                stopped = True
                break
            reply.append(nxt)
    finally:
        model.train(was_training)
    return reply, stopped


@dataclass(frozen=True)
class _EosOnly:
    """The one tokenizer attribute `build_batch` reads."""

    eos_token_id: int
