"""Plain SGD given an Adam fine-tuning learning rate (5e-5) to train a network from scratch.

Source: https://github.com/OpenLMLab/LOMO/issues/50
Expect: lr-too-low

5e-5 is a learning rate for Adam, which divides each step by the gradient's running scale. SGD does
not: its steps are lr x gradient, so at 5e-5 the weights of a freshly initialised network move by
about a millionth of their size per step and the loss stays where it started, epoch after epoch.
SGD on a network trained from scratch wants 1e-2..1e-1 (the maintainers' answer: raise it to 1e-3..1e-2).
"""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# synthetic tabular data: 4 classes decided by a hidden linear map of 20 features
features = torch.randn(4096, 20)
teacher = torch.randn(20, 4)
labels = (features @ teacher + 0.3 * torch.randn(4096, 4)).argmax(dim=1)
loader = DataLoader(TensorDataset(features, labels), batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Linear(20, 64),
    nn.ReLU(),
    nn.Linear(64, 64),
    nn.ReLU(),
    nn.Linear(64, 4),
)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05 if FIXED else 5e-5)  # BUG

for epoch in range(4):
    total, correct, seen = 0.0, 0, 0
    for x, y in loader:
        optimizer.zero_grad()
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    print(f"epoch {epoch}: loss {total / seen:.4f} accuracy {correct / seen:.3f}")
