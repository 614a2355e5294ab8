"""The package's layers and house rules, pinned: what a reader may rely on from a path alone.

busapp/core does no I/O; busapp/entrypoints says what each kind of message is; runtime
runs workers; client calls; transport talks to brokers; ops operates; cli is the command;
testing tests. The rules below keep it so.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import busapp
from busapp.errors import BusappError

ROOT = Path(busapp.__file__).parent
#: Layers that do I/O or run the program; core may import none of them.
NOT_FOR_CORE = ("busapp.runtime", "busapp.client", "busapp.transport", "busapp.ops",
                "busapp.cli", "busapp.testing", "busapp.storage", "busapp.entrypoints")
#: Function-level imports of busapp's own modules allowed in all (each says why).
MAX_LOCAL_IMPORTS = 15


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _target(node: ast.ImportFrom | ast.Import, alias: ast.alias, package: str) -> str:
    """The busapp module an import names (``from busapp import config`` names busapp.config)."""
    if isinstance(node, ast.Import):
        return alias.name
    base = node.module or ""
    if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else []))
    candidate = f"{base}.{alias.name}"
    return candidate if candidate in MODULES else base


def _imports(name: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for each import in module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
            for alias in node.names:
                found.append((_target(node, alias, package), node.lineno, id(node) in top))
    return found


def test_core_imports_nothing_that_does_io() -> None:
    """busapp.core imports no runtime, client, transport, ops, cli, testing or storage
    module, and neither kombu nor click."""
    wrong = [(name, target, line) for name in MODULES if name.startswith("busapp.core")
             for target, line, _ in _imports(name)
             if target.startswith(NOT_FOR_CORE) or target.split(".")[0] in ("kombu", "click")]
    assert wrong == []


def test_importing_the_core_loads_no_broker_or_cli_library() -> None:
    """Importing every core module leaves kombu, amqp, redis and click out of sys.modules."""
    core = [name for name in MODULES if name.startswith("busapp.core.")]
    code = ("import sys\n" + "".join(f"import {name}\n" for name in core)
            + "print(sorted(m for m in ('kombu', 'amqp', 'redis', 'click') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_at_module_level() -> None:
    """The modules' top-level imports of each other form no cycle."""
    graph = {name: {target for target, _, top in _imports(name) if top and target in MODULES
                    and target != name and target != "busapp"}
             for name in MODULES}
    assert _cycles(graph) == []


def _local_imports() -> list[tuple[str, int, str]]:
    found = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, line, top in _imports(name):
            if not top and target.startswith("busapp"):
                found.append((name, line, lines[line - 1] + " " + lines[line - 2]))
    return found


def test_function_level_imports_of_busapp_are_few() -> None:
    """At most 15 imports of busapp's own modules happen inside functions."""
    local = _local_imports()
    assert len(local) <= MAX_LOCAL_IMPORTS, [f"{n}:{line}" for n, line, _ in local]


def test_each_function_level_import_says_why() -> None:
    """Every import of busapp's own modules inside a function has a comment saying why."""
    unexplained = [f"{name}:{line}" for name, line, text in _local_imports() if "#" not in text]
    assert unexplained == []


def test_busapp_environment_names_only_in_config() -> None:
    """No module but busapp.config spells a BUSAPP_* variable's name as a string."""
    pattern = re.compile(r"BUSAPP_[A-Z_]+\Z")
    found = []
    for name, path in MODULES.items():
        if name == "busapp.config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and pattern.match(node.value):
                found.append(f"{name}:{node.lineno}: {node.value}")
    assert found == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_at_most_400_lines(name: str) -> None:
    """Each module fits on a few screens: at most 400 lines."""
    assert len(MODULES[name].read_text().splitlines()) <= 400


def test_no_class_has_more_than_25_methods() -> None:
    """No class defines more than 25 methods of its own."""
    big = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body
                           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                if len(methods) > 25:
                    big.append(f"{name}.{node.name}: {len(methods)}")
    assert big == []


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(busapp.__path__, "busapp."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_exception_is_a_busapp_error() -> None:
    """Every exception class busapp defines is a BusappError (the CLI's click exceptions
    aside: click maps them to exit codes)."""
    import click

    strays = [f"{cls.__module__}.{cls.__qualname__}" for cls in _exception_classes()
              if not issubclass(cls, (BusappError, click.ClickException))]
    assert strays == []


def test_every_busapp_error_has_a_public_name() -> None:
    """An error that reaches users is a public class: no BusappError subclass busapp defines
    has a private name (82 Sentinel fail-over errors were once a private ``_NotSent``)."""
    private = [f"{cls.__module__}.{cls.__qualname__}" for cls in _exception_classes()
               if issubclass(cls, BusappError) and cls.__name__.startswith("_")]
    assert private == []


def test_public_surface() -> None:
    """busapp's top-level names are exactly these."""
    assert busapp.__all__ == ["App", "AsyncBus", "AsyncClient", "Bus", "Call", "Client",
                              "Message", "Router", "Storage", "__version__", "errors"]


@pytest.mark.parametrize("path, names", [
    ("busapp.models", ["Host", "Model", "ValidationError", "model", "field"]),
    ("busapp.errors", ["BusappError", "RemoteProcedureCallError", "RequestTimeout"]),
    ("busapp.service", ["CommissaireService", "ServiceManager"]),
    ("busapp.bus", ["BusMixin", "Client"]),
    ("busapp.storage.client", ["StorageClient", "NotifyCallback", "NOTIFY_EVENT_ANY"]),
    ("busapp.testing", ["TestClient"]),
    ("busapp.security", ["Keyring", "sign", "verify"]),
])
def test_public_import_paths_keep_working(path: str, names: list[str]) -> None:
    """The import paths Commissaire-style code and users' code use still give their names."""
    module = importlib.import_module(path)
    assert all(hasattr(module, n) for n in names)
