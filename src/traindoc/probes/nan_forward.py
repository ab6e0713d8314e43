"""Probe ``nan-forward``: where a NaN/Inf is born, and which samples it hits.

The main pass already flags every module whose output is non-finite, in the order the modules
*finished* (a submodule finishes before its parent), so the first flagged module is the innermost,
earliest culprit. Only when something is non-finite does this probe spend one more forward, with a
hook on that module alone, to learn which samples are affected and whether its input was finite.
When every module output is finite but the loss is not, the per-sample losses are recomputed from
the loss call that was observed (no forward at all), and the bad samples' common trait is named
(their label, an all-ignored target, non-finite logits).

`locate_nonfinite` is the entry point of the training monitor: when a NaN fires during training it
replays the saved batch through this probe, leaving the model exactly as it was.

    >>> import torch
    >>> class Log(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.log(x)
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), Log(), torch.nn.Linear(4, 2))
    >>> [(f.evidence["first_module"], f.evidence["module_class"]) for f in locate_nonfinite(model, torch.randn(6, 4))]
    [('2', 'Log')]
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from traindoc.findings import Finding, internal_failure
from traindoc.probes.main_pass import LossObserver
from traindoc.setup import named_tensors

FIX_MODULE = (
    "Make that computation stable: use `F.log_softmax`/`F.cross_entropy` instead of "
    "`torch.log(softmax(x))`, add an epsilon to divisions, logs and norms (`x / (n + 1e-6)`, "
    "`torch.log(x.clamp_min(1e-8))`), keep that module in float32 under autocast, and lower the LR "
    "if the weights themselves have blown up."
)


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first floating tensor in a module output (tensor, tuple/list, dict, HF ModelOutput)."""
    return next((t for t in named_tensors(value).values() if t.is_floating_point()), None)


def batch_axis(t: torch.Tensor, batch_size: int, prefer: int | None = None) -> int | None:
    """Which axis of ``t`` runs over the samples: 0 when its size is B, else 1 (sequence-first
    layouts), else None."""
    if prefer is not None and t.dim() > prefer and t.shape[prefer] == batch_size:
        return prefer
    for axis in (0, 1):
        if t.dim() > axis and t.shape[axis] == batch_size:
            return axis
    return None


def bad_samples(t: torch.Tensor, batch_size: int) -> list[int] | None:
    """Indices of the samples with a non-finite value in ``t`` (None when no axis is the batch)."""
    axis = batch_axis(t, batch_size)
    if axis is None:
        return None
    bad = ~torch.isfinite(t.detach())
    per_sample = bad.movedim(axis, 0).reshape(batch_size, -1).any(1)
    return per_sample.nonzero().flatten().cpu().tolist()


def losses_per_sample(values: torch.Tensor, ctx: Any) -> torch.Tensor | None:
    """Reshape per-target values to (B, -1) when the targets can be mapped to samples: the targets
    have B rows, or are a flattened batch tensor whose first axis is the batch."""
    B = ctx.setup.batch_size
    if values.dim() >= 1 and values.shape[0] == B:
        return values.reshape(B, -1)
    name = ctx.target_name
    source = ctx.setup.tensors.get(name) if name else None
    if source is not None and source.numel() == values.numel() and source.shape[0] == B:
        return values.reshape(B, -1)
    return None


