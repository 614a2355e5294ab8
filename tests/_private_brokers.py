"""Private brokers for fault tests: a redis-server and a RabbitMQ node of the test's own.

The Redis on 6379 and the RabbitMQ node on 5672 are shared with other sessions, so a test
that stops a broker or cuts its connections does it to one of these instead. Each listens on
a free port of 127.0.0.1, keeps its data in the test's tmp dir, and is killed on teardown.
Lines that act on a private instance only end with ``# private``.

tests/conftest.py imports the fixtures, so any test under tests/ asks for ``private_redis``,
``private_rabbitmq`` or ``private_broker`` by name, with no import of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

#: Where the Debian/Ubuntu package keeps the real scripts (/usr/sbin/rabbitmq-* wrap them in
#: ``su rabbitmq``, which would drop our environment).
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill_group(proc: subprocess.Popen | None) -> None:
    """SIGKILL the process group of ``proc`` (started with its own session) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # private
    except ProcessLookupError:
        pass
    proc.wait(10)


class PrivateRedis:
    """A redis-server without persistence on a free port; ``stop()`` and ``start()`` at will."""

    def __init__(self, workdir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cmd = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(workdir)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        import redis

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,  # private
                                     start_new_session=True)
        end = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()  # private
                return
            except redis.ConnectionError:
                if time.monotonic() > end:
                    raise RuntimeError("private redis did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """kill -9 it (a crash, not a shutdown)."""
        _kill_group(self.proc)  # private


class PrivateRabbitMQ:
    """A RabbitMQ node of its own: own name, ports, cookie, config, data and log dirs, no plugins.

    Its AMQP and distribution listeners bind 127.0.0.1 only; it registers its name with the
    local epmd like any node, and never touches the shared node's files.
    """

    def __init__(self, workdir: Path) -> None:
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            if not (RABBITMQ_BIN / tool).exists():
                pytest.fail(f"{RABBITMQ_BIN / tool} is not installed")
        self.workdir = workdir
        self.port = free_port()
        self.node = f"busapp-test-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen | None = None
        self.started_in = 0.0
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        """The variables that make the node private (HOME holds its own Erlang cookie)."""
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        return {
            **os.environ,
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, timeout: float = 90.0) -> None:
        """Start the node and wait until it accepts an AMQP connection; sets ``started_in``."""
        t0 = time.monotonic()
        self.log = open(self.workdir / "server.out", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")],  # private
                                     env=self.env, cwd=self.workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for_amqp(t0 + timeout)
        self.started_in = time.monotonic() - t0

    def _wait_for_amqp(self, deadline: float) -> None:
        from kombu import Connection

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited: {self._tail()}")
            try:
                with Connection(self.url, connect_timeout=1) as conn:  # private
                    conn.connect()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"private RabbitMQ did not start: {self._tail()}") from None
                time.sleep(0.25)

    def _tail(self) -> str:
        return (self.workdir / "server.out").read_text()[-2000:]

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n <this node> ...``: it can only reach this node (own cookie)."""
        command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args]
        return subprocess.run(command, env=self.env, check=True,  # private
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        """Stop this private node (its own ctl), then kill whatever of it is left."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.ctl("stop")  # private
                self.proc.wait(20)
            except (subprocess.SubprocessError, OSError):
                pass
        _kill_group(self.proc)  # private
        self.log.close()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on a free port of 127.0.0.1, restartable at will."""
    workdir = tmp_path / "private-redis"
    workdir.mkdir()
    server = PrivateRedis(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_rabbitmq(tmp_path):
    """A RabbitMQ node of this test's own on a free port of 127.0.0.1 (starts in 5-7 s here)."""
    workdir = tmp_path / "private-rabbitmq"
    workdir.mkdir()
    node = PrivateRabbitMQ(workdir)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session", params=["redis", "rabbitmq"])
def private_broker(request, tmp_path_factory):
    """A private Redis, then a private RabbitMQ node, each shared by every test of the session
    that asks for it (such tests kill workers, never the broker; registered in conftest.py)."""
    workdir = tmp_path_factory.mktemp(f"private-{request.param}")
    server = PrivateRedis(workdir) if request.param == "redis" else PrivateRabbitMQ(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
