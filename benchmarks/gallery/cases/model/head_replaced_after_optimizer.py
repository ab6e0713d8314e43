"""A CNN pretrained on one task gets a new model.fc for a second task, but the old optimizer keeps being used.

Source: https://github.com/pytorch/pytorch/issues/54765
Source: https://github.com/microsoft/nni/issues/4521
Expect: params-not-in-optimizer

The script first trains the network on a 9-class task, then swaps the classification head for a
4-class one and goes on training with the same optimizer. The optimizer only holds the parameters it
was built with, so the new head keeps its random initialisation for the whole fine-tuning: only the
backbone moves, bending its features towards a fixed random projection, so the new task is learned
more slowly and the pretrained features are overwritten. The fix is to give the optimizer the new head (or build a new optimizer after the swap).
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


class ConvNet(nn.Module):
    def __init__(self, num_classes=9):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def blob_images(n, grid):
    """Noise images with a bright square in one cell of a grid x grid layout; the label is the cell."""
    cell = 24 // grid
    labels = torch.randint(0, grid * grid, (n,))
    x = 0.5 * torch.randn(n, 1, 24, 24)
    for i, c in enumerate(labels.tolist()):
        r, col = (c // grid) * cell, (c % grid) * cell
        x[i, 0, r + 1:r + cell - 1, col + 1:col + cell - 1] += 1.5
    return x, labels


def run_epochs(model, loader, optimizer, criterion, epochs, name):
    for epoch in range(epochs):
        model.train()
        correct = total = 0
        for x, y in loader:
            out = model(x)
            loss = criterion(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        print(f"[{name}] epoch {epoch} loss {loss.item():.3f} train acc {correct / total:.3f}")


model = ConvNet(num_classes=9)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

# 1) pretraining: which of 9 cells holds the square
pretrain_loader = DataLoader(TensorDataset(*blob_images(1536, 3)), batch_size=64, shuffle=True)
run_epochs(model, pretrain_loader, optimizer, criterion, 2, "pretrain")

# 2) fine-tuning on the new task: which quadrant, 4 classes -> new head
model.fc = nn.Linear(model.fc.in_features, 4)  # BUG
if FIXED:
    optimizer.add_param_group({"params": model.fc.parameters()})
finetune_loader = DataLoader(TensorDataset(*blob_images(1536, 2)), batch_size=64, shuffle=True)
run_epochs(model, finetune_loader, optimizer, criterion, 2, "finetune")
