"""The `traindoc` command line. Bad input gets one clear message and exit status 2, not a traceback.

Exit status: 0 success; 1 `traindoc report --fail-on` found a finding of that severity or worse;
2 bad input (a missing folder, a path that is not a run directory, an optional extra not installed)
or an error while rendering the HTML page; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from traindoc.errors import TraindocInputError

DESCRIPTION = """\
traindoc finds out why a PyTorch training run does not learn. In Python, traindoc.check(model, batch)
runs a few one-batch experiments on your real model and data and reports each problem it proves, with
the evidence and the fix; traindoc.watch(model, optimizer) follows a training run (NaNs, loss spikes,
plateaus, vanishing or exploding gradients, stalled layers) and records it in a run directory. This
command diagnoses an unmodified training script (run), runs the Tuning Playbook's experiments on it
(tune lr/warmup/clip/instability, overfit), turns a run directory into an HTML page or JSON, fails a CI
job on its findings, lists every finding id, and runs the demo."""

EPILOG = """\
examples:
  traindoc report runs/20250101-120000
      write runs/20250101-120000/report.html (findings, loss, LR, gradient plots)
  traindoc report runs/20250101-120000 --no-html --json findings.json --fail-on error
      CI gate: write the findings as JSON, exit 1 if the run has an error finding
  traindoc run train.py --max-steps 200
      run an unmodified training script for 200 optimizer steps and diagnose it
  traindoc overfit train.py
      can the script's model learn one batch by heart? if not, why
  traindoc tune lr train.py --planned-steps 5000
      a learning rate picked by short real runs of the script, and where training turns unstable
  traindoc catalog
      list every finding id with its category and what it means

exit status: 0 ok; 1 `report --fail-on` matched a finding; 2 bad input or an error (one message on
stderr). `traindoc COMMAND --help` describes each command's options."""

REPORT_DESCRIPTION = """\
Read a run directory written by traindoc.watch (meta.json, scalars.jsonl, findings.jsonl, and
report.json once the run was closed) and render it as one self-contained HTML page; optionally write
its findings as JSON and set the exit status from them. A run killed before close() has no
report.json: its findings so far are read from findings.jsonl and the JSON says "complete": false."""

REPORT_EPILOG = """\
examples:
  traindoc report RUN_DIR                          RUN_DIR/report.html
  traindoc report RUN_DIR -o /tmp/run.html         the page somewhere else
  traindoc report RUN_DIR --no-html --json -       the findings as JSON on stdout
  traindoc report RUN_DIR --no-html --fail-on warning
                                                   exit 1 if any warning or error was found

exit status: 0 ok; 1 --fail-on matched a finding (one line on stderr names them); 2 RUN_DIR is not a
run directory, plotly is missing for the HTML page, or the page could not be rendered."""

RUN_DESCRIPTION = """\
Run a PyTorch training script as `python SCRIPT ARGS` would (same argv, __main__, working directory,
output and exit code) with traindoc's global hooks in PyTorch. At the first optimizer step traindoc
runs the one-batch doctor on the model, batch, loss and optimizer it found (restoring everything),
then watches the run; at the end (or after --max-steps steps, or when the script crashes) it prints
the findings, each with the line of your script to change."""

RUN_EPILOG = """\
examples:
  traindoc run train.py                          diagnose a whole run
  traindoc run train.py --max-steps 200 -- --lr 3e-4 --batch-size 8
                                                 200 optimizer steps; the script gets its own options
  traindoc run train.py --json findings.json     the findings and their lines as JSON
  python -m traindoc run train.py                the same
  traindoc run --nproc 2 train.py                two processes under torchrun; rank 0 reports for both
  torchrun --nproc_per_node 2 -m traindoc run train.py
                                                 the same, with torchrun's own options

exit status: the script's own (0 when --max-steps stopped it); 2 when SCRIPT cannot be run."""

_RANK = {"error": 0, "warning": 1, "hint": 2}


