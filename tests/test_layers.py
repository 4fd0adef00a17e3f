"""raal's import structure: no import cycle among its modules, and the import-linter contracts of pyproject.toml
(the layers of docs/architecture.md, no torch or Ray in config/store/report/strategies) hold.

The graph is grimp's (what import-linter builds): every import counts, at top level, inside a function or under
TYPE_CHECKING, so a "lazy" import cannot hide a dependency.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("raal", cache_dir=None)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_among_raal_modules(graph):
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    """The check above can fail: the import that closed the 21-module cycle of issue 26, put back."""
    graph = grimp.build_graph("raal", cache_dir=None)  # a graph of its own: the module's stays as built
    graph.add_import(importer="raal.config._schema", imported="raal.pipelines.registry")
    found = cycles(graph)
    assert len(found) == 1 and {"raal.config._schema", "raal.pipelines.registry", "raal.pipelines.base"} <= set(found[0])


def test_function_local_imports_are_in_the_graph(graph):
    """A lazy import counts: raal.run imports the report inside `run` only."""
    assert "raal.report" in graph.find_modules_directly_imported_by("raal.run")


def test_import_linter_contracts_hold():
    """The contracts `make lint` checks (pyproject.toml, [tool.importlinter]), on this checkout's raal."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                           "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
