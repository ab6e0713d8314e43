"""A nanoGPT-style loop that accumulates gradients over micro-batches without dividing the loss by their number.

Source: https://github.com/karpathy/nanoGPT/issues/168
Source: https://github.com/karpathy/nanoGPT/issues/206
Expect: grad-accum-normalization

Each optimizer step sums the gradients of gradient_accumulation_steps micro-batches instead of
averaging them, so the gradient is that many times too large: the clip at grad_clip silently becomes
that many times tighter (what Karpathy points out in the issue) and, with any optimizer that is not
scale-invariant, the effective LR grows with the accumulation count. The fix is
loss = loss / gradient_accumulation_steps before backward().
"""

import itertools
import math
import sys

import chitchat_dataset
import torch
from transformers import GPT2Config, GPT2LMHeadModel

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# data: a character-level corpus of chat messages
text = "\n".join(itertools.islice(chitchat_dataset.MessageDataset(), 3000))
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n = int(0.9 * len(data))
train_data, val_data = data[:n], data[n:]

block_size, batch_size = 64, 8
gradient_accumulation_steps = 4
max_iters, warmup_iters, learning_rate, min_lr = 60, 10, 3e-3, 3e-4
grad_clip = 1.0


def get_batch(split):
    d = train_data if split == "train" else val_data
    ix = torch.randint(len(d) - block_size, (batch_size,))
    return torch.stack([d[i:i + block_size] for i in ix])


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    ratio = (it - warmup_iters) / (max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    model.eval()
    losses = torch.stack([model(x, labels=x).loss for x in (get_batch("val") for _ in range(5))])
    model.train()
    return losses.mean().item()


config = GPT2Config(vocab_size=len(chars), n_positions=block_size, n_embd=64, n_layer=2, n_head=2,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    bos_token_id=stoi["\n"], eos_token_id=stoi["\n"])
model = GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.1)

X = get_batch("train")
for iter_num in range(max_iters):
    lr = get_lr(iter_num)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    for _ in range(gradient_accumulation_steps):
        loss = model(X, labels=X).loss  # BUG
        if FIXED:
            loss = loss / gradient_accumulation_steps  # scale the loss to account for gradient accumulation
        X = get_batch("train")  # prefetch the next batch
        loss.backward()  # BUG
    if grad_clip != 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if iter_num % 10 == 0 or iter_num == max_iters - 1:
        print(f"iter {iter_num}: val loss {estimate_loss():.4f}, lr {lr:.2e}")
