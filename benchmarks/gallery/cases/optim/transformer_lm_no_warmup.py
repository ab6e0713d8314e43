"""A post-LN Transformer language model trained from scratch at a high Adam LR with no warmup.

Source: https://github.com/google-research/tuning_playbook
Source: https://github.com/LiyuanLucasLiu/Transformer-Clinic/issues/16
Source: https://github.com/shubham-goel/4D-Humans/issues/65
Expect: lr-too-high

nn.TransformerEncoderLayer puts LayerNorm after each residual block (post-LN) by default. With Adam
at its full LR from the first step, the first updates are as large as the LR allows while the
gradients of the top layers are at their largest: the model falls into predicting the character
frequencies and its loss sits there (~3.1 here) for the rest of the run (it collapses rather than
spikes in this miniature). The same peak LR reached through a linear warmup over the first 100 steps
trains normally (loss ~2.4); the fix is the warmup, or a lower LR.
"""

import math
import sys

import chitchat_dataset
import torch
import torch.nn as nn
import torch.nn.functional as F

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

conversations = chitchat_dataset.Dataset()
lines = []
for key in list(conversations)[:400]:
    for turn in conversations[key]["messages"]:
        lines += [message["text"] for message in turn]
text = "\n".join(lines)
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text])
vocab_size, block_size, d_model = len(chars), 32, 32


class CharTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0,
                                           batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers=4)
        self.lm_head = nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) * math.sqrt(d_model) + self.pos_emb(torch.arange(t))
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.lm_head(self.blocks(x, mask=mask, is_causal=True))


def get_batch(batch_size=32):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


model = CharTransformer()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)  # BUG
if FIXED:  # linear warmup to the peak LR over the first 100 steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))

for step in range(200):
    x, y = get_batch()
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, vocab_size), y.view(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if FIXED:
        scheduler.step()
    if step % 20 == 0 or step == 199:
        print(f"step {step} loss {loss.item():.3f}")
