"""The `traindoc` command line. Bad input gets one clear message and exit status 2, not a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from traindoc.errors import TraindocInputError


def _cmd_demo(args: argparse.Namespace) -> int:
    from traindoc.demo.main import run_demo

    return run_demo(steps=args.steps, out_dir=args.out, json_path=args.json, threads=args.threads)


def _cmd_report(args: argparse.Namespace) -> int:
    from traindoc.report.html import write_html_report

    out = write_html_report(args.run_dir, args.output)
    print(f"wrote {out}")
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
    parser = argparse.ArgumentParser(prog="traindoc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="diagnose and fix a chatbot whose loss sticks at ~5 (a misused nn.Transformer)")
    demo.add_argument("--steps", type=int, default=None, help="training steps for each of the two models")
    demo.add_argument("--out", default="traindoc-demo", help="folder for the loss-curve files")
    demo.add_argument("--json", default=None, metavar="PATH", help="write the check's report as JSON")
    demo.add_argument("--threads", type=int, default=None, help="torch threads (default 1: 2 threads on 2 busy cores are slower)")
    demo.set_defaults(func=_cmd_demo)

    report = sub.add_parser("report", help="render a run directory as one self-contained HTML file")
    report.add_argument("run_dir")
    report.add_argument("-o", "--output", default=None, help="HTML path (default RUN_DIR/report.html)")
    report.set_defaults(func=_cmd_report)

    catalog = sub.add_parser("catalog", help="list every finding id")
    catalog.add_argument("--markdown", action="store_true", help="print docs/findings.md")
    catalog.set_defaults(func=_cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (TraindocInputError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"traindoc {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
