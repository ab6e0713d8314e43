"""Training the two models side by side under `traindoc.watch`, the held-out metric, and greedy replies.

Both models go through the same loop -- forward, loss, ``zero_grad``, backward,
``clip_grad_norm_(1.0)``, AdamW step, StepLR step -- on the same batches in the same order. Only
their forward call (how the masks are passed) and their training loss differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import traindoc
from traindoc.demo.data import build_batch
from traindoc.demo.model import (
    Batch,
    BrokenLanguageModel,
    FixedLanguageModel,
    ModelConfig,
    broken_forward,
    fixed_forward,
    loss_without_eos_targets,
    reply_token_loss,
)


@dataclass
class Twin:
    """One of the two models with what its training needs, and what it recorded."""

    name: str
    model: nn.Module
    forward: Callable[[nn.Module, Batch], torch.Tensor]
    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_losses: list[float] = field(default_factory=list)
    heldout: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    watch_report: traindoc.Report | None = None  # what traindoc.watch said about this training run


def make_twins(cfg: ModelConfig, eos_token_id: int, lr: float, seed: int = 0) -> tuple[Twin, Twin]:
    """The broken and the fixed model, built from the same RNG seed (so the same initial weights),
    each with the same kind of optimizer and scheduler."""
    twins = []
    for name, cls, forward, loss_fn in (
        ("broken", BrokenLanguageModel, broken_forward,
         partial(loss_without_eos_targets, eos_token_id=eos_token_id)),
        ("fixed", FixedLanguageModel, fixed_forward, reply_token_loss),
    ):
        torch.manual_seed(seed)
        model = cls(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000, gamma=0.9)
        twins.append(Twin(name, model, forward, loss_fn, optimizer, scheduler))
    return twins[0], twins[1]


def train_step(twin: Twin, batch: Batch) -> torch.Tensor:
    """One step of the training loop; returns the (detached) training loss."""
    twin.model.train()
    loss = twin.loss_fn(twin.forward(twin.model, batch), batch)
    twin.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(twin.model.parameters(), max_norm=1.0)
    twin.optimizer.step()
    twin.scheduler.step()
    return loss.detach()


def train_side_by_side(twins: Sequence[Twin], batches: Sequence[Batch], heldout: Sequence[Batch],
                       run_dir: Path, eval_every: int,
                       on_step: Callable[[int, dict[str, float]], None] | None = None) -> None:
    """Train every twin one step on each batch in turn, each watched by `traindoc.watch` into
    ``run_dir / f"run-{name}"``. The held-out loss is measured at step 0, every `eval_every` steps
    and at the end. ``on_step(step, {name: training loss})`` is called after every step."""
    with ExitStack() as stack:
        watches = [stack.enter_context(traindoc.watch(t.model, t.optimizer, run_dir=run_dir / f"run-{t.name}"))
                   for t in twins]
        for step, batch in enumerate(batches):
            if step % eval_every == 0:
                for t in twins:
                    t.heldout.append((step, heldout_loss(t.model, t.forward, heldout)))
            losses = {}
            for t, watch in zip(twins, watches, strict=True):
                loss = train_step(t, batch)
                watch.log(loss=loss)
                losses[t.name] = float(loss)
                t.train_losses.append(losses[t.name])
            if on_step is not None:
                on_step(step, losses)
    for t, watch in zip(twins, watches, strict=True):
        t.watch_report = watch.report
        t.heldout.append((len(batches), heldout_loss(t.model, t.forward, heldout)))


@torch.no_grad()
def heldout_loss(model: nn.Module, forward: Callable, batches: Sequence[Batch]) -> float:
    """Mean cross-entropy per real reply token (the EOS ending each reply included), in eval mode.

    The same metric for both models, each called the way it is used: it tells whether a model
    predicts the reply -- and its end -- from the prompt, which is what a chatbot has to do.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        keep = b["target_attention_mask"].bool()
        total += float(F.cross_entropy(forward(model, b)[keep], b["target_labels"][keep], reduction="sum"))
        count += int(keep.sum())
    model.train(was_training)
    return total / count if count else float("nan")


def with_prompts_shuffled(b: Batch) -> Batch:
    """The batch with every sample given another sample's prompt (rolled by one along the batch)."""
    return {**b, "input_ids": b["input_ids"].roll(1, 0), "attention_mask": b["attention_mask"].roll(1, 0)}


def prompt_dependence(model: nn.Module, forward: Callable, batches: Sequence[Batch]) -> float:
    """How much worse the held-out loss gets when each reply is scored against another sample's prompt.

    Above 0: the model reads its own prompt. 0 (up to rounding) for the broken model, whose decoder
    attends to the encoder outputs of the whole batch as one unordered set.
    """
    shuffled = [with_prompts_shuffled(b) for b in batches]
    return heldout_loss(model, forward, shuffled) - heldout_loss(model, forward, batches)


@torch.no_grad()
def greedy_reply(model: nn.Module, forward: Callable, prompt_ids: Sequence[int], tok: Any, block_size: int,
                 max_new_tokens: int = 20) -> tuple[list[int], bool]:
    """Greedy decoding of one reply, as a batch of one padded to the block size like in training (the
    broken model needs encoder and decoder to share dim 1). Returns (reply ids, stopped at EOS)."""
    was_training = model.training
    model.eval()
    prompt = list(prompt_ids)[-(block_size - 1):]
    reply: list[int] = []
    stopped = False
    for _ in range(min(max_new_tokens, block_size - 1)):
        logits = forward(model, build_batch([(prompt, reply)], tok, block_size))[0, len(reply)]
        token = int(logits.argmax())
        if token == tok.eos_token_id:
            stopped = True
            break
        reply.append(token)
    model.train(was_training)
    return reply, stopped
