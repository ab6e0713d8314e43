"""A loop that computes its loss with a loss module (`criterion = nn.NLLLoss() if BUG == "nll" else nn.CrossEntropyLoss()`), called after
the model, as most tutorials write it. Healthy by default; "softmax" ends the model with nn.Softmax
(the loss then applies softmax twice); "label" puts a label outside the model's 4 classes; "nll"
uses nn.NLLLoss on the raw logits (no log_softmax); "step-first" calls optimizer.step() before the
forward and backward of each iteration (so the first step comes before any model call); "no-grad"
calls the model under torch.no_grad() (loss.backward() then fails)."""

import sys

import torch
import torch.nn as nn

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = sys.argv[1] if len(sys.argv) > 1 else None
x = torch.randn(512, 16)
y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
if BUG == "label":
    y[100] = 4
layers = [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)]
model = nn.Sequential(*layers, nn.Softmax(dim=-1)) if BUG == "softmax" else nn.Sequential(*layers)
criterion = nn.NLLLoss() if BUG == "nll" else nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(3):
    for i in range(0, 512, 32):
        if BUG == "step-first":
            optimizer.zero_grad()
            optimizer.step()
        if BUG == "no-grad":
            with torch.no_grad():
                outputs = model(x[i:i + 32])
        else:
            outputs = model(x[i:i + 32])
        loss = criterion(outputs, y[i:i + 32])
        if BUG != "step-first":
            optimizer.zero_grad()
        loss.backward()
        if BUG != "step-first":
            optimizer.step()
print(f"done {loss.item():.3f}")
