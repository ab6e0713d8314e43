"""An autoencoder wrapped in DistributedDataParallel but trained through model.module(x).

Source: https://github.com/rosinality/swapping-autoencoder-pytorch/issues/22
Expect: ddp-wrapper-bypassed
Run: --nproc 2

The script wraps its autoencoder in DDP, then calls `model.module.encoder` and `model.module.decoder` in the
training loop (the submodules were needed separately). DDP's forward never runs, so its reducer expects no
gradients and averages none: each rank steps on the gradient of its own shard only, the replicas drift
apart, and the checkpoint saved from rank 0 is one rank's model. Call the wrapper (`model(x)`) in the loop
and use `model.module` only for saving or evaluation.
"""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

FIXED = "--fixed" in sys.argv
torch.set_num_threads(1)


class AutoEncoder(nn.Module):
    def __init__(self, dim=32, code=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, code))
        self.decoder = nn.Sequential(nn.Linear(code, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x):
        return self.decoder(self.encoder(x))


dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)

# 32-dimensional signals that live near a 4-dimensional subspace
g = torch.Generator().manual_seed(3)
basis = torch.randn(4, 32, generator=g)
signals = torch.randn(4096, 4, generator=g) @ basis + 0.05 * torch.randn(4096, 32, generator=g)
dataset = TensorDataset(signals)
sampler = DistributedSampler(dataset, shuffle=True)
loader = DataLoader(dataset, batch_size=64, sampler=sampler)

model = DDP(AutoEncoder())
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
mse = nn.MSELoss()

for epoch in range(3):
    sampler.set_epoch(epoch)
    for step, (x,) in enumerate(loader):
        recon = model(x) if FIXED else model.module.decoder(model.module.encoder(x))  # BUG
        loss = mse(recon, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and step % 16 == 0:
            print(f"epoch {epoch} step {step:3d} reconstruction loss {loss.item():.4f}")

if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(tempfile.gettempdir(), "autoencoder.pt"))
dist.destroy_process_group()
