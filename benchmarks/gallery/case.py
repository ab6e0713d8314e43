"""One gallery case: a training script with a real bug, its healthy twin, and what a diagnosis must say.

A case is one standalone script under ``benchmarks/gallery/cases/<category>/``. Run plainly it has
the bug; run with ``--fixed`` it is its healthy twin, which differs only by the fix. Its module
docstring is the header::

    \"\"\"nn.TransformerEncoderLayer left at batch_first=False and fed (batch, seq, emb) tensors.

    Source: https://discuss.pytorch.org/t/...   (one or more lines: where people reported it)
    Expect: batch-mixing                         (ids a correct diagnosis reports; a|b = either)
    Run: --nproc 2                               (optional: options for `traindoc run`)
    \"\"\"

The bug's line carries the comment ``# BUG`` (several lines may: the fix may go at any of them; for a
missing call, the line where it belongs). A line named by a tool is the bug's line when it is a
marked line or another line of the same statement (a call written over several lines). ``Expect: none`` declares a case whose bug no diagnosis
can prove and that only its twin's verdict scores (none are shipped).

    >>> import textwrap, tempfile, pathlib
    >>> src = textwrap.dedent('''
    ...     \"\"\"Title line.
    ...
    ...     Source: https://example.org/thread/1
    ...     Expect: lr-too-high, divergence|nan-loss
    ...     \"\"\"
    ...     import sys
    ...     lr = 1e-5 if "--fixed" in sys.argv else 1.0  # BUG
    ...     ''')
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "optim"
    >>> folder.mkdir()
    >>> path = folder / "adam_lr.py"
    >>> _ = path.write_text(src)
    >>> case = read_case(path)
    >>> case.name, case.expect, case.bug_lines
    ('optim/adam_lr', [('lr-too-high',), ('divergence', 'nan-loss')], [8])
    >>> case.accepts(8), case.accepts(7)
    (True, False)
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"
MARKER = "# BUG"
FIXED_FLAG = "--fixed"


class CaseError(ValueError):
    """A case file whose header is incomplete or wrong."""


@dataclass(frozen=True)
class Case:
    path: Path
    name: str
    """``category/stem``, e.g. ``model/transformer_batch_first``."""
    category: str
    title: str
    sources: list[str]
    expect: list[tuple[str, ...]]
    """Each entry is satisfied when any of its alternative ids is reported."""
    bug_lines: list[int]
    run_options: list[str] = field(default_factory=list)
    bug_spans: list[tuple[int, int]] = field(default_factory=list)
    """The first and last line of the simple statement holding each ``# BUG`` line."""

    def accepts(self, line: int | None) -> bool:
        """Is ``line`` the bug's line: a marked line, or a line of the statement that holds one?"""
        return line is not None and (line in self.bug_lines or any(a <= line <= b for a, b in self.bug_spans))

    @property
    def expected_ids(self) -> set[str]:
        return {fid for group in self.expect for fid in group}


def read_case(path: Path) -> Case:
    """The case in ``path``, its header checked (`CaseError` says what is missing)."""
    path = Path(path).resolve()
    text = path.read_text()
    tree = ast.parse(text)
    doc = ast.get_docstring(tree)
    if not doc:
        raise CaseError(f"{path}: no module docstring (the case's header)")
    title = doc.strip().splitlines()[0].strip()
    fields: dict[str, list[str]] = {}
    for line in doc.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("Source", "Expect", "Run"):
            fields.setdefault(key.strip(), []).append(value.strip())
    sources = [s for s in fields.get("Source", []) if s]
    if not sources or not all(s.startswith("http") for s in sources):
        raise CaseError(f"{path}: needs 'Source: <url>' lines (where the bug was reported)")
    if len(fields.get("Expect", [])) != 1:
        raise CaseError(f"{path}: needs exactly one 'Expect: id, id|id' line")
    expect_text = fields["Expect"][0]
    expect = [] if expect_text == "none" else [
        tuple(a.strip() for a in group.split("|")) for group in expect_text.split(",") if group.strip()]
    bug_lines = [i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(MARKER)]
    if not bug_lines:
        raise CaseError(f"{path}: no line ends with '{MARKER}'")
    if FIXED_FLAG not in text:
        raise CaseError(f"{path}: the script never reads '{FIXED_FLAG}' (its healthy twin)")
    run = shlex.split(fields["Run"][0]) if fields.get("Run") else []
    category = path.parent.name
    return Case(path, f"{category}/{path.stem}", category, title, sources, expect, bug_lines, run,
                _statement_spans(tree, bug_lines))


_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While, ast.If,
             ast.With, ast.AsyncWith, ast.Try, ast.Match)


def _statement_spans(tree: ast.AST, lines: list[int]) -> list[tuple[int, int]]:
    """For each line, the span of the innermost simple statement (not a def, loop or block) holding it."""
    spans = []
    for line in lines:
        best: tuple[int, int] | None = None
        for node in ast.walk(tree):
            end = getattr(node, "end_lineno", None)
            if not isinstance(node, ast.stmt) or isinstance(node, _COMPOUND) or end is None \
                    or not node.lineno <= line <= end:
                continue
            if best is None or end - node.lineno < best[1] - best[0]:
                best = (node.lineno, end)
        if best is not None:
            spans.append(best)
    return spans


def all_cases(root: Path = CASES) -> list[Case]:
    """Every case under ``root``, by name."""
    return sorted((read_case(p) for p in root.glob("*/*.py") if not p.name.startswith("_")),
                  key=lambda c: c.name)
