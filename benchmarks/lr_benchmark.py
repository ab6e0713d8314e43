"""How good is `traindoc.experiments.tune_lr` at picking a learning rate? Against a brute-force grid and two peers.

Three small, offline, deterministic tasks (one training step takes a few ms on one CPU thread), each
trained with AdamW (torch defaults: betas (0.9, 0.999), weight decay 0.01) at a constant LR for a
planned length of ``S`` optimizer steps (``--steps``, default 300):

* ``char-lm``: a char-level decoder-only transformer trained from scratch (2 pre-norm causal
  ``nn.TransformerEncoder`` layers, d=64, 2 heads, FF 256, block 64, batch 16, no dropout) on the
  first ~200k characters of the installed ``chitchat_dataset`` (the chats' message texts joined
  with newlines); next-char cross-entropy.
* ``seq2seq-reverse``: ``nn.Transformer`` (batch_first, d=64, 2 heads, 2+2 layers, FF 128, no
  dropout) learning to reverse random sequences of 12 tokens over 24 symbols, teacher forcing (the
  decoder sees BOS + the target shifted right under a causal mask); batch 32; cross-entropy.
* ``bert-finetune``: a pretrained transformer fine-tuned for classification. A tiny BERT
  (``transformers.BertConfig``: hidden 64, 2 layers, 2 heads, intermediate 128, char-level
  vocabulary built from chitchat text, max 64 positions) is pretrained with masked-LM (15% of the
  characters, 80/10/10) for ``--pretrain-steps`` (300) steps at AdamW 1e-3, saved with
  ``save_pretrained`` to a temporary folder and loaded back with
  ``BertForSequenceClassification.from_pretrained(folder, num_labels=2)`` (a new, random head;
  dropout 0.1 as BERT's default). The task: does a chitchat message end with "?" (the "?" removed),
  balanced 50/50, batch 32. Fine-tuning is where plain LR range tests are known to suggest far too
  high LRs (the reason Hugging Face declined to add one); this tiny checkpoint (300 MLM steps) behaves
  much like a model trained from scratch (its grid-best LR is ~1.8e-3), so it does not reproduce that
  failure in full (docs/experiments.md).

Every method starts from the same initial weights (built once per task under a fixed seed) and
sees the same pool of ``S`` batches (built once, deterministically).

Methods.

* ``grid``: constant-LR trainings of the full planned length ``S`` at ``--per-decade`` (4) LRs per
  decade over 1e-5..1e-1 (from-scratch tasks) or 1e-6..1e-2 (fine-tuning), ``--seeds`` (2) seeds
  each. A run's score is the mean training loss over its last 10% of steps (infinite when any loss
  was non-finite); an LR's score is the mean over seeds; grid-best LR = the argmin. A flag ``!edge``
  says when the grid-best is at an end of the grid (then the grid did not bracket the optimum).
* ``traindoc``: ``tune_lr(model, batches, optimizer=AdamW(model.parameters(), lr=1e-3),
  forward=..., loss_fn=..., max_steps=S // 3, planned_steps=S, seeds=2)`` -> ``suggested_lr``.
* ``lightning``: ``Tuner(trainer).lr_find(module, train_dataloaders=loader, min_lr=1e-7, max_lr=10,
  num_training=100)`` on a minimal LightningModule (``training_step`` = the task's loss,
  ``configure_optimizers`` = AdamW) around a deep copy of the model (lr_find does not always restore
  parameters: lightning issue #6675), ``.suggestion()`` (steepest negative gradient of the smoothed
  loss w.r.t. the LR, its defaults). Trainer on CPU, no logger, no checkpointing, no progress bar.
* ``torch-lr-finder``: ``LRFinder(model_copy, AdamW(..., lr=1e-7), criterion).range_test(loader,
  end_lr=10, num_iter=100)`` (the range starts at the optimizer's LR, 1e-7, like lightning's
  ``min_lr``); its suggestion is what ``plot(suggest_lr=True)`` would print, computed here without
  plotting: the LR at ``argmin(np.gradient(smoothed_losses))`` after skipping 10 points at the start
  and 5 at the end. Its model is called as ``model(inputs)``: a thin wrapper maps that onto the
  task's ``forward(model, batch)``.

Each method's suggestion is then validated like a grid point: trained from the same initial weights
for ``S`` steps with ``--seeds`` seeds, the same data order per seed as the grid (seed 0: the pool in
order, then a seeded permutation per pass; seed k > 0: seeded permutations), and scored the same way.
A peer that cannot run a task, or gives no suggestion, shows ``n/a`` and why.

Search cost: the wall time of each method's search (``tune_lr``, ``lr_find``, ``range_test`` +
suggestion; the grid's own trainings for ``grid``), divided by the wall time of one training step of
the same task measured in the same process (median of 3 timed runs of 20 steps after 5 warm-up
steps, this benchmark's own loop); the validation trainings are not counted. The number of
optimizer steps each search ran is shown next to it (traindoc: ``r.info["training_steps"]``).

Target (for ``traindoc``): on every task its suggested LR is within 2x of the grid-best LR and its
final loss (validated as above) within 2% of the grid-best's. The percent column is relative to
the grid-best's final loss; a negative value means the suggestion beat the grid's best point
(which only resolves the optimum to ``10 ** (1 / per_decade)``). ``Δ loss`` is the absolute
difference: where a task is nearly solved at the best LR (``seq2seq-reverse``'s loss goes towards
0) a small absolute gap is a large percentage, so read both.

Peers (optional) are installed into the venv without touching torch with

    .venv/bin/pip install --no-deps -c constraints-cpu.txt -r benchmarks/requirements-peers.txt

(``torch-lr-finder`` imports matplotlib at import time, so it needs matplotlib and its
dependencies, listed there; lightning and transformers come with the project's dev environment.)

    .venv/bin/python benchmarks/lr_benchmark.py                      # all three tasks, ~15 min on 2 cores
    .venv/bin/python benchmarks/lr_benchmark.py --quick              # smoke run, ~1 min
    .venv/bin/python benchmarks/lr_benchmark.py --tasks char-lm --steps 600
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-lr-finder's progress bar (read when tqdm is imported)
os.environ.setdefault("MPLBACKEND", "Agg")  # torch-lr-finder imports matplotlib.pyplot

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monitor_overhead import TinyGPT  # the same decoder-only transformer (run as benchmarks/lr_benchmark.py)

from traindoc.experiments import tune_lr

Batch = tuple[Any, torch.Tensor]  # (inputs, targets)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("|", "/")
    return " ".join(text.split())[:160]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ tasks

@dataclass
class Task:
    """One task: the initial model, the pool of batches, and how a step computes its loss."""

    name: str
    describe: str
    model: nn.Module
    batches: list[Batch]
    forward: Callable[[nn.Module, Batch], Any]
    loss_fn: Callable[[Any, Batch], torch.Tensor]
    grid_range: tuple[float, float]
    notes: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def chitchat_messages() -> list[str]:
    import chitchat_dataset
    data = chitchat_dataset.Dataset()
    return [m["text"] for key in data for turn in data[key]["messages"] for m in turn]


def _ce(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), batch[1].reshape(-1))


def _call(model: nn.Module, batch: Batch) -> Any:
    return model(batch[0])


def char_lm_task(steps: int, messages: list[str], chars: int, batch: int = 16, block: int = 64) -> Task:
    text, n = [], 0
    for m in messages:
        text.append(m)
        n += len(m) + 1
        if n >= chars:
            break
    s = "\n".join(text)[:chars]
    vocab = sorted(set(s))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in s])
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=g)
        window = torch.stack([data[i:i + block + 1] for i in starts.tolist()])
        batches.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    torch.manual_seed(0)
    model = TinyGPT(len(vocab), d=64, layers=2, heads=2, max_len=block)
    return Task("char-lm", f"TinyGPT 2 layers d=64 2 heads T={block} B={batch}, {len(s) // 1000}k chars of chitchat, "
                           f"vocab {len(vocab)}", model, batches, _call, _ce, (1e-5, 1e-1))


class Reverser(nn.Module):
    """nn.Transformer with token/position embeddings; input (src, tgt_in) -> logits over the symbols."""

    def __init__(self, symbols: int, d: int = 64, length: int = 16):
        super().__init__()
        self.emb = nn.Embedding(symbols + 1, d)  # + BOS
        self.pos = nn.Embedding(length + 1, d)
        self.core = nn.Transformer(d, 2, 2, 2, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, symbols)

    def forward(self, inputs: Any) -> torch.Tensor:
        src, tgt = inputs[0], inputs[1]
        pos_s, pos_t = torch.arange(src.shape[1]), torch.arange(tgt.shape[1])
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        h = self.core(self.emb(src) + self.pos(pos_s), self.emb(tgt) + self.pos(pos_t), tgt_mask=mask,
                      tgt_is_causal=True)
        return self.head(h)


def reverse_task(steps: int, batch: int = 32, length: int = 12, symbols: int = 24) -> Task:
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(steps):
        src = torch.randint(0, symbols, (batch, length), generator=g)
        out = src.flip(1)
        tgt_in = torch.cat([torch.full((batch, 1), symbols), out[:, :-1]], dim=1)
        batches.append(((src, tgt_in), out))
    torch.manual_seed(0)
    model = Reverser(symbols, length=length)
    return Task("seq2seq-reverse", f"nn.Transformer 2+2 layers d=64 2 heads, reverse {length} of {symbols} symbols, "
                                   f"B={batch}, teacher forcing", model, batches, _call, _ce, (1e-5, 1e-1))


def _bert_forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    ids, mask = batch[0][0], batch[0][1]
    return model(input_ids=ids, attention_mask=mask).logits


def bert_task(steps: int, messages: list[str], pretrain_steps: int, batch: int = 32, max_len: int = 48) -> Task:
    import transformers
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification
    transformers.logging.set_verbosity_error()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    counts: dict[str, int] = {}
    for m in messages[:20000]:
        for c in m:
            counts[c] = counts.get(c, 0) + 1
    chars = sorted(c for c, k in counts.items() if k >= 5)
    vocab = {t: i for i, t in enumerate(specials + chars)}
    pad, unk, cls, sep, msk = (vocab[t] for t in specials)

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_len), pad)
        for r, t in enumerate(texts):
            row = [cls] + [vocab.get(c, unk) for c in t[:max_len - 2]] + [sep]
            ids[r, :len(row)] = torch.tensor(row)
        return ids, (ids != pad).long()

    # the fine-tuning set: messages of 8..60 chars, "ends with ?" (the "?"s stripped) against not, balanced
    rng = random.Random(3)
    pool = [m.strip() for m in messages if 8 <= len(m.strip()) <= 60]
    questions = [m.rstrip("?").rstrip() for m in pool if m.endswith("?")]
    others = [m for m in pool if not m.endswith("?") and "?" not in m]
    questions = [q for q in questions if len(q) >= 6]
    need = steps * batch // 2
    rng.shuffle(questions)
    rng.shuffle(others)
    examples = [(q, 1) for q in questions[:need]] + [(o, 0) for o in others[:need]]
    rng.shuffle(examples)
    used = {t for t, _ in examples}
    batches = []
    for i in range(0, steps * batch, batch):
        texts, labels = zip(*examples[i:i + batch], strict=True)
        ids, mask = encode(list(texts))
        batches.append(((ids, mask), torch.tensor(labels)))

    # masked-LM pretraining on other messages
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=pad)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(config)
    mlm.train()
    texts = [m for m in pool if m not in used]
    opt = torch.optim.AdamW(mlm.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(4)
    losses = []
    for _ in range(pretrain_steps):
        pick = torch.randint(0, len(texts), (64,), generator=g).tolist()
        ids, mask = encode([texts[i] for i in pick])
        real = (ids != pad) & (ids != cls) & (ids != sep)
        chosen = real & (torch.rand(ids.shape, generator=g) < 0.15)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape, generator=g)
        inp = torch.where(chosen & (r < 0.8), torch.full_like(ids, msk), ids)
        inp = torch.where(chosen & (r >= 0.8) & (r < 0.9),
                          torch.randint(len(specials), len(vocab), ids.shape, generator=g), inp)
        loss = mlm(input_ids=inp, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first = statistics.fmean(losses[:10]) if losses else float("nan")
    last = statistics.fmean(losses[-10:]) if losses else float("nan")
    with tempfile.TemporaryDirectory() as folder:
        mlm.save_pretrained(folder)
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    n_q = sum(int(b[1].sum()) for b in batches)
    return Task("bert-finetune",
                f"BERT hidden 64, 2 layers, char vocab {len(vocab)}, MLM-pretrained {pretrain_steps} steps (loss "
                f"{first:.2f} -> {last:.2f}), fine-tuned on 'ends with ?' ({n_q}/{steps * batch} positive), "
                f"B={batch}, L={max_len}", model, batches, _bert_forward, _ce, (1e-6, 1e-2))


# ------------------------------------------------------------------------------------- training

def batch_order(n: int, seed: int) -> Callable[[int], int]:
    """Step -> batch index; the same for every method with this seed (seed 0's first pass is the pool
    in order, every other pass and seed a seeded permutation)."""
    cache: dict[int, list[int]] = {}

    def index(step: int) -> int:
        epoch, i = divmod(step, n)
        if epoch == 0 and seed == 0:
            return i
        if epoch not in cache:
            g = torch.Generator().manual_seed(7919 * (seed + 1) + epoch)
            cache[epoch] = torch.randperm(n, generator=g).tolist()
        return cache[epoch][i]

    return index


def train(task: Task, lr: float, seed: int, steps: int) -> list[float]:
    """Train a copy of the task's initial model at a constant LR; the per-step losses (stops at the
    first non-finite loss, which is then the last value)."""
    model = copy.deepcopy(task.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order = batch_order(len(task.batches), seed)
    torch.manual_seed(1000 + seed)  # dropout
    losses: list[torch.Tensor] = []
    out: list[float] = []
    for t in range(steps):
        batch = task.batches[order(t)]
        opt.zero_grad(set_to_none=True)
        loss = task.loss_fn(task.forward(model, batch), batch)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if (t + 1) % 25 == 0 or t + 1 == steps:
            out += torch.stack(losses).tolist()
            losses.clear()
            if not all(math.isfinite(v) for v in out[-25:]):
                break
    return out


def score(losses: list[float], steps: int) -> float:
    """Mean training loss over the last 10% of the steps; inf when the run went non-finite."""
    if len(losses) < steps or not all(math.isfinite(v) for v in losses):
        return math.inf
    n = max(1, round(0.1 * steps))
    return statistics.fmean(losses[-n:])


def validate(task: Task, lr: float, seeds: int, steps: int) -> tuple[float, list[float]]:
    per_seed = [score(train(task, lr, s, steps), steps) for s in range(seeds)]
    return statistics.fmean(per_seed), per_seed


def step_time(task: Task) -> float:
    """Seconds per training step of this benchmark's loop (median of 3 runs of 20 steps after 5 warm-up)."""
    model = copy.deepcopy(task.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run(k: int, start: int) -> None:
        for t in range(start, start + k):
            batch = task.batches[t % len(task.batches)]
            opt.zero_grad(set_to_none=True)
            task.loss_fn(task.forward(model, batch), batch).backward()
            opt.step()

    run(5, 0)
    times = []
    for r in range(3):
        t0 = time.perf_counter()
        run(20, 5 + 20 * r)
        times.append((time.perf_counter() - t0) / 20)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------- methods

@dataclass
class Search:
    lr: float | None = None
    seconds: float = 0.0
    steps: int = 0
    note: str = ""
    failed: str | None = None


def search_traindoc(task: Task, steps: int, tune_steps: int, seeds: int) -> Search:
    model = copy.deepcopy(task.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    r = tune_lr(model, task.batches, optimizer=opt, forward=task.forward, loss_fn=task.loss_fn,
                max_steps=tune_steps, planned_steps=steps, seeds=seeds)
    seconds = time.perf_counter() - t0
    lo, hi = r["lr_range"]
    unstable = r["unstable_lr"]
    note = (f"short_run_lr {r['short_run_lr']:.2g}, range {lo:.2g}..{hi:.2g}, unstable "
            f"{'-' if unstable is None else f'{unstable:.2g}'}, alpha {r['horizon_exponent']:.2f}, "
            f"ramp min-loss {r['bracket']['ramp_min_loss_lr']:.2g}")
    return Search(r["suggested_lr"], seconds, int(r.info["training_steps"]), note)


def search_lightning(task: Task, num_training: int) -> Search:
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.tuner import Tuner
    except Exception as e:
        return Search(failed=f"not installed ({_one_line(e)})")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    class Module(pl.LightningModule):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.lr = 1e-3

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return task.loss_fn(task.forward(self.model, batch), batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=self.lr)

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        try:
            module = Module(copy.deepcopy(task.model))
            loader = torch.utils.data.DataLoader(task.batches, batch_size=None, shuffle=False)
            trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                                 num_sanity_val_steps=0)
            with contextlib.redirect_stdout(io.StringIO()):
                finder = Tuner(trainer).lr_find(module, train_dataloaders=loader, min_lr=1e-7, max_lr=10,
                                                num_training=num_training)
                lr = finder.suggestion() if finder is not None else None
        except Exception as e:
            return Search(failed=_one_line(e), seconds=time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    n = len(finder.results["loss"]) if finder is not None else 0
    if lr is None:
        return Search(failed=f"no suggestion ({n} points)", seconds=seconds, steps=n)
    return Search(float(lr), seconds, n, f"{n} steps run" + (" (stopped: diverged)" if n < num_training else ""))


class _ModelInputs(nn.Module):
    """``model(inputs)`` as torch-lr-finder calls it, mapped onto the task's ``forward(model, batch)``."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Batch], Any]):
        super().__init__()
        self.model = model
        self.fwd = forward

    def forward(self, inputs: Any) -> Any:
        return self.fwd(self.model, (inputs, None))


def search_torch_lr_finder(task: Task, num_iter: int) -> Search:
    try:
        from torch_lr_finder import LRFinder
    except Exception as e:
        return Search(failed=f"not installed ({_one_line(e)})")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        model = copy.deepcopy(task.model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-7)
        finder = LRFinder(_ModelInputs(model, task.forward), opt,
                          lambda out, labels: task.loss_fn(out, (None, labels)), device="cpu")
        loader = torch.utils.data.DataLoader(task.batches, batch_size=None, shuffle=False)
        with contextlib.redirect_stdout(io.StringIO()):
            finder.range_test(loader, end_lr=10, num_iter=num_iter)
        # what plot(suggest_lr=True) computes (skip_start=10, skip_end=5, steepest gradient), without plotting
        lrs, losses = finder.history["lr"], finder.history["loss"]
        n = len(losses)
        if n < 10 + 5 + 2:
            return Search(failed=f"no suggestion: {n} points, plot() needs 17", seconds=time.perf_counter() - t0,
                          steps=n)
        lrs, losses = lrs[10:-5], losses[10:-5]
        lr = lrs[int(np.gradient(np.array(losses)).argmin())]
    except Exception as e:
        return Search(failed=_one_line(e), seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    return Search(float(lr), seconds, n, f"{n} steps run" + (" (stopped: diverged)" if n < num_iter else ""))


# ------------------------------------------------------------------------------------------- main

@dataclass
class Row:
    method: str
    search: Search
    loss: float = math.nan
    per_seed: list[float] = field(default_factory=list)


def grid_lrs(lo: float, hi: float, per_decade: int) -> list[float]:
    a, b = round(math.log10(lo) * per_decade), round(math.log10(hi) * per_decade)
    return [10 ** (k / per_decade) for k in range(a, b + 1)]


def fmt_loss(v: float) -> str:
    return "diverged" if not math.isfinite(v) else f"{v:.4f}"


def run_task(task: Task, args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    S, seeds = args.steps, args.seeds
    _log(f"[{task.name}] {task.describe}; {task.n_params / 1e3:.1f}k params")
    t_step = step_time(task)
    _log(f"[{task.name}] one training step: {t_step * 1e3:.2f} ms")

    # grid
    lrs = grid_lrs(*task.grid_range, args.per_decade)
    grid: dict[float, tuple[float, list[float]]] = {}
    t0 = time.perf_counter()
    for lr in lrs:
        grid[lr] = validate(task, lr, seeds, S)
        _log(f"[{task.name}] grid lr={lr:.3g}: {fmt_loss(grid[lr][0])}")
    grid_seconds = time.perf_counter() - t0
    best_lr = min(lrs, key=lambda lr: grid[lr][0])
    best_loss = grid[best_lr][0]
    edge = best_lr in (lrs[0], lrs[-1])

    rows = [Row("grid", Search(best_lr, grid_seconds, len(lrs) * seeds * S,
                               f"{len(lrs)} LRs x {seeds} seeds x {S} steps" + (" !edge" if edge else "")),
                best_loss, grid[best_lr][1])]
    for m in methods:
        _log(f"[{task.name}] search: {m}")
        if m == "traindoc":
            try:
                s = search_traindoc(task, S, args.tune_steps, seeds)
            except Exception as e:
                s = Search(failed=_one_line(e))
        elif m == "lightning":
            s = search_lightning(task, args.finder_steps)
        else:
            s = search_torch_lr_finder(task, args.finder_steps)
        torch.set_num_threads(args.threads)
        row = Row(m, s)
        if s.lr is not None:
            _log(f"[{task.name}] {m}: suggested {s.lr:.3g} in {s.seconds:.1f}s; validating")
            row.loss, row.per_seed = validate(task, s.lr, seeds, S)
        else:
            _log(f"[{task.name}] {m}: n/a: {s.failed}")
        rows.append(row)

    print()
    print(f"### {task.name}: {task.describe}; {task.n_params / 1e3:.1f}k params; S={S} steps; "
          f"one step {t_step * 1e3:.2f} ms")
    print()
    print("grid (LR: final loss, mean of seeds): " + ", ".join(
        f"{lr:.3g}: {fmt_loss(grid[lr][0])}" for lr in lrs))
    print()
    print("| method | suggested LR | / grid-best | final loss (seeds) | vs grid-best | Δ loss | search cost (step times) "
          "| search steps | notes |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        s = r.search
        if s.lr is None:
            print(f"| {r.method} | n/a | – | – | – | – | "
                  f"{'–' if s.seconds == 0 else f'{s.seconds / t_step:.0f}'} | {s.steps or '–'} | n/a: {s.failed} |")
            continue
        pct = ((r.loss - best_loss) / best_loss * 100) if math.isfinite(r.loss) else math.inf
        seeds_txt = ", ".join(fmt_loss(v) for v in r.per_seed)
        print(f"| {r.method} | {s.lr:.3g} | {s.lr / best_lr:.2f}x | {fmt_loss(r.loss)} ({seeds_txt}) "
              f"| {'+inf' if not math.isfinite(pct) else f'{pct:+.2f}%'} | {r.loss - best_loss:+.4f} "
              f"| {s.seconds / t_step:.0f} | {s.steps} "
              f"| {s.note} |")
    sys.stdout.flush()
    return {"task": task.name, "best_lr": best_lr, "best_loss": best_loss, "edge": edge, "rows": rows,
            "step": t_step}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="char-lm,seq2seq-reverse,bert-finetune",
                    help="comma-separated subset of: char-lm, seq2seq-reverse, bert-finetune (default: all)")
    ap.add_argument("--methods", default="traindoc,lightning,torch-lr-finder",
                    help="comma-separated subset of: traindoc, lightning, torch-lr-finder (the grid always runs)")
    ap.add_argument("--steps", type=int, default=None, help="planned length S (default 300; --quick: 60)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per validated LR and for tune_lr (default 2)")
    ap.add_argument("--per-decade", type=int, default=None, help="grid LRs per decade (default 4; --quick: 2)")
    ap.add_argument("--tune-steps", type=int, default=None, help="tune_lr max_steps (default S // 3)")
    ap.add_argument("--finder-steps", type=int, default=None,
                    help="num_training / num_iter of the peers' range tests (default 100; --quick: 30)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="BERT MLM pretraining steps (default 300; "
                                                                     "--quick: 50)")
    ap.add_argument("--chars", type=int, default=None, help="chars of text for char-lm (default 200000; --quick: 30000)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: S=60, 2 LRs per decade, 30-step range tests")
    args = ap.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (60 if q else 300)
    args.per_decade = args.per_decade or (2 if q else 4)
    args.tune_steps = args.tune_steps or max(8, args.steps // 3)
    args.finder_steps = args.finder_steps or (30 if q else 100)
    args.pretrain_steps = args.pretrain_steps if args.pretrain_steps is not None else (50 if q else 300)
    args.chars = args.chars or (30_000 if q else 200_000)

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    start = time.perf_counter()
    messages = chitchat_messages() if {"char-lm", "bert-finetune"} & set(tasks) else []
    results = []
    for name in tasks:
        t0 = time.perf_counter()
        if name == "char-lm":
            task = char_lm_task(args.steps, messages, args.chars)
        elif name == "seq2seq-reverse":
            task = reverse_task(args.steps)
        elif name == "bert-finetune":
            task = bert_task(args.steps, messages, args.pretrain_steps)
        else:
            raise SystemExit(f"unknown task {name!r}")
        results.append(run_task(task, args, methods))
        _log(f"[{name}] done in {time.perf_counter() - t0:.0f}s")

    print()
    print("### summary (suggested / grid-best LR; final loss vs grid-best's; search cost in step times)")
    print()
    print("| method | " + " | ".join(r["task"] for r in results) + " | within 2x and 2% |")
    print("|---|" + "---|" * len(results) + "---:|")
    for m in ["grid", *methods]:
        cells, hits = [], 0
        for res in results:
            row = next(r for r in res["rows"] if r.method == m)
            s = row.search
            if s.lr is None:
                cells.append("n/a")
                continue
            ratio = s.lr / res["best_lr"]
            pct = (row.loss - res["best_loss"]) / res["best_loss"] * 100 if math.isfinite(row.loss) else math.inf
            hits += (0.5 <= ratio <= 2.0 and pct <= 2.0)
            cells.append(f"{ratio:.2f}x, {'+inf' if not math.isfinite(pct) else f'{pct:+.1f}%'}, "
                         f"{s.seconds / res['step']:.0f}")
        print(f"| {m} | " + " | ".join(cells) + f" | {hits}/{len(results)} |")
    print()
    edges = [r["task"] for r in results if r["edge"]]
    print("Grid-best LR: " + ", ".join(f"{r['task']} {r['best_lr']:.3g} (loss {r['best_loss']:.4f})"
                                        for r in results)
          + (f". At the grid's edge (not bracketed): {', '.join(edges)}." if edges else "."))
    print(f"Target for traindoc: suggested LR within 2x of the grid-best and final loss within 2% of its loss, on "
          f"every task. S={args.steps} steps, {args.seeds} seeds, grid {args.per_decade} LRs/decade, tune_lr "
          f"max_steps={args.tune_steps}, range tests {args.finder_steps} steps.")
    versions = [f"torch {torch.__version__}"]
    for mod in ("lightning", "transformers", "torch_lr_finder"):
        try:
            from importlib.metadata import version
            versions.append(f"{mod} {version(mod.replace('_', '-'))}")
        except Exception:
            versions.append(f"{mod} not installed")
    print(f"Environment: {', '.join(versions)}; {torch.get_num_threads()} thread(s); "
          f"total wall time {time.perf_counter() - start:.0f}s.")


if __name__ == "__main__":
    main()
