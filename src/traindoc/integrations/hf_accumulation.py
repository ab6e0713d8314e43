"""The Hugging Face Trainer's gradient-accumulation normalisation, proved from what a micro-batch
returns (the measurement and the judgement behind `traindoc.integrations.hf.TraindocCallback`'s check;
its module docstring tells the whole procedure).

With ``gradient_accumulation_steps = k`` and a model that accepts loss kwargs, the Trainer passes
``num_items_in_batch`` and stops dividing by ``k``, trusting the model to sum its per-item losses and
divide by the step's item count. `item_losses` recomputes that sum and count from the logits and
labels the way the model's loss defines them; `judge_micro_batch` compares it with the loss the model
returned and with the gradient the Trainer sent into it; `accumulation_finding` states what was proved.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from traindoc.findings import Finding, listed

CHECK_STEPS = 3
"""Optimizer steps whose micro-batches the accumulation check inspects at most (until one is decisive)."""
_LOSS_RTOL = 1e-2
"""The returned loss 'equals' a recomputation within this relative tolerance (bf16 logits included)."""
_SCALE_TOL = 0.05
"""The gradient reaching the returned loss 'is' 1 or 1/k within this relative tolerance."""
_MIN_ITEM_RATIO = 1.5
"""num_items_in_batch / the micro-batch's items at least this: a plain mean and a normalised sum differ."""
_CHUNK_ELEMENTS = 1 << 24
"""The recomputed cross-entropy reads at most this many logits at a time (bounded extra memory)."""


@dataclass
class MicroBatch:
    returned: torch.Tensor  # the loss the model returned (a copy: the Trainer may scale it in place)
    item_sum: torch.Tensor  # its per-item losses, recomputed from the logits and labels, summed
    items: torch.Tensor  # the micro-batch's items (targets not ignored)
    num_items: torch.Tensor  # num_items_in_batch as the Trainer passed it (the whole step's items)
    kind: str
    width: int  # the logits' last dimension (classes, vocabulary)
    grad: torch.Tensor | None = None  # d(backpropagated objective) / d(returned loss), set in the backward


def keep_grad(mb: MicroBatch, grad: torch.Tensor) -> None:
    with contextlib.suppress(Exception):  # a backward hook must never raise into the training's backward
        mb.grad = grad.detach().reshape(-1)[0].clone()


def amp_scale(scaler: Any) -> float:
    """The loss scale of the AMP ``GradScaler`` Accelerate keeps on its optimizer (1 without one)."""
    if scaler is None or (hasattr(scaler, "is_enabled") and not scaler.is_enabled()):
        return 1.0
    return float(scaler.get_scale())


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (rows, classes) logits, -100 ignored, a chunk of rows at a time."""
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    for i in range(0, logits.shape[0], rows):
        total += F.cross_entropy(logits[i:i + rows].float(), targets[i:i + rows], ignore_index=-100, reduction="sum")
    return total


def _loss_shifts_labels(model: Any) -> bool:
    """The model's loss is transformers' causal-LM loss (predictions at i target label i+1)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss

        return getattr(model, "loss_function", None) is ForCausalLMLoss
    except Exception:
        return False


