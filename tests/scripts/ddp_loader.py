"""Two processes (torchrun, gloo) training a DistributedDataParallel classifier from a DataLoader.

``--bug`` puts in one real mistake; without it the script is the healthy twin:
  same-data   the DataLoader shuffles with a seed every rank shares and has no DistributedSampler
  no-set-epoch  the DistributedSampler's set_epoch is never called
  raw-module  the loop calls the module inside DDP, so gradients are never averaged
  unused      a layer the forward never uses, with find_unused_parameters left False
  no-ddp      the model is not wrapped in DDP at all: each rank trains its own copy
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--bug", default=None)
parser.add_argument("--epochs", type=int, default=2)
bug = parser.parse_args().bug

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)  # the same initial weights and the same shuffling seed on every rank

g = torch.Generator().manual_seed(123)
x = torch.randn(512, 16, generator=g)
y = (x[:, 0] + x[:, 1] > 0).long()
dataset = TensorDataset(x, y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
        self.spare = nn.Linear(32, 2) if bug == "unused" else None

    def forward(self, x):
        return self.body(x)


net = Net()
model = net if bug == "no-ddp" else DDP(net)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if bug == "same-data":
    sampler = None
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
else:
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)

for epoch in range(parser.parse_args().epochs):
    if sampler is not None and bug != "no-set-epoch":
        sampler.set_epoch(epoch)
    for xb, yb in loader:
        logits = model.module(xb) if bug == "raw-module" else model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
if rank == 0:
    print("done", round(loss.item(), 6))
dist.destroy_process_group()
