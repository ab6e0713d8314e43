"""A binary classifier trained with plain cross-entropy on data that is 95% one class: it predicts the majority.

Source: https://github.com/abhuse/polyloss-pytorch/issues/5
Source: https://github.com/amanshenoy/multilogue-net/issues/8
Expect: class-imbalance

Only 5% of the transactions are positive. Always answering "negative" already gives 95% accuracy and a low
loss, so the network settles there: the accuracy looks fine and the recall of the rare class, the one that
matters, stays near zero. The fix is to weight the rare class in the loss
(`nn.CrossEntropyLoss(weight=...)`) or to balance the batches with a WeightedRandomSampler.
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# 4000 transactions, 16 features; the 5% frauds are shifted a little along a few features
n, n_fraud = 4000, 200
X = torch.randn(n, 16)
y = torch.zeros(n, dtype=torch.long)
y[:n_fraud] = 1
X[:n_fraud, :4] += 1.0
perm = torch.randperm(n)
X, y = X[perm], y[perm]
X_train, y_train, X_test, y_test = X[:3000], y[:3000], X[3000:], y[3000:]

train_loader = DataLoader(TensorDataset(X_train, y_train), batch_size=64, shuffle=True)  # BUG


class FraudNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


model = FraudNet()
counts = torch.bincount(y_train, minlength=2).float()
class_weights = counts.sum() / (2 * counts)
criterion = nn.CrossEntropyLoss(weight=class_weights if FIXED else None)  # BUG
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(6):
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = model(X_test).argmax(dim=1)
    acc = (pred == y_test).float().mean().item()
    recall = (pred[y_test == 1] == 1).float().mean().item()
    print(f"epoch {epoch}: loss {loss.item():.3f}, test accuracy {acc:.3f}, fraud recall {recall:.2f}")