def _loss_only_finding(ctx: Any, loss: torch.Tensor) -> Finding:
    """The loss is non-finite while every module output is finite: recompute per-sample losses."""
    call = ctx.loss_call or next(iter(ctx.main.loss_calls), None)
    evidence: dict[str, Any] = {"loss": float(loss.detach().float().reshape(-1)[0]), "first_module": None,
                                "module_outputs_finite": True}
    if call is None:
        evidence["where"] = "loss computation (no standard loss function was observed)"
        return Finding(
            "nan-forward", "error", "The loss is non-finite while every module output is finite",
            evidence,
            "The non-finite value arises in your loss code: guard logs and divisions "
            "(`torch.log(p.clamp_min(1e-8))`, divide by `mask.sum().clamp_min(1)`), or use "
            "`F.cross_entropy` on raw logits.")
    evidence["loss_function"] = call.fn
    x = call.input.detach()
    evidence["loss_input_finite"] = bool(torch.isfinite(x).all())
    try:
        losses, ignored, oor, C = call.per_element()
    except Exception as e:  # unusual shapes: report what we know
        evidence["per_sample"] = f"could not recompute ({type(e).__name__})"
        return Finding("nan-forward", "error", f"The loss ({call.fn}) is non-finite", evidence, FIX_MODULE)
    evidence["num_classes"] = C
    bad = ~torch.isfinite(losses)
    if bool((bad & ~oor).any()):
        # in-range targets have a non-finite loss too: out-of-range labels are not (the only) cause
        evidence["out_of_range_targets_also_present"] = int(oor.sum())
        bad = bad & ~oor
        oor = torch.zeros_like(oor)
    per_sample = losses_per_sample(bad, ctx)
    if per_sample is not None:
        samples = per_sample.any(1).nonzero().flatten().cpu().tolist()
        evidence["samples"] = samples[:50]
        evidence["num_bad_samples"] = len(samples)
    evidence["num_bad_targets"] = int(bad.sum())
    if call.fn in ("cross_entropy", "nll_loss") and not call.target.is_floating_point():
        bad_labels = Counter(call.target[bad].cpu().tolist())
        evidence["labels_of_bad_targets"] = {int(k): v for k, v in bad_labels.most_common(10)}
        n_oor = int(oor.sum())
        if n_oor:
            values = sorted({int(v) for v in call.target[oor].cpu().tolist()})
            evidence["out_of_range_labels"] = values[:20]
            shared = f"label {values[0]}" if len(values) == 1 else f"labels {values[:5]}"
            return Finding(
                "nan-forward", "error",
                f"The loss is NaN: {n_oor} target(s) with {shared} are outside the {C} classes "
                f"({call.fn} has no class {values[0]})",
                evidence,
                f"Remap the labels to 0..{C - 1} or build the head with {max(values) + 1} classes "
                "(`num_labels=...` in Hugging Face); use -100 for positions to skip.")
        if ignored.all() and call.reduction == "mean":
            evidence["every_target_ignored"] = True
            return Finding(
                "nan-forward", "error",
                f"The loss is NaN: every target equals ignore_index ({call.ignore_index}), so the mean "
                "is taken over zero targets",
                evidence,
                "Check the label masking (is everything set to -100?), or skip batches with no "
                "target: `if (labels != -100).any(): loss.backward()`.")
    if not bool(bad.any()) and evidence["loss_input_finite"]:
        return Finding(
            "nan-forward", "error",
            f"The loss is non-finite although every module output and every per-target {call.fn} loss "
            "is finite: the non-finite value comes from the rest of the loss computation",
            evidence,
            "Look at what your loss adds to the observed loss call (a regulariser, an auxiliary loss, a "
            "division by a count that can be 0) and make it stable.")
    shared = ""
    labels = evidence.get("labels_of_bad_targets") or {}
    if len(labels) == 1 and evidence.get("num_bad_samples"):
        shared = f"; the {evidence['num_bad_samples']} bad sample(s) all have label {next(iter(labels))}"
        evidence["shared_label"] = next(iter(labels))
    if not evidence["loss_input_finite"]:
        return Finding(
            "nan-forward", "error",
            f"The tensor reaching {call.fn} is non-finite although every module output is finite: "
            "it is made non-finite by code between the model and the loss" + shared,
            evidence,
            "Look at the operations between the model's output and the loss (temperature division, "
            "log, masking with -inf) and make them stable; a target whose class is masked with -inf "
            "has an infinite loss.")
    return Finding("nan-forward", "error", f"The loss ({call.fn}) is non-finite" + shared, evidence, FIX_MODULE)


