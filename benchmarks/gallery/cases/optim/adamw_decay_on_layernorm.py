"""AdamW's weight decay applied to every parameter of a GPT-2, LayerNorm gains and biases included.

Source: https://github.com/Lightning-AI/lit-llama/issues/254
Source: https://github.com/huggingface/transformers/issues/4832
Source: https://github.com/mmcdermott/MEDS_EIC_AR/issues/30
Expect: weight-decay-on-norms

``AdamW(model.parameters(), weight_decay=0.1)`` decays the LayerNorm weights towards 0 (they start
at 1 and set the scale of every block's input) and the biases, which do not cause over-fitting.
The BERT/GPT recipes (Hugging Face's Trainer, nanoGPT) put the 1-d parameters in a group with
weight_decay=0.0 and decay only the weight matrices and embeddings.
"""

import sys

import chitchat_dataset
import torch
from transformers import GPT2Config, GPT2LMHeadModel

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# a character-level language model on chit-chat messages
conversations = chitchat_dataset.Dataset()
lines = []
for key in list(conversations)[:400]:
    for turn in conversations[key]["messages"]:
        lines += [message["text"] for message in turn]
text = "\n".join(lines)
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text])

block_size, batch_size = 64, 16
config = GPT2Config(vocab_size=len(chars), n_positions=block_size, n_embd=64, n_layer=2, n_head=4)
model = GPT2LMHeadModel(config)

if FIXED:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    params = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
else:
    params = model.parameters()  # BUG
optimizer = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)  # BUG


def get_batch():
    starts = torch.randint(len(data) - block_size, (batch_size,))
    return torch.stack([data[s:s + block_size] for s in starts])


model.train()
for step in range(150):
    batch = get_batch()
    loss = model(input_ids=batch, labels=batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if step % 25 == 0 or step == 149:
        print(f"step {step} loss {loss.item():.3f}")
