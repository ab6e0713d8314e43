"""Probes on the trainable parameters: ``no-grad-params`` and ``params-not-in-optimizer``.

- ``no-grad-params``: after the one counted backward of the user's loss (`ProbeContext.param_grads`),
  trainable parameters whose gradient is None (not reached by the loss's graph: a head whose output
  is not used, a branch cut by ``.detach()`` or ``torch.no_grad()``) or exactly zero everywhere.
  Only whole parameters count: an embedding's rows for tokens absent from the batch, or its
  padding row, are legitimately zero and do not make the whole matrix zero.
- ``params-not-in-optimizer``: trainable parameters that no param group holds (compared by
  identity) — e.g. a head built after the optimizer; frozen parameters inside the optimizer are a hint.

Findings are grouped by the largest module whose trainable parameters are all affected, so a whole
disconnected head reads as one line.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    >>> [g["module"] for g in group_by_module(model, {id(p) for p in model[1].parameters()})]
    ['1']
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import torch
from torch import nn

from traindoc.findings import Finding
from traindoc.setup import param_names


def group_by_module(model: nn.Module, flagged: set[int], limit: int = 20) -> list[dict[str, Any]]:
    """Group flagged trainable parameters (by ``id``) under the largest modules whose trainable
    parameters are all flagged; a module with only some flagged parameters lists those."""
    names = param_names(model)
    groups: list[dict[str, Any]] = []
    emitted: set[int] = set()

    def emit(path: str, module: nn.Module, params: list[torch.Tensor]) -> None:
        params = [p for p in params if id(p) not in emitted]
        if not params:
            return
        emitted.update(id(p) for p in params)
        groups.append({"module": path or "(whole model)", "class": type(module).__name__,
                       "params": [names.get(id(p), "?") for p in params][:8], "num_params": len(params),
                       "numel": sum(p.numel() for p in params)})

    def walk(module: nn.Module, path: str) -> None:
        trainable = {id(p): p for p in module.parameters() if p.requires_grad}
        if not trainable or not (trainable.keys() & flagged):
            return
        if trainable.keys() <= flagged:
            emit(path, module, list(trainable.values()))
            return
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) in flagged]
        emit(path, module, own)
        for name, child in module.named_children():
            walk(child, f"{path}.{name}" if path else name)

    walk(model, "")
    return groups[:limit]


_EXPERT = re.compile(r"(^|\.)(experts?|expert_\d+)(\.|$)")


@functools.lru_cache(maxsize=256)
def _methods_source(cls: type) -> str:
    """The source of the methods this class really runs (its own and inherited, torch's left out): a
    module used only in training is often called from a helper, not from ``forward`` itself
    (torchvision's GoogLeNet: ``forward`` -> ``_forward`` -> ``if self.training: aux = self.aux1(x)``)."""
    parts = []
    for _, fn in inspect.getmembers(cls, inspect.isfunction):
        if (getattr(fn, "__module__", "") or "").startswith("torch."):
            continue
        try:
            parts.append(inspect.getsource(fn))
        except (OSError, TypeError):
            continue
    return "\n".join(parts)


def _legitimately_unused(model: nn.Module, path: str) -> str | None:
    """Why a module may get no gradient by design: a mixture-of-experts expert the router did not pick,
    or a module its parent only calls in training mode (``if self.training: aux = self.aux(x)``, in
    ``forward`` or in a method it calls; the main pass runs in eval mode)."""
    if _EXPERT.search(path):
        return "mixture-of-experts experts not routed on this batch"
    parts = path.split(".") if path and path != "(whole model)" else []
    if parts and parts[-1] == "pooler" and hasattr(_parent(model, parts), "config"):
        return ("a Hugging Face pooler, unused when the loss reads last_hidden_state; harmless "
                "(`add_pooling_layer=False` drops it)")
    for i in range(len(parts)):
        try:
            parent = model.get_submodule(".".join(parts[:i])) if i else model
        except AttributeError:
            return None
        lines = _methods_source(type(parent)).splitlines()
        uses = re.compile(rf"self\.{re.escape(parts[i])}\b")
        for k, line in enumerate(lines):
            if "self.training" in line and any(uses.search(x) for x in lines[k:k + 4]):
                return f"{type(parent).__name__} uses {parts[i]} only when self.training"
    return None


def _parent(model: nn.Module, parts: list[str]) -> nn.Module | None:
    try:
        return model.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else model
    except AttributeError:
        return None


def _titles(groups: list[dict[str, Any]], k: int = 3) -> str:
    shown = ", ".join(f"{g['module']} ({g['num_params']} param{'s' if g['num_params'] > 1 else ''})"
                      for g in groups[:k])
    return shown + (f" and {len(groups) - k} more" if len(groups) > k else "")


def no_grad_params(ctx: Any) -> list[Finding]:
    """``no-grad-params``: trainable parameters with a None or all-zero gradient of the user's loss."""
    model = ctx.setup.model
    loss = ctx.main.loss
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        frozen = sum(p.numel() for p in model.parameters())
        return [Finding(
            "no-grad-params", "error",
            f"No parameter of the model is trainable: all {frozen:,} values have requires_grad=False, so "
            "training cannot change anything",
            {"num_params": frozen, "trainable": 0},
            "Unfreeze what should learn, e.g. `for p in model.classifier.parameters(): p.requires_grad_(True)` "
            "(and build the optimizer on those parameters).")]
    if loss is None:
        return []
    if not loss.requires_grad:
        total = sum(p.numel() for _, p in trainable)
        return [Finding(
            "no-grad-params", "error",
            f"The loss does not require grad: none of the {len(trainable)} trainable parameters "
            f"({total:,} values) can get a gradient",
            {"loss_source": ctx.main.loss_source, "loss_grad_fn": None, "num_trainable_params": len(trainable),
             "groups": group_by_module(model, {id(p) for _, p in trainable})},
            "The loss is cut from the model's graph: remove `torch.no_grad()`/`.detach()`/`.item()`/"
            "`torch.tensor(loss)` on the way to the loss, and compute it from the model's output tensors "
            "(for Hugging Face: pass `labels` so that `output.loss` is computed, or compute the loss from "
            "`output.logits`).")]
    grads = ctx.param_grads
    by_name = dict(trainable)
    none_ids = {id(by_name[n]) for n, g in grads.items() if g is None and n in by_name}
    present = [(n, g) for n, g in grads.items() if g is not None]
    zero_ids: set[int] = set()
    if present:
        nonzero = torch.stack([g.detach().count_nonzero() for _, g in present]).cpu().tolist()  # one sync
        zero_ids = {id(by_name[n]) for (n, _), c in zip(present, nonzero, strict=True) if c == 0 and n in by_name}
    findings: list[Finding] = []
    if none_ids:
        groups = group_by_module(model, none_ids)
        for g in groups:
            why = _legitimately_unused(model, g["module"])
            if why:
                g["may_be_expected"] = why
        proved = [g for g in groups if "may_be_expected" not in g]
        excused = [g for g in groups if "may_be_expected" in g]
        numel = sum(g["numel"] for g in proved)
        if proved:
            findings.append(Finding(
                "no-grad-params", "error",
                f"{sum(g['num_params'] for g in proved)} of {len(trainable)} trainable parameters get no "
                "gradient from the loss: " + _titles(proved),
                {"groups": proved, "num_params": sum(g["num_params"] for g in proved), "numel": numel,
                 "num_trainable_params": len(trainable), "gradient": "None (not reached by the loss's graph)"},
                "Connect these modules to the loss: use their output in forward (e.g. "
                "`logits = self.head(pooled)` and return those logits), remove `.detach()`/`torch.no_grad()` "
                "on the way, or freeze them explicitly with `module.requires_grad_(False)` if they are "
                "unused on purpose."))
        if excused:
            findings.append(Finding(
                "no-grad-params", "hint",
                f"{sum(g['num_params'] for g in excused)} trainable parameters get no gradient on this batch, "
                "probably by design: " + _titles(excused) + f" ({excused[0]['may_be_expected']})",
                {"groups": excused, "num_params": sum(g["num_params"] for g in excused),
                 "num_trainable_params": len(trainable), "gradient": "None (not reached by the loss's graph)"},
                "Nothing to do if these modules are only used in training mode or are experts the router did "
                "not pick for this batch; otherwise connect them to the loss."))
    if zero_ids:
        groups = group_by_module(model, zero_ids)
        zero_weights = [n for n, p in trainable if p.numel() > 0 and not bool(p.detach().any())]
        explained = bool(zero_weights)
        evidence: dict[str, Any] = {"groups": groups, "num_params": len(zero_ids),
                                    "num_trainable_params": len(trainable), "gradient": "exactly zero everywhere"}
        if explained:
            evidence["all_zero_weights"] = zero_weights[:10]
        findings.append(Finding(
            "no-grad-params", "hint" if explained else "error",
            f"{len(zero_ids)} trainable parameters get an all-zero gradient on this batch: " + _titles(groups)
            + (" (probably because weights downstream are zero-initialised: they move after the first step)"
               if explained else ""),
            evidence,
            "If a zero-initialised layer (LoRA B, a zero-init residual branch) explains it, nothing to do. "
            "Otherwise find what multiplies their contribution by zero: an all-zero mask, a ReLU that is "
            "dead for the whole batch, a gate stuck at 0."))
    return findings


def params_not_in_optimizer(ctx: Any) -> list[Finding]:
    """``params-not-in-optimizer``: trainable params absent from every param group (error); frozen
    params inside the optimizer (hint). Skipped without an optimizer."""
    opt = ctx.setup.optimizer
    if opt is None:
        return []
    model = ctx.setup.model
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    params: dict[int, tuple[str, torch.Tensor]] = {}
    for n, p in model.named_parameters():
        params.setdefault(id(p), (n, p))
    trainable = {i for i, (_, p) in params.items() if p.requires_grad}
    missing = trainable - in_opt
    frozen_inside = {i for i, (_, p) in params.items() if not p.requires_grad and i in in_opt}
    foreign = len(in_opt - set(params))
    findings: list[Finding] = []
    if missing:
        groups = group_by_module(model, missing)
        numel = sum(params[i][1].numel() for i in missing)
        everything = missing == trainable
        title = (f"None of the {len(trainable)} trainable parameters are in the optimizer"
                 + (f" (it holds {foreign} parameters of another model instance)" if foreign else "")
                 if everything else
                 f"{len(missing)} of {len(trainable)} trainable parameters are in no optimizer param group: "
                 + _titles(groups))
        findings.append(Finding(
            "params-not-in-optimizer", "error", title,
            {"groups": groups, "num_params": len(missing), "numel": numel, "num_trainable_params": len(trainable),
             "optimizer": type(opt).__name__, "param_groups": len(opt.param_groups),
             "optimizer_params_not_in_model": foreign},
            "Create the optimizer after the model is complete (`optimizer = torch.optim.AdamW(model.parameters(), "
            "lr=...)`), or add what was built later: `optimizer.add_param_group({'params': head.parameters()})`."
            + (" The optimizer holds the parameters of another instance of the model: build it from the "
               "model you train (after any copy or re-creation)." if everything and foreign else "")))
    if frozen_inside:
        groups = group_by_module_frozen(model, frozen_inside)
        findings.append(Finding(
            "params-not-in-optimizer", "hint",
            f"{len(frozen_inside)} frozen parameters (requires_grad=False) are in the optimizer: "
            + _titles(groups),
            {"frozen_in_optimizer": groups, "num_params": len(frozen_inside)},
            "Harmless (they get no gradient), but if you meant to train them set `requires_grad_(True)`; "
            "otherwise pass only trainable ones: `AdamW(p for p in model.parameters() if p.requires_grad)`."))
    return findings


def group_by_module_frozen(model: nn.Module, flagged: set[int], limit: int = 20) -> list[dict[str, Any]]:
    """Like `group_by_module`, for frozen parameters (grouped by their owning module)."""
    groups: dict[str, dict[str, Any]] = {}
    names = param_names(model)
    for n, p in model.named_parameters():
        if id(p) not in flagged:
            continue
        path = n.rsplit(".", 1)[0] if "." in n else "(whole model)"
        g = groups.setdefault(path, {"module": path, "params": [], "num_params": 0, "numel": 0})
        g["params"].append(names[id(p)])
        g["num_params"] += 1
        g["numel"] += p.numel()
    return list(groups.values())[:limit]
