"""A Hugging Face Trainer fine-tuning a small BERT checkpoint (built from a config, moved off its initial
weights and saved first, as a pretrained model would be) on a synthetic 3-class task. Healthy by default; one argv word adds a bug:
  label   one example carries label 3, outside the model's 3 classes
  lr      the learning rate is Adam's 1e-3, far above what fine-tuning a checkpoint wants
"""

import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, Trainer, TrainingArguments

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = sys.argv[1] if len(sys.argv) > 1 else None
work = Path(tempfile.mkdtemp(prefix="hf-trainer-"))
config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
encoder = BertModel(config)
with torch.no_grad():  # stands for pretraining: trained weights, LayerNorms no longer at their initial 1 and 0
    for p in encoder.parameters():
        p.add_(torch.randn_like(p) * 0.02)
encoder.save_pretrained(work / "checkpoint")  # the encoder; the classification head is new
model = BertForSequenceClassification.from_pretrained(work / "checkpoint", num_labels=3)


class Data(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, 100, (n, 12), generator=g)
        self.labels = self.ids[:, 0] % 3
        if BUG == "label":
            self.labels[9] = 3

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "labels": self.labels[i]}


args = TrainingArguments(
    output_dir=str(work / "out"),
    per_device_train_batch_size=8,
    num_train_epochs=2,
    learning_rate=1e-3 if BUG == "lr" else 5e-5,
    logging_steps=50,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    dataloader_num_workers=0,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=Data())
trainer.train()
print("trained", trainer.state.global_step, "steps")
