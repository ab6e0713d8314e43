"""What an experiment returns: its findings, its numbers and its curves, as one JSON contract.

``ExperimentResult.to_dict()`` (and ``traindoc tune ... --json``) is a contract, ``version`` 1::

    {"version": 1, "experiment": "lr" | "warmup" | "clip" | "overfit" | "instability" | "fix",
     "findings": [{"id", "severity", "message", "evidence", "fix", "location"}],
     "result": {...}, "curves": {name: {"losses": [...], "grad_norms": [...], "lrs": [...]}},
     "info": {...}}

``result`` holds the experiment's numbers (for ``lr``: ``suggested_lr``, ``lr_range``,
``unstable_lr``; for ``warmup``: ``warmup_steps``; see each experiment). ``location`` is null from
Python, the user's line when the experiment ran a script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from traindoc.experiments.trial import Curve
from traindoc.findings import Finding, jsonable

JSON_VERSION = 1


@dataclass
class ExperimentResult:
    experiment: str
    result: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    locations: list[dict[str, Any] | None] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.result[key]

    @property
    def ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        locations = self.locations or [None] * len(self.findings)
        return {"version": JSON_VERSION, "experiment": self.experiment,
                "findings": [{"id": f.id, "severity": f.severity, "message": f.title, "evidence": jsonable(f.evidence),
                              "fix": f.fix, "location": loc} for f, loc in zip(self.findings, locations, strict=True)],
                "result": jsonable(self.result), "curves": {k: jsonable(c.to_dict()) for k, c in self.curves.items()},
                "info": jsonable(self.info)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)
