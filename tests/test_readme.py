"""The README's quick start, run as written in a copy of the repository.

The command installs busapp into a new ``.venv`` (``pip install -e .``, about 20 s), so
both tests share one install: the example service it starts answers, and a type checker
sees busapp through that editable install.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mypy import api as mypy_api

from busapp.transport.embedded import stop_embedded_broker

ROOT = Path(__file__).resolve().parent.parent
#: How busapp run starts, in the README's quick-start command.
RUN = " && .venv/bin/busapp run "

pytestmark = pytest.mark.slow


def quick_start_command() -> str:
    """The first bash block after the README's "## Quick start" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    return re.search(r"```bash\n(.+?)\n```", section, re.S)[1].strip()


def copy_of_the_repository(dest: Path) -> Path:
    """The files git knows of, as they are in the working tree (a fresh clone, with edits)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the repository where the quick start's install part has run, as written."""
    command = quick_start_command()
    assert RUN in command, command
    clone = copy_of_the_repository(tmp_path_factory.mktemp("clone"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUSAPP_", "VIRTUAL_ENV"))}
    done = subprocess.run(["bash", "-c", command[:command.index(RUN)]], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    yield clone
    stop_embedded_broker(str(clone / ".busapp"))


def test_the_quick_start_serves_the_example_on_the_embedded_broker(clone: Path) -> None:
    """The run part of the quick-start command serves simple.add; the README's next
    command, from a second terminal, prints 3."""
    command = quick_start_command()
    run = command[command.index(RUN) + len(" && "):]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSAPP_")}
    log = clone / "run.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["bash", "-c", f"exec {run}"], cwd=clone, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("worker ready") < 3:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        done = subprocess.run([".venv/bin/busapp", "call", "simple.add", "1", "2"], cwd=clone,
                              env=env, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(30)


def test_mypy_sees_busapp_through_the_editable_install(clone: Path, tmp_path: Path) -> None:
    """A user's file outside the clone, checked with the clone's .venv as its Python:
    busapp is found (no import-not-found) and its types are real (a wrong one is reported)."""
    user = tmp_path / "user.py"
    user.write_text("from busapp import App\n\napp = App('typed')\nwrong: int = app\n")
    (tmp_path / "mypy.ini").write_text("[mypy]\npython_version = 3.11\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # nothing named busapp here: mypy can only find it through the venv
    try:
        stdout, stderr, _ = mypy_api.run([
            "--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "cache"),
            "--python-executable", str(clone / ".venv" / "bin" / "python"),
            "--no-error-summary", "user.py"])
    finally:
        os.chdir(cwd)
    found = [line for line in stdout.splitlines() if line.startswith("user.py:")]
    assert found == ['user.py:4: error: Incompatible types in assignment (expression has type '
                     '"App", variable has type "int")  [assignment]'], stdout + stderr
