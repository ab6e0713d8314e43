"""A DLRM-style recommender whose MLP biases are drawn from N(0, 1/m): the 1-unit top ReLU starts dead.

Source: https://github.com/facebookresearch/dlrm/pull/358
Source: https://github.com/pytorch/benchmark/pull/1927
Expect: stalled-layers|no-grad-params

DLRM's create_mlp draws every bias from a normal with std sqrt(1/m), m the layer's width; for the
1-unit output layer that is std 1. Here the draw is negative and large next to w.h, so the ReLU on top
outputs 0 for every sample and passes back an all-zero gradient: no weight of the model ever moves and
the MSE loss stays where it started. The fix (the PR above) is to initialise the biases to zero.
"""

import sys

import numpy as np
import torch
import torch.nn as nn

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
np.random.seed(67)


def create_mlp(ln, sigmoid_layer=-1):
    layers = nn.ModuleList()
    for i in range(len(ln) - 1):
        n, m = ln[i], ln[i + 1]
        LL = nn.Linear(n, m, bias=True)
        # custom Xavier fill, as in dlrm_s_pytorch.py
        std_dev = np.sqrt(2 / (m + n))
        W = np.random.normal(0.0, std_dev, size=(m, n)).astype(np.float32)
        std_dev = np.sqrt(1 / m)
        bt = np.random.normal(0.0, std_dev, size=m).astype(np.float32)  # BUG
        if FIXED:
            bt = np.zeros(m, dtype=np.float32)
        LL.weight.data = torch.tensor(W, requires_grad=True)
        LL.bias.data = torch.tensor(bt, requires_grad=True)
        layers.append(LL)
        layers.append(nn.Sigmoid() if i == sigmoid_layer else nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(self, n_dense=13, cardinalities=(100, 50), dim=16):
        super().__init__()
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(c, dim, mode="sum") for c in cardinalities)
        self.bot_l = create_mlp([n_dense, 64, dim])
        self.top_l = create_mlp([dim * (1 + len(cardinalities)), 32, 1])

    def forward(self, dense, sparse):
        x = self.bot_l(dense)
        ly = [emb(sparse[:, k:k + 1]) for k, emb in enumerate(self.emb_l)]
        return self.top_l(torch.cat([x] + ly, dim=1)).squeeze(1)


# synthetic click-through data: the click rate depends on a dense feature and the first categorical one
N = 4096
dense = torch.randn(N, 13)
sparse = torch.stack([torch.randint(0, 100, (N,)), torch.randint(0, 50, (N,))], dim=1)
item_effect = torch.rand(100)
ctr = torch.sigmoid(2 * dense[:, 0] + 3 * (item_effect[sparse[:, 0]] - 0.5))

model = DLRM()
loss_fn = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(150):
    idx = torch.randint(0, N, (128,))
    pred = model(dense[idx], sparse[idx])
    loss = loss_fn(pred, ctr[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 15 == 0:
        print(f"step {step} loss {loss.item():.4f}")
