"""Score traindoc (and the peer tools) on the gallery of real training bugs.

    python -m benchmarks.gallery                          # every case: traindoc and the installed peers
    python -m benchmarks.gallery model/ loss/double       # the cases whose name contains one of these
    python -m benchmarks.gallery --tools traindoc         # traindoc alone
    python -m benchmarks.gallery --json results.json --doc docs/benchmark.md
    python -m benchmarks.gallery --tools traindoc --reuse peers.json --doc docs/benchmark.md

Each case's buggy script and its healthy twin run once per tool, each in its own process with one
thread, ``--jobs`` at a time (default 2). The output is the summary table (per tool: recall of the
expected ids, bugs fully diagnosed, false errors on the healthy twins, median optimizer steps until
the bug was known, how often the named line is the bug's line, wall time), then one row per case,
then traindoc's misses. ``--doc`` rewrites the generated part of that Markdown file (between
``<!-- gallery:begin -->`` and ``<!-- gallery:end -->``); ``--json`` keeps every run's outcome and every
score. ``--reuse FILE`` takes the runs a previous ``--json`` holds instead of running them again (the
peers' runs do not change when traindoc does), and scores them with this run's.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path

import torch
from benchmarks.gallery.case import Case, all_cases
from benchmarks.gallery.runs import run_traindoc
from benchmarks.gallery.score import CaseScore, Outcome, Reported, score_case, totals
from benchmarks.gallery.table import case_table, misses, summary_table

import traindoc

BEGIN, END = "<!-- gallery:begin -->", "<!-- gallery:end -->"


def _peers() -> dict:
    try:
        from benchmarks.gallery.peers import PEERS
    except ImportError as e:  # the peers' packages are benchmark-only dependencies
        print(f"peers not available ({e}); install benchmarks/requirements-peers.txt", file=sys.stderr)
        return {}
    return dict(PEERS)


def _peer_runner(peer) -> Callable[[Case, bool], Outcome]:
    def run(case: Case, fixed: bool) -> Outcome:
        t0 = time.perf_counter()
        try:
            r = peer.run(case.path, fixed, case.run_options, 180.0)
        except Exception as e:  # the adapter's own failure: the peer is scored as not run on this case
            return Outcome(peer.name, [], time.perf_counter() - t0, f"adapter failed: {type(e).__name__}: {e}")
        steps = getattr(r, "id_steps", None) or {}
        return Outcome(peer.name, [Reported(i, "flag", r.line, steps.get(i, r.step)) for i in r.ids], r.wall_s,
                       r.error)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gallery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("select", nargs="*", help="run only the cases whose name contains one of these")
    parser.add_argument("--tools", help="comma-separated: traindoc and peer names (default: traindoc and every "
                                        "installed peer)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--json", type=Path, help="write every score and the totals to this file")
    parser.add_argument("--doc", type=Path, help="rewrite the generated tables in this Markdown file")
    parser.add_argument("--reuse", type=Path, help="take the runs this earlier --json file holds instead of "
                                                   "running them again")
    args = parser.parse_args(argv)

    cases = [c for c in all_cases() if not args.select or any(s in c.name for s in args.select)]
    if not cases:
        print("no case matches " + " ".join(args.select), file=sys.stderr)
        return 2
    peers = _peers()
    runners: dict[str, Callable[[Case, bool], Outcome]] = {
        "traindoc": lambda case, fixed: run_traindoc(case, fixed=fixed)}
    versions = {"traindoc": traindoc.__version__}
    for name, peer in peers.items():
        runners[name] = _peer_runner(peer)
        versions[name] = getattr(peer, "version", "")
    tools = list(runners) if not args.tools else [t.strip() for t in args.tools.split(",")]
    reused: dict[tuple[str, str, bool], Outcome] = {}
    versions_reused: dict[str, str] = {}
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        for o in old.get("outcomes", []):
            reused[(o["tool"], o["case"], o["fixed"])] = Outcome(
                o["tool"], [Reported(**r) for r in o["reported"]], o["wall_s"], o["error"], o.get("exit_code"))
        versions_reused = old.get("versions", {})
        tools += [t for t in dict.fromkeys(k[0] for k in reused) if t not in tools]
        versions.update({t: v for t, v in versions_reused.items() if t not in versions})
    unknown = [t for t in tools if t not in runners and not any(k[0] == t for k in reused)]
    if unknown:
        print(f"unknown or unavailable tools: {', '.join(unknown)} (have: {', '.join(runners)})", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    outcomes: dict[tuple[str, str, bool], Outcome] = {}
    jobs = []
    for case in cases:
        for tool in tools:
            for fixed in (False, True):
                if (tool, case.name, fixed) in reused:
                    outcomes[(tool, case.name, fixed)] = reused[(tool, case.name, fixed)]
                elif tool in runners:
                    jobs.append((tool, case, fixed))
    missing = [(t, c.name) for c in cases for t in tools for f in (False, True)
               if (t, c.name, f) not in outcomes and (t, c, f) not in jobs]
    if missing:
        print(f"no run to score for {missing[:3]}... (a reused tool that is not installed)", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(runners[tool], case, fixed): (tool, case, fixed) for tool, case, fixed in jobs}
        for done, fut in enumerate(as_completed(futures), 1):
            tool, case, fixed = futures[fut]
            out = outcomes[(tool, case.name, fixed)] = fut.result()
            said = ", ".join(sorted({r.id for r in out.reported})) or out.error[:80] or "nothing"
            print(f"[{done}/{len(jobs)}] {tool:>14} {case.name}{' --fixed' if fixed else ''}: {said} "
                  f"({out.wall_s:.0f} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0

    scores: dict[str, dict[str, CaseScore]] = {
        tool: {c.name: score_case(c, outcomes[(tool, c.name, False)], outcomes[(tool, c.name, True)])
               for c in cases} for tool in tools}
    all_totals = {tool: totals(list(scores[tool].values())) for tool in tools}
    runs_wall = sum(o.wall_s for o in outcomes.values())
    made = f"{len(jobs)} runs now ({wall / 60:.1f} min, {args.jobs} at a time)"
    if len(outcomes) > len(jobs):
        made += f", {len(outcomes) - len(jobs)} taken from {args.reuse.name}"
    header = (f"{len(cases)} cases, each a buggy script and its healthy twin; {date.today().isoformat()}; "
              f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, one thread "
              f"per run; {made}; the runs' wall times add up to {runs_wall / 60:.0f} min")
    summary = summary_table(all_totals, versions)
    table = case_table(cases, scores, tools) if "traindoc" in scores else ""  # rows are keyed by traindoc's
    missed = misses(cases, scores.get("traindoc", {}))
    print(header + "\n\n" + summary + "\n\n" + table + "\n")
    if "traindoc" in scores:
        print("traindoc's misses, wrong lines and false errors:\n" + ("\n".join(missed) or "none"))
    if args.json:
        args.json.write_text(json.dumps({
            "header": header, "versions": versions,
            "outcomes": [{"tool": t, "case": n, "fixed": f, "reported": [vars(r) for r in o.reported],
                          "wall_s": o.wall_s, "error": o.error, "exit_code": o.exit_code}
                         for (t, n, f), o in sorted(outcomes.items())],
            "totals": {t: v.to_dict() for t, v in all_totals.items()},
            "scores": {t: {n: s.to_dict() for n, s in v.items()} for t, v in scores.items()}}, indent=1))
    if args.doc:
        generated = "\n\n".join([header, summary, table, "traindoc's misses, wrong lines and false errors, as "
                                 "scored:\n\n" + ("\n".join(missed) or "none")])
        text = args.doc.read_text()
        if BEGIN not in text or END not in text:
            print(f"{args.doc} has no {BEGIN} ... {END} section to rewrite", file=sys.stderr)
            return 2
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{generated}\n{END}", text,
                      flags=re.S)
        args.doc.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
