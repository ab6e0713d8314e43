"""A 4-topic classifier fine-tuned with the Trainer, its head built with num_labels=2 from a binary tutorial.

Source: https://github.com/TencentGameMate/gnn_cross_lingual/issues/5
Source: https://github.com/wietsedv/bertje/issues/19
Expect: label-out-of-range

The script started from a sentiment (IMDb-style) fine-tuning example and kept its
`from_pretrained(..., num_labels=2)` while the new dataset has four topics (labels 0..3). The classifier
head has two outputs, so the first batch holding a label 2 or 3 stops training with 'IndexError: Target 2
is out of bounds' on CPU (a device-side assert on CUDA). The fix is num_labels=len(TOPICS).
"""

import random
import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    DistilBertConfig,
    DistilBertModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)
work = Path(tempfile.mkdtemp(prefix="topics-"))

TOPICS = ["sports", "cooking", "weather", "music"]
WORDS = {
    "sports": ["match", "goal", "team", "coach", "referee", "score", "league", "striker", "season", "stadium"],
    "cooking": ["recipe", "oven", "flour", "garlic", "simmer", "onion", "sauce", "butter", "pan", "bake"],
    "weather": ["rain", "storm", "sunny", "forecast", "wind", "cloudy", "snow", "humid", "thunder", "cold"],
    "music": ["guitar", "song", "album", "drummer", "concert", "chorus", "melody", "band", "lyrics", "tour"],
}
FILLER = ["i", "think", "the", "was", "really", "quite", "today", "and", "so", "very", "this", "that"]


def sentence(topic):
    words = random.choices(WORDS[topic], k=4) + random.choices(FILLER, k=random.randint(3, 6))
    random.shuffle(words)
    return " ".join(words)


rows = [(sentence(t), i) for _ in range(150) for i, t in enumerate(TOPICS)]
random.shuffle(rows)
raw = Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})
raw = raw.train_test_split(test_size=0.2, seed=0)

# The tokenizer and the "distilbert" checkpoint stand in for the ones from the Hub (offline here).
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.normalizer = normalizers.Lowercase()
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(raw["train"]["text"], trainers.WordLevelTrainer(
    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                    cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
tokenizer.save_pretrained(work / "tiny-distilbert")
DistilBertModel(DistilBertConfig(vocab_size=len(tokenizer), dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                                 max_position_embeddings=64)).save_pretrained(work / "tiny-distilbert")


def tokenize(batch):
    return tokenizer(batch["text"], truncation=True, max_length=32)


tokenized = raw.map(tokenize, batched=True, remove_columns=["text"])
model = AutoModelForSequenceClassification.from_pretrained(
    work / "tiny-distilbert", num_labels=len(TOPICS) if FIXED else 2)  # BUG

args = TrainingArguments(
    output_dir=str(work / "out"),
    learning_rate=5e-4,
    per_device_train_batch_size=16,
    num_train_epochs=6,
    logging_steps=20,
    eval_strategy="epoch",
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["test"],
                  data_collator=DataCollatorWithPadding(tokenizer))
trainer.train()
