"""The chatbot whose loss sticks at ~5 (`BrokenLanguageModel`), its fixed twin, how each is called,
and their losses.

The broken model has four bugs, all common:

- ``nn.Transformer(...)`` is built with the default ``batch_first=False`` but fed ``(B, T, E)``
  tensors, so attention runs across the samples of the batch (and each position is its own
  "batch" element);
- no ``tgt_mask``: nothing stops the decoder from reading the tokens it has to predict;
- the Hugging Face attention masks (True = real token) are passed, transposed to ``(T, B)`` so
  that the shapes fit, as ``*_key_padding_mask`` (True = ignore this key);
- its loss drops every target equal to EOS, and pad == EOS, so the model never learns to stop.

The fixed twin has the same parameters (same names and shapes: the same RNG seed gives the same
weights) and the same forward signature ``model(enc_ids, dec_ids, target, enc_mask, dec_mask)``:

    >>> cfg = ModelConfig(vocab_size=50, n_embd=16, n_head=2, n_layer=1, block_size=8)
    >>> _ = torch.manual_seed(0); broken = BrokenLanguageModel(cfg)
    >>> _ = torch.manual_seed(0); fixed = FixedLanguageModel(cfg)
    >>> all(torch.equal(a, b) for a, b in zip(broken.state_dict().values(), fixed.state_dict().values()))
    True
    >>> ids = torch.randint(1, 50, (3, 8)); mask = torch.ones(3, 8, dtype=torch.bool)
    >>> fixed(ids, ids, None, mask, mask).shape, broken(ids, ids, None, mask.T, mask.T).shape
    (torch.Size([3, 8, 50]), torch.Size([3, 8, 50]))
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the demo model (2+2 layers, small enough to train on one CPU core in two minutes)."""

    vocab_size: int
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 2
    block_size: int = 24
    dim_feedforward: int = 256
    dropout: float = 0.1


class PositionalEncoding(nn.Module):
    """Sinusoidal positions added to ``(B, T, E)`` embeddings (positions on dim 1)."""

    def __init__(self, n_embd: int, block_size: int):
        super().__init__()
        position = torch.arange(block_size).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, n_embd, 2) * (-math.log(10000.0) / n_embd))
        pe = torch.zeros(block_size, n_embd)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)  # (1, block_size, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.size(1)]


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linear layers with zero biases, as in PyTorch's ``nn.Transformer`` tutorials.
    Embeddings keep PyTorch's N(0, 1), so token identity is not drowned by the sinusoidal positions."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _Seq2Seq(nn.Module):
    """The parameters both twins share; only `forward` and ``batch_first`` differ."""

    batch_first = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder_embedding_layer = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.encoder_positional_encoder = PositionalEncoding(cfg.n_embd, cfg.block_size)
        self.decoder_embedding_layer = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.decoder_positional_encoder = PositionalEncoding(cfg.n_embd, cfg.block_size)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ... norm_first was True"
            warnings.filterwarnings("ignore", message="enable_nested_tensor", category=UserWarning)
            self.transformer = nn.Transformer(
                cfg.n_embd, cfg.n_head, num_encoder_layers=cfg.n_layer, num_decoder_layers=cfg.n_layer,
                dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout, activation="gelu",
                norm_first=True, batch_first=self.batch_first,
            )
        self.fin = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.apply(init_weights)


class BrokenLanguageModel(_Seq2Seq):
    """The chatbot as first written: ``batch_first=False`` fed ``(B, T, E)``, no causal mask, and the
    masks it is given passed straight through as key-padding masks."""

    batch_first = False

    def forward(self, encoder_idx: torch.Tensor, decoder_idx: torch.Tensor, target: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        enc = self.encoder_positional_encoder(self.encoder_embedding_layer(encoder_idx))
        dec = self.decoder_positional_encoder(self.decoder_embedding_layer(decoder_idx))
        output = self.transformer(enc, dec, src_key_padding_mask=encoder_attention_mask,
                                  tgt_key_padding_mask=decoder_attention_mask)
        return self.fin(output)


class FixedLanguageModel(_Seq2Seq):
    """The same model done right: ``batch_first=True``, a causal ``tgt_mask``, padding masks with the
    polarity PyTorch expects (True = ignore), also on the memory. Masks come as ``(B, T)``."""

    batch_first = True

    def forward(self, encoder_idx: torch.Tensor, decoder_idx: torch.Tensor, target: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        enc = self.encoder_positional_encoder(self.encoder_embedding_layer(encoder_idx))
        dec = self.decoder_positional_encoder(self.decoder_embedding_layer(decoder_idx))
        src_pad = None if encoder_attention_mask is None else ~encoder_attention_mask.bool()
        tgt_pad = None if decoder_attention_mask is None else ~decoder_attention_mask.bool()
        # bool (True = may not attend), the same type as the padding masks
        causal = nn.Transformer.generate_square_subsequent_mask(decoder_idx.size(1), device=decoder_idx.device,
                                                                dtype=torch.bool)
        output = self.transformer(enc, dec, tgt_mask=causal, tgt_is_causal=True,
                                  src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                                  memory_key_padding_mask=src_pad)
        return self.fin(output)


def broken_forward(model: nn.Module, b: Batch) -> torch.Tensor:
    """The broken call: Hugging Face masks transposed to ``(T, B)`` so that their shape fits
    ``batch_first=False``, their polarity left as it is."""
    return model(b["input_ids"], b["target_inputs"], b["target_labels"],
                 b["attention_mask"].transpose(1, 0), b["target_attention_mask"].transpose(1, 0))


def fixed_forward(model: nn.Module, b: Batch) -> torch.Tensor:
    """The fixed call: Hugging Face masks as they come, ``(B, T)``; the model inverts them."""
    return model(b["input_ids"], b["target_inputs"], b["target_labels"],
                 b["attention_mask"], b["target_attention_mask"])


def loss_without_eos_targets(output: torch.Tensor, batch: Batch, eos_token_id: int) -> torch.Tensor:
    """The broken model's loss: every target equal to EOS is dropped -- the padding, and with it the
    EOS that ends each reply."""
    targets = batch["target_labels"]
    keep = targets != eos_token_id
    return F.cross_entropy(output[keep], targets[keep])


def reply_token_loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the real reply tokens and the EOS that ends each reply.

    ``target_attention_mask`` covers ``bos + reply`` in ``target_inputs``, which lines up with
    ``reply + eos`` in ``target_labels``: padding is out, the EOS that ends the reply stays in. This is
    the fixed model's training loss and the held-out metric for both models.
    """
    keep = batch["target_attention_mask"].bool()
    return F.cross_entropy(output[keep], batch["target_labels"][keep])
