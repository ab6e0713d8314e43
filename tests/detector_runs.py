"""Real tiny training runs under the real `traindoc.watch`, with one bug switched on or off.

The detectors are judged on what the monitor measures, not on statistics a test recomputes: each
run trains a small model on a synthetic stream (fresh samples every step, so loss curves carry real
mini-batch noise) with an ordinary training loop -- ``zero_grad``, ``backward``,
``torch.nn.utils.clip_grad_norm_``, ``step``, the scheduler, ``w.log(loss=...)`` -- inside
``traindoc.watch(model, opt, run_dir=..., tensorboard=False, every=..., flush_every=...)`` with the
default detectors, and returns the `Report` the watch built (plus the run directory, read back with
`traindoc.rundir.read_run` when a test wants the scalars the detectors were fed).

A `RunConfig` with all defaults is a healthy run; each bug is one field away from its healthy twin
(the default run or one of the healthy variants at the end of this module). Runs are cached by
config, so a twin shared by several tests trains once.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad_norm_ as clip_grad_norm_imported_early  # torch's own, unpatched

import traindoc
from traindoc.findings import Finding, Report
from traindoc.rundir import RunData, read_run

torch.set_num_threads(1)

_ROOT = tempfile.TemporaryDirectory(prefix="traindoc-detector-runs-")  # removed at interpreter exit


@dataclass(frozen=True)
class RunConfig:
    steps: int = 200
    task: str = "teacher"  # teacher: learnable; blind: the inputs never reach the model (zeros);
    # blind-skewed: the same with one class half of the labels (the prior is learnable, nothing else);
    # regression: MSE on the teacher's first output (a scalar target); text (transformer only): next-byte
    # prediction on real text (the source of Python's argparse module, ASCII, vocabulary 128)
    leak_targets: bool = False  # bug (text): the inputs are the targets at the same positions (unshifted)
    num_classes: int = 10
    in_dim: int = 16
    hidden: int = 64
    depth: int = 2  # hidden layers
    activation: str = "relu"  # relu | sigmoid | tanh
    init_gain: float | None = None  # Linear weights ~ N(0, gain^2 / fan_in), zero biases
    arch: str = "mlp"  # mlp | transformer (a tiny causal LM on a noisy "next = previous + 1" stream)
    seq_len: int = 16
    optimizer: str = "adam"  # adam | sgd
    lr: float = 3e-3
    momentum: float = 0.0
    schedule: str | None = None  # None | "warmup-cosine" | "warmup-linear" | bugs: "steplr-per-batch" (an
    # epoch schedule, x0.5 per epoch, stepped every batch) | "warmup-steplr-per-batch" (the same after a warmup)
    warmup: int = 30
    batch_size: int = 32
    zero_grad: bool = True  # False: the bug, gradients summed over all steps
    clip: float | None = None  # max_norm of torch.nn.utils.clip_grad_norm_
    clip_imported_early: bool = False  # clip with a `from torch.nn.utils import clip_grad_norm_` reference
    # taken at import time, before the watch patched torch's function
    accumulation: tuple[int, ...] = (1,)  # micro-batches per optimizer step, cycled
    accum_normalization: str = "mean"  # mean: loss / k (correct) | sum: no division (the bug)
    validate_every: int | None = None  # a validation pass (model.eval(), a forward, model.train()) every N steps
    train_after_validation: bool = True  # False: the bug, model.train() is never called again
    nan_at: int | None = None  # bug: this step's batch holds a NaN
    bad_shard: tuple[int, int] | None = None  # bug: steps [a, b) read an un-normalised data shard
    bad_scale: float = 30.0
    head_lr: float | None = None  # the head in its own param group with this LR
    head_outside_optimizer: bool = False  # bug: the head's parameters are in no param group
    unused_layer: bool = False  # bug: a Linear built, in the optimizer, never called by forward
    unused_scalar: bool = False  # a 0-d parameter (a leftover temperature) that forward never uses
    freeze_first_layer_at: int | None = None  # intended: the first Linear gets requires_grad=False at
    # this step (0: before the optimizer and the watch are built)
    head_registered_first: bool = False  # the head is built (so named and ordered) before the body
    teacher_scale: float = 6.0  # larger: cleaner labels, a lower loss floor, longer learning
    log_loss: bool = True  # False: w.log() is never called (the detectors get no loss at all)
    log_batch: bool = True  # False: w.log(loss=...) only, the monitor never sees the batches
    epoch_batches: int | None = None  # None: a fresh batch every step; N: a dataset of N batches, cycled
    # (epochs); 1 is the bug of a loader re-created inside the loop / an iterator never advanced
    every: int = 10  # the watch's per-layer statistics every K steps (its default)
    flush_every: int = 50
    seed: int = 0


def _teacher(cfg: RunConfig) -> nn.Module:
    g = torch.Generator().manual_seed(1234)
    t = nn.Sequential(nn.Linear(cfg.in_dim, 32), nn.Tanh(), nn.Linear(32, cfg.num_classes))
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[-1]))
    return t


class MLP(nn.Module):
    """``body`` (Linear -> activation, ``depth`` times) then ``head``; optional unused parts."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[cfg.activation]
        out = 1 if cfg.task == "regression" else cfg.num_classes
        width = cfg.hidden if cfg.depth else cfg.in_dim
        if cfg.head_registered_first:
            self.head = nn.Linear(width, out)
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [nn.Linear(cfg.in_dim if i == 0 else cfg.hidden, cfg.hidden), act()]
        self.body = nn.Sequential(*layers)
        if cfg.unused_layer:  # e.g. an auxiliary head left over from an earlier version of the model
            self.aux = nn.Linear(width, out)
        if cfg.unused_scalar:
            self.temperature = nn.Parameter(torch.ones(()))
        if not cfg.head_registered_first:
            self.head = nn.Linear(width, out)
        if cfg.init_gain is not None:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.normal_(0.0, cfg.init_gain / math.sqrt(m.in_features))
                        m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TinyLM(nn.Module):
    """A 2-layer pre-norm causal transformer LM (batch_first, causal mask)."""

    def __init__(self, vocab: int, seq_len: int, d: int = 32):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


