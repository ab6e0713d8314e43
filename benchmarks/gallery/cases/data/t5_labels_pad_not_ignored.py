"""T5 fine-tuned with labels straight from the padded tokenizer output: pad id 0 is a target, not -100.

Source: https://github.com/allenai/allennlp/issues/5342
Source: https://github.com/huggingface/transformers/issues/6238
Source: https://github.com/abhimishra91/transformers-tutorials/issues/15
Expect: padding-in-loss

T5's pad id is 0, but its loss only ignores -100. Tokenizing the targets with padding=True and passing
them as labels makes the decoder learn to emit <pad> after every target, and those easy positions make up
a good share of the loss: the loss looks better than the model is, and it depends on how much padding
each batch happens to have. The fix is `labels[labels == tokenizer.pad_token_id] = -100`
(DataCollatorForSeq2Seq does it).
"""

import random
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)
random.seed(0)

# task, with a T5-style prefix: "digits: three one four" -> "3 1 4"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
pairs = []
for _ in range(2000):
    digits = [random.randrange(10) for _ in range(random.randint(1, 6))]
    pairs.append(("digits: " + " ".join(NAMES[d] for d in digits), " ".join(str(d) for d in digits)))

vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
for word in ["digits:"] + NAMES + [str(d) for d in range(10)]:
    vocab[word] = len(vocab)
word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
word_level.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", eos_token="</s>",
                                    unk_token="<unk>")

config = T5Config(vocab_size=len(vocab), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                  dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
model = T5ForConditionalGeneration(config)
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

batch_size = 32
model.train()
for step in range(250):
    i = (step * batch_size) % len(pairs)
    source, target = zip(*pairs[i:i + batch_size], strict=True)
    enc = tokenizer(list(source), padding=True, return_tensors="pt")
    labels = tokenizer(list(target), padding=True, return_tensors="pt").input_ids  # BUG
    if FIXED:
        labels[labels == tokenizer.pad_token_id] = -100
    outputs = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels)
    loss = outputs.loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 25 == 0 or step == 249:
        print(f"step {step}: loss {loss.item():.3f}")
