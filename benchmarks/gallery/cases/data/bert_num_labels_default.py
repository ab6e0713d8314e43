"""BertForSequenceClassification left at the default num_labels=2 and fine-tuned on a 3-class dataset.

Source: https://github.com/Beomi/KcBERT/issues/3
Source: https://github.com/pytorch/pytorch/issues/31247
Expect: label-out-of-range

A binary sentiment fine-tuning script reused for a dataset with more classes: the head still has two
outputs, so label 2 has no logit. On CPU the first batch that holds a 2 stops with "IndexError: Target 2
is out of bounds"; on CUDA it is "device-side assert triggered", raised at some later, unrelated line.
The fix is to build the head with the dataset's number of classes: num_labels=3.
"""

import random
import sys

import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)

# a small 3-class sentiment corpus: 0 = negative, 1 = neutral, 2 = positive
WORDS = {0: ["awful", "boring", "terrible", "bad", "worst", "dull"],
         1: ["okay", "average", "fine", "plain", "usual", "decent"],
         2: ["great", "superb", "lovely", "good", "best", "brilliant"]}
FILLER = ["the", "movie", "was", "plot", "and", "acting", "really", "quite", "a", "film", "story", "i", "thought"]
sentences, labels = [], []
for _ in range(600):
    label = random.randrange(3)
    words = random.choices(FILLER, k=random.randint(4, 9)) + random.choices(WORDS[label], k=2)
    random.shuffle(words)
    sentences.append(" ".join(words))
    labels.append(label)

vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2}
for s in sentences:
    for w in s.split():
        vocab.setdefault(w, len(vocab))
MAX_LEN = 16


def encode(sentence):
    ids = [1] + [vocab[w] for w in sentence.split()] + [2]
    return ids + [0] * (MAX_LEN - len(ids)), [1] * len(ids) + [0] * (MAX_LEN - len(ids))


encoded = [encode(s) for s in sentences]
input_ids = torch.tensor([e[0] for e in encoded])
attention_masks = torch.tensor([e[1] for e in encoded])
train_data = TensorDataset(input_ids, attention_masks, torch.tensor(labels))
train_dataloader = DataLoader(train_data, sampler=RandomSampler(train_data), batch_size=32)

config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, max_position_embeddings=MAX_LEN,
                    num_labels=3 if FIXED else 2)  # BUG
model = BertForSequenceClassification(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

model.train()
for epoch in range(4):
    total_loss = 0.0
    for batch in train_dataloader:
        b_input_ids, b_input_mask, b_labels = batch
        model.zero_grad()
        outputs = model(b_input_ids, attention_mask=b_input_mask, labels=b_labels)
        loss = outputs.loss
        total_loss += loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    print(f"epoch {epoch}: average training loss {total_loss / len(train_dataloader):.3f}")
