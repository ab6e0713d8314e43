"""What does `traindoc.check` cost? Forward/backward passes and wall time as a multiple of one
training step of the same model and batch, measured in the same run, interleaved (step, check,
step, check) so that drift on the shared cores hits both.

    python benchmarks/probe_cost.py            # small model at B=4/32 and GPT-2-small (124M) at B=2/8
    python benchmarks/probe_cost.py --quick    # small model only

The pass counts must not grow with B or T; the whole check should cost at most ~6 training steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import traindoc


def gpt2(n_layer: int, n_embd: int, n_head: int, vocab: int, n_positions: int):
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                                  n_positions=n_positions, pad_token_id=0, eos_token_id=0, bos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def batch(B: int, T: int, vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, -T // 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def train_step(model, opt, b) -> None:
    model.train()
    opt.zero_grad(set_to_none=True)
    model(**b).loss.backward()
    opt.step()


def measure(name: str, model, B: int, T: int, vocab: int, rounds: int) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = batch(B, T, vocab)
    train_step(model, opt, b)  # warm-up, creates optimizer state
    steps, checks, passes = [], [], None
    for _ in range(rounds):  # A B A B
        t = time.perf_counter()
        train_step(model, opt, b)
        steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        report = traindoc.check(model, b, optimizer=opt)
        checks.append(time.perf_counter() - t)
        passes = report.info["passes"]
    step, check = statistics.median(steps), statistics.median(checks)
    return {"model": name, "B": B, "T": T, "forward": passes["forward"], "backward": passes["backward"],
            "step_s": step, "check_s": check, "ratio": check / step}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small model only")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []
    small = gpt2(n_layer=2, n_embd=64, n_head=2, vocab=1000, n_positions=256)
    for B in (4, 32):
        for T in (32, 128):
            rows.append(measure("small (0.2M)", small, B, T, 1000, rounds=5))
    if not args.quick:
        big = gpt2(n_layer=12, n_embd=768, n_head=12, vocab=50257, n_positions=1024)  # GPT-2 small, 124M
        for B in (2, 8):
            for T in (64, 256):
                rows.append(measure("gpt2-small (124M)", big, B, T, 50257, rounds=2))
    print(f"{'model':18s} {'B':>3s} {'T':>4s} {'fwd':>4s} {'bwd':>4s} {'step s':>8s} {'check s':>8s} {'check/step':>10s}")
    for r in rows:
        print(f"{r['model']:18s} {r['B']:3d} {r['T']:4d} {r['forward']:4d} {r['backward']:4d} "
              f"{r['step_s']:8.3f} {r['check_s']:8.3f} {r['ratio']:9.2f}x")


if __name__ == "__main__":
    main()