def item_losses(model: Any, logits: torch.Tensor, labels: torch.Tensor,
                 shift_labels: Any) -> tuple[str, torch.Tensor, torch.Tensor, int] | None:
    """``(kind, sum of the per-item losses, item count, logits width)`` as the model's loss defines
    them (transformers' heads and `loss_utils`), or None when this is not a loss mirrored here."""
    labels = labels.to(logits.device)
    width = int(logits.shape[-1]) if logits.dim() else 0
    if logits.dim() == 2 and labels.dim() >= 1 and labels.shape[0] == logits.shape[0]:  # one prediction per sample
        problem = getattr(getattr(model, "config", None), "problem_type", None)
        if problem is None:  # as the sequence-classification heads decide it
            problem = ("regression" if width == 1 else "single_label_classification"
                       if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
        if problem == "single_label_classification" and not labels.is_floating_point():
            targets = labels.reshape(-1)
            if targets.numel() != logits.shape[0]:
                return None
            return "cross-entropy over samples", _ce_sum(logits, targets), targets.ne(-100).sum(), width
        if problem == "regression":
            pred, target = (logits.squeeze(), labels.squeeze()) if width == 1 else (logits, labels)
            if pred.shape != target.shape:
                return None
            diff = pred.float() - target.float()
            return ("squared error over label values", diff.square().sum(),
                    torch.tensor(diff.numel(), device=logits.device), width)
        if problem == "multi_label_classification" and labels.shape == logits.shape:
            bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
            return "binary cross-entropy over label values", bce, torch.tensor(labels.numel(), device=logits.device), width
        return None
    if logits.dim() == 3 and not labels.is_floating_point():  # one prediction per token
        kind = "cross-entropy over tokens"
        if isinstance(shift_labels, torch.Tensor):
            targets, kind = shift_labels.to(logits.device), kind + " (shift_labels)"
        elif _loss_shifts_labels(model):
            targets, kind = F.pad(labels, (0, 1), value=-100)[..., 1:], kind + " (shifted: causal LM)"
        else:
            targets = labels
        if targets.shape != logits.shape[:-1]:
            return None
        targets = targets.reshape(-1)
        return kind, _ce_sum(logits.reshape(-1, width), targets), targets.ne(-100).sum(), width
    return None


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def judge_micro_batch(returned: float, item_sum: float, items: float, num_items: float, grad: float,
                       k: int) -> dict[str, Any]:
    """One micro-batch: which loss the model returned, whether the Trainer divided it, the verdict."""
    mean = item_sum / items if items > 0 else math.nan
    normalised = item_sum / num_items if num_items > 0 else math.nan
    is_mean, is_normalised = _close(returned, mean, _LOSS_RTOL), _close(returned, normalised, _LOSS_RTOL)
    not_divided = _close(grad, 1.0, _SCALE_TOL)
    divided = k > 1 and _close(grad * k, 1.0, _SCALE_TOL)
    apart = items > 0 and num_items / items >= _MIN_ITEM_RATIO
    if apart and is_mean and not is_normalised and not_divided:
        verdict = "too-large"
    elif apart and is_normalised and not is_mean and divided:
        verdict = "too-small"
    elif not apart and is_mean and is_normalised:
        verdict = "no-accumulation"
    elif (is_normalised and not_divided) or (is_mean and divided):
        verdict = "healthy"
    else:
        verdict = "undetermined"
    # the factor on the gradient against the step's mean over all its items (1 when right)
    coefficient = (1 / items if is_mean and not is_normalised else 1 / num_items if is_normalised else math.nan)
    return {"returned_loss": returned, "plain_mean": mean, "sum_over_num_items_in_batch": normalised,
            "item_loss_sum": item_sum, "items": items, "num_items_in_batch": num_items,
            "returned_is": ("plain mean (num_items_in_batch ignored)" if is_mean and not is_normalised else
                            "sum / num_items_in_batch" if is_normalised and not is_mean else
                            "both (equal here)" if is_mean else "neither"),
            "loss_gradient_scale": grad,
            "trainer_divided": True if divided else False if not_divided else None,
            "gradient_factor": grad * coefficient * num_items, "verdict": verdict}


REASONS = {
    "too-large": "the model returned a plain mean, ignoring num_items_in_batch, and the Trainer did not divide it "
                 "by the accumulation count",
    "too-small": "the model normalised its loss by num_items_in_batch and the Trainer divided it again",
    "healthy": "the Trainer's division and the model's normalisation agree",
    "no-accumulation": "num_items_in_batch equals the micro-batch's own items: a plain mean and a normalised sum "
                       "coincide",
    "undetermined": "the returned loss or the gradient reaching it matched no known normalisation",
}


def accumulation_finding(verdict: str, rows: list[dict[str, Any]], model_name: str, k: int, accumulation: int,
                          step: int, step_loss: float, classes: int | None) -> Finding:
    r = next(r for r in rows if r["verdict"] == verdict)
    factor = r["gradient_factor"]
    evidence: dict[str, Any] = {
        "model": model_name, "step": step, "gradient_accumulation_steps": accumulation,
        "micro_batches_in_step": k, "loss_kind": r["loss_kind"],
        "returned_loss": r["returned_loss"], "plain_mean": r["plain_mean"],
        "sum_over_num_items_in_batch": r["sum_over_num_items_in_batch"], "items": r["items"],
        "num_items_in_batch": r["num_items_in_batch"], "returned_is": r["returned_is"],
        "loss_gradient_scale": r["loss_gradient_scale"], "trainer_divided": r["trainer_divided"],
        "gradient_factor": factor, "step_loss": step_loss,
        "micro_batches": listed({kk: v for kk, v in row.items() if kk != "loss_kind"} for row in rows)}
    try:
        import transformers

        evidence["transformers_version"] = transformers.__version__
        has_switch = hasattr(transformers.Trainer, "loss_is_scaled_for_ga")
    except Exception:
        has_switch = False
    if verdict == "too-large":
        chance_text = ""
        if classes is not None:
            chance = math.log(classes)
            evidence.update({"classes": classes, "chance_loss": chance, "accumulation_times_chance": k * chance,
                             "step_loss_over_chance": step_loss / chance})
            chance_text = (f"; step {step}'s loss {step_loss:.4g} is {step_loss / chance:.2f} x ln {classes}, "
                           "where a fresh head starts at 1 x")
        title = (f"{model_name} ignores num_items_in_batch, so gradient_accumulation_steps={k} multiplies every "
                 f"gradient and loss by {factor:.2f}: it returned the plain mean {r['returned_loss']:.4g} (not "
                 f"sum / num_items_in_batch = {r['sum_over_num_items_in_batch']:.4g}) and the Trainer did not "
                 f"divide it by {k}{chance_text}")
        switch = "`trainer.loss_is_scaled_for_ga = False` before `trainer.train()`, or " if has_switch else ""
        fix = (f"This model's loss is a per-batch mean, so the Trainer must divide it by the accumulation count: set "
               f"{switch}`model.accepts_loss_kwargs = False` before building the Trainer (it then neither passes "
               "num_items_in_batch nor relies on it). Or train a model whose loss sums its per-item losses and "
               "divides by `num_items_in_batch` (transformers' causal-LM loss does). A lower LR is not the fix: "
               "the logged loss and the clipping at max_grad_norm stay k times off.")
        return Finding("grad-accum-normalization", "error", title, evidence, fix)
    title = (f"The Trainer divided a loss already normalised by num_items_in_batch by "
             f"gradient_accumulation_steps={k}: every gradient is {1 / factor:.2f} times too small "
             f"(gradient reaching the loss {r['loss_gradient_scale']:.3g}, expected 1)")
    fix = ("The model already sums its per-item losses and divides by num_items_in_batch (the whole step's items): "
           "let the Trainer use the loss as it is (remove `loss_is_scaled_for_ga = False`, or the division by "
           "the accumulation steps in your `training_step`/`compute_loss`).")
    return Finding("grad-accum-normalization", "error", title, evidence, fix)
