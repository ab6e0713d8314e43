"""A model that takes the log of a value that can be negative: the loss turns NaN and the script stops."""

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)


class LogNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.log(self.body(x)))  # log of a negative activation: NaN


model = LogNet()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(10):
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    loss = F.cross_entropy(model(x), y)
    if torch.isnan(loss):
        raise RuntimeError(f"loss is nan at step {step}")
    loss.backward()
    opt.step()
    opt.zero_grad()
