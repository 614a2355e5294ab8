"""Optional dependencies (extras) and the package metadata."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from busapp import _extras
from busapp._extras import MissingExtra
from busapp.storage.backends import open_backend

ROOT = Path(__file__).resolve().parent.parent


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def _names(requirements: str) -> set[str]:
    lines = [line.strip() for line in requirements.splitlines()]
    return {line.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
            for line in lines if line and not line.startswith("#")}


def test_postgres_store_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A postgresql:// store without psycopg fails when it is chosen, with the pip line to run."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` sees when absent
    with pytest.raises(MissingExtra) as info:
        open_backend("postgresql://postgres@127.0.0.1:5432/test")
    assert str(info.value).startswith(
        "postgresql:// stores need psycopg: pip install 'busapp[postgres]'")
    assert "\n" not in str(info.value)


def test_reload_without_watchfiles_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_with_reload checks for watchfiles before it starts anything."""
    from busapp.cli.reload import run_with_reload

    monkeypatch.setitem(sys.modules, "watchfiles", None)
    with pytest.raises(MissingExtra, match=r"^busapp run --reload needs watchfiles: "
                                           r"pip install 'busapp\[reload\]'"):
        run_with_reload(["nothing:app"], [ROOT], "memory://", {})


def test_a_missing_module_gives_the_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not installed at all: exactly the one line; installed but broken: the line and why."""
    with pytest.raises(MissingExtra) as info:
        _extras.require("no_such_module_xyz_busapp", "thing", "things need")
    assert str(info.value) == "things need no_such_module_xyz_busapp: pip install 'busapp[thing]'"
    assert isinstance(info.value, ImportError)


def test_cli_commands_report_a_missing_extra_in_one_line(tmp_path: Path) -> None:
    """`busapp storage --store postgresql://...` and `busapp run --reload` without their extras:
    exit 2, one line."""
    script = ("import sys; sys.modules['psycopg'] = None; sys.modules['watchfiles'] = None; "
              "from busapp.cli import main; main()")
    app = ROOT / "examples" / "simpleservice.py"
    for args, extra in ((["storage", "--store", "postgresql://u:pw@127.0.0.1:1/db"], "postgres"),
                        (["run", f"{app}:app", "--reload", "--broker", "memory://"], "reload")):
        done = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
        assert f"pip install 'busapp[{extra}]'" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / ".busapp").exists()  # nothing was started


def test_core_install_leaves_optional_dependencies_to_extras() -> None:
    """psycopg and watchfiles are extras; the test extra pulls what the tests need."""
    config = _setup_cfg()
    core = _names(config["options"]["install_requires"])
    extras = {name: _names(value) for name, value in config["options.extras_require"].items()}
    assert not core & {"psycopg", "watchfiles", "prometheus_client", "opentelemetry-api",
                       "croniter"}
    assert extras["postgres"] == {"psycopg"} and extras["reload"] == {"watchfiles"}
    assert extras["prometheus"] == {"prometheus_client"} and extras["otel"] == {"opentelemetry-api"}
    assert extras["cron"] == {"croniter"}
    assert extras["all"] == set().union(*(extras[e] for e in ("postgres", "reload", "prometheus",
                                                               "otel", "cron")))
    assert {"psycopg", "watchfiles", "pytest"} <= extras["test"]


def test_lowest_constraints_match_the_lower_bounds() -> None:
    """.ci/lowest-constraints.txt pins exactly the lower bounds install_requires declares."""
    requires = {}
    for line in _setup_cfg()["options"]["install_requires"].splitlines():
        line = line.strip()
        if ">=" in line and not line.startswith("#"):
            name, rest = line.split(">=")
            requires[name.strip().lower()] = rest.split(",")[0].strip()
    constraints = (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in constraints if line and not line.startswith("#"))
    for name, version in pins.items():
        assert name in requires, name
        assert Version(version) == Version(requires[name]), name  # kombu>=5.3 is kombu==5.3.0


def test_license_is_shipped() -> None:
    """The MIT LICENSE file exists and setup.cfg ships and classifies it."""
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the busapp authors" in text
    metadata = _setup_cfg()["metadata"]
    assert metadata["license_files"].strip() == "LICENSE"
    assert "License :: OSI Approved :: MIT License" in metadata["classifiers"]