def _describe(mod: torch.nn.Module, args: tuple[Any, ...], t: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """What a non-finite module output looks like: NaN/Inf counts, samples, input finiteness and
    range, and whether the module's own weights are non-finite."""
    t = t.detach()
    seen: dict[str, Any] = {"output_shape": list(t.shape), "nan_count": int(torch.isnan(t).sum()),
                            "inf_count": int(torch.isinf(t).sum())}
    samples = bad_samples(t, batch_size)
    if samples is not None:
        seen["samples"] = samples[:50]
        seen["num_bad_samples"] = len(samples)
    inputs = [a.detach() for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if inputs:
        seen["input_finite"] = all(bool(torch.isfinite(a).all()) for a in inputs)
        mags = [float(v.abs().max()) for v in (a[torch.isfinite(a)] for a in inputs) if v.numel()]
        if mags:
            seen["input_max_abs"] = max(mags)
    bad_own = [n for n, p in mod.named_parameters(recurse=False) if not bool(torch.isfinite(p.detach()).all())]
    if bad_own:
        seen["nonfinite_own_params"] = bad_own
    return seen


def _replay(ctx: Any, paths: list[str]) -> dict[str, dict[str, Any]]:
    """One more forward (counted) with hooks on the modules the main pass flagged: details of the
    first non-finite output (``"first"``) and of the first output holding NaN (``"nan"``; when there
    is none, ±Inf alone may be deliberate masking). Stops the forward at the first NaN."""
    setup = ctx.setup
    model = setup.model
    by_path = {ctx.paths.get(id(m)): m for m in model.modules()}
    targets = {id(by_path[p]): p for p in paths if p in by_path}
    found: dict[str, dict[str, Any]] = {}

    def hook(mod: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        t = first_tensor(out)
        if t is None or bool(torch.isfinite(t).all()):
            return
        path = targets[id(mod)]
        has_nan = bool(torch.isnan(t).any())
        if "first" not in found:
            found["first"] = {"module": path, **_describe(mod, args, t, setup.batch_size)}
        if has_nan:
            found["nan"] = found["first"] if found["first"]["module"] == path and found["first"]["nan_count"] \
                else {"module": path, **_describe(mod, args, t, setup.batch_size)}
            raise _Seen  # the rest of the forward (and the loss) is not needed

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in targets]
    try:
        model.eval()
        ctx.passes["forward"] += 1
        with torch.enable_grad(), LossObserver([]):  # sanitises out-of-range targets like the main pass
            setup.forward(model, setup.batch)
    except _Seen:
        pass
    finally:
        for h in handles:
            h.remove()
    return found


class _Seen(Exception):
    """Raised by the replay hook to stop the forward once the culprit's output has been seen."""


def nan_forward(ctx: Any) -> list[Finding]:
    """``nan-forward``: the first module whose output is non-finite (path, class, samples), or, when
    only the loss is non-finite, the per-sample losses and what the bad samples share."""
    main = ctx.main
    setup = ctx.setup
    loss = main.loss
    loss_bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
    if not main.nonfinite_modules and not loss_bad:
        return []
    bad_params = [n for n, p in setup.model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    bad_inputs = {n: bad_samples(t, setup.batch_size) for n, t in setup.tensors.items()
                  if t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if bad_inputs:
        name, samples = next(iter(bad_inputs.items()))
        return [Finding(
            "nan-forward", "error",
            f"The batch itself holds NaN/Inf: tensor {name!r}"
            + (f" at samples {samples[:10]}" if samples else ""),
            {"batch_tensors": {n: s[:50] if s else s for n, s in bad_inputs.items()},
             "first_module": main.nonfinite_modules[0] if main.nonfinite_modules else None,
             "loss_finite": not loss_bad},
            "Clean the data before it enters the model (e.g. `torch.nan_to_num`, or drop those "
            "samples in the Dataset/collate_fn) and find where the NaN enters your pipeline.")]
    if not main.nonfinite_modules:
        return [_loss_only_finding(ctx, loss)]
    found = _replay(ctx, main.nonfinite_modules)
    culprit = found.get("first") or {"module": main.nonfinite_modules[0]}
    path = culprit["module"]
    cls = main.module_classes.get(path, "?")
    evidence: dict[str, Any] = {"first_module": path, "module_class": cls,
                                "nonfinite_modules": main.nonfinite_modules[:10],
                                "num_nonfinite_modules": len(main.nonfinite_modules),
                                "loss_finite": not loss_bad}
    nan = found.get("nan")
    if nan and nan["module"] != path:
        evidence["first_nan_module"] = nan["module"]  # the first +-inf turned into NaN here
    if bad_params:
        evidence["nonfinite_parameters"] = bad_params[:20]
    evidence.update({k: v for k, v in culprit.items() if k != "module"})
    module = next((m for m in setup.model.modules() if ctx.paths.get(id(m)) == path), None)
    has_children = module is not None and any(True for _ in module.children())
    where = f"{path} ({cls})"
    if evidence.get("nonfinite_own_params"):
        title = f"NaN/Inf first appears in {where}: its own weights are non-finite"
        fix = ("The weights have diverged in earlier steps: restart from a good checkpoint with a lower "
               "LR, warmup and gradient clipping (`torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`).")
    else:
        title = f"NaN/Inf first appears in the output of {where}"
        if evidence.get("input_finite"):
            title += " although its input is finite"
            if has_children:
                title += " (its submodules' outputs are finite: the non-finite value comes from its own forward code)"
        fix = FIX_MODULE
    if evidence.get("samples") is not None:
        title += f"; samples {evidence['samples'][:10]}"
    severity = "error"
    if loss is not None and not loss_bad and found.get("first") and "nan" not in found and not bad_params:
        # only +-inf (e.g. logits masked with -inf) and a finite loss: harmless masking, most likely
        severity = "hint"
        title = f"The output of {where} holds +-Inf (masking?) but the loss is finite"
        fix = ("Nothing to fix if this is intended masking; prefer `torch.finfo(dtype).min` to -inf so "
               "that a fully masked row cannot turn into NaN.")
    if loss_bad and ctx.main.loss_calls:
        loss_view = _loss_only_finding(ctx, loss)
        keep = ("samples", "num_bad_samples", "labels_of_bad_targets", "out_of_range_labels",
                "every_target_ignored", "loss_function", "loss")
        evidence["loss_analysis"] = {k: loss_view.evidence[k] for k in keep if k in loss_view.evidence}
        evidence["loss_analysis"]["verdict"] = loss_view.title
    return [Finding("nan-forward", severity, title, evidence, fix)]


def locate_nonfinite(model: torch.nn.Module, batch: Any, forward: Any = None, loss_fn: Any = None) -> list[Finding]:
    """Replay one saved batch and say where NaN/Inf is born (for the training monitor).

    Leaves weights, buffers, grads, RNG state and train/eval modes exactly as they were
    (`traindoc.state.preserved`). Returns [] when the batch replays finite, and a ``probe-failed``
    hint instead of raising if the replay itself fails.
    """
    from traindoc.probes.context import ProbeContext
    from traindoc.setup import Setup
    from traindoc.state import preserved

    with preserved(model):
        try:
            setup = Setup.build(model, batch, forward=forward, loss_fn=loss_fn)
            ctx = ProbeContext(setup)
            return nan_forward(ctx)
        except Exception as e:
            return [internal_failure("the replay of the batch that gave a NaN", e, evidence={"probe": "nan-forward"})]
