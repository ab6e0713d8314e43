"""The run directory: traindoc's embedded, append-only, crash-safe store of a watched run.

Layout (schema version 1; JSON Lines, one object per line, no pickle anywhere)::

    RUN_DIR/
      meta.json          {"version": 1, "started": ISO-8601, "model": str, "num_params": int,
                          "param_groups": [{"lr": float, "weight_decay": float, "num_params": int}],
                          "layers": [module paths], ...}    written once, atomically (tmp + rename)
      scalars.jsonl      {"step": int, "loss": float|null, "lr": [float per group],
                          "grad_norm": float|null, "clipped": bool|null, "nonfinite_grads": int, ...}
      layers.jsonl       {"step": int, "grad_norm": {layer: float}, "weight_norm": {layer: float},
                          "update_ratio": {layer: float}}
      histograms.jsonl   {"step": int, "layer": str, "kind": "weight"|"grad",
                          "edges": [float], "counts": [int]}
      findings.jsonl     {"step": int|null, "id", "severity", "title", "evidence", "fix"}
      report.json        the final `Report.to_dict()`, written atomically by `close()`
      tb/                TensorBoard event files (when tensorboard is installed)

Every `flush()` writes whole lines with one write per stream, so a run killed, even with SIGKILL,
keeps everything up to its last flush (the kernel holds what was written); `close()` also fsyncs,
so a finished run survives a power loss too. A reader skips a torn last line. Non-finite floats are stored as the strings
"nan", "inf", "-inf" (strict JSON).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> w = RunDirWriter(d, meta={"model": "Tiny"})
    >>> w.append("scalars", {"step": 0, "loss": 2.3})
    >>> w.append("scalars", {"step": 1, "loss": float("nan")})
    >>> w.flush()
    >>> [r["loss"] for r in read_run(d).scalars]
    [2.3, nan]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traindoc.findings import Finding, Report, jsonable

SCHEMA_VERSION = 1
STREAMS = ("scalars", "layers", "histograms", "findings")


def fresh_run_dir(base: str | os.PathLike[str] | None = None) -> Path:
    """A run directory that does not exist yet: ``base`` (default ``./runs/<YYYYmmdd-HHMMSS>``), or
    ``base-2``, ``base-3``, ... when it does: a new run never appends to an old one.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> fresh_run_dir(d).name == d.name + "-2", fresh_run_dir(d / "new") == d / "new"
    (True, True)
    """
    path = Path(base) if base is not None else Path.cwd() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDirWriter:
    """Appends records to a run directory; `flush()` makes them durable."""

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        full_meta = {"version": SCHEMA_VERSION, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        full_meta.update(meta or {})
        _atomic_write(self.path / "meta.json", json.dumps(jsonable(full_meta), indent=2))
        self._pending: dict[str, list[str]] = {s: [] for s in STREAMS}
        self._files: dict[str, Any] = {}

    def append(self, stream: str, record: dict[str, Any]) -> None:
        """Queue one record (made JSON-safe now); nothing touches the disk until `flush()`."""
        pending = self._pending.get(stream)
        if pending is None:
            raise ValueError(f"unknown stream {stream!r}; one of {STREAMS}")
        try:  # the common record: plain values, finite floats
            line = json.dumps(record, allow_nan=False)
        except (TypeError, ValueError):  # tensors, NaN/Inf: the `jsonable` walk
            line = json.dumps(jsonable(record), allow_nan=False)
        pending.append(line)

    def flush(self, durable: bool = False) -> None:
        """Write the queued lines, whole, one write per stream. The kernel then holds them: a process
        killed at any later moment (even by SIGKILL) keeps them. ``durable=True`` also fsyncs, so that
        they survive a power loss (`close` does)."""
        for stream, lines in self._pending.items():
            if not lines:
                continue
            f = self._files.get(stream)
            if f is None:
                f = self._files[stream] = open(self.path / f"{stream}.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (kept open, closed in close())
            f.write("\n".join(lines) + "\n")
            f.flush()
            lines.clear()
        if durable:
            for f in self._files.values():
                os.fsync(f.fileno())

    def write_report(self, report_dict: dict[str, Any]) -> None:
        replace_report(self.path, report_dict)

    def close(self) -> None:
        self.flush(durable=True)
        for f in self._files.values():
            f.close()
        self._files.clear()


def replace_report(path: str | os.PathLike[str], report_dict: dict[str, Any]) -> None:
    """Write RUN_DIR/report.json anew, atomically (a run whose report holds more than the watch's)."""
    _atomic_write(Path(path) / "report.json", json.dumps(jsonable(report_dict), indent=2, allow_nan=False))


def _revive(value: Any) -> Any:
    """Strings "nan"/"inf"/"-inf" back to floats, recursively."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_revive(v) for v in value]
    if isinstance(value, dict):
        return {k: _revive(v) for k, v in value.items()}
    return value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn last line of a killed run
            try:
                records.append(_revive(json.loads(line)))
            except json.JSONDecodeError:
                break
    return records


@dataclass
class RunData:
    """Everything a run directory holds, as plain Python values."""

    path: Path
    meta: dict[str, Any]
    scalars: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    histograms: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None

    def final_report(self) -> Report:
        """The run's `Report`: report.json's when the run was closed; else rebuilt from findings.jsonl
        and meta.json, with ``info["complete"] = False`` and ``info["steps"]`` from the last scalars line.

        Raises ValueError (naming the file to blame) when a stored report or finding is malformed."""
        # the strings "nan"/"inf"/"-inf" were revived as floats everywhere (a title too); jsonable
        # turns them back, so the Report holds what the files hold
        if self.report is not None:
            try:
                return Report.from_dict(jsonable(self.report))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{self.path / 'report.json'} is not a valid traindoc report: {e!r}") from e
        findings = []
        for n, record in enumerate(self.findings, 1):
            try:
                findings.append(Finding.from_dict(jsonable(record)))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{self.path / 'findings.jsonl'} record {n} is not a valid finding: {e!r}") from e
        steps = [r["step"] for r in self.scalars if isinstance(r.get("step"), int) and not isinstance(r["step"], bool)]
        last_step = steps[-1] if steps else None
        info: dict[str, Any] = {
            "complete": False,
            "note": "the run was not closed (killed, crashed or still running): no report.json; these are "
                    "the findings written up to its last flush",
            "steps": last_step + 1 if last_step is not None else 0,
            "last_step": last_step,
            "run_dir": str(self.path),
        }
        for key in ("model", "optimizer", "num_params", "started"):
            if key in self.meta:
                info[key] = self.meta[key]
        return Report(findings, info)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one scalar, skipping records without it."""
        steps, values = [], []
        for r in self.scalars:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                steps.append(r["step"])
                values.append(float(v))
        return steps, values


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_run(path: str | os.PathLike[str]) -> RunData:
    """Read a run directory (complete or killed mid-run).

    Raises FileNotFoundError when ``path`` is missing or not a run directory, ValueError (naming the
    file) when its meta.json or report.json is not valid."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"run directory {p} does not exist")
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is a file, not a traindoc run directory")
    meta_path = p / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{p} is not a traindoc run directory (no meta.json)")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("version") != SCHEMA_VERSION:
        raise ValueError(f"{meta_path}: unsupported run directory version "
                         f"{meta.get('version') if isinstance(meta, dict) else None!r}")
    report_path = p / "report.json"
    report = _revive(_read_json(report_path)) if report_path.is_file() else None
    return RunData(
        path=p,
        meta=meta,
        scalars=_read_jsonl(p / "scalars.jsonl"),
        layers=_read_jsonl(p / "layers.jsonl"),
        histograms=_read_jsonl(p / "histograms.jsonl"),
        findings=_read_jsonl(p / "findings.jsonl"),
        report=report,
    )
