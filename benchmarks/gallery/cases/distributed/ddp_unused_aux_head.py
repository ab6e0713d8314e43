"""A CNN with an auxiliary head that forward() skips in training, under DDP without find_unused_parameters.

Source: https://github.com/ImprintLab/MedSegDiff/issues/27
Source: https://github.com/pytorch/pytorch/issues/43259
Expect: ddp-unused-parameters
Run: --nproc 2

The model keeps an auxiliary classifier (deep supervision, switched off by default) that the forward only
runs when `aux=True`. Its parameters require grad but take no part in the loss, so DDP's reducer waits
for their gradients forever: the second iteration stops with 'RuntimeError: Expected to have finished
reduction in the prior iteration before starting a new one'. Pass `find_unused_parameters=True` to DDP,
or drop / freeze the auxiliary head when it is not used.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

FIXED = "--fixed" in sys.argv
torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv1d(2, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2))
        self.block2 = nn.Sequential(nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, classes)
        self.aux_head = nn.Linear(16, classes)  # BUG

    def forward(self, x, aux=False):
        h1 = self.block1(x)
        out = self.head(self.block2(h1).mean(dim=-1))
        if aux:
            return out, self.aux_head(h1.mean(dim=-1))
        return out


def sensor_windows(n, seed):
    """Two-channel accelerometer windows: still, walking (slow wave) or running (fast wave)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.linspace(0, 1, 64)
    freq = torch.tensor([0.0, 3.0, 9.0])[y].unsqueeze(1)
    phase = 6.28 * torch.rand(n, 1, generator=g)
    wave = torch.sin(6.28 * freq * t + phase)
    x = torch.stack([wave, torch.roll(wave, 4, dims=1)], dim=1) + 0.4 * torch.randn(n, 2, 64, generator=g)
    return x, y


dist.init_process_group(backend="gloo")
rank = dist.get_rank()
torch.manual_seed(0)

x, y = sensor_windows(2048, seed=5)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset)
loader = DataLoader(dataset, batch_size=32, sampler=sampler)

model = DistributedDataParallel(Net(), find_unused_parameters=FIXED)  # BUG
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(3):
    sampler.set_epoch(epoch)
    model.train()
    for i, (xb, yb) in enumerate(loader):
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and i % 10 == 0:
            print(f"epoch {epoch} it {i} loss {loss.item():.4f}")

dist.destroy_process_group()
