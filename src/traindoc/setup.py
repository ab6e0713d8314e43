"""The captured training *setup*: model, one batch, how to call the model and the loss, optimizer,
tokenizer, task — validated, so that bad input gets one message naming the argument to fix.
`traindoc.check` builds it (`Setup.build`), and so does the monitor's NaN replay; probes only ever
read a `Setup`. Also here: what the model and its objects say about themselves (`unwrap_optimizer`,
`checkpoint_names`, the batch's named tensors).

    >>> import torch
    >>> s = Setup.build(torch.nn.Linear(4, 3), torch.randn(8, 4))
    >>> s.batch_size, list(s.tensors)
    (8, ['batch'])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from traindoc.errors import TraindocInputError

TASKS = ("causal-lm", "seq2seq", "classification", "masked-lm", "token-classification")
AUTOREGRESSIVE = ("causal-lm", "seq2seq")

ForwardFn = Callable[[nn.Module, Any], Any]
LossFn = Callable[[Any, Any], torch.Tensor]


def named_tensors(batch: Any, prefix: str = "batch") -> dict[str, torch.Tensor]:
    """Every tensor in a batch with a readable name: ``input_ids`` for dict keys, ``batch[0]`` for
    positions, ``batch`` for a bare tensor (nested containers are walked).

    >>> import torch
    >>> list(named_tensors({"input_ids": torch.zeros(2, 3), "extra": [torch.ones(2)]}))
    ['input_ids', 'extra[0]']
    """
    out: dict[str, torch.Tensor] = {}

    def walk(obj: Any, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            out[name] = obj
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, str(k) if name == prefix else f"{name}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}[{i}]")

    walk(batch, prefix)
    return out


def replace_tensors(batch: Any, replace: Callable[[str, torch.Tensor], torch.Tensor], prefix: str = "batch") -> Any:
    """A copy of the batch's containers with each tensor passed through ``replace(name, tensor)``."""

    def walk(obj: Any, name: str) -> Any:
        if isinstance(obj, torch.Tensor):
            return replace(name, obj)
        if isinstance(obj, Mapping):
            items = {k: walk(v, str(k) if name == prefix else f"{name}.{k}") for k, v in obj.items()}
            try:
                return type(obj)(items)
            except Exception:
                return items
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*(walk(v, f"{name}[{i}]") for i, v in enumerate(obj)))
        if isinstance(obj, (list, tuple)):
            return type(obj)(walk(v, f"{name}[{i}]") for i, v in enumerate(obj))
        return obj

    return walk(batch, prefix)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer that really steps, inside framework wrappers: Accelerate's
    ``AcceleratedOptimizer`` (an Optimizer subclass whose own step hooks never see the real update)
    keeps it in ``.optimizer``, Lightning's ``LightningOptimizer`` in ``._optimizer``.

    >>> inner = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    >>> class Wrapper(torch.optim.Optimizer):
    ...     def __init__(self, optimizer):
    ...         self.optimizer = optimizer
    >>> unwrap_optimizer(Wrapper(Wrapper(inner))) is inner
    True
    >>> unwrap_optimizer("adam")
    Traceback (most recent call last):
    ...
    traindoc.errors.TraindocInputError: optimizer: must be a torch.optim.Optimizer, got str
    """
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TraindocInputError("optimizer", f"must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _fresh(module: nn.Module) -> bool:
    """True when the module's normalisation layers hold exactly their initial values (every weight 1,
    every bias 0): a model built from a config (``from_config``, or a config folder's
    ``_name_or_path``), not loaded from trained weights. False without normalisation layers."""
    norms = [m for m in module.modules() if "norm" in type(m).__name__.lower()
             and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not norms:
        return False
    with torch.no_grad():
        for m in norms:
            if not bool((m.weight == 1).all()):
                return False
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor) and bool(bias.any()):
                return False
    return True


def _checkpoint_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules loaded from a checkpoint, with its name: a Hugging Face config with
    ``_name_or_path`` on a module whose weights are not freshly initialised (`_fresh`). The
    outermost such module stands for the modules inside it."""
    found: list[tuple[str, nn.Module]] = []
    inside: set[int] = set()
    for m in model.modules():
        if id(m) in inside:
            continue
        cfg = getattr(m, "config", None)
        name = getattr(cfg, "_name_or_path", "") if cfg is not None else ""
        if isinstance(name, str) and name:
            inside.update(id(sub) for sub in m.modules())
            if not _fresh(m):
                found.append((name, m))
    return found


def checkpoint_names(model: nn.Module) -> list[str]:
    """Checkpoint names of the model or any submodule that was loaded from one (`_checkpoint_modules`):
    a DistilBERT inside a user's own classifier counts too; a model built from a config does not."""
    names: list[str] = []
    for name, _ in _checkpoint_modules(model):
        if name not in names:
            names.append(name)
    return names


