"""Static sanity of the optimizer's configuration: ``lr-too-high`` and ``weight-decay-on-norms``.

No pass at all: these read the param groups. Dynamic confirmation (loss rising with the LR,
update/weight ratios) belongs to the monitor and the LR experiments.

- ``lr-too-high`` (warning): an Adam-family optimizer with lr >= 5e-4 on most of the weights of a
  model that was loaded from a checkpoint (a Hugging Face config with ``_name_or_path``, on the model
  or a submodule, whose normalisation layers are not at their initial values: a model built with
  ``from_config`` from a config folder trains from scratch; `traindoc.setup.checkpoint_names`). Fine-tuning transformers wants 1e-5..1e-4 (the Hugging Face course: Adam's default 1e-3 wrecks
  the pretrained weights). A scheduler's peak (``initial_lr``) counts, so a warmup that starts at 0
  does not hide it; a new head alone at a higher LR is fine. Parameter-efficient fine-tuning is not
  fine-tuning the checkpoint: adapter weights (LoRA ``lora_A``/``lora_B``, adapters, prefixes and
  prompts, named as PEFT names them) are new, not pretrained, and when at least 90% of the
  checkpoint's values are frozen the trainable rest (adapters, a new head) is not judged — a typical
  adapter LR (1e-4..1e-3) is not too high.
- ``weight-decay-on-norms`` (hint): a param group with weight_decay > 0 holds 1-d parameters
  (biases, LayerNorm/BatchNorm weights).

    >>> import torch
    >>> group_lr({"lr": 0.0, "initial_lr": 1e-3})
    0.001
"""

from __future__ import annotations

import re
from typing import Any

import torch

from traindoc.findings import Finding
from traindoc.setup import checkpoint_names, param_names, pretrained_param_ids

HIGH_LR = 5e-4
FROZEN_BASE = 0.9
_ADAPTER = re.compile(r"(^|\.)(lora_[A-Za-z_]*|adapters?|adapter_[a-z_]*|ia3_[a-z_]*|prefix_encoder|prompt_encoder)"
                      r"(\.|$)")
SANE_RANGE = (1e-5, 1e-4)


def group_lr(group: dict[str, Any]) -> float:
    """The LR a param group will reach: the larger of its current ``lr`` and the scheduler's
    ``initial_lr`` (warmup schedules start near 0)."""
    values = []
    for key in ("lr", "initial_lr", "max_lr"):
        v = group.get(key)
        if isinstance(v, torch.Tensor):
            v = float(v.detach().reshape(-1)[0])
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values.append(float(v))
    return max(values) if values else 0.0


def lr_too_high(ctx: Any) -> list[Finding]:
    """``lr-too-high``: Adam-family lr >= 5e-4 on most pretrained weights."""
    opt = ctx.setup.optimizer
    model = ctx.setup.model
    if opt is None or "adam" not in type(opt).__name__.lower():
        return []
    checkpoints = checkpoint_names(model)
    if not checkpoints:
        return []
    pretrained = pretrained_param_ids(model)
    loaded = {id(p): p for n, p in model.named_parameters() if id(p) in pretrained and not _ADAPTER.search(n)}
    frozen = sum(p.numel() for p in loaded.values() if not p.requires_grad)
    if frozen >= FROZEN_BASE * sum(p.numel() for p in loaded.values()):
        return []  # adapters or a head on a frozen checkpoint: nothing pretrained is being fine-tuned
    trainable_pre = {i: p.numel() for i, p in loaded.items() if p.requires_grad}
    total = sum(trainable_pre.values())
    if total == 0:
        return []
    high_groups, covered = [], 0
    for i, g in enumerate(opt.param_groups):
        lr = group_lr(g)
        if lr >= HIGH_LR:
            n = sum(trainable_pre.get(id(p), 0) for p in g["params"])
            if n:
                high_groups.append({"group": i, "lr": lr, "pretrained_numel": n})
                covered += n
    if not high_groups or covered / total < 0.5:
        return []
    lr = max(g["lr"] for g in high_groups)
    return [Finding(
        "lr-too-high", "warning",
        f"{type(opt).__name__} lr={lr:g} on a pretrained model ({checkpoints[0]}): fine-tuning wants "
        f"{SANE_RANGE[0]:g}..{SANE_RANGE[1]:g}; at this LR the first steps destroy what it learned",
        {"optimizer": type(opt).__name__, "lr": lr, "groups": high_groups, "checkpoint": checkpoints[0],
         "pretrained_fraction_at_this_lr": covered / total, "sane_range": list(SANE_RANGE),
         "threshold": HIGH_LR},
        f"Use lr in {SANE_RANGE[0]:g}..{SANE_RANGE[1]:g} with a short warmup, e.g. "
        "`torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)` and "
        "`get_linear_schedule_with_warmup(opt, num_warmup_steps=0.06 * total, num_training_steps=total)`; "
        "a freshly added head may keep a higher LR in its own param group.")]


def weight_decay_on_norms(ctx: Any) -> list[Finding]:
    """``weight-decay-on-norms``: a group with weight_decay > 0 holds 1-d params (biases, norms)."""
    opt = ctx.setup.optimizer
    if opt is None:
        return []
    names = param_names(ctx.setup.model)
    groups = []
    for i, g in enumerate(opt.param_groups):
        wd = g.get("weight_decay", 0) or 0
        if isinstance(wd, torch.Tensor):
            wd = float(wd)
        if wd <= 0:
            continue
        one_d = [p for p in g["params"] if p.dim() <= 1 and p.requires_grad]
        if one_d:
            groups.append({"group": i, "weight_decay": wd, "num_1d_params": len(one_d),
                           "examples": [names.get(id(p), f"param[{j}]") for j, p in enumerate(one_d)][:6]})
    if not groups:
        return []
    n = sum(g["num_1d_params"] for g in groups)
    return [Finding(
        "weight-decay-on-norms", "hint",
        f"Weight decay {groups[0]['weight_decay']:g} also applies to {n} biases/normalisation weights "
        f"(e.g. {', '.join(groups[0]['examples'][:3])})",
        {"groups": groups, "num_1d_params": n, "optimizer": type(opt).__name__},
        "Put 1-d parameters in a group without decay:\n"
        "decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]\n"
        "no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]\n"
        "opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01},\n"
        "                         {'params': no_decay, 'weight_decay': 0.0}], lr=...)")]
