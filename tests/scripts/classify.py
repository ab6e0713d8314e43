"""A hand-written classification loop; options put one real bug in (the test names which)."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
BUGS = set(sys.argv[1:])
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(256, 16)
y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
if "label" in BUGS:
    y[7] = 4  # a label outside the model's 4 classes
if "eval" in BUGS:
    model.eval()  # trained in eval mode from the start (never model.train())
for step in range(40):
    i = torch.arange(32) + (step * 32) % 224
    logits = model(x[i])
    loss = F.cross_entropy(logits, y[i])
    loss.backward()
    opt.step()
    if "nozero" not in BUGS:
        opt.zero_grad()
    if "exit" in BUGS and step == 5:
        sys.exit(3)
print(f"done {loss.item():.3f}")
