"""The busapp command line, driven as real subprocesses on the embedded broker, Redis and RabbitMQ.

Every test runs in its own temporary directory (so ``./.busapp/`` is its own),
writes its service module there under a unique App name, and leaves no
process behind: teardown kills each started process group, stops the
embedded broker, and checks that nothing mentioning the directory still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import click
import pytest

from busapp import Client
from busapp.cli.call import parse_params
from busapp.transport.embedded import broker_state, stop_embedded_broker
from tests.test_embedded import live_pids_mentioning, wait_until

BUSAPP = [sys.executable, "-m", "busapp"]

APP_MODULE = '''
from __future__ import annotations

import os

from busapp import App

app = App({name!r})


@app.method()
def add(x: int, y: int) -> int:
    return x + y{delta}


@app.method()
def pid() -> int:
    return os.getpid()
'''


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no BUSAPP_* settings leak in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSAPP_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Running:
    """A ``busapp run`` (or ``storage``) subprocess in its own process group,
    logging JSON lines to a file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str],
                 command: str = "run") -> None:
        self.log_path = cwd / f"{command}-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*BUSAPP, command, *args, "--log-format", "json"],
                                         cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def wait_ready(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait for ``count`` distinct live workers to log "worker ready"; return their pids."""
        def live() -> list[int]:
            pids = {e["pid"] for e in self.events("worker ready")}
            return sorted(p for p in pids if _alive(p))
        ok = wait_until(lambda: len(live()) >= count or self.proc.poll() is not None, timeout)
        assert ok and self.proc.poll() is None, f"service not ready:\n{self.output()[-3000:]}"
        return live()

    def stop(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def project(tmp_path: Path, unique: str):
    """A temporary project directory with a service module ``svc_<unique>.py``,
    serving App ``t<unique>``.

    Whatever a test started is killed afterwards, even when the test fails.
    """
    made = Project(tmp_path, unique)
    yield made
    made.cleanup()


class Project:
    """One test's directory: writes modules, starts ``busapp run``, runs other commands,
    cleans up."""

    def __init__(self, root: Path, unique: str) -> None:
        self.root = root
        self.name = f"t{unique}"
        self.module = root / f"svc_{unique}.py"
        self.started: list[Running] = []
        self.write_app()

    def write_app(self, delta: str = "") -> None:
        self.module.write_text(APP_MODULE.format(name=self.name, delta=delta))

    def write(self, filename: str, source: str) -> Path:
        path = self.root / filename
        path.write_text(textwrap.dedent(source))
        return path

    def run(self, *args: str, env: dict[str, str] | None = None, command: str = "run") -> Running:
        running = Running(list(args), self.root, env or clean_env(), command)
        self.started.append(running)
        return running

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*BUSAPP, *args], cwd=self.root, env=env or clean_env(),
                              capture_output=True, text=True, timeout=timeout)

    def cleanup(self) -> None:
        for running in self.started:
            running.kill_group()
        stop_embedded_broker(str(self.root / ".busapp"))
        assert wait_until(lambda: not live_pids_mentioning(str(self.root))), \
            f"left running: {live_pids_mentioning(str(self.root))}"


@pytest.fixture(params=["embedded", "redis", "amqp"])
def broker(request: pytest.FixtureRequest, exchange: str) -> dict[str, Any]:
    """How to reach each broker: embedded (no flag), Redis through the environment,
    RabbitMQ by flags."""
    if request.param == "embedded":
        return {"args": [], "env": clean_env(), "url": None}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return {"args": [], "env": clean_env(BUSAPP_BROKER_URL=url, BUSAPP_EXCHANGE=exchange),
                "url": url, "exchange": exchange}
    url = request.getfixturevalue("amqp_url")
    return {"args": ["--broker", url, "--exchange", exchange], "env": clean_env(), "url": url,
            "exchange": exchange}


def client_for(project: Project, broker: dict[str, Any]) -> Client:
    """A Client in the test process, reaching the same broker as the project's commands."""
    url = broker["url"] or broker_state(str(project.root / ".busapp"))["url"]
    return Client(url, broker.get("exchange"), timeout=20)


# -- run and call on every broker ------------------------------------------------


def test_call_prints_result_or_error(project: Project, broker: dict[str, Any]) -> None:
    """`busapp call` prints a result as JSON with exit 0;
    an unknown method exits 1 with the error on stderr."""
    running = project.run(str(project.module), "--workers", "2", *broker["args"], env=broker["env"])
    running.wait_ready(2)
    ok = project.cli("call", f"{project.name}.add", "1", "2", *broker["args"], env=broker["env"])
    assert (ok.returncode, ok.stdout) == (0, "3\n"), ok.stderr
    by_name = project.cli("call", f"{project.name}.add", "x=1", "y=41", *broker["args"],
                          env=broker["env"])
    assert (by_name.returncode, by_name.stdout) == (0, "42\n"), by_name.stderr
    bad = project.cli("call", f"{project.name}.nope", *broker["args"], env=broker["env"])
    assert bad.returncode == 1 and bad.stdout == ""
    assert "-32601" in bad.stderr and "no method 'nope'" in bad.stderr


def test_calls_spread_over_both_workers(project: Project, broker: dict[str, Any]) -> None:
    """With --workers 2, calls are served by both worker processes."""
    running = project.run(str(project.module), "-w", "2", *broker["args"], env=broker["env"])
    pids = running.wait_ready(2)
    seen: set[int] = set()
    with client_for(project, broker) as bus:
        for _ in range(100):
            seen.add(bus.call(f"{project.name}.pid"))
            if seen == set(pids):
                break
    assert seen == set(pids)


def test_sigterm_exits_0_and_leaves_no_process(project: Project, broker: dict[str, Any]) -> None:
    """SIGTERM ends `busapp run` with exit 0 and every worker gone."""
    running = project.run(str(project.module), "--workers", "2", *broker["args"], env=broker["env"])
    pids = running.wait_ready(2)
    assert running.stop() == 0
    assert wait_until(lambda: not any(_alive(p) for p in pids))
    assert not [p for p in live_pids_mentioning(str(project.module))]


def test_ctrl_c_stops_run_but_keeps_the_embedded_broker(project: Project) -> None:
    """SIGINT to the terminal's process group stops `busapp run` (exit 0);
    the shared broker lives on."""
    running = project.run(str(project.module), "--workers", "2")
    pids = running.wait_ready(2)
    os.killpg(running.proc.pid, signal.SIGINT)
    assert running.proc.wait(60) == 0
    assert wait_until(lambda: not any(_alive(p) for p in pids))
    assert _alive(broker_state(str(project.root / ".busapp"))["pid"])


# -- failures and recovery (embedded) ------------------------------------------------


@pytest.mark.slow  # > 5 s
def test_killed_worker_is_replaced(project: Project) -> None:
    """kill -9 of a worker: the manager starts another and calls keep working."""
    running = project.run(str(project.module), "--workers", "2")
    first = running.wait_ready(2)
    os.kill(first[0], signal.SIGKILL)
    assert wait_until(lambda: len(set(running.wait_ready(2)) - set(first)) == 1, 30)
    result = project.cli("call", f"{project.name}.add", "2", "3")
    assert (result.returncode, result.stdout) == (0, "5\n"), result.stderr


def test_new_run_after_kill9_recovers_stale_broker_state(project: Project) -> None:
    """kill -9 of `busapp run` (and of its broker) leaves stale state that the next
    `busapp run` replaces."""
    crashed = project.run(str(project.module))
    crashed.wait_ready(1)
    old = broker_state(str(project.root / ".busapp"))
    crashed.kill_group()
    os.kill(old["pid"], signal.SIGKILL)
    assert wait_until(lambda: not live_pids_mentioning(str(project.root)))
    assert (project.root / ".busapp" / "broker.json").exists()
    project.run(str(project.module)).wait_ready(1)
    assert broker_state(str(project.root / ".busapp"))["pid"] != old["pid"]
    result = project.cli("call", f"{project.name}.add", "1", "2")
    assert (result.returncode, result.stdout) == (0, "3\n"), result.stderr


def test_call_revives_a_killed_embedded_broker(project: Project) -> None:
    """kill -9 of the embedded broker's keeper under a service: `busapp call` revives it,
    is served."""
    running = project.run(str(project.module), "--workers", "2")
    workers = running.wait_ready(2)
    old = broker_state(str(project.root / ".busapp"))
    os.kill(old["pid"], signal.SIGKILL)
    assert wait_until(lambda: not _alive(old["pid"]) and not _alive(old["redis_pid"]))

    def served() -> bool:  # a first call may land before the workers re-declared their queue
        result = project.cli("call", f"{project.name}.add", "1", "2", "--timeout", "2")
        assert "no broker" not in result.stderr, result.stderr
        return (result.returncode, result.stdout) == (0, "3\n")

    assert wait_until(served, 40, interval=0.5)
    assert broker_state(str(project.root / ".busapp"))["pid"] != old["pid"]
    assert all(_alive(pid) for pid in workers), "workers should reconnect, not be replaced"


def test_kill9_of_run_leaves_no_workers(project: Project) -> None:
    """kill -9 of the `busapp run` process alone: its workers notice and exit."""
    running = project.run(str(project.module), "--workers", "2")
    pids = running.wait_ready(2)
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait(10)
    assert wait_until(lambda: not any(_alive(p) for p in pids), 10)


@pytest.mark.slow  # > 5 s
def test_reload_serves_the_edited_module(project: Project) -> None:
    """With --reload, editing the module restarts the workers and calls see the new code."""
    running = project.run(str(project.module), "--reload")
    running.wait_ready(1)
    with client_for(project, {"url": None}) as bus:
        assert bus.call(f"{project.name}.add", 1, 2) == 3
        project.write_app(delta=" + 1")

        def sees_new_code() -> bool:
            try:
                return bus.call(f"{project.name}.add", 1, 2, timeout=2) == 4
            except TimeoutError:
                return False

        assert wait_until(sees_new_code, 30, interval=0.2)
    assert running.stop() == 0


def test_call_to_no_service_exits_2(project: Project, redis_url: str, exchange: str) -> None:
    """A call to a key no service is bound to exits 2 saying so (not after the timeout)."""
    result = project.cli("call", "nobody.home", "--timeout", "30",
                         "--broker", redis_url, "--exchange", exchange)
    assert result.returncode == 2 and "no queue is bound to 'nobody.home'" in result.stderr
    assert result.stdout == ""


def test_call_without_any_broker_exits_2_at_once(project: Project) -> None:
    """With no broker given and none running here, `busapp call` says how to start one (exit 2)."""
    result = project.cli("call", f"{project.name}.add", "1", "2")
    assert result.returncode == 2 and "busapp run" in result.stderr and "--broker" in result.stderr
    assert not (project.root / ".busapp" / "broker.json").exists()


# -- unusable URLs ------------------------------------------------------------------------


def test_unknown_broker_scheme_is_one_line_exit_2(project: Project) -> None:
    """`call`, `run` and `storage` refuse a broker URL with an unknown scheme at once:
    one line, exit 2."""
    for command in (["call", "x.y"], ["run", str(project.module)], ["storage"]):
        for how, env in (("--broker", clean_env()), ("$BUSAPP_BROKER_URL", clean_env(BUSAPP_BROKER_URL="foo://x"))):
            args = [*command, "--broker", "foo://x"] if how == "--broker" else command
            result = project.cli(*args, env=env, timeout=30)
            assert result.returncode == 2, (command, how, result.stderr)
            assert result.stderr.splitlines() == [
                "Error: unknown broker URL scheme 'foo'; use one of redis://, rediss://, "
                "sentinel://, amqp://, amqps://, pyamqp://, librabbitmq://, memory:// "
                f"(from {how})"], (command, how)
            assert result.stdout == ""
    assert not (project.root / ".busapp").exists()  # no embedded broker was started either


def test_broker_url_without_scheme_is_one_line_exit_2(project: Project) -> None:
    """A bare host is not taken for an AMQP URL (kombu's default): exit 2, the password masked."""
    result = project.cli("call", "x.y", "--broker", "user:s3cret@localhost")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "has no scheme" in result.stderr and "s3cret" not in result.stderr


def test_unknown_store_scheme_is_one_line_exit_2(project: Project) -> None:
    """`busapp storage` checks its --store URL (or $BUSAPP_STORE_URL) before starting anything."""
    for args, env in ((["--store", "foo://x"], clean_env()), ([], clean_env(BUSAPP_STORE_URL="foo://x"))):
        result = project.cli("storage", *args, "--broker", "memory://", env=env, timeout=30)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            "Error: unknown store URL 'foo://x'; use memory://, sqlite:///PATH, postgresql://..., "
            "redis://... or sentinel://..."]


