"""Attention pooling masks padding with -inf, and an all-padding (empty) document makes softmax return NaN.

Source: https://github.com/pytorch/pytorch/issues/40932
Source: https://github.com/allenai/allennlp/issues/890
Source: https://github.com/pytorch/pytorch/issues/25110
Expect: nan-forward

A review classifier pools its token states with attention, filling the scores of padding positions with
-inf before the softmax. A few reviews are empty after cleaning, so their row is -inf everywhere and
softmax gives 0/0 = NaN: the logits of that sample are NaN, the loss is NaN, and the first optimizer step
writes NaN into every weight. The fix is a large finite fill value (torch.finfo(dtype).min, as Hugging
Face models do), or dropping empty documents.
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, PAD, EMB = 100, 0, 32
POSITIVE_WORDS = torch.arange(1, 11)


def make_review():
    n = int(torch.randint(0, 20, ()))  # some reviews are empty after cleaning
    return torch.randint(1, VOCAB, (n,))


reviews = [make_review() for _ in range(1024)]
labels = [int(torch.isin(r, POSITIVE_WORDS).any()) for r in reviews]


def collate(batch):
    docs, ys = zip(*batch, strict=True)
    longest = max(1, max(len(d) for d in docs))
    tokens = torch.full((len(docs), longest), PAD)
    for i, d in enumerate(docs):
        tokens[i, :len(d)] = d
    return tokens, torch.tensor(ys)


class AttentionPoolClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMB, padding_idx=PAD)
        self.proj = nn.Linear(EMB, EMB)
        self.score = nn.Linear(EMB, 1)
        self.head = nn.Linear(EMB, 2)

    def forward(self, tokens):
        h = torch.tanh(self.proj(self.embed(tokens)))  # (batch, seq, emb)
        scores = self.score(h).squeeze(-1)  # (batch, seq)
        pad = tokens == PAD
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min if FIXED else float("-inf"))  # BUG
        weights = F.softmax(scores, dim=-1)
        pooled = (weights.unsqueeze(-1) * h).sum(dim=1)
        return self.head(pooled)


loader = DataLoader(list(zip(reviews, labels, strict=True)), batch_size=32, shuffle=True, collate_fn=collate)
model = AttentionPoolClassifier()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for epoch in range(5):
    total, correct, running = 0, 0, 0.0
    for tokens, y in loader:
        logits = model(tokens)
        loss = criterion(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item() * len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        total += len(y)
    print(f"epoch {epoch} loss {running / total:.4f} acc {correct / total:.3f}")
