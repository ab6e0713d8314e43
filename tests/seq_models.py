"""Tiny sequence models for the dependency-probe tests: the chatbot whose loss sticks at ~5 (broken and fixed),
a decoder-only LM with and without a causal mask, and classifiers that pool with or without the
padding."""

from __future__ import annotations

import torch
from torch import nn

from traindoc.demo.model import PositionalEncoding  # as the demo's chatbot builds it

V, E, H = 50, 32, 4
EOS = 0  # pad == eos, as GPT-2's tokenizer gives


class StuckChatbot(nn.Module):
    """The chatbot whose loss sticks at ~5 (nn.Transformer at batch_first=False fed (B, T, E), no causal
    mask, HF masks as key-padding masks); `fixed=True` is the corrected twin."""

    def __init__(self, fixed: bool = False, *, causal: bool | None = None, batch_first: bool | None = None,
                 invert_masks: bool | None = None):
        super().__init__()
        self.batch_first = fixed if batch_first is None else batch_first
        self.causal = fixed if causal is None else causal
        self.hf_masks_as_kpm = (not fixed) if invert_masks is None else invert_masks
        self.enc_emb = nn.Embedding(V, E)
        self.enc_pos = PositionalEncoding(E, 64)
        self.dec_emb = nn.Embedding(V, E)
        self.dec_pos = PositionalEncoding(E, 64)
        self.transformer = nn.Transformer(E, H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
                                          dropout=0.1, activation="gelu", norm_first=True,
                                          batch_first=self.batch_first)
        self.fin = nn.Linear(E, V)

    def forward(self, enc_ids, dec_ids, target=None, enc_mask=None, dec_mask=None):
        enc = self.enc_pos(self.enc_emb(enc_ids))
        dec = self.dec_pos(self.dec_emb(dec_ids))
        T = dec_ids.shape[1]
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(T) if self.causal else None
        if self.hf_masks_as_kpm:  # the seed: HF masks (1 = keep) transposed to fit, used as True = ignore
            src_kpm, tgt_kpm, mem_kpm = enc_mask.bool(), dec_mask.bool(), None
        else:
            src_kpm, tgt_kpm = enc_mask == 0, dec_mask == 0
            mem_kpm = src_kpm
        out = self.transformer(enc, dec, tgt_mask=tgt_mask, src_key_padding_mask=src_kpm,
                               tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=mem_kpm,
                               tgt_is_causal=self.causal if self.causal else None)
        return self.fin(out)


def chatbot_batch(B: int = 4, T: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """input_ids (prompt + eos, padded with eos), attention_mask, target_inputs (eos + reply),
    target_labels (reply + eos), target_attention_mask — as a hand-written seq2seq loop often builds them."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.full((B, T), EOS)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    tin = torch.full((B, T), EOS)
    tlab = torch.full((B, T), EOS)
    tmask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = T - 1 - (b % 3)
        prompt = torch.randint(1, V, (n,), generator=g)
        input_ids[b, :n] = prompt
        attention_mask[b, : n + 1] = 1
        m = T - 1 - ((b + 1) % 3)
        reply = torch.randint(1, V, (m,), generator=g)
        tin[b, 1 : m + 1] = reply
        tlab[b, :m] = reply
        tmask[b, : m + 1] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "target_inputs": tin,
            "target_labels": tlab, "target_attention_mask": tmask}


def chatbot_forward(broken_layout: bool):
    """The broken loop's call: masks transposed (1, 0) to fit batch_first=False."""

    def forward(model, b):
        em, dm = b["attention_mask"], b["target_attention_mask"]
        if broken_layout:
            em, dm = em.transpose(1, 0), dm.transpose(1, 0)
        return model(b["input_ids"], b["target_inputs"], b["target_labels"], em, dm)

    return forward


def chatbot_loss(out, b):
    """The broken loop's loss: every eos target (= every pad, and the real end) dropped."""
    targets = b["target_labels"]
    mask = targets != EOS
    return nn.functional.cross_entropy(out.reshape(-1, V)[mask.view(-1)], targets[mask].view(-1))


def fixed_loss(out, b):
    """Padding masked by the attention mask; the first EOS of each reply kept as a target."""
    labels = b["target_labels"].masked_fill(b["target_attention_mask"] == 0, -100)
    return nn.functional.cross_entropy(out.reshape(-1, V), labels.view(-1), ignore_index=-100)


class TinyDecoderLM(nn.Module):
    """Decoder-only LM from nn.TransformerEncoder; `causal=False` forgets the mask."""

    def __init__(self, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.emb = nn.Embedding(V, E)
        self.pos = nn.Embedding(16, E)
        layer = nn.TransformerEncoderLayer(E, H, 64, dropout=0.1, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(E, V)

    def forward(self, input_ids, attention_mask=None):
        T = input_ids.shape[1]
        x = self.emb(input_ids) + self.pos(torch.arange(T, device=input_ids.device))[None]
        mask = nn.Transformer.generate_square_subsequent_mask(T) if self.causal else None
        kpm = (attention_mask == 0) if attention_mask is not None else None
        return self.head(self.body(x, mask=mask, src_key_padding_mask=kpm, is_causal=self.causal))


def lm_loss(out, b):
    labels = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
    return nn.functional.cross_entropy(out[:, :-1].reshape(-1, V), labels.reshape(-1))


def lm_batch(B: int = 4, T: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -3:] = 0
    if B > 3:
        mask[3, -5:] = 0
    ids[mask == 0] = EOS
    return {"input_ids": ids, "attention_mask": mask}


class PoolingClassifier(nn.Module):
    """Text classifier; `mask_pads=False` mean-pools over the padding too (a padding leak)."""

    def __init__(self, mask_pads: bool = True, classes: int = 3):
        super().__init__()
        self.mask_pads = mask_pads
        self.emb = nn.Embedding(V, E)
        layer = nn.TransformerEncoderLayer(E, H, 64, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(E, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        h = self.body(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        w = attention_mask.unsqueeze(-1).float() if self.mask_pads else torch.ones_like(h[..., :1])
        logits = self.head((h * w).sum(1) / w.sum(1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}
