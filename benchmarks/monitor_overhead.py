"""Overhead of `traindoc.watch` on a small GPT-like model on CPU: bare loop vs watched loop.

The same training loop (AdamW, gradient clipping at 1.0, a loss and a token count logged) runs
bare and watched, ALTERNATING in one process (A B A B ...) so that CPU frequency, caches and other
load affect both alike. Two watched settings:

* default: ``traindoc.watch(model, opt)`` (layer stats every 10 steps, histograms every 100,
  flush every 50);
* everything every step: ``every=1, histograms_every=1`` (per-layer norms, update/weight ratios
  and weight+gradient histograms on every step);

and, as a reference for what a full-time NaN watch costs, the bare loop under ``torch.autograd.set_detect_anomaly(True)``
(what people turn on to find a NaN; traindoc instead replays the saved batch only when one appears).

Each round runs ``--steps`` steps; a step's time is measured around forward+backward+clip+step
(+ ``w.log``) with ``time.perf_counter``; flushes happen inside steps, so their cost is in the
mean. The table shows, per setting, the median over rounds of the per-round median step time and
of the per-round mean step time, and the watched/bare ratios (each watched round is compared
with the bare round next to it), plus the ratio of CPU time (``time.process_time``) per round,
which is steadier than wall time on a machine shared with other work.

    python benchmarks/monitor_overhead.py            # 4 layers, d=128, T=64, B=16, 2 threads
    python benchmarks/monitor_overhead.py --rounds 3 --steps 20   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoc


class TinyGPT(nn.Module):
    """A decoder-only transformer: token + position embeddings, pre-norm causal blocks, LM head."""

    def __init__(self, vocab: int = 512, d: int = 128, layers: int = 4, heads: int = 4, max_len: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.tok(ids) + self.pos(torch.arange(t))
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))


def make_batches(n: int, batch: int, seq: int, vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(n)]


def train_round(model: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor],
                watch_kwargs: dict | None) -> tuple[list[float], float]:
    """One round of len(batches) steps; returns per-step wall seconds and the round's CPU seconds."""
    anomaly = watch_kwargs is not None and watch_kwargs.get("anomaly", False)
    if anomaly:  # the reference point: torch's own NaN hunter, on every step
        watch_kwargs = None
    w = traindoc.watch(model, opt, run_dir=tempfile.mkdtemp(prefix="traindoc-bench-"), quiet=True,
                       **watch_kwargs) \
        if watch_kwargs is not None else None
    previous = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(anomaly)
    times = []
    cpu0 = time.process_time()
    for ids in batches:
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if w is not None:
            w.log(loss=loss, tokens=ids.numel())
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    torch.autograd.set_detect_anomaly(previous)
    if w is not None:
        w.close()
    return times, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = 512
    model = TinyGPT(vocab=vocab, d=args.d, layers=args.layers, max_len=args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batches = make_batches(args.steps, args.batch, args.seq, vocab)
    settings = {
        "default": {"tensorboard": True},
        "everything every step": {"every": 1, "histograms_every": 1, "tensorboard": True},
        "(reference) detect_anomaly": {"anomaly": True},
    }
    train_round(model, opt, batches[:10], None)  # warm-up (and the lazy TensorBoard import)
    for kw in settings.values():
        train_round(model, opt, batches[:10], kw)

    results: dict[str, list[tuple[list[float], list[float]]]] = {name: [] for name in settings}
    cpu: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(args.rounds):
        for name, kw in settings.items():  # A B, A B', ... : each watched round next to a bare one
            bare, bare_cpu = train_round(model, opt, batches, None)
            watched, watched_cpu = train_round(model, opt, batches, kw)
            results[name].append((bare, watched))
            cpu[name].append(watched_cpu / bare_cpu)
            print(f"round {r + 1}/{args.rounds} {name}: median {statistics.median(watched) * 1e3:.1f} ms watched / "
                  f"{statistics.median(bare) * 1e3:.1f} ms bare", file=sys.stderr, flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"TinyGPT: {args.layers} layers, d={args.d}, T={args.seq}, B={args.batch}, {n_params / 1e6:.2f}M params, "
          f"AdamW, clip 1.0, torch {torch.__version__}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps, alternating bare/watched")
    print(f"{'setting':<28}{'bare median':>13}{'watched median':>16}{'ratio':>8}"
          f"{'bare mean':>12}{'watched mean':>14}{'ratio':>8}{'CPU-time ratio':>16}")
    for name, rounds in results.items():
        bm = statistics.median(statistics.median(b) for b, _ in rounds)
        wm = statistics.median(statistics.median(w) for _, w in rounds)
        rmed = statistics.median(statistics.median(w) / statistics.median(b) for b, w in rounds)
        bmean = statistics.median(statistics.fmean(b) for b, _ in rounds)
        wmean = statistics.median(statistics.fmean(w) for _, w in rounds)
        rmean = statistics.median(statistics.fmean(w) / statistics.fmean(b) for b, w in rounds)
        print(f"{name:<28}{bm * 1e3:>11.2f}ms{wm * 1e3:>14.2f}ms{rmed:>7.3f}x"
              f"{bmean * 1e3:>10.2f}ms{wmean * 1e3:>12.2f}ms{rmean:>7.3f}x"
              f"{statistics.median(cpu[name]):>15.3f}x")
    print("targets: default <= 1.02x, everything every step <= 1.15x")


if __name__ == "__main__":
    main()
