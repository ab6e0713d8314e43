"""Accelerate fine-tuning loop whose new classifier head is swapped in after the optimizer was built.

Source: https://github.com/microsoft/nni/issues/4521
Source: https://github.com/ACEsuit/mace/issues/525
Expect: params-not-in-optimizer

A small CNN written for a 10-class tutorial is reused for a 4-class task: the script builds its AdamW
over model.parameters() first and only then replaces model.fc with a fresh nn.Linear(.., 4). The optimizer
still holds the old head's tensors, so the new head keeps its random weights for the whole run; the body
bends itself around a random head and the loss falls much more slowly than the twin's. Build the
optimizer after the model is complete (or add the head with optimizer.add_param_group).
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def make_images(n, seed):
    """Noisy 12x12 images with a 6x6 patch somewhere: horizontal or vertical stripes, a checkerboard or a
    solid square (the 4 classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    ii, jj = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    patterns = torch.stack([(ii % 2 == 0), (jj % 2 == 0), ((ii + jj) % 2 == 0), torch.ones(6, 6, dtype=bool)])
    x = 0.5 * torch.randn(n, 1, 12, 12, generator=g)
    corners = torch.randint(0, 7, (n, 2), generator=g)
    for k in range(n):
        r, c = corners[k].tolist()
        x[k, 0, r:r + 6, c:c + 6] += patterns[y[k]].float()
    return x, y


accelerator = Accelerator(cpu=True)

# the CIFAR-style network from the tutorial, adapted to our 4 classes by swapping its head
model = SmallCNN()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)  # BUG
model.fc = nn.Linear(32, 4)  # BUG
if FIXED:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

xt, yt = make_images(768, seed=2)
loader = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

model.train()
for epoch in range(6):
    total = 0.0
    for images, labels in loader:
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        total += loss.item()
    accelerator.print(f"epoch {epoch} loss {total / len(loader):.3f}")
