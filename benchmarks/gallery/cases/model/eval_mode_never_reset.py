"""The PyTorch quickstart loop with Dropout and BatchNorm added: test() calls model.eval() and train() never calls model.train().

Source: https://github.com/pytorch/tutorials/issues/1624
Source: https://github.com/shubhamagarwal92/mmd/issues/14
Expect: train-mode-off

The first epoch trains in train mode; from the first call to test() on, the model stays in eval
mode, so every later epoch trains with dropout switched off and BatchNorm normalising with running
statistics it no longer updates. Nothing crashes: the training loss plunges while the test loss stops
improving, since the regularisation the model was designed with is gone after epoch 1.
The fix is model.train() at the start of train().
"""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


def make_dataset(n, prototypes):
    """FashionMNIST-sized stand-in: each class is a fixed 28x28 pattern seen through heavy noise."""
    y = torch.randint(0, 10, (n,))
    x = prototypes[y] + 3.0 * torch.randn(n, 1, 28, 28)
    return TensorDataset(x, y)


prototypes = torch.rand(10, 1, 28, 28)
train_dataloader = DataLoader(make_dataset(4096, prototypes), batch_size=64, shuffle=True)
test_dataloader = DataLoader(make_dataset(1024, prototypes), batch_size=64)


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


model = NeuralNetwork()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)


def train(dataloader, model, loss_fn, optimizer):
    size = len(dataloader.dataset)
    if FIXED:
        model.train()  # BUG
    for batch, (X, y) in enumerate(dataloader):
        pred = model(X)
        loss = loss_fn(pred, y)

        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

        if batch % 32 == 0:
            loss, current = loss.item(), (batch + 1) * len(X)
            print(f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]")


def test(dataloader, model, loss_fn):
    size = len(dataloader.dataset)
    num_batches = len(dataloader)
    model.eval()
    test_loss, correct = 0, 0
    with torch.no_grad():
        for X, y in dataloader:
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
    test_loss /= num_batches
    correct /= size
    print(f"Test Error: \n Accuracy: {(100 * correct):>0.1f}%, Avg loss: {test_loss:>8f} \n")


epochs = 3
for t in range(epochs):
    print(f"Epoch {t + 1}\n-------------------------------")
    train(train_dataloader, model, loss_fn, optimizer)
    test(test_dataloader, model, loss_fn)
print("Done!")
