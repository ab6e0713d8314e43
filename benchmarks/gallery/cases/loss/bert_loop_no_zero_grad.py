"""A hand-written fine-tuning loop for a small BertForSequenceClassification that never zeroes the gradients.

Source: https://github.com/huggingface/transformers/issues/340
Source: https://github.com/wenet-e2e/wekws/pull/73
Source: https://github.com/pytorch/pytorch/issues/47175
Expect: missing-zero-grad

loss.backward() adds into .grad, so without optimizer.zero_grad() every step applies the sum of all the
gradients seen so far: the first batches keep pushing the weights long after they stop being
relevant and the run converges to something much worse than the same loop with zero_grad(). The fix
is one optimizer.zero_grad() per step.
"""

import random
import sys

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)

POSITIVE = ["good", "great", "fine", "lovely", "excellent", "happy", "nice", "superb", "wonderful", "pleasant"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "sad", "horrible", "boring", "nasty", "dreadful", "ugly"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "actor", "scene", "it", "was", "is", "very", "quite", "and", "but",
           "story", "music"]
vocab = {w: i for i, w in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]"] + POSITIVE + NEGATIVE + NEUTRAL)}


def make_review():
    n_pos, n_neg = random.randint(0, 3), random.randint(0, 3)
    while n_pos == n_neg:
        n_neg = random.randint(0, 3)
    words = (random.sample(POSITIVE, n_pos) + random.sample(NEGATIVE, n_neg)
             + random.choices(NEUTRAL, k=random.randint(3, 10)))
    random.shuffle(words)
    return " ".join(words), int(n_pos > n_neg)


def collate(examples, max_len=20):
    ids = [[vocab["[CLS]"]] + [vocab.get(w, vocab["[UNK]"]) for w in text.split()][:max_len - 2] + [vocab["[SEP]"]]
           for text, _ in examples]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [vocab["[PAD]"]] * (width - len(x)) for x in ids])
    return {"input_ids": input_ids, "attention_mask": (input_ids != vocab["[PAD]"]).long(),
            "labels": torch.tensor([label for _, label in examples])}


train_data = [make_review() for _ in range(1200)]
train_loader = DataLoader(train_data, batch_size=32, shuffle=True, collate_fn=collate)

config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, max_position_embeddings=32, num_labels=2)
model = BertForSequenceClassification(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)

model.train()
for epoch in range(3):
    total_loss, correct = 0.0, 0
    for batch in train_loader:
        outputs = model(**batch)
        loss = outputs.loss
        loss.backward()  # BUG
        optimizer.step()  # BUG
        if FIXED:
            optimizer.zero_grad()
        total_loss += loss.item()
        correct += (outputs.logits.argmax(-1) == batch["labels"]).sum().item()
    print(f"epoch {epoch}: loss {total_loss / len(train_loader):.4f} acc {correct / len(train_data):.3f}")
