"""Run a training script as ``python SCRIPT.py ARGS`` would, under a diagnosing `Session`.

Same ``sys.argv`` (the script's path, then its arguments), ``__name__ == "__main__"``, the script's
folder first on ``sys.path``, the working directory unchanged, the same stdout and stderr, and the
script's exit code: 0 when it ends (or when ``--max-steps`` stopped it), its ``sys.exit`` code, 1
after an uncaught exception, whose traceback is printed as Python prints it (from the script's
first frame) before traindoc's diagnosis.

The JSON written with ``--json`` is a contract (``version`` 1)::

    {"version": 1, "ok": bool, "exit_code": int, "script": str, "stopped_at_max_steps": bool,
     "findings": [{"id", "severity", "message", "evidence", "fix", "location", "step"}], "info": {...}}

``ok`` is true when no finding is an error; ``location`` is ``{"file", "line", "function", "code"}``
(the user's line to change) or null; ``step`` is the number of optimizer steps the script had taken
when traindoc had the finding (0: the one-batch doctor proved it before the first update); under torchrun, ``info`` also holds ``rank``, ``world_size`` and
``ranks_gathered``, and a finding only another rank proved carries ``evidence["rank"]``; each finding also carries ``title`` (the same text as
``message``), so that the dict is a `traindoc.findings.Report` too (the run directory's report.json).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traindoc.errors import TraindocInputError
from traindoc.experiments.trial import Setting
from traindoc.findings import Report, jsonable
from traindoc.script.distributed import cross_rank_findings
from traindoc.script.frames import Location, format_exception
from traindoc.script.ranks import Gather, others_findings, rank_and_world
from traindoc.script.session import Session, StopScript
from traindoc.script.trial import TrialRun

JSON_VERSION = 1


@dataclass
class ScriptRun:
    report: Report
    locations: list[Location | None]
    exit_code: int
    stopped: bool
    script: str
    rank: int = 0
    world: int = 1
    gather: Gather | None = None
    found_at: dict[tuple[str, str], int] | None = None
    """(id, title) -> optimizer steps taken when traindoc had the finding (`Session.found_at`)."""

    def release(self) -> None:
        """Under torchrun: rank 0 has reported (the other ranks may exit); another rank waits for that."""
        if self.gather is not None:
            if self.rank == 0:
                self.gather.release()
            else:
                self.gather.wait_released()

    def to_dict(self) -> dict[str, Any]:
        findings = []
        for f, loc in zip(self.report.findings, self.locations, strict=True):
            findings.append({"id": f.id, "severity": f.severity, "message": f.title, "title": f.title,
                             "evidence": jsonable(f.evidence), "fix": f.fix,
                             "location": loc.to_dict() if loc is not None else None,
                             "step": (self.found_at or {}).get((f.id, f.title))})
        return {"version": JSON_VERSION, "ok": not any(f.severity == "error" for f in self.report.findings),
                "exit_code": self.exit_code, "script": self.script, "stopped_at_max_steps": self.stopped,
                "findings": findings, "info": jsonable(self.report.info)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _exit_code(code: Any) -> int:
    """``sys.exit(code)`` as the interpreter turns it into a process exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_script(script: str | os.PathLike[str], args: list[str], *, max_steps: int | None = None,
               run_dir: str | os.PathLike[str] | None = None, quiet: bool = False,
               trial: Setting | None = None) -> ScriptRun:
    """Run ``script`` with ``args`` under traindoc; raises `TraindocInputError` for a script that cannot
    be run (missing, not Python, a syntax error: the error is printed as Python prints it).

    Under torchrun (``WORLD_SIZE`` > 1) every rank diagnoses its own process, rank ``r`` > 0 quietly
    in ``RUN_DIR-rankR``, and rank 0's report gathers them (`traindoc.script.ranks`); the caller calls
    `ScriptRun.release` once it has reported. ``trial`` is an experiment's setting
    (`traindoc.script.trial`)."""
    path = Path(script)
    if not path.is_file():
        raise TraindocInputError("SCRIPT", f"{script} is not a file")
    try:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
    except SyntaxError as e:
        traceback.print_exception(type(e), e, None)
        raise TraindocInputError("SCRIPT", f"{script} has a syntax error (line {e.lineno})") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TraindocInputError("SCRIPT", f"{script} cannot be read as Python source: {e}") from None
    if max_steps is not None and max_steps < 1:
        raise TraindocInputError("--max-steps", f"must be >= 1, got {max_steps}")

    rank, world = rank_and_world()
    if rank and run_dir is not None:
        run_dir = f"{run_dir}-rank{rank}"
    trial_run = TrialRun(trial) if trial is not None else None
    session = Session(max_steps=max_steps, run_dir=run_dir, quiet=quiet or rank != 0, distributed=world > 1,
                      trial=trial_run)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    error: BaseException | None = None
    stopped = False
    session.capture.install()
    if trial_run is not None:
        trial_run.install()
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except StopScript:
        code, stopped = 0, True
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException as e:  # the script's own exception: shown as Python shows it, then diagnosed
        error = e
        sys.stderr.write(format_exception(e))
        code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        if trial_run is not None:
            trial_run.remove()
    report, locations = session.finish(error)
    run = ScriptRun(report, locations, code, stopped, str(path), rank, world, found_at=session.found_at)
    if world > 1:
        _gather(run, session, crashed=error is not None)
    return run


def _gather(run: ScriptRun, session: Session, *, crashed: bool) -> None:
    """Post this rank's record; on rank 0, fold every rank's into the report (see `traindoc.script.ranks`)."""
    gather = run.gather = Gather(run.rank, run.world)
    findings = [{"finding": f.to_dict(), "location": None if loc is None else [loc.path, loc.line, loc.function,
                                                                                loc.text]}
                for f, loc in zip(run.report.findings, run.locations, strict=True)]
    assert session.ranks is not None
    gather.post({"findings": findings, "measures": session.ranks.to_dict(session.steps, crashed)})
    info = dict(run.report.info, rank=run.rank, world_size=run.world)
    if run.rank:
        run.report = Report(run.report.findings, info)
        return
    records = gather.collect()
    located = {id(f): loc for f, loc in zip(run.report.findings, run.locations, strict=True)}
    findings_0 = list(run.report.findings)
    bypassed = next((f for f in findings_0 if f.id == "ddp-wrapper-bypassed"), None)
    for f in cross_rank_findings({r: rec["measures"] for r, rec in records.items()}, bypassed=bypassed):
        findings_0.append(f)
        located[id(f)] = session.locate(f)
    for f, loc in others_findings(records, {(f.id, f.title) for f in findings_0}):
        findings_0.append(f)
        located[id(f)] = Location(*loc) if loc else None
    info["ranks_gathered"] = sorted(records)
    missing = sorted(set(range(run.world)) - set(records))
    if missing:
        why = gather.error or f"no record within {gather.timeout_s:.0f} s"
        info.setdefault("notes", []).append(f"ranks {missing} were not gathered ({why}): their findings are in "
                                            "their own run directories, and the cross-rank checks left them out")
    run.report = Report(findings_0, info)
    run.locations = [located[id(f)] for f in run.report.findings]
    # what only the gathering proved (cross-rank, other ranks' findings) was known at the end
    run.found_at = {(f.id, f.title): session.steps for f in findings_0} | (run.found_at or {})
