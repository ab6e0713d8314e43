"""A hand-written loop over a tiny GPT-2 (built from a config) that returns its own loss; with "pad"
the labels are the input ids with the right padding left in (not set to -100), so the pads count."""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = "pad" in sys.argv[1:]
PAD, EOS = 0, 1
config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                    pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS)
model = GPT2LMHeadModel(config)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)


def make_batch(b=8, t=16):
    lengths = torch.randint(6, t + 1, (b,), generator=g)
    ids = torch.randint(2, 100, (b, t), generator=g)
    real = torch.arange(t)[None, :] < lengths[:, None]
    ids[torch.arange(b), lengths - 1] = EOS  # each sequence ends with EOS, then right padding
    ids = ids.masked_fill(~real, PAD)
    mask = real.long()
    labels = ids.clone()
    if not BUG:
        labels = labels.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


for _ in range(30):
    batch = make_batch()
    out = model(**batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
print(f"done {out.loss.item():.3f}")
