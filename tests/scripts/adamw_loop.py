"""A plain loop with AdamW (whose default weight decay also hits the biases: a doctor's hint at the
optimizer line); with "nozero" the loop never calls `opt.zero_grad()` (the monitor's error, at the
`opt.step()` line). Two findings from two sources, each with its own line."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = "nozero" in sys.argv[1:]
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(256, 16)
y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
for step in range(20):
    i = torch.arange(32) + (step * 32) % 224
    loss = F.cross_entropy(model(x[i]), y[i])
    loss.backward()
    opt.step()
    if not BUG:
        opt.zero_grad()
print(f"done {loss.item():.3f}")
