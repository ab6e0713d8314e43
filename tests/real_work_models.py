"""Setups common in real work that a one-batch check must get right: each healthy one (no error, no
warning a user would call false) beside its bug twin (the finding must still be proved).

Every model is tiny, seeded and built from plain PyTorch or a small Hugging Face config (no hub).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from model_zoo import as_pretrained

V, D, T, B = 40, 32, 10, 6


def tokens(B: int = B, T: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- gradient checkpointing
class CheckpointedLM(nn.Module):
    """A decoder-only LM whose blocks run under ``torch.utils.checkpoint`` (activations recomputed in
    backward), with or without the causal mask."""

    def __init__(self, causal: bool = True, reentrant: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.causal, self.reentrant = causal, reentrant
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(D, 4, 64, dropout=0.0, batch_first=True)
                                    for _ in range(2))
        self.head = nn.Linear(D, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1]) if self.causal else None
        for block in self.blocks:
            h = torch.utils.checkpoint.checkpoint(block, h, mask, use_reentrant=self.reentrant)
        return self.head(h)


def next_token_loss(out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def tiny_gpt2_lm(checkpointing: bool):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    ids = tokens()
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


# ----------------------------------------------------------------------------- prefix LM
class PrefixLM(nn.Module):
    """A prefix LM: the prompt (the first ``prefix`` positions) attends both ways, the reply causally;
    ``leak=True`` lets the reply see its future too (the bug)."""

    def __init__(self, prefix: int = 4, leak: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.prefix, self.leak = prefix, leak
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.block = nn.TransformerEncoderLayer(D, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(D, V)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        n = input_ids.shape[1]
        blocked = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        blocked[: self.prefix, : self.prefix] = False  # the prompt sees the whole prompt
        if self.leak:
            blocked[:] = False
        h = self.block(self.tok(input_ids) + self.pos(torch.arange(n)), src_mask=blocked)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
        return {"logits": logits, "loss": loss}


def prefix_batch(prefix: int = 4) -> dict[str, torch.Tensor]:
    ids = tokens()
    labels = ids.clone()
    labels[:, :prefix] = -100  # the prompt is not trained on
    return {"input_ids": ids, "labels": labels}


# ----------------------------------------------------------------------------- training-only branch
class AuxHeadNet(nn.Module):
    """GoogLeNet's shape: ``forward`` calls a helper whose auxiliary head runs only in training."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.aux = nn.Linear(16, 3)
        self.head = nn.Linear(16, 3)

    def _forward(self, x: torch.Tensor):
        h = self.body(x)
        aux = None
        if self.training:
            aux = self.aux(h)
        return self.head(h), aux

    def forward(self, x: torch.Tensor):
        out, aux = self._forward(x)
        return out if aux is None else out + 0.3 * aux


class DeadHeadNet(AuxHeadNet):
    """The bug twin: the auxiliary head is built and trained but never used, in any mode."""

    def _forward(self, x: torch.Tensor):
        h = self.body(x)
        return self.head(h), None


# ----------------------------------------------------------------------------- adapters
class LoRALinear(nn.Module):
    """A LoRA adapter around a frozen Linear (the names PEFT uses: ``lora_A``, ``lora_B``)."""

    def __init__(self, base: nn.Linear, r: int = 4):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


def bert_with_lora(adapters: bool):
    """A tiny BERT classifier 'loaded from a checkpoint' (its config names one): with adapters, the
    base is frozen and only LoRA weights and the new head train; without, the whole model trains."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = as_pretrained(transformers.BertForSequenceClassification(cfg))
    if adapters:
        model.requires_grad_(False)
        for layer in model.bert.encoder.layer:
            att = layer.attention.self
            att.query, att.value = LoRALinear(att.query), LoRALinear(att.value)
        model.classifier.requires_grad_(True)
    ids = tokens()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(B) % 3}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, batch, torch.optim.AdamW(trainable, lr=1e-3)


# ----------------------------------------------------------------------------- contrastive
class TwoTower(nn.Module):
    """CLIP's shape: per-sample embeddings of two views, then the batch x batch similarity matrix the
    in-batch contrastive loss needs (cross-sample by design)."""

    def __init__(self, mix_batch: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.b = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.mix_batch = mix_batch

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ea, eb = F.normalize(self.a(x), dim=-1), F.normalize(self.b(y), dim=-1)
        if self.mix_batch:  # the bug: a batch-statistics normalisation leaks other samples into each row
            ea = ea - ea.mean(0, keepdim=True)
        return ea @ eb.t() / 0.07


def contrastive_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    target = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def pairs(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)


# ----------------------------------------------------------------------------- (inputs, targets)
class OneInput(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- (logits, loss) models
class KarpathyGPT(nn.Module):
    """nanoGPT's and minGPT's convention: ``forward(idx, targets=None) -> (logits, loss)``; with
    ``cut=True`` the head's input is detached (the bug: the body gets no gradient)."""

    def __init__(self, cut: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.cut = cut
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.block = nn.TransformerEncoderLayer(D, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(D, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        n = idx.shape[1]
        h = self.block(self.tok(idx) + self.pos(torch.arange(n)),
                       src_mask=nn.Transformer.generate_square_subsequent_mask(n), is_causal=True)
        logits = self.head(h.detach() if self.cut else h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
        return logits, loss


def xy_lm_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokens(T=T + 1)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


# ----------------------------------------------------------------------------- same-length padding
def t5_same_length(labels_padded_with_pad_id: bool = False):
    """A tiny T5 whose encoder and decoder inputs are both padded to one max length (the tokenizer's
    ``padding="max_length"``), each with its own mask; the labels' padding is -100 (healthy) or the pad
    id (the bug: padding reaches the loss)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(5)
    n = 8
    ids = torch.randint(2, V, (4, n), generator=g)
    enc_len, dec_len = torch.tensor([8, 6, 5, 3]), torch.tensor([4, 7, 8, 2])
    attention_mask = (torch.arange(n)[None] < enc_len[:, None]).long()
    ids = ids.masked_fill(attention_mask == 0, 0)
    target = torch.randint(2, V, (4, n), generator=g)
    decoder_attention_mask = (torch.arange(n)[None] < dec_len[:, None]).long()
    target[torch.arange(4), dec_len - 1] = 1  # EOS ends every target
    target = target.masked_fill(decoder_attention_mask == 0, 0)
    labels = target if labels_padded_with_pad_id else target.masked_fill(decoder_attention_mask == 0, -100)
    return model, {"input_ids": ids, "attention_mask": attention_mask, "labels": labels,
                   "decoder_attention_mask": decoder_attention_mask}
