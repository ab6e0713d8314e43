"""A hand-written loop over a DataLoader training a small classifier, with a linear warmup over its first
30 steps. Healthy by default; with "detach" the forward detaches the features before the head's input,
so the body gets no gradient and the head alone cannot fit the labels; with "nodata" the loop slices
tensors itself (no DataLoader); with "sched-epoch" the per-step warmup is stepped once per epoch, so
the LR stays near 0."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = sys.argv[1] if len(sys.argv) > 1 else None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        h = self.body(x)
        return self.head(h.detach() * 0) if BUG == "detach" else self.head(h)


g = torch.Generator().manual_seed(1)
x = torch.randn(512, 16, generator=g)
y = ((x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 30))
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
for _epoch in range(3):
    batches = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 512, 32)) if BUG == "nodata" else loader
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if BUG != "sched-epoch":
            sched.step()
    if BUG == "sched-epoch":
        sched.step()
print("done", round(loss.item(), 4))
