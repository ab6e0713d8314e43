"""An nn.Transformer seq2seq model (digit reversal) left at batch_first=False and fed (batch, seq) token batches.

Source: https://github.com/DaoyuanLi2816/Molecule-Generator/pull/22
Source: https://github.com/IBM/TabFormer/pull/14
Expect: batch-mixing

The model follows the seq-first translation tutorial (the causal mask is sized from dim 0) but the
DataLoader yields (batch, seq) tensors, embedded to (batch, seq, emb). nn.Transformer then reads the
batch as the sequence: self- and cross-attention run across the samples of the batch at each
position, so no target token can see its own source sequence and the loss stalls far above zero.
The fix is batch_first=True (and the mask sized from the time axis).
"""

import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

BOS, N_DIGITS, SEQ_LEN = 0, 10, 8
VOCAB = N_DIGITS + 1
D_MODEL = 64


class Seq2SeqTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.src_tok_emb = nn.Embedding(VOCAB, D_MODEL)
        self.tgt_tok_emb = nn.Embedding(VOCAB, D_MODEL)
        self.pos_emb = nn.Parameter(torch.randn(1, SEQ_LEN, D_MODEL) * 0.02)
        self.transformer = nn.Transformer(d_model=D_MODEL, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                          dim_feedforward=128, dropout=0.1, batch_first=FIXED)  # BUG
        self.generator = nn.Linear(D_MODEL, VOCAB)

    def forward(self, src, tgt):
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1 if FIXED else 0))  # BUG
        src_emb = self.src_tok_emb(src) + self.pos_emb[:, :src.size(1)]
        tgt_emb = self.tgt_tok_emb(tgt) + self.pos_emb[:, :tgt.size(1)]
        outs = self.transformer(src_emb, tgt_emb, tgt_mask=tgt_mask)
        return self.generator(outs)


def make_pairs(n):
    src = torch.randint(1, VOCAB, (n, SEQ_LEN))
    tgt = src.flip(1)
    tgt_in = torch.cat([torch.full((n, 1), BOS), tgt[:, :-1]], dim=1)
    return src, tgt_in, tgt


train_loader = DataLoader(TensorDataset(*make_pairs(4096)), batch_size=32, shuffle=True)
val_src, val_tgt_in, val_tgt = make_pairs(256)

model = Seq2SeqTransformer()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)

for epoch in range(2):
    model.train()
    for step, (src, tgt_in, tgt_out) in enumerate(train_loader):
        logits = model(src, tgt_in)
        loss = loss_fn(logits.reshape(-1, VOCAB), tgt_out.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 40 == 0:
            print(f"epoch {epoch} step {step} loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        acc = (model(val_src, val_tgt_in).argmax(-1) == val_tgt).float().mean()
    print(f"epoch {epoch} val token accuracy {acc:.3f}")
