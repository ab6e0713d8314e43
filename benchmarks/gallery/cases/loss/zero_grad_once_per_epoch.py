"""A CNN image classifier whose train() calls optimizer.zero_grad() once per epoch, before the batch loop.

Source: https://github.com/heartcored98/Standalone-DeepLearning/issues/11
Source: https://github.com/pytorch/pytorch/issues/47175
Expect: missing-zero-grad

The gradients are reset at the start of each epoch only, so within an epoch every step applies the
running sum of all the batches' gradients so far: with SGD + momentum the steps grow with the batch
index, the loss swings and the network learns far less than it should. The fix moves
optimizer.zero_grad() into the batch loop.
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


def make_images(n, n_classes=4, size=16):
    """Noisy 3x16x16 images; each class is a colour pattern (stripes or blobs) at a random place."""
    labels = torch.randint(0, n_classes, (n,))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.randn(n, 3, size, size)
    for i, c in enumerate(labels.tolist()):
        cx, cy = torch.randint(4, size - 4, (2,)).tolist()
        blob = (((xx - cx) ** 2 + (yy - cy) ** 2) < 10).float()
        stripes = ((xx + yy + cx) % 4 < 2).float() * blob
        pattern = blob if c % 2 == 0 else stripes
        images[i, c // 2] += 1.5 * pattern
        images[i, 2] += 0.5 * pattern if c >= 2 else -0.5 * pattern
    return images, labels


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def train(net, trainloader, optimizer, criterion):
    net.train()
    correct, total, train_loss = 0, 0, 0.0
    optimizer.zero_grad()  # BUG
    for inputs, labels in trainloader:
        if FIXED:
            optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()  # BUG
        optimizer.step()  # BUG
        train_loss += loss.item()
        total += labels.size(0)
        correct += (outputs.argmax(1) == labels).sum().item()
    return train_loss / len(trainloader), 100 * correct / total


def test(net, testloader):
    net.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for inputs, labels in testloader:
            correct += (net(inputs).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return 100 * correct / total


train_x, train_y = make_images(1600)
test_x, test_y = make_images(400)
trainloader = DataLoader(TensorDataset(train_x, train_y), batch_size=32, shuffle=True)
testloader = DataLoader(TensorDataset(test_x, test_y), batch_size=100)

net = CNN()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
for epoch in range(4):
    train_loss, train_acc = train(net, trainloader, optimizer, criterion)
    test_acc = test(net, testloader)
    print(f"Epoch {epoch}, Loss(train) {train_loss:.3f}, Acc(train/test) {train_acc:.1f}/{test_acc:.1f}")
