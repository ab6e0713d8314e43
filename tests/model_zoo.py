"""Tiny models and batches for the model/loss/optimizer/memory probe tests (healthy twins and bugs).

Everything is built from configs or plain PyTorch, seeded, and runs in milliseconds on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

V = 40  # vocabulary of the token models
C = 5  # classes of the classifiers


def seed(n: int = 0) -> None:
    torch.manual_seed(n)


# ------------------------------------------------------------------ plain PyTorch classifiers
class MLP(nn.Module):
    """A healthy classifier: raw logits out."""

    def __init__(self, d_in: int = 8, hidden: int = 16, classes: int = C, softmax: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)
        self.softmax = nn.Softmax(dim=-1) if softmax else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x))
        return self.softmax(out) if self.softmax is not None else out


class MLPWithBN(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 16, classes: int = C, p: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(p),
                                 nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DetachedHead(nn.Module):
    """A custom head that is computed but not connected to the loss."""

    def __init__(self, d_in: int = 8, hidden: int = 16, classes: int = C):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.base_head = nn.Linear(hidden, classes)
        self.custom_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        extra = self.custom_head(h.detach())  # noqa: F841 - computed, never reaches the loss
        return {"logits": self.base_head(h)}


class LogModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class NaNMLP(nn.Module):
    """Produces NaN in `act_log` (log of negative numbers) for the samples whose first feature < 0."""

    def __init__(self, d_in: int = 8, classes: int = C):
        super().__init__()
        self.inp = nn.Linear(d_in, d_in)
        self.act_log = LogModule()
        self.head = nn.Linear(d_in, classes)
        with torch.no_grad():
            self.inp.weight.copy_(torch.eye(d_in))
            self.inp.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act_log(self.inp(x)))


def classification_batch(n: int = 16, d_in: int = 8, classes: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def xy_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    return model(batch[0])


def ce_loss(out, batch):
    logits = out["logits"] if isinstance(out, dict) else out
    return F.cross_entropy(logits, batch[1])


def nll_loss(out, batch):
    return F.nll_loss(out, batch[1])


# ------------------------------------------------------------------ plain PyTorch decoder-only LM
class TinyLM(nn.Module):
    def __init__(self, vocab: int = V, d: int = 16, T: int = 12):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(T, d)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        h = self.emb(ids) + self.pos(torch.arange(T, device=ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return self.out(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def lm_batch(n: int = 4, T: int = 12, vocab: int = V) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (n, T + 1), generator=g)
    return {"ids": ids[:, :-1].contiguous(), "targets": ids[:, 1:].contiguous()}


def lm_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["ids"])


def lm_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1))


# ------------------------------------------------------------------ tiny Hugging Face models from configs
def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, V, (3, 10), generator=g)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def as_pretrained(model: nn.Module, name: str = "bert-base-uncased") -> nn.Module:
    """The model as if loaded from checkpoint ``name``: its config names it, and its weights (the
    LayerNorms too) are off their initial values, as trained weights are."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.config._name_or_path = name
    return model


def hf_bert_classifier(num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=num_labels, pad_token_id=0)
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1, V, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[0, 6:] = 0
    mask[0, 6:] = 0
    return model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def hf_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    seed(0)
    cfg = T5Config(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, V, (3, 8), generator=g)
    labels = torch.randint(2, V, (3, 6), generator=g)
    labels[:, -1] = 1
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def hf_bart():
    from transformers import BartConfig, BartForConditionalGeneration

    seed(0)
    cfg = BartConfig(vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    model = BartForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(3, V, (3, 8), generator=g)
    labels = torch.randint(3, V, (3, 6), generator=g)
    labels[:, -1] = 2
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def no_decay_adamw(model: nn.Module, lr: float = 1e-3) -> torch.optim.AdamW:
    """AdamW with the usual no-decay group for biases and norm weights."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr)
