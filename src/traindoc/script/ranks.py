"""One report for a run of several processes: each rank's findings and measures, gathered by rank 0.

Under ``torchrun`` every process runs ``traindoc run``. When its script has ended, each rank posts
one JSON record (its findings with their lines, and its `traindoc.script.distributed.RankMeasures`)
to the key-value store that torchrun's agent keeps for the job (``MASTER_ADDR:MASTER_PORT``,
``TORCHELASTIC_USE_AGENT_STORE``): a client of its own, not the script's process group, which is
usually destroyed by then, and no collective, so nothing can deadlock. Rank 0 waits for every rank's
record (at most `GATHER_TIMEOUT_S`), judges the cross-rank findings, adds the findings that only
other ranks proved (with their rank), and reports; the other ranks wait (at most as long) until it
has, so that torchrun does not stop rank 0 while it writes. Without torchrun's store (another
launcher) each rank keeps its own report and rank 0 says that the others were not gathered.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any

from traindoc.findings import Finding

GATHER_TIMEOUT_S = 60.0
"""How long rank 0 waits for the other ranks' records, and they for its report."""


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, from torchrun's environment ((0, 1) without it)."""
    try:
        return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0, 1


class Gather:
    """The exchange of one job's records through torchrun's store (see the module docstring)."""

    def __init__(self, rank: int, world: int, timeout_s: float = GATHER_TIMEOUT_S):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        job = os.environ.get("TORCHELASTIC_RUN_ID", "job")
        self.prefix = f"traindoc/{job}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.store: Any = None
        self.error: str | None = None
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
            self.error = "no torchrun agent store to gather the ranks' reports through"
            return
        try:
            import torch.distributed as dist

            self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                       timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
        except Exception as e:  # the store is gone (the agent ended) or unreachable: each rank reports alone
            self.error = f"torchrun's store could not be reached: {type(e).__name__}: {e}"

    def _key(self, name: str) -> str:
        return self.prefix + name

    def post(self, record: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.set(self._key(f"rank{self.rank}"), json.dumps(record, allow_nan=True))

    def collect(self) -> dict[int, dict[str, Any]]:
        """Rank 0: every rank's record that arrived within the timeout, by rank."""
        records: dict[int, dict[str, Any]] = {}
        if self.store is None:
            return records
        deadline = time.monotonic() + self.timeout_s
        waiting = set(range(self.world))
        while waiting:
            for r in sorted(waiting):
                if self.store.check([self._key(f"rank{r}")]):
                    records[r] = json.loads(self.store.get(self._key(f"rank{r}")))
                    waiting.discard(r)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return records

    def release(self) -> None:
        """Rank 0: the report is written; the other ranks may exit."""
        if self.store is not None:
            self.store.set(self._key("reported"), "1")

    def wait_released(self) -> None:
        """The other ranks: wait (at most the timeout) until rank 0 has reported."""
        if self.store is None:
            return
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.store.check([self._key("reported")]):
                return
            time.sleep(0.05)


def others_findings(records: dict[int, dict[str, Any]], have: set[tuple[str, str]]) -> list[tuple[Finding, Any]]:
    """The findings other ranks proved that rank 0 did not (by id and title), each with its rank in the
    evidence and its line (``[path, line, function, code]`` or None)."""
    out: list[tuple[Finding, Any]] = []
    for r, record in sorted(records.items()):
        if r == 0:
            continue
        for item in record.get("findings", []):
            f = Finding.from_dict(item["finding"])
            if (f.id, f.title) in have:
                continue
            have.add((f.id, f.title))
            f.evidence["rank"] = r
            out.append((f, item.get("location")))
    return out
