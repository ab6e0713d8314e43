"""Probes register here. A probe is a function ``probe(ctx: ProbeContext) -> list[Finding]``: a small
experiment on the user's objects. `traindoc.check` runs them in registration order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from traindoc.findings import Finding

ProbeFn = Callable[..., list[Finding]]


@dataclass(frozen=True)
class Probe:
    name: str
    category: str  # data | model | optimizer | resources
    fn: ProbeFn


PROBES: list[Probe] = []


def probe(name: str, category: str) -> Callable[[ProbeFn], ProbeFn]:
    """Register a probe function under a name (the ids it can emit are documented on the function)."""

    def register(fn: ProbeFn) -> ProbeFn:
        PROBES.append(Probe(name, category, fn))
        return fn

    return register


def all_probes() -> list[Probe]:
    """Every registered probe (importing the probe modules registers them)."""
    from traindoc.probes import data, dependency, loss, memory, nan_forward, optimizer, params  # noqa: F401

    return list(PROBES)
