"""A LightningModule wrapping a from_pretrained BERT trains it in eval mode: dropout never runs.

Source: https://github.com/Lightning-AI/pytorch-lightning/issues/20646
Source: https://github.com/Lightning-AI/pytorch-lightning/issues/19820
Expect: train-mode-off

`from_pretrained` returns the model in eval mode, and since Lightning 2.2 `Trainer.fit` keeps the modes the
modules already have instead of calling `.train()`. The classifier built in `__init__` therefore trains with
all of BERT's dropout switched off (in the first report, even hidden_dropout_prob=1 did not stop it from
learning); Lightning only mentions it in the model summary and in a PossibleUserWarning. The fix is to
put the wrapped model back in training mode (`self.model.train()`) after loading it.
"""

import random
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, BertModel

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)

# A tiny BERT checkpoint stands in for the Hub one (offline here); its encoder weights are moved off
# their initial values, as pretrained weights are.
VOCAB = 120
CKPT = Path(tempfile.mkdtemp(prefix="tiny-bert-")) / "tiny-bert"
encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.2))
with torch.no_grad():
    for p in encoder.parameters():
        p.add_(0.02 * torch.randn_like(p))
encoder.save_pretrained(CKPT)


class Tickets(torch.utils.data.Dataset):
    """Support tickets as token ids: [CLS] + 12 words + [SEP]; billing (0), bug report (1) or feature
    request (2), each topic with its own 12 keywords mixed into common words."""

    TOPIC_WORDS = [list(range(10 + 12 * t, 22 + 12 * t)) for t in range(3)]
    COMMON = list(range(60, VOCAB))

    def __init__(self, n):
        self.items = []
        for _ in range(n):
            label = random.randrange(3)
            words = random.choices(self.TOPIC_WORDS[label], k=5) + random.choices(self.COMMON, k=7)
            random.shuffle(words)
            self.items.append((torch.tensor([2] + words + [3]), label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ids, label = self.items[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(label)}


class TicketClassifier(L.LightningModule):
    def __init__(self, checkpoint, lr=3e-4):
        super().__init__()
        self.save_hyperparameters()
        self.model = BertForSequenceClassification.from_pretrained(checkpoint, num_labels=3)  # BUG
        if FIXED:
            self.model.train()

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True)
        if batch_idx % 20 == 0:
            print(f"epoch {self.current_epoch} step {batch_idx} loss {loss.item():.3f}")
        return loss

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        acc = (out.logits.argmax(-1) == batch["labels"]).float().mean()
        self.log_dict({"val_loss": out.loss, "val_acc": acc}, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)


train = DataLoader(Tickets(1280), batch_size=32, shuffle=True)
val = DataLoader(Tickets(256), batch_size=64)
trainer = L.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False)
trainer.fit(TicketClassifier(CKPT), train, val)
print({k: round(v.item(), 3) for k, v in trainer.callback_metrics.items()})
