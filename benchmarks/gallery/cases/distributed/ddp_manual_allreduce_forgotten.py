"""Hand-written synchronous data-parallel SGD (the "Writing Distributed Applications" recipe) that never
all-reduces the gradients.

Source: https://github.com/pytorch/examples/issues/483
Source: https://github.com/pytorch/examples/issues/1146
Expect: ddp-replicas-diverged
Run: --nproc 2

Each process seeds its model identically, trains on its own partition of the dataset and steps its
optimizer, but the `average_gradients(model)` call between `loss.backward()` and `optimizer.step()` is
missing: no gradient crosses the process group, so every rank trains a separate model on half of the
data, the replicas drift apart, and the checkpoint written by rank 0 saw only rank 0's half. The fix
is to all-reduce and average the gradients before every step (or to wrap the model in
DistributedDataParallel, which does it during backward).
"""

import os
import random
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

FIXED = "--fixed" in sys.argv
torch.set_num_threads(1)


class Partition:
    def __init__(self, data, index):
        self.data = data
        self.index = index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.data[self.index[i]]


class DataPartitioner:
    def __init__(self, data, sizes, seed=1234):
        self.data = data
        self.partitions = []
        rng = random.Random(seed)
        indexes = list(range(len(data)))
        rng.shuffle(indexes)
        for frac in sizes:
            part_len = int(frac * len(data))
            self.partitions.append(indexes[:part_len])
            indexes = indexes[part_len:]

    def use(self, partition):
        return Partition(self.data, self.partitions[partition])


def make_dataset(n=4096):
    # 10 classes of 12x12 "digits": a fixed template per class plus pixel noise
    g = torch.Generator().manual_seed(7)
    templates = torch.randn(10, 1, 12, 12, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = templates[labels] + 1.5 * torch.randn(n, 1, 12, 12, generator=g)
    return list(zip(images, labels, strict=True))


def partition_dataset():
    dataset = make_dataset()
    size = dist.get_world_size()
    bsz = 128 // size
    partition = DataPartitioner(dataset, [1.0 / size] * size).use(dist.get_rank())
    return torch.utils.data.DataLoader(partition, batch_size=bsz, shuffle=True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


def average_gradients(model):
    size = float(dist.get_world_size())
    for param in model.parameters():
        dist.all_reduce(param.grad.data, op=dist.ReduceOp.SUM)
        param.grad.data /= size


def run(rank, size):
    torch.manual_seed(1234)
    train_set = partition_dataset()
    model = Net()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    for epoch in range(4):
        epoch_loss = 0.0
        for data, target in train_set:
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            epoch_loss += loss.item()
            loss.backward()  # BUG
            if FIXED:
                average_gradients(model)
            optimizer.step()  # BUG
        print(f"Rank {rank}, epoch {epoch}: {epoch_loss / len(train_set):.4f}")
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(tempfile.gettempdir(), "partitioned_net.pt"))


if __name__ == "__main__":
    dist.init_process_group("gloo")
    run(dist.get_rank(), dist.get_world_size())
    dist.destroy_process_group()
