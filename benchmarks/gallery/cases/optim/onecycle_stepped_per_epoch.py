"""OneCycleLR built for epochs x steps_per_epoch batches but stepped once per epoch (Lightning's default interval).

Source: https://github.com/pytorch/pytorch/issues/65417
Source: https://github.com/ageron/handson-mlp/issues/28
Expect: scheduler-misuse

OneCycleLR counts batches: built with epochs and steps_per_epoch=len(train_loader), its warmup lasts
30% of all the batches. Returned from configure_optimizers without ``"interval": "step"``, Lightning
steps it once per epoch, so by the end of the run it has gone through only 1/steps_per_epoch of its
schedule: the LR never leaves the start of the warmup (max_lr / 25) and the one-cycle run trains
like a constant, small LR. The fix is ``{"scheduler": scheduler, "interval": "step"}``.
"""

import sys

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

features = torch.randn(2048, 32)
teacher = torch.randn(32, 5)
labels = (torch.tanh(features @ teacher) + 0.2 * torch.randn(2048, 5)).argmax(dim=1)
train_loader = DataLoader(TensorDataset(features, labels), batch_size=64, shuffle=True)


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def on_train_epoch_end(self):
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        print(f"epoch {self.current_epoch} lr {lr:.4f} loss {self.trainer.callback_metrics['train_loss']:.4f}")

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=0.1, epochs=self.trainer.max_epochs, steps_per_epoch=len(train_loader))  # BUG
        if FIXED:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # BUG


trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Classifier(), train_loader)
