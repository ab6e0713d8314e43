"""An epoch-based StepLR(step_size=epochs // 2, gamma=0.1) stepped after every batch instead of every epoch.

Source: https://github.com/Lornatang/SRGAN-PyTorch/issues/1
Source: https://github.com/ivadomed/ivadomed/pull/55
Expect: scheduler-misuse

The schedule was meant to divide the LR by 10 halfway through training. Called once per batch, it
divides it by 10 every five batches instead: after a few dozen steps the LR is ~1e-10 and the
network stops learning for the rest of the run. The fix is to call scheduler.step() once per epoch,
after the batch loop.
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


def make_images(n):
    """16x16 noisy images of a horizontal bar, a vertical bar or a diagonal, at a random place."""
    images = 0.3 * torch.randn(n, 1, 16, 16)
    labels = torch.randint(0, 3, (n,))
    for i in range(n):
        r, c = torch.randint(2, 14, (2,)).tolist()
        if labels[i] == 0:
            images[i, 0, r, c - 2:c + 2] += 2.0
        elif labels[i] == 1:
            images[i, 0, r - 2:r + 2, c] += 2.0
        else:
            for d in range(-2, 2):
                images[i, 0, r + d, c + d] += 2.0
    return images, labels


class SmallCNN(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


train_loader = DataLoader(TensorDataset(*make_images(1024)), batch_size=64, shuffle=True)
model = SmallCNN()
epochs = 10
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=epochs // 2, gamma=0.1)

for epoch in range(epochs):
    running = 0.0
    for images, labels in train_loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if not FIXED:
            scheduler.step()  # BUG
        running += loss.item()
    if FIXED:
        scheduler.step()
    print(f"epoch {epoch} lr {scheduler.get_last_lr()[0]:.2e} loss {running / len(train_loader):.4f}")
