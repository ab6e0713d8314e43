"""``python -m benchmarks.gallery.peers PEER CASE.py [--fixed] [--timeout S]``: one peer on one case."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks.gallery.case import read_case
from benchmarks.gallery.peers import DEFAULT_TIMEOUT, PEERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gallery.peers")
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("script", type=Path, help="a gallery case (or any script that reads --fixed)")
    parser.add_argument("--fixed", action="store_true", help="run the healthy twin")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    try:
        options = read_case(args.script).run_options
    except Exception:  # not a gallery case: run it plainly
        options = []
    peer = PEERS[args.peer]
    result = peer.run(args.script, args.fixed, options, args.timeout)
    print(json.dumps({"peer": peer.name, "version": peer.version, **asdict(result)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
