"""The demo's data: chit-chat (prompt, reply) pairs, a GPT-2-style tokenizer trained here, and
batches padded the way the chatbot's author padded them.

A batch is a dict of ``(B, T)`` tensors, all padded to the same block size ``T`` (the broken
model's ``nn.Transformer`` with ``batch_first=False`` needs encoder and decoder to share dim 1):

- ``input_ids``: prompt + EOS, padded with EOS (pad == EOS, as with GPT-2);
- ``attention_mask``: True on the real tokens of ``input_ids`` (the Hugging Face polarity, kept as
  bool because ``nn.Transformer`` rejects int64 masks);
- ``target_inputs``: EOS (GPT-2's BOS is the same token) + reply, padded with EOS;
- ``target_labels``: reply + EOS, padded with EOS -- ``target_inputs`` shifted left by one;
- ``target_attention_mask``: True on the real tokens of ``target_inputs``.

    >>> tok = train_tokenizer(["hello there", "how are you?", "fine thanks"] * 20, vocab_size=300)
    >>> tok.pad_token_id == tok.eos_token_id
    True
    >>> b = build_batch([(tok.encode("hello"), tok.encode("fine thanks"))], tok, block_size=8)
    >>> tok.decode(b["target_labels"][0][b["target_attention_mask"][0]].tolist())
    'fine thanks<|endoftext|>'
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

EOS = "<|endoftext|>"
Pair = tuple[list[int], list[int]]  # (prompt ids, reply ids)


class DemoTokenizer:
    """The few attributes of a Hugging Face tokenizer that the demo and `traindoc.check` read, on a
    `tokenizers.Tokenizer`. GPT-2's one special token ``<|endoftext|>`` is BOS, EOS and PAD."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.eos_token = EOS
        self.eos_token_id = self.bos_token_id = self.pad_token_id = backend.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> DemoTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on `texts`, in memory."""
    import tokenizers as tk

    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return DemoTokenizer(tokenizer)


def load_conversations() -> list[list[str]]:
    """The Chit-Chat Challenge conversations (~7k, a stand-in for DailyDialog), each a list of messages."""
    import chitchat_dataset

    return [[m.strip() for m in conv] for conv in chitchat_dataset.ConversationDataset()]


def build_batch(pairs: Sequence[Pair], tok: Any, block_size: int) -> dict[str, torch.Tensor]:
    """Pad (prompt, reply) id pairs into one batch (see the module docstring). Prompts and replies
    must be at most ``block_size - 1`` tokens long. Reads only ``tok.eos_token_id``."""
    eos = tok.eos_token_id
    n = len(pairs)
    batch = {key: torch.full((n, block_size), eos, dtype=torch.long)
             for key in ("input_ids", "target_inputs", "target_labels")}
    batch["attention_mask"] = torch.zeros((n, block_size), dtype=torch.bool)
    batch["target_attention_mask"] = torch.zeros((n, block_size), dtype=torch.bool)
    for i, (prompt, reply) in enumerate(pairs):
        if len(prompt) >= block_size or len(reply) >= block_size:
            raise ValueError(f"pair {i} is longer than block_size - 1 = {block_size - 1} tokens")
        src, tgt = len(prompt) + 1, len(reply) + 1
        batch["input_ids"][i, :src] = torch.tensor([*prompt, eos])
        batch["attention_mask"][i, :src] = True
        batch["target_inputs"][i, :tgt] = torch.tensor([eos, *reply])
        batch["target_labels"][i, :tgt] = torch.tensor([*reply, eos])
        batch["target_attention_mask"][i, :tgt] = True
    return batch


@dataclass
class DemoData:
    """The tokenizer, the training pairs and the held-out pairs (from other conversations)."""

    tokenizer: DemoTokenizer
    train_pairs: list[Pair]
    heldout_pairs: list[Pair]
    block_size: int

    def batches(self, n_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
        """`n_batches` training batches in a fixed shuffled order (a new epoch reshuffles)."""
        rng = random.Random(seed)
        order: list[int] = []
        out = []
        for _ in range(n_batches):
            if len(order) < batch_size:
                epoch = list(range(len(self.train_pairs)))
                rng.shuffle(epoch)
                order += epoch
            idx, order = order[:batch_size], order[batch_size:]
            out.append(build_batch([self.train_pairs[i] for i in idx], self.tokenizer, self.block_size))
        return out

    def heldout_batches(self, batch_size: int, n_batches: int) -> list[dict[str, torch.Tensor]]:
        """Up to `n_batches` full held-out batches (one smaller batch when there are fewer pairs)."""
        pairs = self.heldout_pairs[: batch_size * n_batches]
        size = min(batch_size, len(pairs)) or 1
        return [build_batch(pairs[i: i + size], self.tokenizer, self.block_size)
                for i in range(0, len(pairs) - size + 1, size)]


def prepare_data(block_size: int = 24, vocab_size: int = 1000, max_conversations: int | None = None,
                 tokenizer_messages: int = 30000, heldout_fraction: float = 0.05,
                 conversations: list[list[str]] | None = None, seed: int = 0) -> DemoData:
    """Load (or take) conversations, train the tokenizer on their first `tokenizer_messages` messages,
    and keep every pair of consecutive messages whose prompt and reply both fit in ``block_size - 1``
    tokens. Conversations, not pairs, are split: held-out replies come from conversations never
    trained on."""
    convs = [c for c in (conversations if conversations is not None else load_conversations()) if len(c) >= 2]
    random.Random(seed).shuffle(convs)
    convs = convs[:max_conversations]
    messages = [m for c in convs for m in c]
    tok = train_tokenizer(messages[:tokenizer_messages], vocab_size=vocab_size)
    encoded = iter(e.ids for e in tok.backend.encode_batch(messages))
    enc_convs = [[next(encoded) for _ in c] for c in convs]
    n_held = max(1, int(len(enc_convs) * heldout_fraction))

    def pairs_of(cs: list[list[list[int]]]) -> list[Pair]:
        return [(a, b) for c in cs for a, b in zip(c, c[1:], strict=False)
                if 0 < len(a) < block_size and 0 < len(b) < block_size]

    return DemoData(tok, pairs_of(enc_convs[n_held:]), pairs_of(enc_convs[:n_held]), block_size)
