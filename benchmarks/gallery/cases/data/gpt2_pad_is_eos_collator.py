"""GPT-2 fine-tuned with pad_token = eos_token and DataCollatorForLanguageModeling: EOS is never a target.

Source: https://github.com/huggingface/transformers/issues/23530
Source: https://github.com/huggingface/trl/issues/976
Source: https://github.com/huggingface/blog/issues/1302
Expect: pad-equals-eos

GPT-2 has no pad token, so the usual recipe is `tokenizer.pad_token = tokenizer.eos_token`. The causal-LM
collator then builds the labels with `labels[labels == pad_token_id] = -100`, which drops every EOS, the
real ones that end each message too: the model is never taught to end a sequence and generation runs on
until max_length. The fix is a dedicated pad token (`add_special_tokens({"pad_token": "<pad>"})`, with an
embedding row for it), or labels masked by the attention mask instead of by token id.
"""

import sys
import tempfile

import chitchat_dataset
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

texts = []
for conversation in chitchat_dataset.ConversationDataset():
    texts += [m.strip() for m in conversation if 10 <= len(m.strip()) <= 60]
    if len(texts) >= 2000:
        break

bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   show_progress=False))
tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
if FIXED:
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
else:
    tokenizer.pad_token = tokenizer.eos_token  # BUG

train_dataset = [tokenizer(t + tokenizer.eos_token, truncation=True, max_length=64) for t in texts]
data_collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)  # BUG

config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
model = GPT2LMHeadModel(config)

args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=16, max_steps=120,
                         learning_rate=3e-3, logging_steps=20, save_strategy="no", report_to="none",
                         use_cpu=True, seed=0, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator)
trainer.train()

# how likely does the model end a message where the message really ends?
model.eval()
with torch.no_grad():
    probs = []
    for t in texts[:200]:
        ids = tokenizer(t, return_tensors="pt")["input_ids"]
        next_token = model(ids).logits[0, -1].softmax(-1)
        probs.append(next_token[tokenizer.eos_token_id].item())
print(f"mean P(eos) at the end of a message: {sum(probs) / len(probs):.3f}")