def test_known_broker_schemes_are_kombu_transports() -> None:
    """The CLI's hard-coded scheme list (it does not import kombu) names only kombu transports."""
    from kombu.transport import TRANSPORT_ALIASES

    from busapp.transport import BROKER_SCHEMES, check_broker_url

    assert set(BROKER_SCHEMES) <= set(TRANSPORT_ALIASES)
    for url in ("redis://h:6379/0", "rediss://h", "redis+socket:///tmp/r.sock", "amqp://g:g@h//",
                "AMQP://h//", "memory://", "sentinel://h:26379/0?master_name=m"):
        assert check_broker_url(url) is None, url
    for url in ("foo://x", "redisx://h", "localhost", "sqs+foo://x", "sentinel://h:26379"):
        assert check_broker_url(url) is not None, url


def test_cli_does_not_import_kombu_to_check_a_url() -> None:
    """Checking a URL stays cheap: importing busapp.cli does not import kombu."""
    code = "import sys, busapp.cli; print('kombu' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# -- secrets ---------------------------------------------------------------------------


def test_broker_password_never_printed(project: Project, amqp_url: str, exchange: str) -> None:
    """The ready lines show the broker with its password masked, and the password nowhere."""
    running = project.run(str(project.module), "-w", "2",
                          "--broker", amqp_url, "--exchange", exchange)
    running.wait_ready(2)
    assert running.stop() == 0
    output = running.output()
    assert "guest:***@" in output and "guest:guest" not in output


