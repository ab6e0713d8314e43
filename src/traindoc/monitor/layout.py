"""What a watch watches: the optimizer's trainable parameters, their names, groups and layers.

Built once when the watch starts, from the model and the (unwrapped) optimizer; afterwards only
read. Parameters are in model order; an optimizer parameter that is not in the model is named by
its place (``param_groups[0].params[3]``). A parameter the model holds under several names (tied
weights: GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is named by all of them,
``transformer.wte.weight (also lm_head.weight)``: ``named_parameters()`` gives only the first, which
may not be the one the user wrote. A *layer* is a module that owns parameters directly
(``blocks.0.attn.out_proj``), in model order, taken from a parameter's first name; its index is its
depth (0 nearest the input for the usual model).

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> layout = ParamLayout.build(model, torch.optim.SGD(model[0].parameters(), lr=0.1))
    >>> layout.names, layout.layers, layout.not_in_optimizer
    (['0.weight', '0.bias'], ['0'], ['2.weight', '2.bias'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from traindoc.errors import TraindocInputError
from traindoc.setup import param_names

MAX_HISTOGRAM_LAYERS = 64


@dataclass
class ParamLayout:
    params: list[torch.Tensor]
    """The watched parameters: trainable and in the optimizer."""
    names: list[str]
    group_of: list[int]
    """Param group index of each watched parameter."""
    layers: list[str]
    layer_of: list[int]
    """Layer index of each watched parameter."""
    frozen: list[str] = field(default_factory=list)
    """Model parameters with requires_grad=False (not watched)."""
    frozen_in_optimizer: list[str] = field(default_factory=list)
    outside: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    """Trainable model parameters that no param group holds."""

    def __post_init__(self) -> None:
        self.numels = [p.numel() for p in self.params]
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self.layer_of_np = np.asarray(self.layer_of, dtype=np.int64)
        self.layer_params: list[list[int]] = [[] for _ in self.layers]
        for i, li in enumerate(self.layer_of):
            self.layer_params[li].append(i)
        self.layer_groups = [sorted({self.group_of[i] for i in ps}) for ps in self.layer_params]
        """Param groups holding each layer's parameters."""
        self.device = self.params[0].device
        self.depth = {name: i for i, name in enumerate(self.layers)}

    @property
    def not_in_optimizer(self) -> list[str]:
        return [n for n, _ in self.outside]

    @classmethod
    def build(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> ParamLayout:
        shown = param_names(model)
        plain = list(model.named_parameters())
        named = [(shown[id(p)], p) for _, p in plain]
        first_name = {id(p): name for name, p in plain}
        model_ids = {id(p) for _, p in named}
        in_opt: dict[int, int] = {}
        opt_params: list[torch.Tensor] = []
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) not in in_opt:
                    in_opt[id(p)] = g
                    opt_params.append(p)
        params: list[torch.Tensor] = []
        names: list[str] = []
        for name, p in named:
            if id(p) in in_opt and p.requires_grad:
                params.append(p)
                names.append(name)
        for i, p in enumerate(opt_params):
            if id(p) not in model_ids and p.requires_grad:
                params.append(p)
                names.append(f"param_groups[{in_opt[id(p)]}].params[{i}]")
        if not params:
            raise TraindocInputError("optimizer", "holds no trainable parameter (requires_grad=True) to watch")
        layers: list[str] = []
        layer_of: list[int] = []
        seen: dict[str, int] = {}
        for p, display in zip(params, names, strict=True):
            n = first_name.get(id(p), display)
            layer = n.rsplit(".", 1)[0] if "." in n else "(root)"
            if layer not in seen:
                seen[layer] = len(layers)
                layers.append(layer)
            layer_of.append(seen[layer])
        return cls(params=params, names=names, group_of=[in_opt[id(p)] for p in params], layers=layers,
                   layer_of=layer_of,
                   frozen=[n for n, p in named if not p.requires_grad],
                   frozen_in_optimizer=[n for n, p in named if not p.requires_grad and id(p) in in_opt],
                   outside=[(n, p) for n, p in named if p.requires_grad and id(p) not in in_opt])

    def histogram_layers(self, wanted: Sequence[str] | None) -> list[int]:
        """Indices of the layers to draw histograms of: the ``wanted`` names (and their children), or
        every layer, or ``MAX_HISTOGRAM_LAYERS`` spread evenly over depth."""
        if wanted is not None:
            return [i for i, name in enumerate(self.layers)
                    if any(name == w or name.startswith(w + ".") for w in wanted)]
        n = len(self.layers)
        if n <= MAX_HISTOGRAM_LAYERS:
            return list(range(n))
        return sorted({round(k * (n - 1) / (MAX_HISTOGRAM_LAYERS - 1)) for k in range(MAX_HISTOGRAM_LAYERS)})

    def meta(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The layout part of the run directory's meta.json."""
        groups = []
        for g, group in enumerate(optimizer.param_groups):
            lr = group.get("lr")
            groups.append({"lr": float(lr) if isinstance(lr, (int, float)) else None,
                           "weight_decay": group.get("weight_decay"),
                           "num_params": sum(1 for x in self.group_of if x == g)})
        return {
            "model": type(model).__name__,
            "optimizer": type(optimizer).__name__,
            "num_params": sum(self.numels),
            "param_groups": groups,
            "layers": self.layers,
            "layer_depth": self.depth,
            "params": self.names,
            "param_layers": [self.layers[i] for i in self.layer_of],
            "frozen_params": len(self.frozen),
            "device": str(self.device),
        }


def guess_num_classes(model: torch.nn.Module) -> tuple[int | None, str | None]:
    """Width of the logits, guessed from a Hugging Face config or a final nn.Linear, and from what."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is not None:
        if any(k in name for k in ("LM", "CausalLM", "MaskedLM", "ConditionalGeneration")):
            v = getattr(config, "vocab_size", None)
            if isinstance(v, int):
                return v, "config.vocab_size"
        if "Classification" in name:
            v = getattr(config, "num_labels", None)
            if isinstance(v, int):
                return v, "config.num_labels"
    last = None
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = module
    if isinstance(last, torch.nn.Linear):
        return last.out_features, "last nn.Linear out_features"
    return None, None
