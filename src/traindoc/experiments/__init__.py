"""Guided experiments from the Hugging Face course and Google's Deep Learning Tuning Playbook, run on
copies of your model (it and its optimizer come back bit-identical):

* `overfit_batch`: can the model learn one batch by heart, and if not, why;
* `tune_lr`: a learning rate picked by short real runs, with the LR where training turns unstable;
* `instability`: train at 2 x the LR and see whether it breaks early (warmup helps) or suddenly;
* `tune_warmup`: the shortest warmup that keeps an LR stable;
* `clip_threshold`: the 90th-percentile clipping threshold, and whether clipping does the LR's job;
* `verify_fix`: a seeded A/B of a fix that is a setting (LR, warmup, clipping, zero_grad).

Each returns an `ExperimentResult` (findings, numbers, curves; ``to_json()`` is the CLI's contract).
``traindoc tune lr|warmup|clip|instability SCRIPT`` and ``traindoc overfit SCRIPT`` run the same
experiments on an unmodified training script.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"clip_threshold": "clipping", "tune_lr": "learning_rate", "overfit_batch": "overfit",
          "ExperimentResult": "result", "instability": "stability", "tune_warmup": "stability",
          "verify_fix": "verify"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:  # each experiment loads on first use
    if name in _WHERE:
        return getattr(importlib.import_module(f"traindoc.experiments.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'traindoc.experiments' has no attribute {name!r}")