@cache
def _text() -> torch.Tensor:
    """Real-ish text, the same on every machine: the bytes of the source of Python's argparse module."""
    import argparse
    import inspect

    return torch.tensor(list(inspect.getsource(argparse).encode("ascii", "replace")), dtype=torch.long).clamp_max(127)


def _batch(cfg: RunConfig, teacher: nn.Module, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.arch == "transformer" and cfg.task == "text":  # windows of seq_len + 1 bytes at random places
        text = _text()
        starts = torch.randint(0, len(text) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
        seq = text[starts[:, None] + torch.arange(cfg.seq_len + 1)]
        if cfg.leak_targets:  # the bug: the model is fed the very tokens it must predict
            return seq[:, 1:], seq[:, 1:]
        return seq[:, :-1], seq[:, 1:]
    if cfg.arch == "transformer":  # next = previous + 1 (mod V), 20% of tokens random
        start = torch.randint(0, cfg.num_classes, (cfg.batch_size, 1), generator=g)
        seq = (start + torch.arange(cfg.seq_len + 1)) % cfg.num_classes
        noise = torch.rand(seq.shape, generator=g) < 0.2
        seq = torch.where(noise, torch.randint(0, cfg.num_classes, seq.shape, generator=g), seq)
        return seq[:, :-1], seq[:, 1:]
    x = torch.randn(cfg.batch_size, cfg.in_dim, generator=g)
    if cfg.task in ("blind", "blind-skewed"):
        if cfg.task == "blind-skewed":
            probs = torch.tensor([0.5] + [0.5 / (cfg.num_classes - 1)] * (cfg.num_classes - 1))
            y = torch.multinomial(probs, cfg.batch_size, replacement=True, generator=g)
        else:
            y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g)
        return torch.zeros_like(x), y  # the bug: the model is fed zeros instead of its inputs
    with torch.no_grad():
        logits = teacher(x) * cfg.teacher_scale
    if cfg.task == "regression":
        return x, logits[:, :1] / cfg.teacher_scale
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=g).clamp_min(1e-9)))
    return x, (logits + gumbel).argmax(-1)


