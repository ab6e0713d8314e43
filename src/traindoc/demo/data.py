"""The demo's data: chit-chat (prompt, reply) pairs, a GPT-2-style tokenizer trained locally, and
batches built exactly the way the seed-000 author built them.

A batch is a dict of ``(B, T)`` tensors, every one padded to the same block size ``T`` (the seed's
``nn.Transformer`` with ``batch_first=False`` needs encoder and decoder to share dimension 1):

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


class MissingDemoDependency(ImportError):
    """An optional package the demo needs is not installed."""


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDemoDependency(module) from e


class DemoTokenizer:
    """A tiny Hugging Face-like face on a `tokenizers.Tokenizer`: GPT-2's single special token
    ``<|endoftext|>`` serves as BOS, EOS and PAD."""

    def __init__(self, tokenizer: Any):
        self.backend = tokenizer
        self.eos_token = self.bos_token = self.pad_token = EOS
        self.eos_token_id = self.bos_token_id = self.pad_token_id = tokenizer.token_to_id(EOS)
        self.all_special_ids = [self.eos_token_id]
        self.all_special_tokens = [EOS]

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Iterable[Any], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def __repr__(self) -> str:
        return f"DemoTokenizer(vocab_size={self.vocab_size}, eos=pad={self.eos_token_id})"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> DemoTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on `texts`, in memory."""
    tk = _require("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return DemoTokenizer(tokenizer)


def load_conversations() -> list[list[str]]:
    """The Chit-Chat Challenge conversations (~7k, a stand-in for DailyDialog), one list of messages each."""
    ccc = _require("chitchat_dataset")
    return [[m.strip() for m in conv] for conv in ccc.ConversationDataset()]


Pair = tuple[list[int], list[int]]


def build_batch(pairs: Sequence[Pair], tok: DemoTokenizer, block_size: int) -> dict[str, torch.Tensor]:
    """Pad token-id pairs into the seed's batch (see the module docstring). Prompts and replies must be
    at most ``block_size - 1`` tokens long."""
    eos = tok.eos_token_id
    n = len(pairs)
    input_ids = torch.full((n, block_size), eos, dtype=torch.long)
    target_inputs = torch.full((n, block_size), eos, dtype=torch.long)
    target_labels = torch.full((n, block_size), eos, dtype=torch.long)
    attention_mask = torch.zeros((n, block_size), dtype=torch.bool)
    target_attention_mask = torch.zeros((n, block_size), dtype=torch.bool)
    for i, (prompt, reply) in enumerate(pairs):
        if len(prompt) >= block_size or len(reply) >= block_size:
            raise ValueError(f"pair {i} is longer than block_size - 1 = {block_size - 1} tokens")
        src = [*prompt, eos]
        input_ids[i, : len(src)] = torch.tensor(src)
        attention_mask[i, : len(src)] = True
        tin = [eos, *reply]
        target_inputs[i, : len(tin)] = torch.tensor(tin)
        target_labels[i, : len(tin)] = torch.tensor([*reply, eos])
        target_attention_mask[i, : len(tin)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "target_inputs": target_inputs,
            "target_labels": target_labels, "target_attention_mask": target_attention_mask}


@dataclass
class DemoData:
    """Tokenizer, encoded training pairs and held-out pairs (from other conversations)."""

    tokenizer: DemoTokenizer
    train_pairs: list[Pair]
    heldout_pairs: list[Pair]
    block_size: int

    def batches(self, n_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
        """`n_batches` training batches in a fixed shuffled order (epochs wrap around)."""
        rng = random.Random(seed)
        order: list[int] = []
        out = []
        for _ in range(n_batches):
            if len(order) < batch_size:
                fresh = list(range(len(self.train_pairs)))
                rng.shuffle(fresh)
                order += fresh
            idx, order = order[:batch_size], order[batch_size:]
            out.append(build_batch([self.train_pairs[i] for i in idx], self.tokenizer, self.block_size))
        return out

    def heldout_batches(self, batch_size: int, n_batches: int) -> list[dict[str, torch.Tensor]]:
        pairs = self.heldout_pairs[: batch_size * n_batches]
        return [build_batch(pairs[i: i + batch_size], self.tokenizer, self.block_size)
                for i in range(0, len(pairs) - batch_size + 1, batch_size)]


def prepare_data(block_size: int = 24, vocab_size: int = 2000, max_conversations: int | None = None,
                 tokenizer_messages: int = 30000, heldout_fraction: float = 0.05,
                 conversations: list[list[str]] | None = None, seed: int = 0) -> DemoData:
    """Load conversations, train the tokenizer on a subset of messages, and encode every pair of
    consecutive messages whose prompt and reply both fit in ``block_size - 1`` tokens.

    Conversations are split (not pairs), so held-out replies come from conversations never trained on.
    """
    convs = conversations if conversations is not None else load_conversations()
    convs = [c for c in convs if len(c) >= 2]
    rng = random.Random(seed)
    rng.shuffle(convs)
    if max_conversations is not None:
        convs = convs[:max_conversations]
    messages = [m for c in convs for m in c]
    tok = train_tokenizer(messages[:tokenizer_messages], vocab_size=vocab_size)
    encoded = iter(tok.encode_batch(messages))
    enc_convs = [[next(encoded) for _ in c] for c in convs]
    n_held = max(1, int(len(enc_convs) * heldout_fraction))

    def pairs_of(cs: list[list[list[int]]]) -> list[Pair]:
        return [(a, b) for c in cs for a, b in zip(c, c[1:], strict=False)
                if 0 < len(a) < block_size and 0 < len(b) < block_size]

    return DemoData(tok, pairs_of(enc_convs[n_held:]), pairs_of(enc_convs[:n_held]), block_size)
