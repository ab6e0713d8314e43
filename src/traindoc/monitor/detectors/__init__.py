"""The streaming detectors: small pure judges of the monitor's `StepRecord`s.

One module per concern (thresholds and their reasons are in each module's docstring):

=====================  ==========================================  ===================================
module                 ids                                         reads
=====================  ==========================================  ===================================
nan_loss               nan-loss                                    loss, non-finite gradients
loss_spike             loss-spike                                  loss
divergence             divergence                                  loss, non-finite gradients
loss_plateau           loss-plateau, loss-at-chance                loss, LR, number of classes
loss_collapse          loss-collapse                               loss, number of classes, batches
gradient_scale         vanishing-gradients, exploding-gradients    grad norm, per-layer grad norms
stalled_layers         stalled-layers                              per-layer update/weight ratios
learning_rate          lr-too-low, lr-too-high                     per-layer ratios and weights, loss
zero_grad              missing-zero-grad                           stale-gradient flag, grad norm
scheduler              scheduler-misuse                            LR
clipping               aggressive-clipping                         pre-clip norm, clip threshold
grad_accum             grad-accum-normalization                    backward calls, grad norm
train_mode             train-mode-off                              model.training at each step
repeated_batch         repeated-batch                              batch fingerprint
params_outside         params-not-in-optimizer                     parameters outside the optimizer
=====================  ==========================================  ===================================

The per-layer values are filled every ``every`` steps (`traindoc.watch`); the rest every step.

    >>> from traindoc.monitor.record import StepRecord
    >>> detectors = default_detectors(loss_spike={"k": 8}, disable=["scheduler-misuse"])
    >>> found = []
    >>> for step in range(30):
    ...     for d in detectors:
    ...         found += d.update(StepRecord(step=step, loss=float("nan") if step == 12 else 1.0))
    >>> [(f.id, f.evidence["step"]) for f in found]
    [('nan-loss', 12)]
"""

from __future__ import annotations

from typing import Any

from traindoc.errors import TraindocInputError
from traindoc.monitor.detectors.base import Detector, RollingWindow
from traindoc.monitor.detectors.clipping import AggressiveClippingDetector
from traindoc.monitor.detectors.divergence import DivergenceDetector
from traindoc.monitor.detectors.grad_accum import GradAccumDetector
from traindoc.monitor.detectors.gradient_scale import GradientScaleDetector
from traindoc.monitor.detectors.learning_rate import LearningRateDetector
from traindoc.monitor.detectors.loss_collapse import LossCollapseDetector
from traindoc.monitor.detectors.loss_plateau import LossPlateauDetector
from traindoc.monitor.detectors.loss_spike import LossSpikeDetector
from traindoc.monitor.detectors.nan_loss import NanLossDetector
from traindoc.monitor.detectors.params_outside import ParamsOutsideOptimizerDetector
from traindoc.monitor.detectors.repeated_batch import RepeatedBatchDetector
from traindoc.monitor.detectors.scheduler import SchedulerMisuseDetector
from traindoc.monitor.detectors.stalled_layers import StalledLayersDetector
from traindoc.monitor.detectors.train_mode import TrainModeOffDetector
from traindoc.monitor.detectors.zero_grad import MissingZeroGradDetector

__all__ = [
    "DETECTOR_TYPES", "AggressiveClippingDetector", "Detector", "DivergenceDetector", "GradAccumDetector",
    "GradientScaleDetector", "LearningRateDetector", "LossCollapseDetector", "LossPlateauDetector",
    "LossSpikeDetector",
    "MissingZeroGradDetector", "NanLossDetector", "ParamsOutsideOptimizerDetector", "RepeatedBatchDetector",
    "RollingWindow", "SchedulerMisuseDetector",
    "StalledLayersDetector", "TrainModeOffDetector", "default_detectors",
]

DETECTOR_TYPES: dict[str, type[Detector]] = {
    "nan_loss": NanLossDetector,
    "loss_spike": LossSpikeDetector,
    "divergence": DivergenceDetector,
    "loss_plateau": LossPlateauDetector,
    "loss_collapse": LossCollapseDetector,
    "gradient_scale": GradientScaleDetector,
    "stalled_layers": StalledLayersDetector,
    "learning_rate": LearningRateDetector,
    "zero_grad": MissingZeroGradDetector,
    "scheduler": SchedulerMisuseDetector,
    "clipping": AggressiveClippingDetector,
    "grad_accum": GradAccumDetector,
    "train_mode": TrainModeOffDetector,
    "repeated_batch": RepeatedBatchDetector,
    "params_outside": ParamsOutsideOptimizerDetector,
}
"""Option name (the module name) -> detector class, in reporting order."""


def default_detectors(*, disable: Any = (), **options: Any) -> list[Detector]:
    """A fresh instance of every detector.

    Args:
        disable: detector option names or finding ids to leave out (a detector is dropped when any of
            its ids is listed, e.g. ``"loss-at-chance"`` drops the plateau detector).
        **options: per-detector keyword arguments, by module name, e.g.
            ``loss_spike={"k": 8, "window": 100}``, or ``False`` to leave that detector out.

    Raises:
        TraindocInputError: for an unknown option name or argument.
    """
    unknown = set(options) - set(DETECTOR_TYPES)
    if unknown:
        raise TraindocInputError(sorted(unknown)[0], f"unknown detector option; known: {sorted(DETECTOR_TYPES)}")
    if isinstance(disable, str):
        disable = [disable]
    disabled = set(disable)
    known_ids = {i for cls in DETECTOR_TYPES.values() for i in cls.ids} | set(DETECTOR_TYPES)
    if disabled - known_ids:
        raise TraindocInputError("disable", f"unknown detector(s) {sorted(disabled - known_ids)}")
    detectors: list[Detector] = []
    for name, cls in DETECTOR_TYPES.items():
        kwargs = options.get(name, {})
        if kwargs is False or name in disabled or disabled & set(cls.ids):
            continue
        if not isinstance(kwargs, dict):
            raise TraindocInputError(name, "must be a dict of keyword arguments or False")
        try:
            detectors.append(cls(**kwargs))
        except TypeError as e:
            raise TraindocInputError(name, str(e)) from None
    return detectors
