"""What does `traindoc.check` cost? Forward/backward passes, wall time and extra memory, each beside
one training step of the same model and batch, measured in the same run, interleaved (step, check,
step, check) so that drift on the shared cores hits both.

Extra memory is the peak above what the process held just before (the model, its gradients and
optimizer state already exist): on CPU the resident set's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` before each measurement, Linux only; the script re-runs itself with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed, so that every large tensor is its own mapping and the resident set
follows what is really allocated, not what the heap keeps), on CUDA ``torch.cuda.max_memory_allocated``.

    python benchmarks/probe_cost.py            # small model at B=4/32 and GPT-2-small (124M) at B=2/8
    python benchmarks/probe_cost.py --quick    # small model only

The pass counts must not grow with B or T; the whole check should cost at most ~6 training steps.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
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


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_extra_bytes(fn, device: torch.device) -> tuple[object, int]:
    """(fn(), the peak memory fn needed above what was held before it), on the model's device."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated(device) - before
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current resident set
        f.write("5")
    before = _rss_kib("VmRSS")
    out = fn()
    return out, max(0, _rss_kib("VmHWM") - before) * 1024


def measure(name: str, model, B: int, T: int, vocab: int, rounds: int) -> dict:
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = {k: v.to(device) for k, v in batch(B, T, vocab).items()}
    train_step(model, opt, b)  # warm-up, creates optimizer state
    steps, checks, step_mem, check_mem, passes = [], [], [], [], None
    for _ in range(rounds):  # A B A B
        t = time.perf_counter()
        _, mem = peak_extra_bytes(lambda: train_step(model, opt, b), device)
        steps.append(time.perf_counter() - t)
        step_mem.append(mem)
        t = time.perf_counter()
        report, mem = peak_extra_bytes(lambda: traindoc.check(model, b, optimizer=opt), device)
        checks.append(time.perf_counter() - t)
        check_mem.append(mem)
        passes = report.info["passes"]
    step, check = statistics.median(steps), statistics.median(checks)
    return {"model": name, "B": B, "T": T, "forward": passes["forward"], "backward": passes["backward"],
            "step_s": step, "check_s": check, "ratio": check / step,
            "step_mib": statistics.median(step_mem) / 2**20, "check_mib": statistics.median(check_mem) / 2**20,
            "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}


def main() -> None:
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small model only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []
    small = gpt2(n_layer=2, n_embd=64, n_head=2, vocab=1000, n_positions=256).to(args.device)
    for B in (4, 32):
        for T in (32, 128):
            rows.append(measure("small (0.2M)", small, B, T, 1000, rounds=5))
    if not args.quick:
        big = gpt2(n_layer=12, n_embd=768, n_head=12, vocab=50257, n_positions=1024).to(args.device)  # 124M
        for B in (2, 8):
            for T in (64, 256):
                rows.append(measure("gpt2-small (124M)", big, B, T, 50257, rounds=2))
    print(f"{'model':18s} {'B':>3s} {'T':>4s} {'fwd':>4s} {'bwd':>4s} {'step s':>8s} {'check s':>8s} "
          f"{'check/step':>10s} {'weights MiB':>11s} {'step +MiB':>9s} {'check +MiB':>10s}")
    for r in rows:
        print(f"{r['model']:18s} {r['B']:3d} {r['T']:4d} {r['forward']:4d} {r['backward']:4d} "
              f"{r['step_s']:8.3f} {r['check_s']:8.3f} {r['ratio']:9.2f}x {r['weights_mib']:11.1f} "
              f"{r['step_mib']:9.1f} {r['check_mib']:10.1f}")


if __name__ == "__main__":
    main()