def param_names(model: nn.Module) -> dict[int, str]:
    """A name for each parameter (by ``id``), saying every name a shared parameter goes by: tied weights
    read ``"transformer.wte.weight (also lm_head.weight)"``, since either may be the one the user wrote.

    >>> m = torch.nn.Module(); m.emb = torch.nn.Embedding(5, 2); m.head = torch.nn.Linear(2, 5, bias=False)
    >>> m.head.weight = m.emb.weight
    >>> list(param_names(m).values())
    ['emb.weight (also head.weight)']
    """
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    return {i: names[0] + (f" (also {', '.join(names[1:])})" if len(names) > 1 else "")
            for i, names in aliases.items()}


def pretrained_param_ids(model: nn.Module) -> set[int]:
    """Ids of the parameters inside modules loaded from a checkpoint (`checkpoint_names`)."""
    return {id(p) for _, m in _checkpoint_modules(model) for p in m.parameters()}


def default_call(model: nn.Module, batch: Any, *, loss_outside: bool = False) -> tuple[ForwardFn, str]:
    """How a training loop most often calls this model on this batch, decided from the signature of
    ``model.forward``; returns the call and its description (``"model(batch[0])"``).

    * a dict: ``model(**batch)``, keeping only the keys ``forward`` accepts when it takes no ``**kwargs``;
    * a tuple/list: as many leading elements as ``forward`` takes positionally (all with ``*args``) —
      and when the loss is computed outside the model (``loss_outside``: a ``loss_fn`` was given), only
      those it *requires*: ``(inputs, targets)`` goes in as ``model(inputs)``, as the loop does;
    * a tensor: ``model(batch)``.

    >>> class OneInput(torch.nn.Module):
    ...     def forward(self, x): return x
    >>> class WithTargets(torch.nn.Module):                      # karpathy's GPT: (logits, loss)
    ...     def forward(self, idx, targets=None): return idx
    >>> default_call(OneInput(), (torch.zeros(2), torch.ones(2)), loss_outside=True)[1]
    'model(batch[0])'
    >>> default_call(WithTargets(), (torch.zeros(2), torch.ones(2)))[1]
    'model(*batch)'
    """
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a forward Python cannot inspect: the plain conventions
        sig = None
    params = list(sig.parameters.values()) if sig is not None else []
    var_pos = sig is None or any(p.kind is p.VAR_POSITIONAL for p in params)
    var_kw = sig is None or any(p.kind is p.VAR_KEYWORD for p in params)
    if isinstance(batch, Mapping):
        keys = [k for k in batch if var_kw or (k in sig.parameters and  # type: ignore[union-attr]
                                               sig.parameters[k].kind is not inspect.Parameter.POSITIONAL_ONLY)]
        if len(keys) == len(batch):
            return (lambda m, b: m(**b)), "model(**batch)"
        described = ", ".join(f"{k}=batch[{k!r}]" for k in keys)
        return (lambda m, b: m(**{k: b[k] for k in keys})), f"model({described})"
    if isinstance(batch, (list, tuple)):
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if loss_outside and sig is not None:
            n = max(1, sum(p.default is p.empty for p in positional))
        else:
            n = len(batch) if var_pos else len(positional)
        n = min(n, len(batch))
        if n == len(batch):
            return (lambda m, b: m(*b)), "model(*batch)"
        described = ", ".join(f"batch[{i}]" for i in range(n))
        return (lambda m, b: m(*b[:n])), f"model({described})"
    return (lambda m, b: m(b)), "model(batch)"


