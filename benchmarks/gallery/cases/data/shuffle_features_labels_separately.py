"""Features and labels shuffled with two separate np.random.shuffle calls: the labels no longer match the inputs.

Source: https://github.com/mlcommons/GaNDLF/pull/870
Source: https://github.com/DrexelChatbotGroup/DrexelChatbot/issues/15
Expect: loss-at-chance

Each `np.random.shuffle` call draws its own permutation, so after shuffling X and y separately every sample
carries a random label. Nothing crashes, the Lightning run looks normal, but the loss sits at ln 4 = 1.386
(uniform guessing over the 4 classes) and the accuracy at 25%. The fix is one permutation applied to
both arrays: `perm = np.random.permutation(len(X)); X, y = X[perm], y[perm]`.
"""

import sys

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
np.random.seed(0)

# 4 sensor-reading classes, 4000 samples, stored sorted by class as they came from the recordings
centers = np.random.randn(4, 20) * 0.4
X = np.concatenate([c + np.random.randn(1000, 20) for c in centers]).astype(np.float32)
y = np.repeat(np.arange(4), 1000)

# shuffle before batching
if FIXED:
    perm = np.random.permutation(len(X))
    X, y = X[perm], y[perm]
else:
    np.random.shuffle(X)  # BUG
    np.random.shuffle(y)  # BUG


class SensorClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, target = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(dim=1) == target).float().mean()
        if batch_idx == 0:
            print(f"epoch {self.current_epoch}: loss {loss.item():.3f}, batch accuracy {acc.item():.2f}")
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


train_loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=64)
trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(SensorClassifier(), train_loader)
