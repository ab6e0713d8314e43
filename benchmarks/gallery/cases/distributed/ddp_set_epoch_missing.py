"""A DistributedSampler(shuffle=True) iterated for several epochs without sampler.set_epoch(epoch).

Source: https://github.com/pytorch/pytorch/issues/31771
Source: https://github.com/yangkky/distributed_tutorial/issues/5
Expect: ddp-set-epoch-missing
Run: --nproc 2

A news-headline classifier (EmbeddingBag, as in the text classification tutorial) is trained with DDP on
two processes. The sampler shuffles with seed + epoch, and the epoch is only changed by set_epoch: without
it every epoch visits the samples in the same order and cuts them into the same batches, so the
"shuffling" is a fixed order. Call `sampler.set_epoch(epoch)` at the start of each epoch.
"""

import random
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

FIXED = "--fixed" in sys.argv
torch.set_num_threads(1)
torch.manual_seed(0)

TOPICS = {
    "world": "president minister election border treaty embassy summit protest parliament vote",
    "sports": "match coach striker league final tournament goal season injury transfer",
    "business": "shares profit market merger investor quarter earnings bank inflation stocks",
    "science": "researchers study space telescope genome climate species vaccine physics robot",
}
COMMON = ["the", "a", "of", "in", "on", "after", "new", "says", "over", "amid", "with", "for", "to", "as", "report"]
vocab = {w: i for i, w in enumerate(sorted({w for ws in TOPICS.values() for w in ws.split()} | set(COMMON)))}


class Headlines(Dataset):
    def __init__(self, n, seed):
        rng = random.Random(seed)
        topics = list(TOPICS)
        self.rows = []
        for _ in range(n):
            label = rng.randrange(len(topics))
            other = rng.choice(topics)  # headlines often mix topics: one word from any topic
            words = rng.sample(TOPICS[topics[label]].split(), 2) + [rng.choice(TOPICS[other].split())]
            words += rng.choices(COMMON, k=rng.randint(3, 6))
            rng.shuffle(words)
            self.rows.append(([vocab[w] for w in words], label))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(batch):
    labels = torch.tensor([label for _, label in batch])
    lengths = [len(ids) for ids, _ in batch]
    text = torch.tensor([t for ids, _ in batch for t in ids])
    offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
    return labels, text, offsets


class TextClassifier(nn.Module):
    def __init__(self, vocab_size, dim, classes):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


dist.init_process_group(backend="gloo")
rank = dist.get_rank()

train_set = Headlines(3000, seed=7)
sampler = DistributedSampler(train_set, shuffle=True, seed=42)
loader = DataLoader(train_set, batch_size=32, sampler=sampler, collate_fn=collate)

model = DistributedDataParallel(TextClassifier(len(vocab), 32, len(TOPICS)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

for epoch in range(5):  # BUG
    if FIXED:
        sampler.set_epoch(epoch)
    total, count = 0.0, 0
    for labels, text, offsets in loader:  # BUG
        optimizer.zero_grad()
        loss = F.cross_entropy(model(text, offsets), labels)
        loss.backward()
        optimizer.step()
        total += loss.item()
        count += 1
    if rank == 0:
        print(f"epoch {epoch + 1} | train loss {total / count:.4f}")

dist.destroy_process_group()
