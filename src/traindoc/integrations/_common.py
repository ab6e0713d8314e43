"""What the integrations share: starting a watch without ever breaking the user's training, and the
short summary printed when a run ends."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from traindoc.errors import TraindocInputError


def fresh_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... if it already exists (a new run never appends to an old one)."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside framework wrappers: Accelerate's ``AcceleratedOptimizer`` (itself a
    ``torch.optim.Optimizer`` subclass, but one whose step hooks never fire on the real update) keeps
    it in ``.optimizer``, Lightning's ``LightningOptimizer`` in ``._optimizer``.

    >>> import torch
    >>> inner = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    >>> class Wrapper(torch.optim.Optimizer):
    ...     def __init__(self, optimizer):
    ...         self.optimizer = optimizer
    >>> unwrap_optimizer(Wrapper(Wrapper(inner))) is inner
    True
    """
    import torch

    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            return optimizer
        optimizer = inner
    return optimizer


def start_watch(model: Any, optimizer: Any, where: str, **kwargs: Any) -> Any | None:
    """`traindoc.watch(model, optimizer, **kwargs)`, or None (with a warning) if traindoc itself fails.

    The optimizer is unwrapped first (`unwrap_optimizer`). Bad arguments the user gave
    (`TraindocInputError`) are raised: they are the user's to fix."""
    from traindoc.monitor.watch import watch

    try:
        return watch(model, unwrap_optimizer(optimizer), **kwargs)
    except TraindocInputError:
        raise
    except Exception as e:  # traindoc's own failure: the training goes on, unwatched
        warnings.warn(f"traindoc ({where}): could not start watching ({type(e).__name__}: {e}); "
                      "training continues without traindoc", RuntimeWarning, stacklevel=3)
        return None


def close_watch(w: Any, where: str) -> Any | None:
    """``w.close()`` -> the Report, or None (with a warning) if closing failed."""
    if w is None:
        return None
    try:
        return w.close()
    except Exception as e:
        warnings.warn(f"traindoc ({where}): could not close the watch ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=3)
        return None


def summary(report: Any, run_dir: Any) -> str:
    """A few lines: steps, findings (id and title), where the run directory is, how to see the report.

    >>> from traindoc.findings import Finding, Report
    >>> print(summary(Report([Finding("loss-spike", "warning", "Loss spike at step 7")], {"steps": 20}), "runs/x"))
    traindoc: 20 steps watched, 1 finding (0 errors) -> runs/x
      WARNING loss-spike: Loss spike at step 7
      HTML report: traindoc report runs/x
    """
    steps = report.info.get("steps", "?")
    n = len(report.findings)
    errors = sum(f.severity == "error" for f in report.findings)
    lines = [f"traindoc: {steps} steps watched, {n} finding{'s' if n != 1 else ''} ({errors} error"
             f"{'s' if errors != 1 else ''}) -> {run_dir}"]
    for f in report.findings[:10]:
        lines.append(f"  {f.severity.upper()} {f.id}: {f.title}")
    if n > 10:
        lines.append(f"  ... {n - 10} more in {run_dir}/report.json")
    lines.append(f"  HTML report: traindoc report {run_dir}")
    return "\n".join(lines)
