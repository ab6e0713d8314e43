"""A Hugging Face Trainer fine-tuning a tiny BERT (built from a config) on a synthetic 3-class task;
with "label" one example carries label 3, outside the model's 3 classes."""

import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

torch.manual_seed(0)
torch.set_num_threads(1)
BUG = "label" in sys.argv[1:]
config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=3)
model = BertForSequenceClassification(config)


class Data(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, 100, (n, 12), generator=g)
        self.labels = self.ids[:, 0] % 3
        if BUG:
            self.labels[9] = 3

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "labels": self.labels[i]}


args = TrainingArguments(output_dir=sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "label" else "hf-out",
                         per_device_train_batch_size=8, num_train_epochs=2, learning_rate=5e-4,
                         logging_steps=50, save_strategy="no", report_to=[], use_cpu=True,
                         dataloader_num_workers=0, disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=Data()).train()