def _loss(cfg: RunConfig, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.task == "regression":
        return F.mse_loss(out, y)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _schedule(cfg: RunConfig, opt: torch.optim.Optimizer) -> Any:
    if cfg.schedule == "steplr-per-batch":  # the bug: an epoch schedule stepped every batch
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    if cfg.schedule == "warmup-steplr-per-batch":  # the same bug behind a linear warmup (its peak comes late)
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: (step + 1) / cfg.warmup if step < cfg.warmup else 0.5 ** (step - cfg.warmup))
    if cfg.schedule in ("warmup-cosine", "warmup-linear"):  # as transformers' get_*_schedule_with_warmup
        def factor(step: int) -> float:
            if step < cfg.warmup:
                return step / cfg.warmup  # 0 at step 0
            progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
            if cfg.schedule == "warmup-linear":
                return 1.0 - progress
            return 0.5 * (1 + math.cos(math.pi * progress))
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if cfg.schedule is not None:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    return None


def _optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    head = {id(p) for p in model.head.parameters()}  # type: ignore[union-attr]
    body = [p for p in model.parameters() if id(p) not in head]
    if cfg.head_outside_optimizer:  # the head is in no param group
        groups: list[dict[str, Any]] = [{"params": body}]
    elif cfg.head_lr is not None:
        groups = [{"params": body}, {"params": list(model.head.parameters()), "lr": cfg.head_lr}]  # type: ignore[union-attr]
    else:
        groups = [{"params": list(model.parameters())}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


@dataclass
class Run:
    config: RunConfig
    report: Report
    run_dir: Path

    @cached_property
    def data(self) -> RunData:
        """The run directory as the watch wrote it (scalars.jsonl, layers.jsonl, findings.jsonl)."""
        return read_run(self.run_dir)

    @property
    def ids(self) -> list[str]:
        return self.report.ids

    def only(self, finding_id: str) -> Finding:
        """The one finding with this id (fails when there is none or more than one)."""
        hits = self.report.get(finding_id)
        assert len(hits) == 1, f"{finding_id}: expected one finding, got {[f.title for f in self.report]}"
        return hits[0]


@cache
def run(cfg: RunConfig = RunConfig()) -> Run:
    """Train for `cfg.steps` optimizer steps under `traindoc.watch` and return what it reported."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    teacher = _teacher(cfg)
    model: nn.Module = TinyLM(cfg.num_classes, cfg.seq_len) if cfg.arch == "transformer" else MLP(cfg)
    if cfg.freeze_first_layer_at == 0:
        model.body[0].requires_grad_(False)  # type: ignore[index]
    opt = _optimizer(cfg, model)
    sched = _schedule(cfg, opt)
    dataset = [_batch(cfg, teacher, g) for _ in range(cfg.epoch_batches or 0)]
    run_dir = Path(tempfile.mkdtemp(dir=_ROOT.name)) / "run"
    model.train()
    with traindoc.watch(model, opt, run_dir=run_dir, tensorboard=False, every=cfg.every,
                        flush_every=cfg.flush_every) as w:
        for step in range(cfg.steps):
            if cfg.freeze_first_layer_at and step == cfg.freeze_first_layer_at:
                model.body[0].requires_grad_(False)  # type: ignore[index]
            if cfg.validate_every and step and step % cfg.validate_every == 0:
                model.eval()
                with torch.no_grad():
                    x, y = _batch(cfg, teacher, g)
                    _loss(cfg, model(x), y)
                if cfg.train_after_validation:
                    model.train()
            k = cfg.accumulation[step % len(cfg.accumulation)]
            for _ in range(k):
                if cfg.epoch_batches:
                    x, y = dataset[step % cfg.epoch_batches]
                else:
                    x, y = _batch(cfg, teacher, g)
                if cfg.bad_shard and cfg.bad_shard[0] <= step < cfg.bad_shard[1]:
                    x = x * cfg.bad_scale
                if cfg.nan_at == step:
                    x = x.clone()
                    x[0, 0] = float("nan")
                loss = _loss(cfg, model(x), y)
                (loss / k if cfg.accum_normalization == "mean" else loss).backward()
                if cfg.log_loss:
                    # several micro-batches: the watch averages them
                    w.log(loss=loss.detach(), batch=(x, y) if cfg.log_batch else None)
            if cfg.clip is not None:
                clip = clip_grad_norm_imported_early if cfg.clip_imported_early else torch.nn.utils.clip_grad_norm_
                clip(model.parameters(), cfg.clip)
            opt.step()
            if sched is not None:
                sched.step()
            if cfg.zero_grad:
                opt.zero_grad(set_to_none=True)
    assert w.report is not None
    return Run(cfg, w.report, run_dir)


def bug(base: RunConfig | None = None, **changes: Any) -> RunConfig:
    """The default (healthy) config, or `base`, with the given fields changed."""
    return replace(base or RunConfig(), **changes)


# ----------------------------------------------------------------- the runs the tests share
HEALTHY = RunConfig()
"""Adam 3e-3, batch 32, a learnable teacher task: the loss keeps falling."""
HEALTHY_NOISY = bug(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=4, steps=400)
"""SGD + momentum on mini-batches of 4: a very noisy loss that still learns."""
HEALTHY_COSINE = bug(schedule="warmup-cosine", lr=1e-2, steps=400)
"""Linear warmup over 30 steps then cosine decay to 0 over a 400-step run."""
HEALTHY_LONG = bug(schedule="warmup-cosine", steps=500)
"""500 steps (long enough for the plateau detector's 300 + 50 steps) with warmup + cosine decay."""
HEALTHY_CLIPPED = bug(clip=1.5)
"""Clipping at a threshold near the p90 of this run's gradient norms."""
HEALTHY_ACCUM = bug(accumulation=(4, 4, 4, 1), steps=120)
"""Gradient accumulation with a short last group, each loss divided by its group's count."""
HEALTHY_DEEP = bug(depth=10, hidden=32, steps=150)
"""A 10-hidden-layer ReLU MLP with PyTorch's default init."""
HEALTHY_EVERY_STEP = bug(schedule="warmup-linear", warmup=20, lr=5e-3, steps=150, every=1, flush_every=1)
"""Warmup from LR 0 then linear decay to 0 (transformers' default); per-layer statistics and a flush
on every step."""
HEALTHY_VALIDATED = bug(validate_every=20)
"""A validation pass every 20 steps: model.eval(), a forward under no_grad, model.train()."""
HEALTHY_EPOCHS = bug(epoch_batches=4)
"""A small dataset of 4 batches, 50 epochs over it: every batch comes back every 4th step."""
HEALTHY_FROZEN = bug(freeze_first_layer_at=0)
"""The first layer frozen (requires_grad=False) before training: the watch leaves it out."""
HEALTHY_NO_LOSS = bug(log_loss=False)
"""w.log() never called: the loss detectors have nothing to judge, the others still work."""
HEALTHY_LM = RunConfig(arch="transformer", num_classes=32, batch_size=16, lr=3e-3, steps=120,
                       schedule="warmup-cosine", warmup=20, clip=1.0)
"""A tiny pre-norm causal transformer LM (embeddings, attention, LayerNorm) with warmup + cosine."""
HEALTHY_TEXT_LM = RunConfig(arch="transformer", task="text", num_classes=128, batch_size=16, lr=1e-2, steps=150)
"""The tiny causal LM on real text (next byte of Python's argparse source), Adam at a constant LR."""

HEALTHY_RUNS = {"healthy": HEALTHY, "noisy": HEALTHY_NOISY, "cosine": HEALTHY_COSINE, "long": HEALTHY_LONG,
                "clipped": HEALTHY_CLIPPED, "accum": HEALTHY_ACCUM, "deep": HEALTHY_DEEP,
                "every-step": HEALTHY_EVERY_STEP, "validated": HEALTHY_VALIDATED, "frozen": HEALTHY_FROZEN,
                "no-loss": HEALTHY_NO_LOSS, "transformer": HEALTHY_LM, "epochs": HEALTHY_EPOCHS,
                "text-lm": HEALTHY_TEXT_LM}
