"""A makemore-style character MLP whose custom _init_weights draws every weight from N(0, 1).

Source: https://karpathy.github.io/2019/04/25/recipe/
Source: https://github.com/keras-team/keras/issues/6259
Source: https://stats.stackexchange.com/questions/351001/weight-initialization
Expect: init-loss-mismatch

The model predicts the next character from the previous three. Its `_init_weights` calls
`nn.init.normal_(module.weight, mean=0.0, std=1.0)` on every layer, so the output layer produces logits
with a standard deviation of ~14: the first loss is ~24 instead of ln(vocab) ~ 3.3, the loss of uniform
guessing. The first hundreds of steps only squash the logits back down (the "hockey stick" loss curve)
and the saturated tanh units learn slowly. The fix is a small init (std=0.02, as GPT-2 does).
"""

import sys

import chitchat_dataset
import torch
import torch.nn as nn
import torch.nn.functional as F

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

words = []
for conversation in chitchat_dataset.ConversationDataset():
    for message in conversation:
        words += ["".join(c for c in w.lower() if c.isalpha()) for w in message.split()]
    if len(words) > 30_000:
        break
words = [w for w in words if w]
chars = ["."] + sorted(set("".join(words)))
stoi = {c: i for i, c in enumerate(chars)}
BLOCK = 3

X, Y = [], []
for w in words:
    context = [0] * BLOCK
    for ch in w + ".":
        X.append(context)
        Y.append(stoi[ch])
        context = context[1:] + [stoi[ch]]
X, Y = torch.tensor(X), torch.tensor(Y)
print(f"{len(words)} words, vocab {len(chars)}, {len(X)} examples")


class CharMLP(nn.Module):
    def __init__(self, vocab_size, n_embd=10, n_hidden=200):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, n_embd)
        self.hidden = nn.Linear(BLOCK * n_embd, n_hidden)
        self.out = nn.Linear(n_hidden, vocab_size)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02 if FIXED else 1.0)  # BUG
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, idx):
        h = torch.tanh(self.hidden(self.emb(idx).view(idx.shape[0], -1)))
        return self.out(h)


model = CharMLP(len(chars))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

for step in range(300):
    ix = torch.randint(0, len(X), (64,))
    logits = model(X[ix])
    loss = F.cross_entropy(logits, Y[ix])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0 or step == 299:
        print(f"step {step:3d} loss {loss.item():.4f}")
