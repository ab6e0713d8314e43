"""A text classifier built on nn.TransformerEncoder left at batch_first=False and fed (batch, seq, emb).

Source: https://github.com/Exorust/TorchLeet/issues/5
Expect: batch-mixing

Attention then runs across the batch: every sample's output mixes the other samples of its batch, and
validation accuracy depends on what else is in the batch. The fix is batch_first=True.
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

VOCAB, EMB, CLASSES, SEQ = 200, 32, 3, 16


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMB)
        layer = nn.TransformerEncoderLayer(EMB, 4, 64, dropout=0.1, batch_first=FIXED)  # BUG
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(EMB, CLASSES)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens))  # tokens: (batch, seq)
        return self.head(h.mean(dim=1))


tokens = torch.randint(0, VOCAB, (512, SEQ))
labels = (tokens[:, 0] % CLASSES)
model = Classifier()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for epoch in range(2):
    for i in range(0, len(tokens), 32):
        logits = model(tokens[i:i + 32])
        loss = F.cross_entropy(logits, labels[i:i + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.3f}")
