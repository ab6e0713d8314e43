"""Real tiny training runs that produce `StepRecord`s, with one bug switched on or off.

The detectors are judged on what a real optimizer does, not on hand-made curves: each run trains a
small MLP on a synthetic classification stream (fresh samples every step, so loss curves are real
mini-batch noise) and computes the monitor's statistics itself with plain torch (vector norms,
before/after weight snapshots), exactly as `StepRecord` documents them.

A `RunConfig` with all defaults is a healthy run; each bug is one field away from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from traindoc.findings import Finding
from traindoc.monitor.detectors import Detector, default_detectors
from traindoc.monitor.record import StepRecord

torch.set_num_threads(1)


@dataclass(frozen=True)
class RunConfig:
    steps: int = 300
    task: str = "teacher"  # teacher: learnable; blind: the inputs never reach the model;
    # regression: MSE on the teacher's first output (a scalar target)
    num_classes: int = 10
    class_prior: str = "uniform"  # or "skewed" (imbalanced classes)
    in_dim: int = 16
    hidden: int = 64
    depth: int = 2  # hidden layers
    activation: str = "relu"  # relu | sigmoid | tanh
    batchnorm: bool = False  # Linear -> BatchNorm1d -> act (no residual)
    init_gain: float | None = None  # Linear weights ~ N(0, gain^2 / fan_in), zero biases
    arch: str = "mlp"  # mlp | transformer (a tiny causal LM on a noisy "next = previous + 1" stream)
    seq_len: int = 16
    optimizer: str = "adam"  # adam | sgd
    lr: float = 3e-3
    momentum: float = 0.0
    schedule: str | None = None  # None | "warmup-cosine" | "warmup-linear" | "steplr-per-batch"
    warmup: int = 30
    batch_size: int = 32
    zero_grad: bool = True
    clip: float | None = None
    accumulation: tuple[int, ...] = (1,)  # micro-batches per optimizer step, cycled
    accum_normalization: str = "mean"  # mean: loss / k (correct) | sum: no division (bug)
    head_outside_optimizer: bool = False  # bug: the head's params are in no param group
    manual_log_softmax: bool = False  # log(softmax(x)): -inf once a probability underflows
    logit_scale: float = 1.0
    layer_every: int = 5  # per-layer stats every K steps (the monitor's K)
    report_stale: bool = True  # False: the monitor cannot tell grad_was_stale (None)
    bad_shard: tuple[int, int] | None = None  # bug: steps [a, b) read an un-normalised data shard
    bad_scale: float = 30.0
    teacher_scale: float = 6.0  # larger: cleaner labels, a lower loss floor, longer learning
    seed: int = 0


def _teacher(cfg: RunConfig) -> nn.Module:
    g = torch.Generator().manual_seed(1234)
    t = nn.Sequential(nn.Linear(cfg.in_dim, 32), nn.Tanh(), nn.Linear(32, cfg.num_classes))
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[-1]))
    return t


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


def _model(cfg: RunConfig) -> nn.Module:
    if cfg.arch == "transformer":
        return TinyLM(cfg.num_classes, cfg.seq_len)
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[cfg.activation]
    layers: list[nn.Module] = []
    width = cfg.in_dim
    for _ in range(cfg.depth):
        layers.append(nn.Linear(width, cfg.hidden))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(cfg.hidden))
        layers.append(act())
        width = cfg.hidden
    layers.append(nn.Linear(width, 1 if cfg.task == "regression" else cfg.num_classes))
    model = nn.Sequential(*layers)
    if cfg.init_gain is not None:
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, cfg.init_gain / math.sqrt(m.in_features))
                    m.bias.zero_()
    return model


def _batch(cfg: RunConfig, teacher: nn.Module, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.arch == "transformer":  # next = previous + 1 (mod V), 20% of tokens random
        start = torch.randint(0, cfg.num_classes, (cfg.batch_size, 1), generator=g)
        seq = (start + torch.arange(cfg.seq_len + 1)) % cfg.num_classes
        noise = torch.rand(seq.shape, generator=g) < 0.2
        seq = torch.where(noise, torch.randint(0, cfg.num_classes, seq.shape, generator=g), seq)
        return seq[:, :-1], seq[:, 1:]
    x = torch.randn(cfg.batch_size, cfg.in_dim, generator=g)
    if cfg.task == "blind":
        if cfg.class_prior == "skewed":
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


def _loss(cfg: RunConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.task == "regression":
        return F.mse_loss(logits, y)
    logits = logits.reshape(-1, logits.shape[-1]) * cfg.logit_scale
    y = y.reshape(-1)
    if cfg.manual_log_softmax:
        return -torch.log(torch.softmax(logits, -1)).gather(1, y[:, None]).mean()
    return F.cross_entropy(logits, y)


def _own(m: nn.Module) -> list[nn.Parameter]:
    return [p for p in m.parameters(recurse=False) if p.requires_grad]


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own trainable parameters, in model order (what the monitor reports)."""
    return [(n or "<root>", m) for n, m in model.named_modules() if _own(m)]


def _norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])))


