"""The package's layout is its architecture: the modules import each other without a cycle
(counting the imports made inside functions too), and one way only: the commands use the run,
the run writes through its records, both use the method, the data and the models, and the
method uses nothing of sensreg but its errors and the config checks (``checks.py``). Each module can be read, and imported, after the ones it uses."""

from __future__ import annotations

import ast
from pathlib import Path

import subprocess
import sys

import sensreg

PACKAGE = Path(sensreg.__file__).parent
PLUGINS = PACKAGE.parent / "hydra_plugins"

# The layers, lowest first: a module may import modules of its own layer and of those below it.
LAYERS = {
    "sensreg.errors": 0, "sensreg.atomic": 0, "sensreg.checks": 0,
    "sensreg.method": 1, "sensreg.data": 1, "sensreg.models": 1,
    "sensreg.records": 2,
    "sensreg.run": 3,
    "sensreg.commands": 4, "hydra_plugins": 4,
}


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def module_imports(*packages: Path) -> dict[str, set[str]]:
    """Each module of the ``packages`` (dotted, from the package's name) -> the modules of those
    packages it imports."""
    modules = {}
    for package in packages:
        for path in package.rglob("*.py"):
            parts = list(path.relative_to(package.parent).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = module_imports(PACKAGE, PLUGINS)
    assert {"sensreg.run.lifecycle", "sensreg.run.loop", "sensreg.data.registry",
            "hydra_plugins.sensreg_pareto"} <= set(graph)
    assert "sensreg.run.loop" in graph["sensreg.run.lifecycle"]  # the graph sees the imports
    assert "sensreg.commands.pareto" in graph["hydra_plugins.sensreg_pareto"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_one_way_down_the_layers():
    graph = module_imports(PACKAGE, PLUGINS)
    wrong = []
    for module, imported in graph.items():
        if module in ("sensreg", "sensreg.__main__"):
            continue  # the public API and `python -m sensreg`: checked below
        here = layer_of(module)
        assert here is not None, f"{module} belongs to no layer: add its folder to LAYERS"
        for target in imported:
            there = layer_of(target)
            if there is None or there[1] > here[1]:
                wrong.append(f"{module} -> {target}")
            # The method is torch and its own modules only (and the errors it raises).
            elif here[0] == "sensreg.method" and there[0] not in ("sensreg.method", "sensreg.errors", "sensreg.checks"):
                wrong.append(f"{module} -> {target} (the method imports nothing of the rest but its errors and checks)")
    assert not wrong, "imports against the layers: " + "; ".join(sorted(wrong))
    # The public API is the method's.
    assert {layer_of(t)[0] for t in graph["sensreg"]} <= {"sensreg.method", "sensreg.errors"}


def test_the_records_are_split_from_the_training_run():
    # The run folder, its files, the report and compare read and write records; the training run
    # (config, life, loop, processes) writes through them. Neither the records nor the trackers
    # that log a run import the report's writer or anything that trains.
    graph = module_imports(PACKAGE, PLUGINS)
    records = {m for m in graph if m.startswith("sensreg.records.")}
    assert {"sensreg.records.folder", "sensreg.records.checkpoint", "sensreg.records.report",
            "sensreg.records.plots", "sensreg.records.tables", "sensreg.records.compare"} <= records
    assert {"sensreg.run.config", "sensreg.run.lifecycle", "sensreg.run.loop", "sensreg.run.distributed",
            "sensreg.run.precision", "sensreg.run.compiling"} <= set(graph)
    assert not {t for m in records for t in graph[m] if t.startswith("sensreg.run")}
    assert "sensreg.records.report" not in graph["sensreg.run.trackers"]
    assert "sensreg.records.summary" in graph["sensreg.run.trackers"]  # it logs the rows the records define


def test_the_method_runs_without_hydra_rich_or_the_run():
    code = ("import sys, sensreg, sensreg.method.prune_schedules, sensreg.method.regularizer\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'rich', 'yaml'})\n"
            "bad += sorted(m for m in sys.modules if m.startswith(('sensreg.run', 'sensreg.commands', 'sensreg.data')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("from .sub import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from ..a import thing\n")
    graph = module_imports(pkg)
    assert graph["pkg.a"] == {"pkg.sub"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.a"]


LONGEST_FUNCTION = 60  # lines from its def to its last, docstring and comments included


def test_no_function_is_longer_than_a_screen():
    # A function that does not fit a screen does more than one thing: split it into named pieces.
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {LONGEST_FUNCTION} lines: {', '.join(long)}"


def test_the_train_command_is_thin():
    # It parses, calls and prints: the checks of its command line, the sweep's jobs and the
    # failure messages live in modules of their own.
    assert len((PACKAGE / "commands" / "train.py").read_text(encoding="utf-8").splitlines()) < 200
