"""A tokenizer's attention_mask (1 = real token) passed as nn.TransformerEncoder's src_key_padding_mask (True = ignore).

Source: https://openillumi.com/en/en-pytorch-transformer-attention-mask-fix
Source: https://github.com/pytorch/pytorch/pull/39321
Expect: padding-leak

The batch comes from a Hugging Face `tokenizers` tokenizer with padding, whose attention_mask marks
the real tokens with 1. PyTorch's key-padding mask has the opposite meaning: True marks the positions
to ignore. Passed as is, every real token attends only to the pads (and in sequences with no padding
to nothing at all): the output depends on how much padding the batch added, attention never relates
the words, and the model falls back to a bag of words whose loss stays far above the twin's.
The fix is src_key_padding_mask=(attention_mask == 0).
"""

import random
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)

POSITIVE = ["great", "excellent", "loved", "wonderful", "superb"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull"]
FILLER = ["the", "movie", "plot", "was", "and", "acting", "a", "bit", "with", "some", "scenes", "actors", "story",
          "film", "music", "really", "quite", "very", "it", "this", "that", "at", "times", "but", "overall", "i"]


def make_review():
    words = random.choices(FILLER, k=random.randint(3, 14))
    label = random.randint(0, 1)
    words.insert(random.randint(0, len(words)), random.choice(POSITIVE if label else NEGATIVE))
    if random.random() < 0.1:  # annotators disagree on some reviews
        label = 1 - label
    return " ".join(words), label


reviews = [make_review() for _ in range(3000)]
texts, labels = [t for t, _ in reviews], torch.tensor([y for _, y in reviews])

tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")


def encode(batch_texts):
    enc = tokenizer.encode_batch(batch_texts)
    return {"input_ids": torch.tensor([e.ids for e in enc]),
            "attention_mask": torch.tensor([e.attention_mask for e in enc])}


class TextClassifier(nn.Module):
    def __init__(self, vocab_size, d_model=64, max_len=32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.classifier = nn.Linear(d_model, 2)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.size(1)))
        pad_mask = (attention_mask == 0) if FIXED else attention_mask.bool()  # BUG
        h = self.encoder(x, src_key_padding_mask=pad_mask)
        m = attention_mask.unsqueeze(-1).float()
        return self.classifier((h * m).sum(1) / m.sum(1))


model = TextClassifier(tokenizer.get_vocab_size())
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
train_texts, train_labels = texts[:2500], labels[:2500]
val_batch, val_labels = encode(texts[2500:]), labels[2500:]

for epoch in range(3):
    model.train()
    perm, total = torch.randperm(len(train_texts)).tolist(), 0.0
    for i in range(0, len(perm), 32):
        idx = perm[i:i + 32]
        batch = encode([train_texts[j] for j in idx])
        logits = model(**batch)
        loss = F.cross_entropy(logits, train_labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    model.eval()
    with torch.no_grad():
        acc = (model(**val_batch).argmax(-1) == val_labels).float().mean()
    print(f"epoch {epoch}: train loss {total / len(perm):.3f}, val accuracy {acc:.3f}")
