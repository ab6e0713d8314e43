"""An nn.Transformer trained with teacher forcing but called without tgt_mask (no causal mask on the decoder).

Source: https://github.com/pytorch/tutorials/issues/719
Source: https://github.com/pytorch/pytorch/issues/31567
Expect: causal-leak

The decoder input is the target shifted right, and with no tgt_mask every decoder position attends
to the whole target, including the token it has to predict (the next decoder input). The training
loss falls like a healthy run's, since the model partly reads the answer instead of sorting, yet greedy
decoding, which has no future tokens to read, repeats one token. The fix is
tgt_mask=nn.Transformer.generate_square_subsequent_mask(T).
"""

import math
import sys

import torch
import torch.nn as nn

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# task: sort a sequence of digits. tokens 0-9 are digits, 10 = <bos>, 11 = <eos>
BOS, EOS, VOCAB, LENGTH = 10, 11, 12, 8


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=64):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[:, :x.size(1)]


class SortTransformer(nn.Module):
    def __init__(self, d_model=64):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(VOCAB, d_model)
        self.pos_encoder = PositionalEncoding(d_model)
        self.transformer = nn.Transformer(d_model, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                          dim_feedforward=128, dropout=0.1, batch_first=True)
        self.out = nn.Linear(d_model, VOCAB)

    def forward(self, src, tgt, tgt_mask=None):
        src = self.pos_encoder(self.embedding(src) * math.sqrt(self.d_model))
        tgt = self.pos_encoder(self.embedding(tgt) * math.sqrt(self.d_model))
        return self.out(self.transformer(src, tgt, tgt_mask=tgt_mask))


def get_batch(batch_size=64):
    src = torch.randint(0, 10, (batch_size, LENGTH))
    target = src.sort(dim=1).values
    tgt_in = torch.cat([torch.full((batch_size, 1), BOS), target], dim=1)
    tgt_out = torch.cat([target, torch.full((batch_size, 1), EOS)], dim=1)
    return src, tgt_in, tgt_out


@torch.no_grad()
def greedy_decode(model, src):
    ys = torch.full((src.size(0), 1), BOS)
    for _ in range(LENGTH):
        mask = nn.Transformer.generate_square_subsequent_mask(ys.size(1))
        next_tok = model(src, ys, tgt_mask=mask)[:, -1].argmax(-1, keepdim=True)
        ys = torch.cat([ys, next_tok], dim=1)
    return ys[:, 1:]


model = SortTransformer()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for step in range(250):
    model.train()
    src, tgt_in, tgt_out = get_batch()
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.size(1)) if FIXED else None  # BUG
    output = model(src, tgt_in, tgt_mask=tgt_mask)
    loss = criterion(output.reshape(-1, VOCAB), tgt_out.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0 or step == 249:
        print(f"step {step:3d} | loss {loss.item():.4f}")

model.eval()
src, _, tgt_out = get_batch(200)
pred = greedy_decode(model, src)
print(f"greedy decoding: {(pred == tgt_out[:, :LENGTH]).float().mean():.3f} of the digits right")
print("example:", src[0].tolist(), "->", pred[0].tolist())
