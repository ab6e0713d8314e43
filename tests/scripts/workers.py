"""A classification loop whose DataLoader reads a map-style Dataset (defined in this script) with 2 worker
processes; with "spawn" the workers are started by spawning (as on macOS and Windows), not forking.
Healthy either way."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class Points(Dataset):
    def __init__(self, n=256):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 16, generator=g)
        self.y = (self.x[:, 0] > 0).long() + 2 * (self.x[:, 1] > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(Points(), batch_size=32, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(2),
                        multiprocessing_context="spawn" if "spawn" in sys.argv[1:] else None)
    for _ in range(3):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"done {loss.item():.3f}")
