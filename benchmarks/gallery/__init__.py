"""A gallery of real training bugs, each a runnable script with its healthy twin, and the scorer that
runs traindoc and its peers on them (``python -m benchmarks.gallery``; see docs/benchmark.md).

- `case`: a case's header (expected ids, sources, the ``# BUG`` line) and the list of cases;
- `runs`: `traindoc run` on a case's script, as a user would, read back from its JSON;
- `peers`: the other tools, one adapter each, on the same unmodified scripts;
- `score`: a tool's score on a case and its totals; `table`: the tables.
"""