def test_wrong_password_is_not_echoed_by_call(project: Project, amqp_url: str,
                                              exchange: str) -> None:
    """A refused broker URL with a password fails with exit 2 and the password masked."""
    url = amqp_url.replace("guest:guest@", "guest:s3cretPW@")
    result = project.cli("call", "x.y", "--broker", url, "--exchange", exchange, "--timeout", "2")
    assert result.returncode == 2
    assert "s3cretPW" not in result.stderr + result.stdout


# -- app lookup ----------------------------------------------------------------------


def test_missing_module_is_a_usage_error(project: Project) -> None:
    """A module that does not exist: exit 2, says no such module, no traceback."""
    for target in ("no_such_module_xyz", "no_such_module_xyz:app", "missing/path.py"):
        result = project.cli("run", target)
        assert result.returncode == 2, target
        assert "no module" in result.stderr or "no module file" in result.stderr
        assert "Traceback" not in result.stderr


def test_importerror_inside_module_is_a_distinct_usage_error(project: Project) -> None:
    """A module that exists but raises ImportError: exit 2,
    names the failing import and shows where."""
    project.write("broken_mod.py", "import not_a_real_package_xyz\n")
    result = project.cli("run", "broken_mod")
    assert result.returncode == 2
    assert "ImportError was raised while importing it" in result.stderr
    assert "not_a_real_package_xyz" in result.stderr and "broken_mod.py" in result.stderr


