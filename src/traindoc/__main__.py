"""`python -m traindoc ...`: the same command line as `traindoc ...`."""

from __future__ import annotations

import sys

from traindoc.cli import main

if __name__ == "__main__":
    sys.exit(main())
