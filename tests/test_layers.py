"""Data flows one way — capture -> measure -> judge -> render — and no module imports from a layer above
it. Every import of every module under src/traindoc (top-level or inside a function) is read with
`ast` and checked against the layers below; a new module must be placed in one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Each entry: a level; a module may import modules of strictly lower levels, never above, and of its own
# level only where the level is a folder of modules that build on each other (marked in FREE). Names are
# module paths relative to `traindoc.`; a name ending in ".*" is a whole package.
LEVELS: list[tuple[str, list[str]]] = [
    # the foundation every part speaks: errors, plain numbers, findings and their catalog, the captured
    # setup, the state a check restores, the run-directory format
    ("errors", ["errors"]),
    ("numbers", ["numbers"]),
    ("findings", ["findings"]),
    ("catalog", ["catalog"]),
    ("setup", ["setup", "state"]),
    ("run directory", ["rundir"]),
    # one batch: capture (the main pass) -> measure (targets, padding, shared facts) -> judge (probes)
    ("probes: capture", ["probes", "probes.main_pass", "probes.tokens"]),
    ("probes: measure", ["probes.targets"]),
    ("probes: facts", ["probes.context"]),
    ("probes: judges", ["probes.labels", "probes.padding", "probes.data_view", "probes.dependency", "probes.loss",
                        "probes.params", "probes.optimizer", "probes.memory", "probes.nan_forward"]),
    ("probes: the list", ["probes.registry"]),
    # a run: what the judges read (records) -> capture and measure -> judge -> the watch
    ("monitor: records", ["monitor", "monitor.record"]),
    ("monitor: detector base", ["monitor.detectors.base"]),
    ("monitor: detectors", ["monitor.detectors.*"]),
    ("monitor: detector set", ["monitor.detectors"]),
    ("monitor: measure", ["monitor.stats", "monitor.layout", "monitor.failures", "monitor.clip_patch"]),
    ("monitor: recorder", ["monitor.recorder"]),
    ("monitor: capture and rows", ["monitor.capture", "monitor.rows", "monitor.judges", "monitor.nan_replay",
                                   "monitor.tensorboard"]),
    ("monitor: the watch", ["monitor.watch"]),
    # rendering reads findings and run directories only
    ("report", ["report.*"]),
    # entry points wire the layers together
    ("entry points", ["api", "integrations._common"]),
    # an unmodified script run under the doctor and the watch
    # an experiment's trial: what it changes, and the numbers read off its curve
    ("experiments: trials", ["experiments.measures", "experiments.trial"]),
    ("script runs: capture", ["script", "script.frames", "script.capture", "script.trial"]),
    ("script runs: judged at the end", ["script.distributed", "script.ranks", "script.schedules"]),
    ("script runs: the session", ["script.session", "script.runner"]),
    # the experiments, on copies from Python and on trial runs of a script
    ("experiments", ["experiments", "experiments.*"]),
    ("applications", ["integrations.*", "cli", "demo.*", "", "__main__"]),
]

FREE = {"report", "entry points", "experiments: trials", "script runs: capture", "script runs: the session",
        "experiments", "applications"}

SIBLINGS = [("probes.", "monitor."), ("probes.", "report."), ("monitor.", "report.")]
"""Packages of one level of the flow that never import each other (the watch gets its NaN replay
from `traindoc.api`, not from the probes)."""


def _level(module: str) -> int:
    best, best_len = None, -1
    for i, (_, names) in enumerate(LEVELS):
        for name in names:
            if name.endswith(".*"):
                prefix = name[:-2]
                hit = module == prefix or module.startswith(prefix + ".")
                size = len(prefix)
            else:
                hit, size = module == name, len(name) + 1
            if hit and size > best_len:
                best, best_len = i, size
    if best is None:
        raise AssertionError(f"traindoc.{module} is in no layer of tests/test_layers.py: place it")
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "traindoc").rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join(["traindoc", *base, *([node.module] if node.module else [])])]
            else:
                names = [node.module or ""]
            # `from traindoc.probes import labels` imports the module traindoc.probes.labels
            names += [f"{names[0]}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "traindoc" or name.startswith("traindoc."):
                found.add(name[len("traindoc."):] if name != "traindoc" else "")
    modules = _modules()
    return {name for name in found if name in modules and name != module}


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_its_own_level_or_above(module):
    mine = _level(module)
    for imported in _imports(module, MODULES[module]):
        if module.startswith(imported + ".") or imported == "":
            continue  # a package's own __init__ (e.g. `from traindoc.probes import registry`)
        theirs = _level(imported)
        assert theirs < mine or (theirs == mine and LEVELS[mine][0] in FREE), (
            f"traindoc.{module} ({LEVELS[mine][0]}) imports traindoc.{imported} ({LEVELS[theirs][0]}): "
            "data flows capture -> measure -> judge -> render; move the shared piece down a layer")
        for a, b in SIBLINGS:
            assert not (module.startswith(a) and imported.startswith(b)) and \
                not (module.startswith(b) and imported.startswith(a)), (
                f"traindoc.{module} imports traindoc.{imported}: {a[:-1]} and {b[:-1]} never import each other")


def test_import_traindoc_is_light():
    """`import traindoc` must stay fast and never pull transformers, the probes or the monitor."""
    import subprocess
    import sys

    code = ("import sys, traindoc; heavy = [m for m in ('transformers', 'traindoc.probes', 'traindoc.monitor', "
            "'plotly', 'lightning', 'tensorboard') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
