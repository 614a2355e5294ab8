"""`busapp shell`: a Python shell with `bus`, `storage`, the App and the models, fed through
stdin."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import BUSAPP, Project, clean_env


@pytest.fixture
def project(tmp_path: Path, unique: str) -> Iterator[Project]:
    """A temporary project directory (see tests/test_cli.py); whatever it started is killed."""
    made = Project(tmp_path, unique)
    yield made
    made.cleanup()


def write_shop(project: Project) -> Path:
    """A module with an App and a model of its own."""
    return project.write(f"shop_{project.name}.py", f'''
        from busapp import App
        from busapp.models import Model, model

        app = App({project.name!r})

        @model(primary_key="sku")
        class ShellWidget(Model):
            sku: str

        @app.method()
        def add(x: int, y: int) -> int:
            return x + y
    ''')


def shell(project: Project, *args: str, stdin: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`busapp shell ARGS` in the project's directory, ``stdin`` typed into it."""
    return subprocess.run([*BUSAPP, "shell", *args], input=stdin, cwd=project.root,
                          env=env or clean_env(), capture_output=True, text=True, timeout=60)


def test_shell_has_a_connected_bus_the_app_and_the_models(project: Project) -> None:
    """`busapp shell MODULE` with stdin: `bus` calls the running App, `app` is it, and the
    module's and busapp's models are imported."""
    module = write_shop(project)
    project.run(str(module)).wait_ready(1)
    result = shell(project, str(module), stdin=(
        f"print('sum', bus.call('{project.name}.add', 1, 2))\n"
        "print('app', app.name)\n"
        "print('models', ShellWidget.__name__, Host.__name__)\n"
        "print('storage', type(storage).__name__)\n"))
    assert result.returncode == 0, result.stderr
    assert "sum 3" in result.stdout and f"app {project.name}" in result.stdout
    assert "models ShellWidget Host" in result.stdout and "storage StorageClient" in result.stdout
    assert "bus " in result.stderr and "ShellWidget" in result.stderr  # the banner


def test_shell_without_a_module_still_has_bus_storage_and_models(project: Project) -> None:
    """`busapp shell` alone: `bus`, `storage` and busapp's models, no `app`."""
    project.run(str(project.module)).wait_ready(1)
    result = shell(project, stdin="print(sorted({'bus', 'storage', 'Host', 'app'} & set(dir())))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['Host', 'bus', 'storage']\n"  # piped in: no prompts


def test_shell_uses_ipython_when_it_is_installed(project: Project, tmp_path: Path) -> None:
    """With IPython importable, the shell is IPython's, given the same namespace."""
    fake = tmp_path / "fake" / "IPython"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "def start_ipython(argv, user_ns):\n"
        "    names = sorted(k for k in ('bus', 'storage', 'app') if k in user_ns)\n"
        "    print('IPython', argv, names)\n")
    module = write_shop(project)
    project.run(str(module)).wait_ready(1)
    result = shell(project, str(module), stdin="",
                   env=clean_env(PYTHONPATH=str(tmp_path / "fake")))
    assert result.returncode == 0, result.stderr
    assert "IPython ['--no-banner'] ['app', 'bus', 'storage']" in result.stdout


def test_shell_without_a_broker_exits_2(project: Project) -> None:
    """No --broker and no embedded broker running here: exit 2 saying so, no shell."""
    result = shell(project, stdin="print('reached')\n")
    assert result.returncode == 2 and "no broker" in result.stderr
    assert "reached" not in result.stdout


def test_shell_of_a_missing_module_is_a_usage_error(project: Project) -> None:
    """A module that does not exist exits 2 naming it, before any shell starts."""
    result = shell(project, "no_such_shop", stdin="")
    assert result.returncode == 2 and "no_such_shop" in result.stderr