def test_module_without_app_is_a_distinct_usage_error(project: Project) -> None:
    """A module with no App: exit 2, says none was found and how to name one."""
    path = project.write("empty_mod.py", "x = 1\n")
    for target in (str(path), "empty_mod"):
        result = project.cli("run", target)
        assert result.returncode == 2 and "no App found in module 'empty_mod'" in result.stderr
    wrong = project.cli("run", f"{project.module}:nope")
    assert wrong.returncode == 2
    assert "no App named 'nope'" in wrong.stderr and "found: app" in wrong.stderr


def test_class_based_service_runs(project: Project) -> None:
    """`busapp run module:MyService` serves a Commissaire-style CommissaireService subclass."""
    project.write("classic.py", f'''
        from busapp.service import CommissaireService

        class MyService(CommissaireService):
            def __init__(self, exchange_name, connection_url):
                queue_kwargs = [{{"name": "{project.name}", "routing_key": "{project.name}.*"}}]
                super().__init__(exchange_name, connection_url, queue_kwargs)

            def on_ping(self, message):
                return "pong"
    ''')
    project.run("classic:MyService").wait_ready(1)
    result = project.cli("call", f"{project.name}.ping")
    assert (result.returncode, result.stdout) == (0, '"pong"\n'), result.stderr


# -- routes, storage, version -------------------------------------------------------------


def test_routes_lists_keys_functions_params_and_storage(project: Project) -> None:
    """`busapp routes` shows every routing key with its function,
    typed params and storage subscriptions."""
    project.write("routed.py", '''
        from busapp import App
        from busapp.models import Host

        app = App("routed")

        @app.method()
        def add(x: int, y: int = 0) -> int:
            return x + y

        @app.on_storage_event(Host, "created")
        def host_created(event, model):
            pass
    ''')
    result = project.cli("routes", "routed.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["routed.add", "routed.add"]
               and line.endswith("x: int, y: int = 0")
               for line in lines), result.stdout
    assert any(line.split() == ["notify.storage.Host.created", "routed.host_created"]
               for line in lines)


def test_routes_of_a_service_class(project: Project) -> None:
    """`busapp routes module:Class` lists the on_<name> methods under the class's queue."""
    project.write("classic2.py", '''
        from busapp.service import CommissaireService

        class Svc(CommissaireService):
            def on_echo(self, message, words: str):
                return words
    ''')
    result = project.cli("routes", "classic2:Svc")
    assert result.returncode == 0, result.stderr
    assert any(line.split() == ["svc.echo", "classic2.Svc.on_echo", "words:", "str"]
               for line in result.stdout.splitlines()), result.stdout


