"""`busapp run` of several Apps (a module with several, or several targets) under one manager,
with the manager's guarantees for each: its own workers, restart, crash-loop exit, graceful stop."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import Project, _alive
from tests.test_embedded import wait_until


@pytest.fixture
def project(tmp_path: Path, unique: str) -> Iterator[Project]:
    """A temporary project directory (see tests/test_cli.py); whatever it started is killed."""
    made = Project(tmp_path, unique)
    yield made
    made.cleanup()

TWO_APPS = '''
import os

from busapp import App

orders = App("o{unique}")
inventory = App("i{unique}")


@orders.method()
def pid() -> int:
    return os.getpid()


@inventory.method()
def pid_of_inventory() -> int:
    return os.getpid()
{extra}
'''


def write_two_apps(project: Project, extra: str = "") -> str:
    """A module ``shop_<unique>.py`` with Apps ``orders`` and ``inventory``; its path."""
    unique = project.name[1:]
    path = project.write(f"shop_{unique}.py", TWO_APPS.format(unique=unique, extra=extra))
    return str(path)


def ready_by_service(running, service: str) -> set[int]:
    """Pids of the live workers of ``service`` that logged "worker ready"."""
    return {e["pid"] for e in running.events("worker ready")
            if e.get("service") == service and _alive(e["pid"])}


def test_a_module_with_two_apps_serves_both_with_their_own_workers(project: Project) -> None:
    """`busapp run MODULE -w 2` with two Apps in MODULE: 2 workers each, both answer, and
    SIGTERM stops all four (exit 0)."""
    module = write_two_apps(project)
    running = project.run(module, "--workers", "2")
    pids = running.wait_ready(4)
    unique = project.name[1:]
    assert len(ready_by_service(running, f"o{unique}")) == 2
    assert len(ready_by_service(running, f"i{unique}")) == 2
    for key in (f"o{unique}.pid", f"i{unique}.pid_of_inventory"):
        result = project.cli("call", key)
        assert result.returncode == 0 and int(result.stdout) in pids, result.stderr
    assert running.stop() == 0
    assert wait_until(lambda: not any(_alive(p) for p in pids))


def test_several_targets_are_served_together(project: Project) -> None:
    """`busapp run MODULE:orders MODULE:inventory` serves both Apps."""
    module = write_two_apps(project)
    running = project.run(f"{module}:orders", f"{module}:inventory")
    running.wait_ready(2)
    unique = project.name[1:]
    assert project.cli("call", f"i{unique}.pid_of_inventory").returncode == 0
    assert project.cli("call", f"o{unique}.pid").returncode == 0


def test_one_target_of_a_module_with_two_apps_serves_only_it(project: Project) -> None:
    """`busapp run MODULE:orders` serves orders alone."""
    module = write_two_apps(project)
    running = project.run(f"{module}:orders")
    running.wait_ready(1)
    unique = project.name[1:]
    assert {e["service"] for e in running.events("worker ready")} == {f"o{unique}"}


@pytest.mark.slow  # > 5 s
def test_a_killed_worker_of_the_second_app_is_replaced(project: Project) -> None:
    """kill -9 of an inventory worker: the one manager starts another inventory worker."""
    module = write_two_apps(project)
    running = project.run(module)
    running.wait_ready(2)
    service = f"i{project.name[1:]}"
    [victim] = ready_by_service(running, service)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(ready_by_service(running, service) - {victim}) == 1, 30)
    assert project.cli("call", f"{service}.pid_of_inventory").returncode == 0


@pytest.mark.slow  # > 5 s
def test_an_app_that_cannot_start_ends_the_run_naming_it(project: Project) -> None:
    """An App whose workers fail before ready ends `busapp run` with exit 1 naming that App,
    the other App's workers stopped too."""
    module = write_two_apps(project, extra='''
@inventory.on_startup
def broken() -> None:
    raise RuntimeError("no stock database")
''')
    running = project.run(module)
    assert running.proc.wait(120) == 1
    service = f"i{project.name[1:]}"
    [gave_up] = running.events("giving up")
    assert f"of {service!r} failed 5 times" in gave_up["error"]


def test_two_apps_of_one_name_are_a_usage_error(project: Project) -> None:
    """Two targets naming Apps of the same name (one queue) exit 2 naming both."""
    module = write_two_apps(project)
    project.write("again.py", f'''
        from busapp import App

        app = App("o{project.name[1:]}")
    ''')
    result = project.cli("run", f"{module}:orders", "again.py")
    assert result.returncode == 2 and "would share one queue" in result.stderr


def test_each_app_lists_what_it_serves_once(project: Project) -> None:
    """With two Apps and --workers 2, one worker of each App logs the start-up banner (its
    methods), the others do not repeat it."""
    module = write_two_apps(project)
    running = project.run(module, "--workers", "2")
    running.wait_ready(4)
    unique = project.name[1:]
    banners = {e["service"]: e["serves"] for e in running.events("worker ready") if "serves" in e}
    assert banners == {f"o{unique}": {"methods": [f"o{unique}.pid()"]},
                       f"i{unique}": {"methods": [f"i{unique}.pid_of_inventory()"]}}
    assert len([e for e in running.events("worker ready") if "serves" in e]) == 2
