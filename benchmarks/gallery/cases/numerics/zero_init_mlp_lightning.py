"""A Lightning MLP whose weights and biases are all initialised to zero: the loss sits at 0.693 for good.

Source: https://community.deeplearning.ai/t/week-1-programming-assignment-initialization-exercise-1-initialize-parameters-zeros/121049
Source: https://community.deeplearning.ai/t/why-dont-weights-get-adjusted-when-initialized-to-0/431799
Expect: loss-plateau|loss-at-chance

With every weight at zero, every hidden ReLU outputs 0 for every input, so the gradient of each weight
matrix (the outer product of the error with the layer's input, or with zero weights downstream) is zero:
only the output bias moves, and with balanced classes it stays at 0. The model predicts 0.5 for every
point and the BCE loss stays at ln 2 = 0.693 epoch after epoch. The fix is a random init that breaks
the symmetry (PyTorch's default, or He/Kaiming for ReLU).
"""

import math
import sys

import lightning as L
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


def make_circles(n, noise=0.08):
    """Two concentric circles (label 1 = inner), like sklearn.datasets.make_circles."""
    t = torch.rand(n) * 2 * math.pi
    label = (torch.rand(n) < 0.5).float()
    r = torch.where(label == 1, 0.5, 1.0)
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1) + noise * torch.randn(n, 2)
    return x, label


class CirclesClassifier(L.LightningModule):
    def __init__(self, lr=0.1):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
        self.loss_fn = nn.BCEWithLogitsLoss()
        if not FIXED:
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.weight)  # BUG
                    nn.init.zeros_(m.bias)  # BUG

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.net(x).squeeze(1), y)
        self.log("train_loss", loss, prog_bar=False)
        if self.global_step % 40 == 0:
            print(f"step {self.global_step} loss {loss.item():.4f}")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


X, y = make_circles(2048)
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(CirclesClassifier(), loader)
