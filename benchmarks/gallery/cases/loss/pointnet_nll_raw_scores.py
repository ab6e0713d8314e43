"""A PointNet-style point-cloud classifier whose forward returns raw scores, trained with F.nll_loss.

Source: https://github.com/yanx27/Pointnet_Pointnet2_pytorch/issues/30
Source: https://github.com/pytorch/pytorch/pull/12703
Expect: nll-without-log-softmax

nll_loss expects log-probabilities and only computes -x[y]: on raw scores the loss has no lower bound,
goes negative and keeps falling while the wrong classes are never pushed down, so the printed loss says
nothing about accuracy. The fix is F.log_softmax at the end of forward (or F.cross_entropy on the raw
scores).
"""

import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

NUM_POINTS, NUM_CLASSES = 128, 3


def make_cloud(kind):
    """(3, NUM_POINTS) points on a sphere, the surface of a cube or a flat disk, randomly scaled."""
    if kind == 0:
        p = F.normalize(torch.randn(NUM_POINTS, 3), dim=1)
    elif kind == 1:
        p = torch.rand(NUM_POINTS, 3) * 2 - 1
        face = torch.randint(0, 3, (NUM_POINTS,))
        p[torch.arange(NUM_POINTS), face] = torch.sign(torch.randn(NUM_POINTS))
    else:
        r, a = torch.rand(NUM_POINTS).sqrt(), torch.rand(NUM_POINTS) * 2 * math.pi
        p = torch.stack([r * a.cos(), r * a.sin(), 0.05 * torch.randn(NUM_POINTS)], dim=1)
    p = p * (0.5 + torch.rand(1)) + 0.02 * torch.randn(NUM_POINTS, 3)
    return p.t()


labels = torch.randint(0, NUM_CLASSES, (600,))
points = torch.stack([make_cloud(int(k)) for k in labels])


class PointNetCls(nn.Module):
    def __init__(self, k=NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 32, 1)
        self.conv2 = nn.Conv1d(32, 64, 1)
        self.conv3 = nn.Conv1d(64, 128, 1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm1d(32), nn.BatchNorm1d(64), nn.BatchNorm1d(128)
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, k)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = torch.max(x, 2)[0]
        x = self.fc2(F.relu(self.fc1(x)))
        return F.log_softmax(x, dim=1) if FIXED else x  # BUG


classifier = PointNetCls()
optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4)
batch_size = 24
for epoch in range(3):
    perm = torch.randperm(len(labels))
    mean_correct = []
    for i in range(0, len(labels), batch_size):
        idx = perm[i:i + batch_size]
        pts, target = points[idx], labels[idx]
        classifier.train()
        pred = classifier(pts)
        loss = F.nll_loss(pred, target)  # BUG
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean_correct.append((pred.argmax(1) == target).float().mean().item())
    print(f"epoch {epoch + 1}: loss {loss.item():.4f} train acc {sum(mean_correct) / len(mean_correct):.3f}")
