"""A hand-written attention whose padding mask is broadcast over the queries, so pad rows are all -inf and softmax gives NaN.

Source: https://github.com/hyunwoongko/transformer/pull/40
Source: https://github.com/pytorch/pytorch/issues/103749
Expect: nan-forward

The encoder builds its mask as (src != pad).unsqueeze(1).unsqueeze(3), shape (B, 1, T, 1), instead of
(B, 1, 1, T). Broadcast against the (B, heads, T, T) scores it masks whole query rows instead of key
columns: every row of a pad query is filled with -inf, softmax over it is 0/0 = NaN, and the next
layer spreads the NaN from the pad positions to every token. The loss is NaN from the first batch
that has padding. The fix is unsqueeze(1).unsqueeze(2).
"""

import sys

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

PAD, VOCAB, HID, HEADS, CLASSES = 0, 30, 64, 4, 3


class MultiHeadAttentionLayer(nn.Module):
    def __init__(self, hid_dim, n_heads):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, hid_dim // n_heads
        self.fc_q = nn.Linear(hid_dim, hid_dim)
        self.fc_k = nn.Linear(hid_dim, hid_dim)
        self.fc_v = nn.Linear(hid_dim, hid_dim)
        self.fc_o = nn.Linear(hid_dim, hid_dim)
        self.scale = self.head_dim ** 0.5

    def forward(self, query, key, value, mask=None):
        B = query.shape[0]
        Q = self.fc_q(query).view(B, -1, self.n_heads, self.head_dim).permute(0, 2, 1, 3)
        K = self.fc_k(key).view(B, -1, self.n_heads, self.head_dim).permute(0, 2, 1, 3)
        V = self.fc_v(value).view(B, -1, self.n_heads, self.head_dim).permute(0, 2, 1, 3)
        energy = torch.matmul(Q, K.permute(0, 1, 3, 2)) / self.scale
        if mask is not None:
            energy = energy.masked_fill(mask == 0, float("-inf"))
        attention = torch.softmax(energy, dim=-1)
        x = torch.matmul(attention, V).permute(0, 2, 1, 3).contiguous().view(B, -1, self.n_heads * self.head_dim)
        return self.fc_o(x)


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = MultiHeadAttentionLayer(HID, HEADS)
        self.attn_norm = nn.LayerNorm(HID)
        self.ff = nn.Sequential(nn.Linear(HID, 2 * HID), nn.ReLU(), nn.Linear(2 * HID, HID))
        self.ff_norm = nn.LayerNorm(HID)
        self.dropout = nn.Dropout(0.1)

    def forward(self, src, src_mask):
        src = self.attn_norm(src + self.dropout(self.self_attn(src, src, src, src_mask)))
        return self.ff_norm(src + self.dropout(self.ff(src)))


class Encoder(nn.Module):
    def __init__(self, n_layers=2, max_length=32):
        super().__init__()
        self.tok_embedding = nn.Embedding(VOCAB, HID)
        self.pos_embedding = nn.Embedding(max_length, HID)
        self.layers = nn.ModuleList([EncoderLayer() for _ in range(n_layers)])
        self.fc_out = nn.Linear(HID, CLASSES)

    def make_src_mask(self, src):
        return (src != PAD).unsqueeze(1).unsqueeze(2 if FIXED else 3)  # BUG

    def forward(self, src):
        src_mask = self.make_src_mask(src)
        pos = torch.arange(src.shape[1]).unsqueeze(0)
        x = self.tok_embedding(src) * HID ** 0.5 + self.pos_embedding(pos)
        for layer in self.layers:
            x = layer(x, src_mask)
        real = (src != PAD).unsqueeze(-1).float()
        return self.fc_out((x * real).sum(1) / real.sum(1))


def make_data(n):
    """Variable-length sequences of tokens 1..29; the label is the most frequent of tokens 1, 2, 3."""
    seqs, labels = [], []
    for _ in range(n):
        s = torch.randint(1, VOCAB, (int(torch.randint(4, 20, ())),))
        s[torch.rand(len(s)) < 0.3] = int(torch.randint(1, 4, ()))
        counts = torch.stack([(s == c).sum() for c in (1, 2, 3)])
        seqs.append(s)
        labels.append(int(counts.argmax()))
    return pad_sequence(seqs, batch_first=True, padding_value=PAD), torch.tensor(labels)


X, y = make_data(2048)
model = Encoder()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)

for epoch in range(3):
    model.train()
    perm = torch.randperm(len(X))
    epoch_loss = 0.0
    for i in range(0, len(X), 32):
        idx = perm[i:i + 32]
        src = X[idx]
        src = src[:, :int((src != PAD).sum(1).max())]  # trim the padding this batch does not need
        loss = criterion(model(src), y[idx])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        epoch_loss += loss.item()
    print(f"epoch {epoch}: train loss {epoch_loss / (len(X) // 32):.4f}")