def output_logits(output: Any) -> torch.Tensor | None:
    """The prediction tensor in a model output: ``.logits`` (Hugging Face), ``["logits"]``, the first
    float tensor of a tuple, or the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        for v in output.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2:
                return v
    if isinstance(output, (list, tuple)):
        for v in output:
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2:
                return v
    return None


def output_loss(output: Any) -> tuple[torch.Tensor | None, str]:
    """The loss a model returned itself, and where it was: ``output.loss`` (Hugging Face), ``["loss"]``,
    or — when it is unambiguous — the one scalar of a tuple or dict that requires grad (models that
    return ``(logits, loss)``, as karpathy's GPTs do). ``(None, "none")`` otherwise.

    >>> logits, loss = torch.randn(2, 3, requires_grad=True), torch.ones((), requires_grad=True)
    >>> output_loss((logits, loss))[1], output_loss((logits, None))
    ('output[1]', (None, 'none'))
    """
    def is_loss(v: Any) -> bool:
        return isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()

    loss = getattr(output, "loss", None)
    if is_loss(loss):
        return loss, "output.loss"
    if isinstance(output, Mapping):
        if is_loss(output.get("loss")):
            return output["loss"], 'output["loss"]'
        scalars = [(f"output[{k!r}]", v) for k, v in output.items() if is_loss(v) and v.requires_grad]
    elif isinstance(output, (list, tuple)):
        scalars = [(f"output[{i}]", v) for i, v in enumerate(output) if is_loss(v) and v.requires_grad]
    else:
        scalars = []
    if len(scalars) == 1:
        return scalars[0][1], scalars[0][0]
    return None, "none"


def describe_output(output: Any) -> str:
    """What a model returned, in a few words (``tuple of 2: Tensor(4, 9, 50) float32, None``)."""
    def one(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return f"Tensor{tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
        return type(v).__name__ if v is not None else "None"

    if isinstance(output, (list, tuple)):
        return f"{type(output).__name__} of {len(output)}: " + ", ".join(one(v) for v in list(output)[:6])
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        return f"{type(output).__name__} with " + ", ".join(f"{k}: {one(v)}" for k, v in list(output.items())[:6])
    return one(output)


@dataclass
class Setup:
    """One training configuration, validated. Build it with `Setup.build` (which checks the input)."""

    model: nn.Module
    batch: Any
    forward: ForwardFn
    loss_fn: LossFn | None = None
    optimizer: torch.optim.Optimizer | None = None
    tokenizer: Any = None
    task: str | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_size: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    user_forward: bool = False
    called_as: str = "forward(model, batch)"

    @classmethod
    def build(
        cls,
        model: Any,
        batch: Any,
        *,
        forward: ForwardFn | None = None,
        loss_fn: LossFn | None = None,
        optimizer: Any = None,
        tokenizer: Any = None,
        task: str | None = None,
    ) -> Setup:
        if not isinstance(model, nn.Module):
            raise TraindocInputError("model", f"must be a torch.nn.Module, got {type(model).__name__}")
        params = list(model.parameters())
        if not params:
            raise TraindocInputError("model", f"{type(model).__name__} has no parameters: there is nothing to train")
        if forward is not None and not callable(forward):
            raise TraindocInputError("forward", "must be a callable forward(model, batch) -> output")
        if loss_fn is not None and not callable(loss_fn):
            raise TraindocInputError("loss_fn", "must be a callable loss_fn(output, batch) -> scalar tensor")
        if optimizer is not None:
            optimizer = unwrap_optimizer(optimizer)
        if task is not None and task not in TASKS:
            raise TraindocInputError("task", f"must be one of {', '.join(TASKS)} (or None to infer), got {task!r}")
        if not isinstance(batch, (torch.Tensor, Mapping, list, tuple)) and not hasattr(batch, "keys"):
            raise TraindocInputError(
                "batch", f"unsupported type {type(batch).__name__}: pass one batch as the loop feeds it "
                "(a dict of tensors, a tuple/list of tensors, or a tensor)")
        if hasattr(batch, "keys") and not isinstance(batch, Mapping):  # e.g. transformers BatchEncoding
            batch = dict(batch.items())
        tensors = named_tensors(batch)
        if not tensors:
            raise TraindocInputError("batch", "contains no tensors")
        sizes = {t.shape[0] for t in tensors.values() if t.dim() > 0}
        if any(t.dim() > 0 and t.shape[0] == 0 for t in tensors.values()) or not sizes:
            raise TraindocInputError("batch", "is empty (a tensor with 0 samples, or only scalars)")
        batch_size = max(sizes)
        device = params[0].device
        floats = [p for p in params if p.is_floating_point()]
        dtype = floats[0].dtype if floats else torch.float32
        wrong_device = [n for n, t in tensors.items() if t.device != device]
        if wrong_device:
            raise TraindocInputError(
                "batch", f"tensors {wrong_device} are on {tensors[wrong_device[0]].device} but the model is on "
                f"{device}: move the batch as your loop does (batch = {{k: v.to({str(device)!r}) ...}})")
        user_forward = forward is not None
        called_as = "forward(model, batch)"
        if forward is None:
            forward, called_as = default_call(model, batch, loss_outside=loss_fn is not None)
        return cls(model=model, batch=batch, forward=forward, loss_fn=loss_fn,
                   optimizer=optimizer, tokenizer=tokenizer, task=task, tensors=tensors, batch_size=batch_size,
                   device=device, dtype=dtype, user_forward=user_forward, called_as=called_as)

    # --- what the model and tokenizer say about themselves -----------------------------------------
    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def hugging_face(self) -> bool:
        """The model is a Hugging Face ``PreTrainedModel`` (its config is a ``PretrainedConfig``, not any
        object a model keeps as ``config``, as karpathy's GPTs do)."""
        cfg = self.config
        return cfg is not None and hasattr(cfg, "model_type") and callable(getattr(cfg, "to_dict", None))

    def special_id(self, name: str) -> int | None:
        """``pad_token_id`` / ``eos_token_id`` / ``bos_token_id`` from the tokenizer, else the HF config;
        a pad id also from the model itself: the ``padding_idx`` its embeddings declare (when they agree)."""
        for source in (self.tokenizer, self.config, getattr(self.config, "generation_config", None)):
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, (list, tuple)) and value:
                value = value[0]
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        if name == "pad_token_id":
            declared = {m.padding_idx for m in self.model.modules()
                        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None}
            if len(declared) == 1:
                return declared.pop()
        return None

