"""The embedded broker's keeper process: runs ``redis-server`` and stops it when unused.

Started by :func:`busapp.transport.embedded.ensure_embedded_broker` as
``python -m busapp.transport._keeper STATE_DIR SOCKET SERVER``; see that
module for the lifecycle. Failures to start are written to
``STATE_DIR/keeper.error`` for the starting command to report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from busapp.transport.embedded import _idle_seconds

#: Seconds between two looks at the server's clients.
POLL = 0.5


def main(argv: list[str]) -> None:
    """Detach (the launcher exits at once) and keep the broker until it is unused or told
    to stop."""
    state_dir, socket_path, server = Path(argv[0]), argv[1], argv[2]
    if os.fork():
        os._exit(0)
    os.chdir("/")
    keeper = Keeper(state_dir, socket_path, server)
    try:
        keeper.start()
    except Exception as exc:  # noqa: BLE001 - reported to the starting command
        (state_dir / "keeper.error").write_text(str(exc) or type(exc).__name__)
        keeper.shutdown()
        sys.exit(1)
    try:
        keeper.watch()
    finally:
        keeper.shutdown()


def die_with_parent() -> None:
    """In the server's process: get SIGTERM when the keeper dies, even by kill -9 (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Keeper:
    """Owns one redis-server; :meth:`watch` returns when it should stop."""

    def __init__(self, state_dir: Path, socket_path: str, server: str) -> None:
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.server = server
        self.idle_limit = _idle_limit()
        self.proc: subprocess.Popen | None = None
        self.client: Any = None
        self.stopping = False

    def start(self) -> None:
        """Start the server, wait until it answers, then publish ``broker.json``."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        conf = self.state_dir / "redis.conf"
        conf.write_text(self._config())
        self.proc = subprocess.Popen([self.server, str(conf)], stdin=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        self.client = self._connect()
        state = {"url": f"redis+socket://{self.socket_path}", "socket": self.socket_path,
                 "pid": os.getpid(), "redis_pid": self.proc.pid}
        tmp = self.state_dir / f"broker.json.{os.getpid()}"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_dir / "broker.json")

    def _config(self) -> str:
        lines = {
            "port": "0", "unixsocket": _quote(self.socket_path), "unixsocketperm": "700",
            "dir": _quote(str(self.state_dir)), "save": '""', "appendonly": "no",
            "daemonize": "no", "logfile": _quote(str(self.state_dir / "redis.log")),
        }
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def _connect(self) -> Any:
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   f"{self._log_tail()}")
            client = redis.Redis(unix_socket_path=self.socket_path, socket_timeout=5)
            try:
                client.ping()
                return client
            except (redis.RedisError, OSError):
                client.close()
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on {self.socket_path} within 10s: "
                           f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.state_dir / "redis.log").read_text().strip().splitlines()[-3:])
        except OSError:
            return "no redis.log"

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def watch(self) -> None:
        """Return on a signal, when the server dies, or after ``idle_limit`` seconds with no
        client."""
        last_busy = time.monotonic()
        last_total = None
        while not self.stopping and self.proc is not None and self.proc.poll() is None:
            time.sleep(POLL)
            try:
                clients, total = self._activity()
            except Exception:  # noqa: BLE001 - the server is going away; poll() will say so
                continue
            if clients > 1 or total != last_total:  # one client is our own connection
                last_busy, last_total = time.monotonic(), total
            elif time.monotonic() - last_busy > self.idle_limit and self._still_idle(total):
                return

    def _activity(self) -> tuple[int, int]:
        clients = self.client.info("clients")["connected_clients"]
        total = self.client.info("stats")["total_connections_received"]
        return int(clients), int(total)

    def _still_idle(self, total: int) -> bool:
        """Take the start lock, so no command picks this broker while it stops; re-check."""
        self._lock = open(self.state_dir / "broker.lock", "a+")  # released when we exit
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        clients, now_total = self._activity()
        if clients > 1 or now_total != total:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            return False
        return True

    def shutdown(self) -> None:
        """Stop the server and remove the state this keeper published."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        state_file = self.state_dir / "broker.json"
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state_file.read_text()).get("pid") == os.getpid():
                state_file.unlink()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)


def _idle_limit() -> float:
    return _idle_seconds()


if __name__ == "__main__":
    main(sys.argv[1:])
