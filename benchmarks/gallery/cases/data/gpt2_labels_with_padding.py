"""A GPT-2 fine-tuning loop that passes labels=input_ids from a padded batch: the pads are targets.

Source: https://github.com/huggingface/transformers/issues/7135
Source: https://github.com/huggingface/transformers/issues/2001
Expect: padding-in-loss

The sentences of a batch have different lengths, so the tokenizer pads them; the model's own loss only
skips labels equal to -100, so every pad position is a target. A good part of the loss is then spent
predicting "<pad> after <pad>", which is easy: the reported loss drops while the model learns less about
the real text, and generation is biased towards pads. The fix is
`labels = input_ids.masked_fill(attention_mask == 0, -100)`.
"""

import sys

import chitchat_dataset
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

# one-line messages from the Chit-Chat Challenge conversations
texts = []
for conversation in chitchat_dataset.ConversationDataset():
    texts += [m.strip() for m in conversation if 10 <= len(m.strip()) <= 80]
    if len(texts) >= 3000:
        break

bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   show_progress=False))
tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>")

config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                    eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
model = GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

batch_size = 16
model.train()
for step in range(160):
    i = (step * batch_size) % len(texts)
    batch = tokenizer([t + tokenizer.eos_token for t in texts[i:i + batch_size]], padding=True,
                      truncation=True, max_length=64, return_tensors="pt")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    labels = input_ids.clone()  # BUG
    if FIXED:
        labels = labels.masked_fill(attention_mask == 0, -100)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    outputs.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step % 20 == 0:
        print(f"step {step}: loss {outputs.loss.item():.3f}")
