"""traindoc: finds out why a PyTorch training run does not learn, proves it, and says how to fix it.

    >>> import traindoc
    >>> sorted(n for n in traindoc.__all__)
    ['Finding', 'Report', 'TraindocInputError', 'check', 'print_report', 'watch']

The heavy parts (probes, monitor, integrations) load on first use, so `import traindoc` stays fast
and never imports transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traindoc.errors import TraindocInputError
from traindoc.findings import Finding, Report

__all__ = ["Finding", "Report", "TraindocInputError", "check", "print_report", "watch"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from traindoc.api import check, watch
    from traindoc.report.terminal import print_report


def __getattr__(name: str) -> Any:
    if name == "check":
        from traindoc.api import check

        return check
    if name == "watch":
        from traindoc.api import watch

        return watch
    if name == "print_report":
        from traindoc.report.terminal import print_report

        return print_report
    raise AttributeError(f"module 'traindoc' has no attribute {name!r}")
