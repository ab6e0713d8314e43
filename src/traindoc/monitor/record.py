"""What the monitor hands to the detectors, on the host: `RunStart` when the watch starts, one
`StepRecord` per optimizer step, and `RunEnd` when it closes.

The monitor keeps its statistics on the device and copies them to the host once per flush; at the
flush it builds one `StepRecord` per step, in step order, and feeds each detector. Detectors are
pure judges of these records (they never touch tensors), so they are cheap and easy to test.

    >>> r = StepRecord(step=3, loss=2.5, lr=[1e-3])
    >>> r.layer_update_ratio is None
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class StepRecord:
    step: int
    """Optimizer step index, from 0."""
    loss: float | None = None
    """Loss logged for this step (mean over its micro-batches), or None if the user logged none."""
    lr: list[float] = field(default_factory=list)
    """LR of each param group at this step."""
    grad_norm: float | None = None
    """Global L2 norm of all gradients before clipping (at the optimizer step)."""
    clip_threshold: float | None = None
    """max_norm of the user's clip_grad_norm_ call this step, None if the user did not clip."""
    clipped: bool | None = None
    """grad_norm > clip_threshold (None when the user did not clip)."""
    nonfinite_grads: int = 0
    """Number of gradient elements that were NaN/Inf at the step."""
    first_nonfinite_param: str | None = None
    """Name of the first parameter (model order) whose gradient was non-finite."""
    backward_calls: int = 1
    """Backward passes since the previous optimizer step (gradient accumulation count)."""
    grad_was_stale: bool | None = None
    """True when gradients were already non-zero before this step's first backward (no zero_grad); None
    on the steps the monitor does not check (it checks the first steps, then every K-th) or when it
    cannot tell."""
    num_classes: int | None = None
    """Width of the logits when known (for loss-at-chance)."""
    scaler_scale: float | None = None
    """AMP GradScaler scale, when a scaler is watched."""
    skipped: bool = False
    """The optimizer step was skipped (AMP inf/NaN) or did not change any weight."""
    layer_grad_norm: dict[str, float] | None = None
    """Per-module gradient L2 norm (every K steps; None on other steps). Keys in model order."""
    layer_weight_norm: dict[str, float] | None = None
    """Per-module weight L2 norm (same steps as layer_grad_norm)."""
    layer_update_ratio: dict[str, float] | None = None
    """Per-module ||w_after - w_before|| / ||w_before|| of this step (same steps)."""
    layer_depth: dict[str, int] | None = None
    """Depth index (0 = nearest the input) of each module in the layer_* dicts."""
    layer_groups: dict[str, list[int]] | None = None
    """Param groups (indices into ``lr``) holding each module's parameters (same steps)."""
    batch_fingerprint: float | None = None
    """A fingerprint of the batch logged for this step (``watch.log(batch=...)``): equal batches give
    equal fingerprints; None when no batch was logged."""
    extra: dict[str, float] = field(default_factory=dict)
    """Other metrics the user logged with watch.log(...)."""

    @property
    def loss_nonfinite(self) -> bool:
        """A loss was logged and it is NaN or +-Inf."""
        return self.loss is not None and not math.isfinite(self.loss)

    @property
    def nonfinite(self) -> bool:
        """The step's loss or any of its gradients is NaN or +-Inf."""
        return self.loss_nonfinite or self.nonfinite_grads > 0


@dataclass
class RunStart:
    """What is known about the run when it starts: handed over at the first flush (after the first
    optimizer step, when every watch of the run exists), or at close if no step was flushed."""

    outside_optimizer: list[str] = field(default_factory=list)
    """Names of the trainable model parameters that no param group of the watched optimizer holds."""
    outside_numel: int = 0
    held_elsewhere: list[str] = field(default_factory=list)
    """Of those, the ones that the optimizer of another open watch holds (a GAN's two optimizers,
    Lightning's several): that watch judges them."""
    moved: list[str] = field(default_factory=list)
    """Of those, the ones whose values changed since the watch started (some optimizer trains them)."""
    steps: int = 0
    """Optimizer steps taken when this was measured."""
    num_classes: int | None = None


@dataclass
class RunEnd:
    """What the monitor measured over the whole run, at close."""

    steps: int = 0
    """Optimizer steps taken."""
    unmoved_outside: list[str] = field(default_factory=list)
    """Parameters of `RunStart.outside_optimizer` whose values did not change during the run."""
    unmoved_outside_numel: int = 0
    unmoved_with_grad: list[str] = field(default_factory=list)
    """Of those, the ones holding a non-zero gradient at close (the loss reaches them)."""
    added_outside: list[str] = field(default_factory=list)
    """Trainable parameters the model gained after the watch started (a head replaced mid-run) that no
    open watch's optimizer holds at close."""
    added_with_grad: list[str] = field(default_factory=list)
    """Of those, the ones holding a non-zero gradient at close."""
