"""Probes on what reaches the loss: ``double-softmax``, ``nll-without-log-softmax``, ``loss-broadcast``
and ``init-loss-mismatch``.

Both read the loss calls the main pass observed (the exact tensors that reached ``cross_entropy``,
``nll_loss`` or BCE), so they cost no extra pass.

- ``double-softmax`` (error): the tensor given to ``cross_entropy`` has rows that are non-negative
  and sum to 1 — probabilities, so the loss applies a second softmax; ``nll_loss`` given
  probabilities instead of log-probabilities; ``binary_cross_entropy_with_logits`` given the output
  of a sigmoid (read from the autograd graph).
- ``nll-without-log-softmax`` (error): the tensor given to ``nll_loss`` is neither probabilities
  (``double-softmax``) nor log-probabilities: some row has a value above 0 or a log-sum-exp away from
  0 (beyond rounding). ``nll_loss`` only picks ``-x[y]``: on raw scores it rewards making the target
  score large, without bound, and never pushes the other classes down.
- ``loss-broadcast`` (error): an element-wise loss (``mse_loss``, ``l1_loss``, ``smooth_l1_loss``,
  ``huber_loss``, the BCEs, ``kl_div``) receives an input and a target of different shapes that
  broadcast to more elements than either holds: a ``(B, 1)`` prediction against a ``(B,)`` target
  becomes ``(B, B)``, every prediction compared with every target (torch only warns).
- ``init-loss-mismatch`` (warning): on a model that looks untrained (no checkpoint name on it or
  any submodule), the loss is far above what uniform guessing gives — above ln C + max(1, ln C / 2)
  for ``cross_entropy`` (or ``nll_loss`` on log-probabilities), ln 2 + 1 for BCE-with-logits: the
  output layer is badly scaled. Not for a (B, B) output of in-batch contrastive similarities, whose
  logits carry a temperature by design. Default-initialised layers and Hugging Face inits start near ln C.

    >>> import torch
    >>> from traindoc.probes.loss import producer
    >>> producer(torch.randn(2, 3, requires_grad=True).softmax(-1).view(6))
    'SoftmaxBackward0'
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from traindoc.findings import Finding
from traindoc.setup import checkpoint_names

_VIEW_NODES = {
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "TransposeBackward0",
    "TransposeBackward1", "PermuteBackward0", "SliceBackward0", "SelectBackward0", "CloneBackward0",
    "IndexBackward0", "ExpandBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2",
    "UnsqueezeBackward0", "AsStridedBackward0", "ToCopyBackward0", "MaskedSelectBackward0",
    "AliasBackward0", "ContiguousBackward0", "IndexSelectBackward0",
}


def producer(t: torch.Tensor) -> str | None:
    """Name of the autograd node that computed ``t``, looking through reshapes, slices and copies
    (``SoftmaxBackward0``, ``SigmoidBackward0``, ``AddmmBackward0``...); None for a leaf."""
    node = t.grad_fn
    for _ in range(64):
        if node is None:
            return None
        name = type(node).__name__
        if name not in _VIEW_NODES:
            return name
        nxt = [f for f, _ in node.next_functions if f is not None]
        node = nxt[0] if nxt else None
    return None


def _class_dim(x: torch.Tensor) -> int:
    return 1 if x.dim() >= 2 else 0


def _probability_rows(x: torch.Tensor, cdim: int) -> tuple[bool, float, float]:
    """(all rows non-negative and summing to 1, min value, max |row sum - 1|)."""
    tol = 3e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-3  # rounding of half-precision sums
    x = x.detach().float()
    if x.numel() == 0 or x.shape[cdim] < 2 or not bool(torch.isfinite(x).all()):
        return False, float("nan"), float("nan")
    lo = float(x.min())
    dev = float((x.sum(cdim) - 1).abs().max())
    return lo >= 0 and dev <= tol, lo, dev


def _log_probability_rows(x: torch.Tensor, cdim: int) -> tuple[bool, float, float]:
    """(all rows <= 0 with log-sum-exp 0, max value, max |log-sum-exp|)."""
    tol = 3e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-3
    x = x.detach().float()
    if x.numel() == 0 or x.shape[cdim] < 2 or not bool(torch.isfinite(x).all()):
        return True, float("nan"), float("nan")  # nothing to judge
    hi = float(x.max())
    lse = float(torch.logsumexp(x, cdim).abs().max())
    return hi <= tol and lse <= tol, hi, lse


def nll_without_log_softmax(ctx: Any) -> list[Finding]:
    """``nll-without-log-softmax``: raw scores reach ``nll_loss`` (see the module docstring)."""
    for call in ctx.main.loss_calls:
        x = call.input
        if call.fn != "nll_loss" or not x.is_floating_point() or x.numel() == 0:
            continue
        cdim = _class_dim(x)
        if _probability_rows(x, cdim)[0]:
            continue  # probabilities: double-softmax says so
        ok, hi, lse = _log_probability_rows(x, cdim)
        if ok:
            continue
        return [Finding(
            "nll-without-log-softmax", "error",
            f"nll_loss receives raw scores, not log-probabilities: its {tuple(x.shape)} input has values up to "
            f"{hi:.3g} and rows whose log-sum-exp is up to {lse:.3g} away from 0, so the loss -x[y] has no lower "
            "bound and never pushes the other classes down",
            {"loss_function": "nll_loss", "input_shape": list(x.shape), "max_value": hi, "max_abs_logsumexp": lse,
             "produced_by": producer(x)},
            "Apply `F.log_softmax(logits, dim=-1)` (or `nn.LogSoftmax(dim=-1)`) before nll_loss, or use "
            "`nn.CrossEntropyLoss()` / `F.cross_entropy(logits, y)` on the raw logits, which does both.")]
    return []


_ELEMENTWISE = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                "binary_cross_entropy_with_logits", "kl_div")


def loss_broadcast(ctx: Any) -> list[Finding]:
    """``loss-broadcast``: an element-wise loss whose input and target broadcast (see the module docstring)."""
    for call in ctx.main.loss_calls:
        x, t = call.input, call.target
        if call.fn not in _ELEMENTWISE or not isinstance(t, torch.Tensor) or x.shape == t.shape:
            continue
        try:
            shape = torch.broadcast_shapes(x.shape, t.shape)
        except RuntimeError:
            continue
        if math.prod(shape) <= max(x.numel(), t.numel()):
            continue
        fix = ("Give the loss a target of the prediction's shape: "
               + ("`loss_fn(pred.squeeze(-1), target)`" if x.dim() == t.dim() + 1 and x.shape[-1] == 1 else
                  "`loss_fn(pred, target.unsqueeze(-1))`" if t.dim() == x.dim() + 1 and t.shape[-1] == 1 else
                  "`loss_fn(pred, target.view_as(pred))`")
               + " (torch warns \"Using a target size that is different to the input size\").")
        return [Finding(
            "loss-broadcast", "error",
            f"{call.fn} compares a {tuple(x.shape)} prediction with a {tuple(t.shape)} target: broadcasting makes "
            f"it {tuple(shape)}, so every prediction is scored against every target",
            {"loss_function": call.fn, "input_shape": list(x.shape), "target_shape": list(t.shape),
             "broadcast_shape": list(shape)}, fix)]
    return []


def _softmax_modules(model: nn.Module, paths: dict[int, str]) -> list[str]:
    return [paths.get(id(m), type(m).__name__) for m in model.modules() if isinstance(m, (nn.Softmax, nn.Softmax2d))]


def double_softmax(ctx: Any) -> list[Finding]:
    """``double-softmax``: probabilities reach a loss that expects logits (or log-probabilities)."""
    findings: list[Finding] = []
    softmaxes = _softmax_modules(ctx.setup.model, ctx.paths)
    for call in ctx.main.loss_calls:
        x = call.input
        if not x.is_floating_point() or x.numel() == 0:
            continue
        made_by = producer(x)
        if call.fn in ("cross_entropy", "nll_loss"):
            cdim = _class_dim(x)
            is_prob, lo, dev = _probability_rows(x, cdim)
            if not is_prob:
                continue
            evidence = {"loss_function": call.fn, "input_shape": list(x.shape), "num_classes": x.shape[cdim],
                        "min_value": lo, "max_abs_row_sum_minus_1": dev, "produced_by": made_by,
                        "softmax_modules": softmaxes[:5]}
            where = f" (from {softmaxes[-1]})" if len(softmaxes) == 1 else ""
            if call.fn == "cross_entropy":
                findings.append(Finding(
                    "double-softmax", "error",
                    f"cross_entropy receives probabilities{where}: every row of its {tuple(x.shape)} input "
                    "is non-negative and sums to 1, so a second softmax flattens the gradient",
                    evidence,
                    "Give the loss raw logits: remove the softmax at the end of forward "
                    "(`return self.head(h)`, not `self.softmax(self.head(h))`) and apply "
                    "`logits.softmax(-1)` only at inference."))
            else:
                findings.append(Finding(
                    "double-softmax", "error",
                    f"nll_loss receives probabilities{where}, not log-probabilities: every row of its "
                    f"{tuple(x.shape)} input is non-negative and sums to 1, so the loss is -p[y]",
                    evidence,
                    "Use `F.log_softmax(logits, dim=-1)` before nll_loss (or `F.cross_entropy(logits, y)` on "
                    "raw logits), not softmax."))
        elif call.fn == "binary_cross_entropy_with_logits" and made_by == "SigmoidBackward0":
            findings.append(Finding(
                "double-softmax", "error",
                "binary_cross_entropy_with_logits receives the output of a sigmoid: it applies a second one",
                {"loss_function": call.fn, "input_shape": list(x.shape), "produced_by": made_by,
                 "min_value": float(x.detach().min()), "max_value": float(x.detach().max())},
                "Remove the sigmoid before the loss (`BCEWithLogitsLoss` takes raw logits), or use "
                "`nn.BCELoss` on probabilities."))
    return findings


def init_loss_mismatch(ctx: Any) -> list[Finding]:
    """``init-loss-mismatch``: on an untrained-looking model, loss far above ln C (uniform guessing)."""
    if checkpoint_names(ctx.setup.model) or ctx.batch_by_batch:
        return []  # a checkpoint is trained already; in-batch contrastive logits carry a temperature by design
    findings: list[Finding] = []
    call = ctx.loss_call
    bce = [c for c in ctx.main.loss_calls if c.fn == "binary_cross_entropy_with_logits"]
    if call is not None and call.fn in ("cross_entropy", "nll_loss"):
        x = call.input
        cdim = _class_dim(x)
        C = x.shape[cdim]
        if C < 2 or _probability_rows(x, cdim)[0]:
            return []  # double-softmax explains it
        if call.fn == "nll_loss":
            lse = x.detach().float().logsumexp(cdim)
            if not bool(torch.isfinite(lse).all()) or float(lse.abs().max()) > 1e-2:
                return []  # not log-probabilities: the uniform baseline does not apply
        losses, ignored, oor, _ = call.per_element()
        valid = ~ignored & ~oor & torch.isfinite(losses)
        if not bool(valid.any()):
            return []
        measured = float(losses[valid].mean())
        expected = math.log(C)
        limit = expected + max(1.0, 0.5 * expected)
        if measured > limit:
            xs = x.detach().float()
            findings.append(Finding(
                "init-loss-mismatch", "warning",
                f"Initial loss {measured:.2f} is far above ln({C}) = {expected:.2f}, the loss of uniform "
                "guessing: the logits start badly scaled",
                {"loss": measured, "expected_ln_C": expected, "num_classes": C, "threshold": limit,
                 "logits_std": float(xs.std()) if xs.numel() > 1 else 0.0,
                 "logits_max_abs": float(xs.abs().max()), "targets_counted": int(valid.sum()),
                 "loss_function": call.fn},
                "Start from small logits: initialise the output layer small (`nn.init.normal_(head.weight, "
                "std=0.02); nn.init.zeros_(head.bias)`), normalise the inputs, and check that the loss "
                "gets raw logits and the right targets. A model that starts near ln C trains faster and "
                "more stably."))
    elif bce:
        c = bce[0]
        x = c.input.detach().float()
        if producer(c.input) == "SigmoidBackward0":
            return []
        losses = torch.nn.functional.binary_cross_entropy_with_logits(x, c.target.float(), reduction="none")
        finite = torch.isfinite(losses)
        if not bool(finite.any()):
            return []
        measured = float(losses[finite].mean())
        expected = math.log(2)
        if measured > expected + 1.0:
            findings.append(Finding(
                "init-loss-mismatch", "warning",
                f"Initial BCE loss {measured:.2f} is far above ln 2 = {expected:.2f}: the logits start badly scaled",
                {"loss": measured, "expected_ln_2": expected, "logits_std": float(x.std()) if x.numel() > 1 else 0.0,
                 "logits_max_abs": float(x.abs().max()), "loss_function": c.fn},
                "Initialise the output layer small (std 0.02, zero bias) and normalise the inputs."))
    return findings