def _version() -> str:
    """The installed distribution's version, or the package's own when traindoc is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("traindoc")
    except PackageNotFoundError:
        from traindoc import __version__

        return __version__


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _cmd_demo(args: argparse.Namespace) -> int:
    from traindoc.demo.main import run_demo

    return run_demo(steps=args.steps, out_dir=args.out, json_path=args.json, threads=args.threads)


# ----------------------------------------------------------------------------- report


def _write_json(text: str, target: str, out: TextIO, own_report: Path | None = None) -> None:
    """``text`` to stdout (``-``) or to the file ``target``, which must not be ``own_report`` (the run
    directory's report.json, which the run itself owns)."""
    text += "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    if own_report is not None and path.resolve() == own_report.resolve():
        raise TraindocInputError("--json", f"{path} is the run's own report.json; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=out)


def _write_html(args: argparse.Namespace, out: TextIO) -> bool:
    """The HTML page; False (after one message on stderr) when it could not be written."""
    from traindoc.report.html import MissingExtraError, write_html_report

    try:
        page = write_html_report(args.run_dir, args.output)
    except MissingExtraError as e:
        print(f"traindoc report: {e} (or pass --no-html to skip the page)", file=sys.stderr)
        return False
    except OSError:
        raise  # a path problem the user can fix: main() prints it
    except Exception as e:  # a bug in traindoc's renderer, not in the user's run
        print(f"traindoc report: internal error while rendering the HTML page: {type(e).__name__}: {_one_line(e)} "
              "(please report it to traindoc; the run directory is intact, and --no-html with --json or "
              "--fail-on works without the page)", file=sys.stderr)
        return False
    print(f"wrote {page}", file=out)
    return True


def _counts(findings: Sequence[Any]) -> str:
    n = Counter(f.severity for f in findings)
    return ", ".join(f"{n[s]} {s}{'' if n[s] == 1 else 's'}" for s in ("error", "warning", "hint"))


def _cmd_report(args: argparse.Namespace) -> int:
    # With `--json -` stdout carries the JSON alone; every other line goes to stderr.
    out = sys.stderr if args.json == "-" else sys.stdout
    from traindoc.rundir import read_run

    run = read_run(args.run_dir)
    report = run.final_report()
    if args.json is not None:
        _write_json(report.to_json(), args.json, out, run.path / "report.json")
    if not args.no_html and not _write_html(args, out):
        return 2
    state = "closed" if run.report is not None else "not closed (no report.json)"
    steps = report.info.get("steps")
    print(f"{run.path}: run {state}, {steps if steps is not None else '?'} steps; "
          f"{len(report)} finding{'' if len(report) == 1 else 's'} ({_counts(report.findings)})", file=out)
    if args.fail_on is None:
        return 0
    bad = [f for f in report.findings if _RANK[f.severity] <= _RANK[args.fail_on]]
    if not bad:
        return 0
    seen = Counter((f.id, f.severity) for f in bad)
    names = [f"{fid} ({sev}{f', {n}x' if n > 1 else ''})" for (fid, sev), n in seen.items()]
    shown = ", ".join(names[:10]) + (f", and {len(names) - 10} more" if len(names) > 10 else "")
    print(f"traindoc report: --fail-on {args.fail_on}: {len(bad)} finding{'' if len(bad) == 1 else 's'} "
          f"at {args.fail_on} or worse: {shown}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- run


def _print_script_run(run: Any, out: TextIO) -> None:
    findings = run.report.findings
    steps = run.report.info.get("optimizer_steps", 0)
    stop = " (stopped at --max-steps)" if run.stopped else ""
    head = f"traindoc run {run.script}: {steps} optimizer step{'' if steps == 1 else 's'}{stop}; "
    if not findings:
        print(head + "no findings", file=out)
    else:
        print(head + f"{len(findings)} finding{'' if len(findings) == 1 else 's'} ({_counts(findings)})", file=out)
    for f, loc in zip(findings, run.locations, strict=True):
        where = f"  {loc.short()}" if loc is not None else ""
        print(f"  {f.severity.upper():8s}{f.id}{where}: {f.title}", file=out)
        if loc is not None and loc.text:
            print(f"          {loc.line} | {loc.text}", file=out)
        print(f"          fix: {f.fix}", file=out)
    if run.world > 1:
        gathered = run.report.info.get("ranks_gathered", [])
        print(f"  {run.world} processes: rank 0 reports the findings of ranks {gathered} and compares their "
              "batches and weights", file=out)
    for note in run.report.info.get("notes", []):
        print(f"  note: {note}", file=out)
    run_dir = run.report.info.get("run_dir")
    if run_dir:
        print(f"  run directory: {run_dir} (traindoc report {run_dir} for the HTML page)", file=out)


def _cmd_run(args: argparse.Namespace) -> int:
    from traindoc.rundir import replace_report
    from traindoc.script.runner import run_script

    if args.nproc is not None:
        return _torchrun(args)
    out = sys.stderr
    trial = None
    if args.trial is not None:  # one trial of `traindoc tune` / `traindoc overfit`
        import json

        from traindoc.experiments.trial import Setting

        trial = Setting(**json.loads(args.trial))
    run = run_script(args.script, list(args.script_args), max_steps=args.max_steps, run_dir=args.run_dir,
                     quiet=trial is not None, trial=trial)
    try:
        report_dir = run.report.info.get("run_dir")
        if report_dir:  # the run directory's report holds the doctor's findings too, with their lines
            replace_report(report_dir, run.to_dict())
        if run.rank:  # under torchrun rank 0 reports for every rank
            return run.exit_code
        _print_script_run(run, out)
        if args.json is not None:
            _write_json(run.to_json(), args.json, out)
        if args.html and report_dir:
            args.output, args.run_dir = None, report_dir
            _write_html(args, out)
    finally:
        run.release()
    return run.exit_code


def _torchrun(args: argparse.Namespace) -> int:
    """``traindoc run --nproc N``: the same command under ``torchrun --standalone --nproc_per_node N``."""
    import subprocess

    if args.nproc < 1:
        raise TraindocInputError("--nproc", f"must be >= 1, got {args.nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "traindoc", "run", args.script]
    for flag, value in (("--max-steps", args.max_steps), ("--json", args.json), ("--run-dir", args.run_dir)):
        if value is not None:
            command += [flag, str(value)]
    if args.html:
        command.append("--html")
    return subprocess.call([*command, "--", *args.script_args])


# ----------------------------------------------------------------------------- catalog


def _progress() -> Any:
    """A progress bar on a terminal (rich), nothing otherwise; returns (callback, stop)."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.start()
    task = bar.add_task("trials", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop


def _print_experiment(result: Any, out: TextIO) -> None:
    r = result.result
    head = {"lr": lambda: f"suggested lr {r['suggested_lr']:.3g} (best range {r['lr_range'][0]:.3g}.."
                          f"{r['lr_range'][1]:.3g} in runs of {r['steps_per_trial']} steps, {r['seeds']} seeds); "
                          "unstable from " + (f"{r['unstable_lr']:.3g}" if r["unstable_lr"] else "no LR tried")
                          + f"\n  horizon: {r['horizon_note']}",
            "warmup": lambda: (f"shortest stable warmup at lr {r['lr']:.3g}: {r['warmup_steps']} steps (tried "
                               f"{r['tried']})" if r["warmup_steps"] is not None else
                               f"no warmup up to {r['tried'][-1]} steps makes lr {r['lr']:.3g} stable"),
            "clip": lambda: (f"clip at {r['threshold']:.3g} (the {r['percentile']}th percentile of {r['steps']} "
                             "gradient norms)" + (f"; the current {r['current']:.3g} clips {r['clipped_fraction']:.0%}"
                                                  if r["current"] else "")),
            "instability": lambda: (f"at lr {r['lr']:.3g}: " + ("stable" if not r["unstable"] else
                                    f"{r['kind']} instability at step {r['unstable_at_step']}") + f" of {r['steps']}"),
            "fix": lambda: (f"{r['change']} {r['verdict']}: final loss {r['loss_before']:.4g} before, "
                            f"{r['loss_after']:.4g} after ({r['steps']} steps, {r['seeds']} seeds; noise "
                            f"{r['noise']:.2g})"),
            "overfit": lambda: (f"one batch learned in {r['steps_to_floor']} steps" if r["reached"] else
                                f"one batch not learned in {r['steps']} steps ({r['first_loss']:.4g} -> "
                                f"{r['final_loss']:.4g}): {r['diagnosis']}")}[result.experiment]()
    print(f"traindoc {result.experiment}: {head}", file=out)
    locations = result.locations or [None] * len(result.findings)
    for f, loc in zip(result.findings, locations, strict=True):
        where = f"  {loc['file']}:{loc['line']}" if loc else ""
        print(f"  {f.severity.upper():8s}{f.id}{where}: {f.title}", file=out)
        if loc and loc.get("code"):
            print(f"          {loc['line']} | {loc['code']}", file=out)
        print(f"          fix: {f.fix}", file=out)
    note = result.info.get("note")
    if note:
        print(f"  note: {note}", file=out)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from traindoc.experiments.script_plan import script_experiment

    kind = getattr(args, "experiment", None) or "overfit"
    change = None
    if kind == "fix":
        change = {k: v for k, v in (("lr", args.lr), ("warmup", args.warmup), ("clip", args.clip),
                                    ("zero_grad", True if args.zero_grad else None),
                                    ("ignore_index", args.ignore_index),
                                    ("scheduler_per_step", True if args.scheduler_per_step else None)) if v is not None}
        if not change:
            raise TraindocInputError("fix", "name the change to verify: --lr, --warmup, --clip, --zero-grad, "
                                            "--ignore-index or --scheduler-per-step")
    update, stop = _progress()
    try:
        result = script_experiment(kind, args.script, list(args.script_args), max_steps=args.max_steps,
                                   trials=getattr(args, "trials", 7), seeds=getattr(args, "seeds", 2),
                                   planned_steps=getattr(args, "planned_steps", None),
                                   lr=None if kind == "fix" else getattr(args, "lr", None),
                                   jobs=getattr(args, "jobs", 1), workdir=args.trials_dir, change=change,
                                   backend="ray" if getattr(args, "ray", False) else "pool", progress=update)
    finally:
        stop()
    _print_experiment(result, sys.stderr)
    if args.json is not None:
        _write_json(result.to_json(), args.json, sys.stderr)
    if args.html is not None:
        from traindoc.report.html import write_experiment_html

        print(f"wrote {write_experiment_html(result.to_dict(), args.html)}", file=sys.stderr)
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from traindoc.catalog import CATALOG, markdown

    if args.markdown:
        print(markdown())
    else:
        for e in CATALOG.values():
            print(f"{e.id:28s} {e.category:13s} {e.meaning.split('. ')[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="traindoc", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"traindoc {_version()}",
                        help="print traindoc's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    demo = sub.add_parser("demo", help="diagnose and fix a chatbot whose loss sticks at ~5 (a misused nn.Transformer)")
    demo.add_argument("--steps", type=int, default=None,
                      help="training steps for each of the two models (default 600)")
    demo.add_argument("--out", default="traindoc-demo",
                      help="folder for the two run directories, the loss curves and the summary (default traindoc-demo)")
    demo.add_argument("--json", default=None, metavar="PATH",
                      help="also write the check's report on the broken model as JSON (default: no JSON)")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch threads (default 1: on 2 cores that are busy, 2 threads are slower)")
    demo.set_defaults(func=_cmd_demo)

    report = sub.add_parser(
        "report", help="render a run directory as one HTML page, write its findings as JSON, or fail CI on them",
        description=REPORT_DESCRIPTION, epilog=REPORT_EPILOG, formatter_class=raw)
    report.add_argument("run_dir", metavar="RUN_DIR",
                        help="the run directory traindoc.watch wrote (the folder holding meta.json)")
    html = report.add_mutually_exclusive_group()
    html.add_argument("-o", "--output", default=None, metavar="PATH",
                      help="where to write the HTML page (default: RUN_DIR/report.html)")
    html.add_argument("--no-html", action="store_true",
                      help="do not write the HTML page, which needs plotly (pip install 'traindoc[report]'); "
                           "for a CI gate with --json/--fail-on (default: the page is written)")
    report.add_argument("--json", default=None, metavar="PATH",
                        help="also write the run's report as JSON, the schema of Report.to_dict(): "
                             '{"version": 1, "ok", "info", "findings"}; "-" writes it to stdout '
                             "(default: no JSON)")
    report.add_argument("--fail-on", choices=("error", "warning"), default=None,
                        help="exit with status 1 when the run has a finding of this severity or worse "
                             "(warning includes error) (default: exit 0 whatever was found)")
    report.set_defaults(func=_cmd_report)

    run = sub.add_parser(
        "run", help="run a training script unchanged and diagnose it: the one-batch doctor at its first "
                    "optimizer step, the monitor after, each finding on the line to change",
        description=RUN_DESCRIPTION, epilog=RUN_EPILOG, formatter_class=raw)
    run.add_argument("script", metavar="SCRIPT", help="the training script, run as `python SCRIPT ARGS` would")
    run.add_argument("script_args", nargs="*", metavar="ARGS",
                     help="the script's own arguments (after --, so that traindoc does not read them)")
    run.add_argument("--max-steps", type=int, default=None, metavar="N",
                     help="stop the script cleanly after N optimizer steps and report (default: run to the end)")
    run.add_argument("--json", default=None, metavar="PATH",
                     help='write the findings as JSON: {"version": 1, "ok", "exit_code", "findings": [{"id", '
                          '"severity", "message", "evidence", "fix", "location"}], "info"}; "-" for stdout (default: no JSON)')
    run.add_argument("--run-dir", default=None, metavar="DIR",
                     help="the run directory of the monitor (default: ./runs/<date-time>)")
    run.add_argument("--nproc", type=int, default=None, metavar="N",
                     help="run the script in N processes under torchrun (`torchrun --standalone "
                          "--nproc_per_node N -m traindoc run ...`); rank 0 reports for all (default: the "
                          "processes this command runs in)")
    run.add_argument("--html", action="store_true",
                     help="also write RUN_DIR/report.html (needs plotly: pip install 'traindoc[report]') (default: no page)")
    run.add_argument("--trial", default=None, help=argparse.SUPPRESS)  # an experiment's setting, as JSON
    run.set_defaults(func=_cmd_run)

    def experiment_options(p: argparse.ArgumentParser, steps_help: str) -> None:
        p.add_argument("script", metavar="SCRIPT", help="the training script, unchanged")
        p.add_argument("script_args", nargs="*", metavar="ARGS", help="the script's own arguments (after --)")
        p.add_argument("--max-steps", type=int, default=None, metavar="N", help=steps_help)
        p.add_argument("--json", default=None, metavar="PATH",
                       help='write {"version": 1, "experiment", "findings", "result", "curves", "info"}; "-" for '
                            "stdout (default: no JSON)")
        p.add_argument("--html", default=None, metavar="PATH",
                       help="also write the result as an HTML page with its plots (needs plotly) (default: none)")
        p.add_argument("--trials-dir", default=None, metavar="DIR",
                       help="where each trial's run directory and output go (default: a new temporary folder)")

    tune = sub.add_parser("tune", help="run the Tuning Playbook's experiments on a script: lr, warmup, clip, "
                                       "instability (each trial a bounded `traindoc run` with the setting "
                                       "changed through hooks)",
                          description="Guided experiments on an unmodified training script. Each trial runs the "
                                      "script under `traindoc run` for at most --max-steps optimizer steps, with "
                                      "its LR, warmup or clipping changed through PyTorch's hooks.",
                          formatter_class=raw)
    tune_sub = tune.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    lr_p = tune_sub.add_parser("lr", help="a learning rate from short real runs, with the LR where training "
                                          "turns unstable")
    experiment_options(lr_p, "optimizer steps per trial (default 100)")
    lr_p.add_argument("--trials", type=int, default=7, metavar="K", help="LRs tried by short runs (default 7, "
                                                                          "plus 2 to refine)")
    lr_p.add_argument("--seeds", type=int, default=2, metavar="S", help="seeds per LR (default 2)")
    lr_p.add_argument("--planned-steps", type=int, default=None, metavar="S",
                      help="the length of your real run (default: the script runs once to its end to count it)")
    lr_p.add_argument("--jobs", type=int, default=1, metavar="J", help="trials run side by side (default 1)")
    warm_p = tune_sub.add_parser("warmup", help="the shortest warmup that keeps the LR stable")
    experiment_options(warm_p, "at most this many optimizer steps per trial (default: 3x the warmup tried)")
    warm_p.add_argument("--planned-steps", type=int, default=None, metavar="S",
                        help="the length of your real run (default: the script runs once to its end to count it)")
    warm_p.add_argument("--lr", type=float, default=None, help="the peak LR to make stable (default: the script's)")
    warm_p.add_argument("--jobs", type=int, default=1, metavar="J", help="trials run side by side (default 1)")
    clip_p = tune_sub.add_parser("clip", help="a clipping threshold from the gradient norms of a short run")
    experiment_options(clip_p, "optimizer steps of the run (default 100)")
    inst_p = tune_sub.add_parser("instability", help="train at 2x the LR: early (warmup helps) or sudden instability")
    experiment_options(inst_p, "optimizer steps of the run (default 500)")
    inst_p.add_argument("--lr", type=float, default=None, help="the LR to probe (default: 2x the script's)")
    fix_p = tune_sub.add_parser("fix", help="verify a fix that is a setting: a seeded A/B of the script as it is "
                                            "and with the change")
    experiment_options(fix_p, "optimizer steps of each arm (default 100)")
    fix_p.add_argument("--lr", type=float, default=None, help="the peak LR to try (default: unchanged)")
    fix_p.add_argument("--warmup", type=int, default=None, metavar="W", help="warmup steps to add (default: none)")
    fix_p.add_argument("--clip", type=float, default=None, help="a clipping threshold to add (default: none)")
    fix_p.add_argument("--zero-grad", action="store_true",
                       help="zero the gradients after every step, as a missing optimizer.zero_grad() would "
                            "(default: off)")
    fix_p.add_argument("--ignore-index", type=int, default=None, metavar="ID",
                       help="make cross-entropy skip this target value (the pad id, when pads are counted in the "
                            "loss); both arms are scored on the other targets (default: unchanged)")
    fix_p.add_argument("--scheduler-per-step", action="store_true",
                       help="step the LR schedulers after every optimizer step instead of where the script steps "
                            "them (default: off)")
    fix_p.add_argument("--seeds", type=int, default=2, metavar="S", help="seeds per arm (default 2)")
    fix_p.add_argument("--jobs", type=int, default=1, metavar="J", help="trials run side by side (default 1)")
    for p in (lr_p, warm_p, fix_p):
        p.add_argument("--ray", action="store_true",
                       help="run the trials as tasks on a Ray cluster (RAY_ADDRESS, else a local one; pip install "
                            "'traindoc[ray]') (default: local processes)")
    for p in (lr_p, warm_p, clip_p, inst_p, fix_p):
        p.set_defaults(func=_cmd_experiment)

    overfit = sub.add_parser("overfit", help="train the script on one batch: does the loss reach ~0, and if not, why",
                             description="Hold an unmodified script to the first batch of its DataLoader and see "
                                         "whether the model learns it by heart (the Hugging Face course's first "
                                         "check); if not, say why.")
    experiment_options(overfit, "optimizer steps on the batch (default 200)")
    overfit.add_argument("--lr", type=float, default=None, help="the peak LR (default: the script's)")
    overfit.set_defaults(func=_cmd_experiment)

    catalog = sub.add_parser("catalog", help="list every finding id with its category and meaning",
                             description="List every finding id traindoc can report, with its category "
                                         "and meaning.")
    catalog.add_argument("--markdown", action="store_true",
                         help="print the full reference as Markdown, the text of docs/findings.md "
                              "(default: one line per finding id)")
    catalog.set_defaults(func=_cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv and argv and argv[0] in ("run", "tune", "overfit"):  # `traindoc run SCRIPT [options] -- ARGS`
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if script_args:
        args.script_args = [*args.script_args, *script_args]
    try:
        return int(args.func(args) or 0)
    except (TraindocInputError, OSError, ValueError) as e:
        print(f"traindoc {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
