"""A tabular regression MLP trained with SGD + momentum at lr=0.1: the loss blows up to inf mid-run.

Source: https://github.com/guillaumegenthial/sequence_tagging/issues/47
Source: https://github.com/NVIDIA/retinanet-examples/issues/35
Source: https://github.com/google-research/tuning_playbook
Expect: divergence|loss-spike

For some thirty steps the loss only bounces around its starting value, then the momentum steps start to
overshoot: the loss jumps to thousands, to 1e9, to inf, and the weights are NaN from step ~40 on. The
LR is past what the loss surface allows (no warmup either). The fix is a smaller LR (0.01 here, where the
loss falls from 4.4 to 0.5), or a warmup to a lower peak; the healthy twin only changes the LR.
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# standardised features, a target that is mostly linear with a wiggle
X = torch.randn(4096, 16)
w = torch.randn(16)
y = (X @ w + torch.sin(3 * X[:, 0]) + 0.1 * torch.randn(4096)).unsqueeze(1)
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x)


model = Regressor()
criterion = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01 if FIXED else 0.1, momentum=0.9)  # BUG
step = 0
for epoch in range(4):
    for xb, yb in loader:
        loss = criterion(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"epoch {epoch} step {step} loss {loss.item():.4f}")
        step += 1
