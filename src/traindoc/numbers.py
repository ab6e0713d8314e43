"""Plain-number rules every part of traindoc shares: what counts as a finite number, and the
robust statistics (median, quantile) the detectors and the report use.

    >>> finite(1.5), finite(float("nan")), finite(None), finite(True)
    (True, False, False, False)
    >>> median([3.0, 1.0, 2.0, 10.0]), quantile([0.0, 10.0], 0.9)
    (2.5, 9.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def finite(value: Any) -> bool:
    """True for a real, finite int or float (None, booleans, NaN and +-Inf are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def median(values: Iterable[float]) -> float:
    """Median of a non-empty iterable (mean of the two middle values for an even count)."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median of an empty sequence")
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


def quantile(values: Iterable[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty iterable."""
    s = sorted(values)
    if not s:
        raise ValueError("quantile of an empty sequence")
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
