"""Fixtures for the data-probe tests: tokenizers trained locally on a few sentences, tiny Hugging Face
models built from configs (no hub), and tiny plain-PyTorch models with their batches and losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "hello there how are you",
    "i am fine thanks",
    "what a nice day it is",
    "the park is green and the sky is blue",
    "do you like tea or coffee",
    "she reads a book every night",
]
EOT = "<|endoftext|>"


def gpt2_style_tokenizer():
    """A word-level tokenizer whose single special token serves as EOS and PAD (GPT-2's habit)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=[EOT, "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOT, pad_token=EOT, unk_token="<unk>")


def bert_style_tokenizer():
    """A word-level tokenizer with BERT's special tokens ([PAD] = 0, no EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def lm_encoding(tok, n: int = 4):
    """``n`` sentences, each ending with EOS, right-padded with the pad token (= EOS here)."""
    texts = [s + " " + tok.eos_token for s in SENTENCES[:n]]
    return dict(tok(texts, padding=True, return_tensors="pt"))


def tiny_gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tok), n_positions=32,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg)


def tiny_bert_classifier(tok, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=num_labels,
                     pad_token_id=tok.pad_token_id)
    return BertForSequenceClassification(cfg)


def classification_encoding(tok, labels: list[int]):
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(len(labels))]
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    enc["labels"] = torch.tensor(labels)
    return enc


# ------------------------------------------------------------------------------ plain PyTorch
V, E = 40, 16
PAD = 0


class TinyGRULM(nn.Module):
    """A decoder-only LM that is causal by construction (a unidirectional GRU)."""

    def __init__(self, vocab: int = V):
        super().__init__()
        self.emb = nn.Embedding(vocab, E)
        self.rnn = nn.GRU(E, E, batch_first=True)
        self.head = nn.Linear(E, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.rnn(self.emb(input_ids))[0])


def lm_batch(B: int = 4, T: int = 10, pad: int = PAD, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded token rows with lengths T, T-2, T-4, ... (ids 2..V-1, so 0 and 1 are special)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for i in range(B):
        n = max(3, T - 2 * i)
        ids[i, n:] = pad
        mask[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def shifted_masked_loss(out: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """The right loss: predict token t+1, padding out by position."""
    targets = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
    return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), targets.reshape(-1))


def shifted_unmasked_loss(out: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Shifted, but every pad is a target."""
    return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), b["input_ids"][:, 1:].reshape(-1))


def unshifted_loss(out: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """The copy bug: targets are the inputs at the same position (padding kept out)."""
    targets = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))


class TinyClassifier(nn.Module):
    """Embedding, masked mean over real tokens, linear head."""

    def __init__(self, classes: int = 3, vocab: int = V):
        super().__init__()
        self.emb = nn.Embedding(vocab, E)
        self.head = nn.Linear(E, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


def classifier_loss(out: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(out, b["labels"])


def classifier_batch(labels: list[int], T: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    b = lm_batch(len(labels), T, seed=seed)
    b["labels"] = torch.tensor(labels)
    return b


class TinyTagger(nn.Module):
    """Token classification: a tag per token."""

    def __init__(self, tags: int = 3, vocab: int = V):
        super().__init__()
        self.emb = nn.Embedding(vocab, E)
        self.head = nn.Linear(E, tags)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.emb(input_ids))


def tagger_loss(out: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), b["labels"].reshape(-1))
