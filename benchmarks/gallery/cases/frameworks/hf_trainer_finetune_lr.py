"""Fine-tuning a pretrained BERT with the Trainer at learning_rate=1e-3, Adam's from-scratch default.

Source: https://github.com/huggingface/transformers/issues/12041
Source: https://github.com/huggingface/transformers/issues/735
Source: https://github.com/graykode/nlp-tutorial/issues/77
Expect: lr-too-high

A small BERT is pretrained with masked-language modelling on review-like sentences, saved with
save_pretrained, and loaded back with AutoModelForSequenceClassification for sentiment. The user gives
TrainingArguments learning_rate=1e-3: the updates are large enough to wash out what pretraining put into
the encoder, and on real checkpoints the classifier ends up predicting one class (this toy task is easy
enough to be learnt anyway). Fine-tuning a pretrained transformer wants 1e-5..1e-4 (here 1e-4).
"""

import random
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch.utils.data import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)
work = Path(tempfile.mkdtemp(prefix="bert-sst-"))

GOOD = ["great", "wonderful", "superb", "lovely", "brilliant", "moving", "funny", "clever"]
BAD = ["awful", "boring", "dull", "terrible", "clumsy", "weak", "tedious", "bland"]
THINGS = ["plot", "acting", "script", "music", "ending", "cast", "camera", "pacing", "story", "dialogue"]


def review():
    label = random.randint(0, 1)
    words = GOOD if label else BAD
    parts = [f"the {random.choice(THINGS)} was {random.choice(words)}" for _ in range(random.randint(2, 3))]
    return " and ".join(parts), label


# --- a word-level tokenizer trained on our own corpus
corpus = [review()[0] for _ in range(2000)]
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(corpus, trainers.WordLevelTrainer(
    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                    cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
tokenizer.save_pretrained(work / "bert-reviews")

# --- "pretraining": a short masked-LM run, then save the checkpoint
config = BertConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=512, max_position_embeddings=64)
mlm = BertForMaskedLM(config)
collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
opt = torch.optim.AdamW(mlm.parameters(), lr=1e-3)
mlm.train()
for step in range(100):
    texts = random.sample(corpus, 32)
    batch = collator([tokenizer(t, truncation=True, max_length=24) for t in texts])
    loss = mlm(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if step % 50 == 0:
        print(f"mlm step {step} loss {loss.item():.3f}")
mlm.save_pretrained(work / "bert-reviews")


# --- fine-tuning on the labelled reviews
class Reviews(Dataset):
    def __init__(self, n):
        self.items = [review() for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        text, label = self.items[i]
        enc = tokenizer(text, truncation=True, max_length=24, padding="max_length")
        return {**enc, "labels": label}


model = AutoModelForSequenceClassification.from_pretrained(work / "bert-reviews", num_labels=2)
args = TrainingArguments(
    output_dir=str(work / "sst-out"),
    learning_rate=1e-4 if FIXED else 1e-3,  # BUG
    per_device_train_batch_size=16,
    num_train_epochs=2,
    warmup_steps=10,
    weight_decay=0.01,
    logging_steps=20,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=Reviews(480), eval_dataset=Reviews(160))
trainer.train()
print(trainer.evaluate())
