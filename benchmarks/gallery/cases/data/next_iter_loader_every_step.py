"""An iteration-based loop that calls next(iter(train_loader)) every step: the same first batch each time.

Source: https://github.com/leohsuofnthu/Pytorch-IterativeFCN/issues/7
Source: https://github.com/skhu101/GM-NAS/issues/4
Expect: repeated-batch

`iter(train_loader)` builds a fresh iterator, and `next` takes its first batch; with shuffle=False that is
the same 32 samples at every iteration. The training loss falls to ~0 on them while the accuracy on held-
out data stays poor: the model memorises one batch. The fix is to create the iterator once and advance it
(re-creating it when an epoch ends); shuffle=True would at least draw a new random batch every time.
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# 10-class data: a noisy linear teacher on 32 features
teacher = torch.randn(32, 10)
x_all = torch.randn(3000, 32)
y_all = (x_all @ teacher + 0.5 * torch.randn(3000, 10)).argmax(dim=1)
train_set = TensorDataset(x_all[:2500], y_all[:2500])
x_val, y_val = x_all[2500:], y_all[2500:]

train_loader = DataLoader(train_set, batch_size=32, shuffle=False)  # BUG
model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

loader_iter = iter(train_loader)
for it in range(300):
    if FIXED:
        try:
            inputs, target = next(loader_iter)
        except StopIteration:
            loader_iter = iter(train_loader)
            inputs, target = next(loader_iter)
    else:
        inputs, target = next(iter(train_loader))  # BUG
    output = model(inputs)
    loss = criterion(output, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if it % 50 == 0 or it == 299:
        with torch.no_grad():
            val_acc = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
        print(f"iter {it}: train loss {loss.item():.3f}, val acc {val_acc:.2f}")
