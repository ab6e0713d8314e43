"""A binary focal loss written with torch.log(p) and torch.log(1 - p) on sigmoid outputs: NaN once p saturates.

Source: https://github.com/yhenon/pytorch-retinanet/issues/3
Source: https://github.com/mathiaszinnen/focal_loss_torch/issues/3
Source: https://github.com/NVIDIA/apex/issues/358
Expect: nan-loss

In float32, sigmoid(x) rounds to exactly 1.0 once x > ~17. As the classifier grows confident, a positive
sample's logit passes 17: log(1 - p) = -inf in the branch torch.where does not select, and its gradient,
0 * inf, is NaN. Adam writes NaN into every weight a few epochs in; the loss prints nan from then on. The fix (what pytorch-retinanet does) is to
clamp p to [1e-4, 1 - 1e-4] before the logs (or to compute the loss from the logits with logsigmoid /
binary_cross_entropy_with_logits).
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    if FIXED:
        p = p.clamp(1e-4, 1.0 - 1e-4)
    pos = -alpha * (1 - p) ** gamma * torch.log(p)  # BUG
    neg = -(1 - alpha) * p ** gamma * torch.log(1 - p)  # BUG
    return torch.where(targets == 1, pos, neg).mean()


class Classifier(nn.Module):
    def __init__(self, n_in=20, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.out(x).squeeze(-1)


# synthetic data: the label is a linear rule of the features
X = torch.randn(2048, 20) * 2
w_true = torch.randn(20)
y = (X @ w_true > 0).float()
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

model = Classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
step = 0
for epoch in range(6):
    for xb, yb in loader:
        loss = focal_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 20 == 0 or step == 1:
            print(f"epoch {epoch} step {step} loss {loss.item():.4f}")
