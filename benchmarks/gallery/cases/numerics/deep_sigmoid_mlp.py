"""A 10-hidden-layer MLP with sigmoid activations and no normalisation: the first layers get no gradient.

Source: https://github.com/torch/torch7/issues/1092
Source: https://github.com/microsoft/CNTK/issues/476
Expect: vanishing-gradients

Each sigmoid multiplies the backpropagated gradient by at most 0.25, and the default init shrinks it
further: ten layers down, the gradient reaching the first layers is ~1e-6 of the last layer's, so they
keep their random weights, the network cannot represent the XOR-like rule and the loss sits near ln 2.
The fix is a non-saturating activation with an init scaled for it (ReLU + Kaiming), or residual
connections / normalisation layers.
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# XOR-like rule on two of ten features
X = torch.randn(4096, 10)
y = ((X[:, 0] * X[:, 1]) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=128, shuffle=True)

Activation = nn.ReLU if FIXED else nn.Sigmoid  # BUG
layers, width = [], 10
for _ in range(10):
    layers += [nn.Linear(width, 64), Activation()]
    width = 64
model = nn.Sequential(*layers, nn.Linear(64, 2))
if FIXED:
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # BUG
            nn.init.zeros_(m.bias)

criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(6):
    total, correct, running = 0, 0, 0.0
    for xb, yb in loader:
        out = model(xb)
        loss = criterion(out, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item() * len(yb)
        correct += (out.argmax(1) == yb).sum().item()
        total += len(yb)
    print(f"epoch {epoch} loss {running / total:.4f} acc {correct / total:.3f}")