def _schedule(cfg: RunConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "steplr-per-batch":  # the bug: an epoch schedule stepped every batch
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    if cfg.schedule in ("warmup-cosine", "warmup-linear"):  # as transformers' get_*_schedule_with_warmup
        def factor(step: int) -> float:
            if step < cfg.warmup:
                return step / cfg.warmup  # 0 at step 0
            progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
            if cfg.schedule == "warmup-linear":
                return 1.0 - progress
            return 0.5 * (1 + math.cos(math.pi * progress))
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return None


@cache
def run(cfg: RunConfig = RunConfig()) -> tuple[StepRecord, ...]:
    """Train for `cfg.steps` optimizer steps and return one `StepRecord` per step."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    teacher = _teacher(cfg)
    model = _model(cfg)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = "head" if cfg.arch == "transformer" else str(len(model) - 1)  # type: ignore[arg-type]
    head_names = {f"{head}.weight", f"{head}.bias"}
    opt_params = [p for n, p in named if not (cfg.head_outside_optimizer and n in head_names)]
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(opt_params, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(opt_params, lr=cfg.lr, momentum=cfg.momentum)
    sched = _schedule(cfg, opt)
    layers = _layers(model)
    depth = {n: i for i, (n, _) in enumerate(layers)}
    records: list[StepRecord] = []
    for step in range(cfg.steps):
        k = cfg.accumulation[step % len(cfg.accumulation)]
        # stale: a parameter the optimizer updates already holds a non-zero gradient
        stale = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in opt_params)
        losses = []
        for _ in range(k):
            x, y = _batch(cfg, teacher, g)
            if cfg.bad_shard and cfg.bad_shard[0] <= step < cfg.bad_shard[1]:
                x = x * cfg.bad_scale
            loss = _loss(cfg, model(x), y)
            losses.append(loss.item())
            (loss / k if cfg.accum_normalization == "mean" else loss).backward()
        grads = [(n, p.grad) for n, p in named if p.grad is not None]
        grad_norm = _norm([gr for _, gr in grads])
        bad = [(n, int((~torch.isfinite(gr)).sum())) for n, gr in grads]
        bad = [(n, c) for n, c in bad if c]
        rec = StepRecord(
            step=step, loss=sum(losses) / len(losses), lr=[grp["lr"] for grp in opt.param_groups],
            grad_norm=grad_norm, backward_calls=k,
            num_classes=None if cfg.task == "regression" else cfg.num_classes,
            grad_was_stale=stale if cfg.report_stale else None,
            nonfinite_grads=sum(c for _, c in bad), first_nonfinite_param=bad[0][0] if bad else None)
        if cfg.clip is not None:
            rec.clip_threshold, rec.clipped = cfg.clip, grad_norm > cfg.clip
        sample = step % cfg.layer_every == 0
        before = {}
        if sample:
            rec.layer_grad_norm = {n: _norm([p.grad for p in _own(m) if p.grad is not None])
                                   for n, m in layers}
            rec.layer_weight_norm = {n: _norm(_own(m)) for n, m in layers}
            rec.layer_depth = dict(depth)
            before = {n: [p.detach().clone() for p in _own(m)] for n, m in layers}
        if cfg.clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        if sample:
            rec.layer_update_ratio = {
                n: _norm([p.detach() - b for p, b in zip(_own(m), before[n], strict=True)])
                / max(_norm(before[n]), 1e-30) for n, m in layers}
        if sched is not None:
            sched.step()
        if cfg.zero_grad:
            opt.zero_grad(set_to_none=True)
        records.append(rec)
    return tuple(records)


def judge(records: tuple[StepRecord, ...] | list[StepRecord],
          detectors: list[Detector] | None = None) -> list[Finding]:
    """Feed the records to the detectors (all defaults when None) as the monitor does; all findings."""
    detectors = default_detectors() if detectors is None else detectors
    found: list[Finding] = []
    for rec in records:
        for d in detectors:
            found += d.update(rec)
    for d in detectors:
        found += d.finalize()
    return found


def ids(findings: list[Finding]) -> list[str]:
    return [f.id for f in findings]


# ----------------------------------------------------------------- the runs the tests share
HEALTHY = RunConfig()
"""Adam 3e-3, batch 32, a learnable teacher task: the loss keeps falling."""
HEALTHY_NOISY = RunConfig(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=4, steps=400)
"""SGD + momentum on mini-batches of 4: a very noisy loss that still learns."""
HEALTHY_COSINE = RunConfig(schedule="warmup-cosine", warmup=30, lr=1e-2, steps=400, clip=None)
"""Linear warmup over 30 steps then cosine decay to 0 over a 400-step run."""
HEALTHY_CLIPPED = RunConfig(clip=1.5)
"""Clipping at a threshold near the p90 of this run's gradient norms."""
HEALTHY_ACCUM = RunConfig(accumulation=(4, 4, 4, 1), accum_normalization="mean", steps=240)
"""Gradient accumulation with a short last group, each loss divided by its group's count."""
HEALTHY_DEEP = RunConfig(depth=6, hidden=32)
"""A deeper ReLU MLP with PyTorch's default init."""

HEALTHY_LINEAR = RunConfig(schedule="warmup-linear", warmup=20, lr=5e-3, steps=300, layer_every=1)
"""Warmup from LR 0 then linear decay to 0 (transformers' default), per-layer stats on every step."""
HEALTHY_LM = RunConfig(arch="transformer", num_classes=32, batch_size=16, lr=3e-3, steps=120,
                       schedule="warmup-cosine", warmup=20, clip=1.0)
"""A tiny pre-norm causal transformer LM (embeddings, attention, LayerNorm) with warmup + cosine."""

HEALTHY_RUNS = {"healthy": HEALTHY, "noisy": HEALTHY_NOISY, "cosine": HEALTHY_COSINE,
                "clipped": HEALTHY_CLIPPED, "accum": HEALTHY_ACCUM, "deep": HEALTHY_DEEP,
                "linear-every-step": HEALTHY_LINEAR, "transformer": HEALTHY_LM}


def bug(base: RunConfig = HEALTHY, **changes) -> RunConfig:
    """The healthy config with one bug switched on."""
    return replace(base, **changes)
