"""A pretrained BERT fine-tuned for classification with Adam's default lr=1e-3 instead of 2e-5..5e-5.

Source: https://ai.stackexchange.com/questions/18234/why-is-my-loss-binary-cross-entropy-converging-on-0-6-task-natural-languag
Source: https://github.com/strongio/keras-bert/issues/11
Source: https://huggingface.co/learn/llm-course/chapter8/4
Expect: lr-too-high

The whole encoder is fine-tuned with Adam at 1e-3, the LR one trains a small network from scratch
with: the first updates move every pretrained weight by ~1e-3, far more than fine-tuning needs, and
what the checkpoint learned in pre-training is overwritten (on BERT-base the loss then sits near ln 2
and the model predicts one class). The BERT paper fine-tunes with 2e-5..5e-5. In this miniature the
checkpoint is a tiny 2-layer encoder pre-trained on sentiment, which a child process writes to disk
in place of a hub download; it is robust enough that fine-tuning at 1e-3 still converges, so the
harm shows on real checkpoints, not in this run's loss.
"""

import subprocess
import sys
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# a small word vocabulary: [PAD] [CLS] [SEP], then positive, negative and neutral words
PAD, CLS, SEP = 0, 1, 2
POS = list(range(3, 23))
NEG = list(range(23, 43))
NEUTRAL = list(range(43, 120))
SEQ = 16


def make_reviews(n, lo=3, hi=7):
    """Reviews of neutral words and a few sentiment words of the review's label."""
    ids = torch.tensor(NEUTRAL)[torch.randint(len(NEUTRAL), (n, SEQ - 2))]
    labels = torch.randint(0, 2, (n,))
    for i in range(n):
        k = int(torch.randint(lo, hi, ()))
        words = POS if labels[i] == 1 else NEG
        ids[i, torch.randperm(SEQ - 2)[:k]] = torch.tensor(words)[torch.randint(len(words), (k,))]
    return torch.cat([torch.full((n, 1), CLS), ids, torch.full((n, 1), SEP)], dim=1), labels


def pretrain(path):
    """The checkpoint a hub download would give: a tiny BERT encoder trained on a large sentiment corpus."""
    config = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=SEQ)
    model = BertForSequenceClassification(config)
    texts, labels = make_reviews(4096)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(80):
        idx = torch.randint(len(texts), (64,))
        loss = model(input_ids=texts[idx], labels=labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.bert.save_pretrained(path)


if __name__ == "__main__" and "--pretrain" in sys.argv:
    pretrain(sys.argv[-1])
    sys.exit()

with tempfile.TemporaryDirectory() as checkpoint:
    subprocess.run([sys.executable, __file__, "--pretrain", checkpoint], check=True)
    model = BertForSequenceClassification.from_pretrained(checkpoint, num_labels=2)

train_ids, train_labels = make_reviews(1024, 1, 4)
test_ids, test_labels = make_reviews(256, 1, 4)

optimizer = torch.optim.Adam(model.parameters(), lr=5e-5 if FIXED else 1e-3)  # BUG
model.train()
for epoch in range(3):
    for i in range(0, len(train_ids), 32):
        out = model(input_ids=train_ids[i:i + 32], labels=train_labels[i:i + 32])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if (i // 32) % 8 == 0:
            print(f"epoch {epoch} step {i // 32} loss {out.loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(input_ids=test_ids).logits.argmax(-1) == test_labels).float().mean()
    model.train()
    print(f"epoch {epoch} test accuracy {accuracy:.3f}")
