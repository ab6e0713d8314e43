"""DDP training whose DataLoader shuffles with a seed all ranks share and has no DistributedSampler.

Source: https://github.com/PatrickHua/SimSiam/issues/16
Source: https://github.com/clovaai/voxceleb_trainer/issues/98
Expect: ddp-same-data
Run: --nproc 2

The script seeds every process with the same torch.manual_seed (for reproducibility) and builds a plain
`DataLoader(..., shuffle=True)`. Every rank then draws the same permutation and trains on the same
batches: N processes do the work of one, each epoch covers the dataset once per rank instead of once in
total, and the gradients DDP averages are N copies of the same gradient. Give each rank its own shard
with `DistributedSampler(dataset)` (and `sampler.set_epoch(epoch)`).
"""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

FIXED = "--fixed" in sys.argv
torch.set_num_threads(1)


def setup():
    dist.init_process_group("gloo")
    return dist.get_rank()


def make_dataset(n=2048):
    """Tabular customer data: churn depends on tenure, monthly charge and support calls."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 12, generator=g)
    score = 1.5 * x[:, 0] - x[:, 1] + 0.8 * x[:, 2] * x[:, 3] + 0.3 * torch.randn(n, generator=g)
    y = (score > 0).long()
    return TensorDataset(x, y)


def main():
    rank = setup()
    torch.manual_seed(0)  # same init everywhere, reproducible shuffling

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True) if FIXED else None  # BUG
    loader = DataLoader(dataset, batch_size=64, shuffle=sampler is None, sampler=sampler)  # BUG

    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    model = DDP(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    for epoch in range(4):
        if sampler is not None:
            sampler.set_epoch(epoch)
        running, seen = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(y)
            seen += len(y)
        if rank == 0:
            print(f"epoch {epoch}: {seen} samples on rank 0, loss {running / seen:.3f}")

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
