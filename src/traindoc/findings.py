"""The one type every part of traindoc speaks: a `Finding`, and the `Report` that holds them.

A finding is a claim about the user's training, with the evidence that proves it and the fix::

    >>> from traindoc.findings import Finding, Report
    >>> f = Finding("label-out-of-range", "error", "Labels outside the model's 2 classes",
    ...             evidence={"max_label": 2, "num_classes": 2, "samples": [3, 7]},
    ...             fix="Remap labels to 0..num_classes-1 or build the model with num_labels=3.")
    >>> report = Report([f])
    >>> report.ok, report.ids
    (False, ['label-out-of-range'])
    >>> report.to_dict()["findings"][0]["evidence"]["samples"]
    [3, 7]

Severity rule: ``error`` only for what a probe *proved* on the user's own objects; heuristics are
``warning`` or ``hint``.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "hint"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "hint")
SCHEMA_VERSION = 1
MAX_LISTED = 10
"""Evidence lists (samples, values, positions) show at most this many items; a count goes beside them."""


def listed(values: Iterable[Any]) -> list[Any]:
    """The first `MAX_LISTED` items, for evidence.

    >>> listed(range(25))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    return list(values)[:MAX_LISTED]


def jsonable(value: Any) -> Any:
    """Turn evidence (tensors, numpy values, tuples, NaNs) into plain JSON-ready Python values.

    >>> import torch
    >>> jsonable({"x": torch.tensor([1.5, float("nan")]), "shape": torch.Size([2, 3])})
    {'x': [1.5, 'nan'], 'shape': [2, 3]}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # torch.Tensor, numpy arrays and scalars
    if callable(tolist):
        return jsonable(tolist())
    if hasattr(value, "__iter__"):
        return [jsonable(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem.

    Attributes:
        id: stable kebab-case id from `traindoc.catalog` (a public contract).
        severity: ``"error"`` (proved on the user's objects), ``"warning"`` or ``"hint"``.
        title: one line saying what is wrong, with the key number.
        evidence: numbers, module paths, tensor names and sample indices that prove it.
        fix: a concrete change, with a code snippet where one fits.
    """

    id: str
    severity: Severity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        object.__setattr__(self, "evidence", jsonable(dict(self.evidence)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "fix": self.fix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(data["id"], data["severity"], data["title"], dict(data.get("evidence", {})),
                   data.get("fix", ""))


def internal_failure(what: str, error: BaseException | str, *, count: int = 1,
                     evidence: Mapping[str, Any] | None = None) -> Finding:
    """The one way traindoc reports its own failure: a ``probe-failed`` hint, never an exception.

    >>> internal_failure("probe 'causal-leak'", ValueError("shapes")).title
    "probe 'causal-leak' could not run: ValueError: shapes"
    """
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
        where = traceback.format_exception(error)[-2].strip()[:500] if error.__traceback__ else ""
        details = {"exception": type(error).__name__, "message": str(error)[:500], "where": where}
    else:
        text, details = error, {"exception": error[:500]}
    times = f" ({count}x)" if count > 1 else ""
    return Finding(
        "probe-failed", "hint", f"{what} could not run{times}: {text}",
        evidence={"what": what, "count": count, **details, **dict(evidence or {})},
        fix="Nothing to fix in your training: this question is unanswered. Please report it to traindoc "
            "with the evidence.")


class Report:
    """The findings of a check or a watched run, errors first.

    ``info`` holds what traindoc inferred or measured on the way (the task, pass counts, ...), so
    the user can see what was assumed.
    """

    def __init__(self, findings: Iterable[Finding] = (), info: Mapping[str, Any] | None = None):
        order = {s: i for i, s in enumerate(SEVERITIES)}
        self.findings: list[Finding] = sorted(findings, key=lambda f: order[f.severity])
        self.info: dict[str, Any] = jsonable(dict(info or {}))

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def __contains__(self, finding_id: object) -> bool:
        return finding_id in self.ids

    def __iter__(self):
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def get(self, finding_id: str) -> list[Finding]:
        """All findings with this id."""
        return [f for f in self.findings if f.id == finding_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "ok": self.ok,
            "info": self.info,
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported report version {data.get('version')!r}")
        return cls([Finding.from_dict(f) for f in data.get("findings", [])], data.get("info"))

    def __repr__(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        return f"Report(ok={self.ok}, " + ", ".join(f"{k}s={v}" for k, v in counts.items()) + f", ids={self.ids})"
