"""A LightningModule (an MLP body and a linear head) trained by `L.Trainer` on CPU; with "head"
`configure_optimizers` hands the optimizer the head's parameters only, so the body never trains.
With "manual" the module uses Lightning's manual optimization (`self.manual_backward`, `opt.step()`
without a closure) instead of the automatic one (`optimizer.step(closure)`); not a bug."""

import sys

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = "head" in sys.argv[1:]
MANUAL = "manual" in sys.argv[1:]


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = not MANUAL
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        if MANUAL:
            opt = self.optimizers()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
        return loss

    def configure_optimizers(self):
        params = self.head.parameters() if BUG else self.parameters()
        return torch.optim.Adam(params, lr=1e-3)


x = torch.randn(512, 16)
y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Classifier(), loader)
print(f"done {trainer.callback_metrics['train_loss'].item():.3f}")
