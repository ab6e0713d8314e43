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

from traindoc.experiments.clipping import clip_threshold
from traindoc.experiments.learning_rate import tune_lr
from traindoc.experiments.overfit import overfit_batch
from traindoc.experiments.result import ExperimentResult
from traindoc.experiments.stability import instability, tune_warmup
from traindoc.experiments.verify import verify_fix

__all__ = ["ExperimentResult", "clip_threshold", "instability", "overfit_batch", "tune_lr", "tune_warmup",
           "verify_fix"]
