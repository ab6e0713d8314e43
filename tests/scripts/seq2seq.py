"""nn.Transformer fed (batch, time, features) tensors; with "bug" it keeps batch_first=False; with
"nomask" its decoder gets no causal mask."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = "bug" in sys.argv[1:]
NOMASK = "nomask" in sys.argv[1:]
V, E, T, B = 20, 32, 8, 8


class Copy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.tf = nn.Transformer(E, 2, 1, 1, 64, dropout=0.0, batch_first=not BUG)
        self.out = nn.Linear(E, V)

    def forward(self, src, tgt):
        mask = None if NOMASK else nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        h = self.tf(self.emb(src), self.emb(tgt), tgt_mask=mask, tgt_is_causal=not NOMASK)
        return self.out(h)


model = Copy()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(20):
    src = torch.randint(1, V, (B, T))
    tgt = torch.cat([torch.zeros(B, 1, dtype=torch.long), src[:, :-1]], 1)
    logits = model(src, tgt)
    loss = F.cross_entropy(logits.reshape(-1, V), src.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
