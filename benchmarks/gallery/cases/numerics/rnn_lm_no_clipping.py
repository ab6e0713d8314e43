"""A character-level vanilla RNN language model trained with SGD at a high LR and no gradient clipping.

Source: https://github.com/pytorch/pytorch/issues/2623
Source: https://github.com/keras-team/keras/issues/5127
Source: https://github.com/jimitshah77/Focal-CTC-OMR/issues/1
Expect: exploding-gradients

The loop follows PyTorch's word_language_model example (plain SGD, truncated BPTT) but leaves out its
`clip_grad_norm_` call. Backpropagating through 35 steps of a tanh RNN multiplies the gradient by the
recurrent Jacobian again and again: within ten steps the gradient norm jumps from 0.7 to ~100, the
updates throw the weights far away (the RNN's weight norm grows ~100x) and the loss explodes from 4.5
to 30; it never gets back below ~6, where the clipped twin reaches 2.1.
The fix is to clip the gradient norm before optimizer.step(); with max_norm=1 it only acts on the spikes.
"""

import sys

import chitchat_dataset as ccc
import torch
import torch.nn as nn

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# a character corpus from the chitchat conversations
lines = []
for convo in list(ccc.Dataset().values())[:400]:
    for turn in convo["messages"]:
        lines.extend(m["text"] for m in turn)
text = "\n".join(lines)
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text])

BSZ, BPTT = 20, 35
n = data.size(0) // BSZ
data = data[: n * BSZ].view(BSZ, -1).t().contiguous()  # (time, batch), like batchify()


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp=64, nhid=128):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.RNN(ninp, nhid, nonlinearity="tanh")
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, x, hidden):
        output, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(output), hidden


model = RNNModel(len(chars))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=2)
hidden = torch.zeros(1, BSZ, 128)
total = 0.0
for step, i in enumerate(range(0, 200 * BPTT, BPTT)):
    x, y = data[i:i + BPTT], data[i + 1:i + 1 + BPTT]
    hidden = hidden.detach()
    output, hidden = model(x, hidden)
    loss = criterion(output.view(-1, len(chars)), y.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    if FIXED:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()  # BUG
    total += loss.item()
    if (step + 1) % 20 == 0:
        print(f"step {step + 1} loss {total / 20:.3f}")
        total = 0.0
