"""An nn.Sequential classifier that ends in nn.Softmax, trained with nn.CrossEntropyLoss.

Source: https://github.com/vinhkhuc/PyTorch-Mini-Tutorials/issues/1
Source: https://github.com/IBM/dstc-noesis/issues/18
Source: https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814/16
Expect: double-softmax

CrossEntropyLoss applies log_softmax itself, so the loss sees the softmax of probabilities: every
prediction is squashed towards uniform, the gradients shrink and the loss creeps down from ln(10) far
more slowly than it should. The fix is to drop the final nn.Softmax and give the loss raw logits
(apply softmax only when predicting).
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

n_features, n_classes = 20, 10
X = torch.randn(2048, n_features)
teacher = torch.randn(n_features, n_classes)
Y = (X @ teacher).argmax(dim=1)
loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Linear(n_features, 128),
    nn.ReLU(),
    nn.Linear(128, 64),
    nn.ReLU(),
    nn.Linear(64, n_classes),
    nn.Identity() if FIXED else nn.Softmax(dim=1),  # BUG
)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

for epoch in range(5):
    total, correct, running = 0, 0, 0.0
    for inputs, labels in loader:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(labels)
        correct += (outputs.argmax(dim=1) == labels).sum().item()
        total += len(labels)
    print(f"epoch {epoch + 1}: loss {running / total:.4f} acc {correct / total:.3f}")