def test_storage_command_serves_storage(project: Project) -> None:
    """`busapp storage` runs the storage service:
    a saved host can be read back with `busapp call`."""
    running = project.run("--store", "memory://", command="storage")
    running.wait_ready(1)
    saved = project.cli("call", "storage.save", "model_type_name=Host",
                        'model_json_data={"address": "10.0.0.1"}')
    assert saved.returncode == 0, saved.stderr
    got = project.cli("call", "storage.get", "model_type_name=Host",
                      'model_json_data={"address": "10.0.0.1"}')
    assert got.returncode == 0 and json.loads(got.stdout)["address"] == "10.0.0.1"
    assert running.stop() == 0


def test_storage_imports_models_from_the_current_directory(project: Project) -> None:
    """`BUSAPP_STORAGE_MODELS=shop.models busapp storage` finds shop/ in the current directory,
    with no PYTHONPATH, and stores its models."""
    (project.root / "shop").mkdir()
    project.write("shop/__init__.py", "")
    project.write("shop/models.py", '''
        from busapp.models import Model, model

        @model(primary_key="sku")
        class CliWidget(Model):
            sku: str
            size: int = 0
    ''')
    env = clean_env(BUSAPP_STORAGE_MODELS="shop.models")
    project.run("--store", "memory://", command="storage", env=env).wait_ready(1)
    saved = project.cli("call", "storage.save", "model_type_name=CliWidget",
                        'model_json_data={"sku": "w-1", "size": 3}')
    assert saved.returncode == 0 and json.loads(saved.stdout)["size"] == 3, saved.stderr


def test_storage_with_a_missing_model_module_fails_in_one_line(project: Project) -> None:
    """A model module that does not exist: exit 2 and one line naming it, no traceback."""
    result = project.cli("storage", "--store", "memory://",
                         env=clean_env(BUSAPP_STORAGE_MODELS="shop.nothere"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "$BUSAPP_STORAGE_MODELS" in result.stderr and "'shop.nothere'" in result.stderr


def test_version_and_help(project: Project) -> None:
    """`busapp --version` prints the version; every command has --help."""
    import busapp

    version = project.cli("--version")
    assert version.returncode == 0 and busapp.__version__ in version.stdout
    script = Path(sys.executable).parent / "busapp"  # the console script setup.cfg declares
    if script.exists():
        shown = subprocess.run([str(script), "--version"],
                               capture_output=True, text=True, timeout=60)
        assert shown.stdout == version.stdout
    for command in ("run", "call", "routes", "storage"):
        shown = project.cli(command, "--help")
        assert shown.returncode == 0 and "Usage: busapp " + command in shown.stdout


# -- params parsing (no I/O) --------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    ((), None),
    (("[1, 2]",), [1, 2]),
    (('{"x": 1}',), {"x": 1}),
    (("1", "2"), [1, 2]),
    (("x=1", "name=bob", 'tags=["a"]'), {"x": 1, "name": "bob", "tags": ["a"]}),
    (("hello",), ["hello"]),
    (("true", "null", "1.5"), [True, None, 1.5]),
])
def test_parse_params(args: tuple[str, ...], expected: Any) -> None:
    """PARAMS become a JSON array/object as given, key=value pairs an object,
    other values a list."""
    assert parse_params(args) == expected


def test_parse_params_rejects_a_mix() -> None:
    """Mixing key=value with positional values is a usage error."""
    with pytest.raises(click.BadParameter, match="key=value"):
        parse_params(("x=1", "2"))


def test_run_gives_up_after_the_startup_timeout(project: Project) -> None:
    """`busapp run --startup-timeout` against a broker that is not there: says once that it
    retries for that long, then exits 1 with one error line, without restarting the worker
    (without it, it keeps trying)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "busapp", "run", str(project.module), "--broker",
         "redis://127.0.0.1:1/0", "--startup-timeout", "0.5", "--log-format", "console"],
        cwd=project.root, capture_output=True, text=True, timeout=120)
    output = result.stderr + result.stdout
    print(f"\n[figure] --startup-timeout 0.5: exit {result.returncode} after "
          f"{time.monotonic() - started:.1f}s")
    assert result.returncode == 1, result.stderr[-2000:]
    assert output.count("retrying for 0.5s") == 1
    assert output.count("worker started") == 1, output  # no restarts before giving up
    assert "connection lost" not in output  # no connection was ever made
    assert output.count("Error: no worker could reach the broker") == 1
    assert "Traceback" not in result.stderr
