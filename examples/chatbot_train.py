"""The demo's chatbot as an ordinary training script: run traindoc's commands on it as on your own.

    python examples/chatbot_train.py                      # the fixed model, 600 steps
    python examples/chatbot_train.py --broken             # the twin with nn.Transformer misused
    traindoc run examples/chatbot_train.py -- --broken    # diagnose it
    traindoc overfit examples/chatbot_train.py            # can it learn one batch?
    traindoc tune lr examples/chatbot_train.py --planned-steps 600 --max-steps 60 --jobs 2

The data are the chitchat dataset's conversations (``pip install 'traindoc[demo]'``); the model, its
forward call and loss are the demo's (`traindoc.demo`): an ``nn.Transformer`` encoder-decoder, AdamW,
StepLR, ``clip_grad_norm_(1.0)``.
"""

import argparse

import torch
from torch.utils.data import DataLoader

from traindoc.demo.data import prepare_data
from traindoc.demo.model import ModelConfig
from traindoc.demo.train import make_twins

parser = argparse.ArgumentParser()
parser.add_argument("--broken", action="store_true", help="train the broken twin")
parser.add_argument("--steps", type=int, default=600)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--conversations", type=int, default=None, help="use only this many conversations")
args = parser.parse_args()

torch.set_num_threads(1)
data = prepare_data(block_size=24, vocab_size=1000, max_conversations=args.conversations)
tok = data.tokenizer
cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=24, dropout=0.0)
broken, fixed = make_twins(cfg, tok.eos_token_id, lr=args.lr, seed=0)
twin = broken if args.broken else fixed
loader = DataLoader(data.batches(args.steps, 32, seed=0), batch_size=None)  # batches built by the demo

for step, batch in enumerate(loader):
    twin.model.train()
    loss = twin.loss_fn(twin.forward(twin.model, batch), batch)
    twin.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(twin.model.parameters(), max_norm=1.0)
    twin.optimizer.step()
    twin.scheduler.step()
    if step % 100 == 0:
        print(f"step {step}: loss {loss.item():.3f}")
print(f"done: loss {loss.item():.3f}")
