"""What the integrations share: starting a watch without ever breaking the user's training, and the
short summary printed when a run ends."""

from __future__ import annotations

import warnings
from typing import Any

from traindoc.errors import TraindocInputError
from traindoc.setup import unwrap_optimizer


def start_watch(model: Any, optimizer: Any, where: str, **kwargs: Any) -> Any | None:
    """`traindoc.watch(model, optimizer, **kwargs)`, or None (with a warning) if traindoc itself fails.

    The optimizer is unwrapped first (`unwrap_optimizer`). Bad arguments the user gave
    (`TraindocInputError`) are raised: they are the user's to fix."""
    from traindoc.api import watch

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
