"""The user's own line in a stack: the innermost frame whose file is neither Python's, nor PyTorch's,
nor an installed library's, nor traindoc's.

A `Location` prints as ``train.py:42`` (relative to the working directory when the file is under it)
and keeps the source line, so that a finding can say which line to change.

    >>> loc = Location("/work/train.py", 42, "main", "opt = torch.optim.Adam(model.parameters())")
    >>> loc.to_dict()["line"], loc.text
    (42, 'opt = torch.optim.Adam(model.parameters())')
"""

from __future__ import annotations

import ast
import linecache
import os
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

import traindoc


@dataclass(frozen=True)
class Location:
    path: str
    line: int
    function: str
    text: str
    via: str = ""
    """The top-level package of the function the user's line called on the way (``transformers`` when
    a Trainer built the object), or "" when not known."""

    def short(self) -> str:
        """``train.py:42``: the path relative to the working directory when it lies under it."""
        try:
            rel = os.path.relpath(self.path)
        except ValueError:
            rel = self.path
        return f"{self.path if rel.startswith('..') else rel}:{self.line}"

    def __str__(self) -> str:
        return self.short()

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.short().rsplit(":", 1)[0], "line": self.line, "function": self.function,
                "code": self.text}


def _library_roots() -> tuple[str, ...]:
    roots = {str(Path(torch.__file__).resolve().parent), str(Path(traindoc.__file__).resolve().parent)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(str(Path(path).resolve()))
    for path in sys.path:
        if path.endswith(("site-packages", "dist-packages")):
            roots.add(str(Path(path).resolve()))
    return tuple(sorted(roots))


_ROOTS = _library_roots()
_USER: dict[str, bool] = {}


def is_user_file(filename: str) -> bool:
    """True for a file of the user's (a real file outside Python, PyTorch, site-packages, traindoc)."""
    known = _USER.get(filename)
    if known is None:
        if filename.startswith("<"):
            known = False
        else:
            resolved = str(Path(filename).resolve())
            known = not any(resolved == r or resolved.startswith(r + os.sep) for r in _ROOTS)
        _USER[filename] = known
    return known


def user_location(frame: FrameType | None = None) -> Location | None:
    """The innermost user frame of the current stack (or of ``frame`` and its callers)."""
    f = frame if frame is not None else sys._getframe(1)
    callee: FrameType | None = None
    while f is not None:
        code = f.f_code
        if is_user_file(code.co_filename):
            line = f.f_lineno
            text = linecache.getline(code.co_filename, line).strip()
            via = str(callee.f_globals.get("__name__", "")).split(".")[0] if callee is not None else ""
            return Location(code.co_filename, line, code.co_name, text, via)
        callee, f = f, f.f_back
    return None


_TREES: dict[str, ast.Module | None] = {}


def _calls(path: str) -> list[ast.Call]:
    """The calls in a user's file, parsed once (none when it cannot be read or parsed)."""
    if path not in _TREES:
        try:
            _TREES[path] = ast.parse(Path(path).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            _TREES[path] = None
    tree = _TREES[path]
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)] if tree is not None else []


def _at(loc: Location, line: int) -> Location:
    return Location(loc.path, line, loc.function, linecache.getline(loc.path, line).strip(), loc.via)


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def setting_line(loc: Location, keywords: tuple[str, ...]) -> Location:
    r"""The line of the setting to change, within the call at ``loc``: the first of ``keywords`` given
    to the innermost call that spans the line (``lr=`` in an optimizer's construction written over
    several lines). When a library trainer built the object (``loc.via`` is ``transformers`` or
    ``trl``: the user's line is ``trainer.train()``), the setting is in the training arguments: the
    keyword in the script's ``...Arguments(...)`` or ``...Config(...)`` call, else that call's line.
    ``loc`` itself when nothing matches.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    ...     _ = f.write("opt = AdamW(\n    params,\n    lr=1e-3,\n)\n")
    >>> setting_line(Location(f.name, 1, "<module>", "opt = AdamW("), ("lr",)).line
    3
    >>> os.unlink(f.name)
    """
    calls = _calls(loc.path)
    if loc.via in ("transformers", "trl"):
        arguments = sorted((c for c in calls if _name(c).endswith(("Arguments", "Config"))
                            and any(k.arg in keywords for k in c.keywords)), key=lambda c: c.lineno)
        for c in arguments:
            kw = next(k for k in c.keywords if k.arg in keywords)
            return _at(loc, kw.lineno)
        named = [c for c in calls if _name(c).endswith("TrainingArguments")]
        return _at(loc, named[0].lineno) if len(named) == 1 else loc
    spanning = [c for c in calls if c.lineno <= loc.line <= (c.end_lineno or c.lineno)
                and any(k.arg in keywords for k in c.keywords)]
    if not spanning:
        return loc
    inner = min(spanning, key=lambda c: (c.end_lineno or c.lineno) - c.lineno)
    kw = next(k for k in inner.keywords if k.arg in keywords)
    return _at(loc, kw.lineno)


_OWN = str(Path(traindoc.__file__).resolve().parent) + os.sep


def format_exception(error: BaseException) -> str:
    """The exception as ``python SCRIPT.py`` prints it: from the script's first frame on, without the
    frames of traindoc's own wrappers (and without runpy's)."""
    tb = error.__traceback__
    while tb is not None and not is_user_file(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    te = traceback.TracebackException(type(error), error, tb if tb is not None else error.__traceback__)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not str(Path(f.filename).resolve()).startswith(_OWN)])
    return "".join(te.format())
