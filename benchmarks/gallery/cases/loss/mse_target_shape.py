"""Linear regression with nn.MSELoss on a (N, 1) prediction and a (N,) target.

Source: https://github.com/pytorch/pytorch/issues/16045
Source: https://github.com/pytorch/pytorch/issues/16413
Source: https://github.com/fastai/fastai/issues/1863
Expect: loss-broadcast

nn.Linear(2, 1) returns (batch, 1) while the targets are (batch,): the loss broadcasts them to
(batch, batch) and scores every prediction against every target, so the model only learns the mean
of y and the loss stalls far above the noise level of this convex problem (torch merely warns). The
fix is to give both the same shape, here y.reshape(-1, 1).
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# Set up straightforward linear regression problem.
sample_size = 1000
x = torch.randn((sample_size, 2))
eps = torch.randn(sample_size)
y = 10 + 9 * x[:, 0] - 2 * x[:, 1] + eps  # BUG
if FIXED:
    y = y.reshape(sample_size, 1)
loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True)

model = nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_func = nn.MSELoss()
for epoch in range(8):
    for xb, yb in loader:
        optimizer.zero_grad()
        yhat = model(xb)
        loss_val = loss_func(yhat, yb)  # BUG
        loss_val.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss_val.item():.4f}")

print(model.weight.data)
print(model.bias.data)
