"""A character-level decoder-only LM whose loss compares each position with its own input token.

Source: https://github.com/KempnerInstitute/KempnerForge/issues/154
Source: https://github.com/huggingface/transformers/pull/404
Expect: labels-not-shifted

The model has a proper causal mask, but the targets are the input ids at the same positions, not the
next ones: position t sees token t and is asked to predict token t, so it learns to copy its input. The
loss collapses towards 0 within a few dozen steps and the model cannot generate anything. The fix is to
shift by one: logits[:, :-1] against tokens[:, 1:].
"""

import sys

import chitchat_dataset
import torch
import torch.nn as nn
import torch.nn.functional as F

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

text = ""
for conversation in chitchat_dataset.ConversationDataset():
    text += "\n".join(m.strip() for m in conversation) + "\n"
    if len(text) > 200_000:
        break
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text])
V, T, B = len(chars), 64, 32


class CharTransformer(nn.Module):
    def __init__(self, vocab_size, d_model=64, n_head=4, n_layer=2, block_size=T + 1):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_head, 4 * d_model, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t))
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.ln_f(x))


model = CharTransformer(V)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

for step in range(150):
    ix = torch.randint(len(data) - T - 1, (B,))
    tokens = torch.stack([data[i:i + T + 1] for i in ix])
    logits = model(tokens)
    if FIXED:
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
    else:
        loss = F.cross_entropy(logits.view(-1, V), tokens.view(-1))  # BUG
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 25 == 0:
        print(f"step {step}: loss {loss.item():.3f}")
