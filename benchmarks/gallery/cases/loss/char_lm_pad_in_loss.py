"""A character-level Transformer LM on chat messages padded with 0, trained with CrossEntropyLoss's default ignore_index=-100.

Source: https://github.com/lukas-blecher/LaTeX-OCR/issues/305
Source: https://github.com/huggingface/transformers/issues/11616
Expect: padding-in-loss

The batches are right-padded with the pad id 0, but the loss ignores -100, not 0, so every pad
position is a target: in these short messages most targets are "predict another pad after the end",
which the model learns at once. The printed loss falls fast while the real characters get a small
share of the gradient. The fix is CrossEntropyLoss(ignore_index=PAD) (or labels set to -100 at
the pads).
"""

import itertools
import math
import random
import sys

import chitchat_dataset
import torch
import torch.nn as nn

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)

PAD, BOS, EOS = 0, 1, 2
MAX_LEN = 48
messages = [m for m in itertools.islice(chitchat_dataset.MessageDataset(), 2400) if m.strip()]
chars = sorted(set("".join(messages)))
stoi = {c: i + 3 for i, c in enumerate(chars)}
vocab_size = len(chars) + 3


def encode(text):
    return [BOS] + [stoi[c] for c in text[:MAX_LEN - 2]] + [EOS]


def collate(batch):
    width = max(len(x) for x in batch)
    return torch.tensor([x + [PAD] * (width - len(x)) for x in batch])


class CharTransformer(nn.Module):
    def __init__(self, vocab_size, d_model=64, nhead=4, num_layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        self.pos = nn.Embedding(MAX_LEN, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.1, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x, pad_mask):
        T = x.size(1)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        h = self.tok(x) + self.pos(torch.arange(T))
        h = self.blocks(h, mask=causal, src_key_padding_mask=pad_mask, is_causal=True)
        return self.head(h)


data = [encode(m) for m in messages]
random.shuffle(data)
train, val = data[:2100], data[2100:]
model = CharTransformer(vocab_size)
criterion = nn.CrossEntropyLoss(ignore_index=PAD) if FIXED else nn.CrossEntropyLoss()  # BUG
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)


def char_loss(batch):
    """Mean loss over the real characters only (what we actually care about)."""
    model.eval()
    with torch.no_grad():
        x = collate(batch)
        logits = model(x[:, :-1], x[:, :-1] == PAD)
        loss = nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], ignore_index=PAD)
    model.train()
    return loss.item()


batch_size = 32
for epoch in range(2):
    random.shuffle(train)
    for i in range(0, len(train), batch_size):
        x = collate(train[i:i + batch_size])
        xi, xo = x[:, :-1], x[:, 1:]
        logits = model(xi, xi == PAD)
        loss = criterion(logits.transpose(1, 2), xo)  # BUG
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (i // batch_size) % 40 == 0:
            print(f"epoch {epoch} step {i // batch_size}: loss {loss.item():.3f}")
    print(f"epoch {epoch}: val loss on real characters {char_loss(val):.3f} (ln V = {math.log(vocab_size):.2f})")
