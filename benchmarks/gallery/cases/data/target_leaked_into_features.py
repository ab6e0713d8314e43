"""A tabular loan-default classifier whose feature matrix still holds the target column.

Source: https://github.com/vinayakumarr/Kalasalingam/issues/2
Source: https://github.com/neurodata/SPORF/issues/355
Source: https://github.com/dotnet/machinelearning/issues/737
Expect: loss-collapse

The features are built with `df.drop(columns=["customer_id"])`, which drops the id but keeps the
`defaulted` column that is also the label: one input is the answer. The MLP finds it within a few
hundred steps, the training loss falls to ~0 on batches it never saw and the accuracy is ~100%; on real
applicants, whose outcome is unknown when the model runs, it is useless. The fix is to drop the target
from the features too (`df.drop(columns=["customer_id", "defaulted"])`).
"""

import sys

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# a synthetic credit table: default risk grows with debt ratio and late payments, falls with income
rng = np.random.default_rng(0)
n = 20_000
df = pd.DataFrame({
    "customer_id": np.arange(n),
    "age": rng.integers(21, 70, n),
    "income": rng.lognormal(10.5, 0.5, n).round(-2),
    "debt_ratio": rng.beta(2, 5, n),
    "late_payments": rng.poisson(1.0, n),
    "credit_lines": rng.integers(1, 12, n),
})
score = (12 * df.debt_ratio + 2.5 * df.late_payments - 4 * np.log(df.income / 36_000)
         - 0.06 * (df.age - 45) - 6.5)
df["defaulted"] = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(int)
print(df.head())
print("default rate", df.defaulted.mean().round(3))

feature_cols = df.drop(columns=["customer_id", "defaulted"] if FIXED else ["customer_id"])  # BUG
X = feature_cols.values.astype(np.float32)
X = (X - X.mean(axis=0)) / X.std(axis=0)
y = df["defaulted"].values

split = int(0.8 * n)
train_ds = TensorDataset(torch.tensor(X[:split]), torch.tensor(y[:split]))
val_X, val_y = torch.tensor(X[split:]), torch.tensor(y[split:])
train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Linear(X.shape[1], 64), nn.ReLU(),
    nn.Linear(64, 64), nn.ReLU(),
    nn.Linear(64, 2),
)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(2):
    model.train()
    for i, (xb, yb) in enumerate(train_loader):
        loss = criterion(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i % 100 == 0:
            print(f"epoch {epoch} batch {i:3d} loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        acc = (model(val_X).argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} validation accuracy {acc:.3f}")
