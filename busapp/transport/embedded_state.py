"""Where the embedded broker lives (its directory, socket and state file) and how to tell
that it, and its keeper, are alive. No process is started here: see
:mod:`busapp.transport.embedded`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

from busapp.errors import BrokerUnavailable

#: The module run (with ``python -m``) as the keeper process.
KEEPER_MODULE = "busapp.transport._keeper"


#: The URL scheme of the embedded broker (kombu's Redis over a Unix socket).
URL_PREFIX = "redis+socket://"


_HINT = "pass --broker URL (or set BUSAPP_BROKER_URL) to use a Redis or RabbitMQ server instead"


#: Longest Unix socket path we use in place (the OS limit is 104-108 bytes).
MAX_SOCKET_PATH = 100


#: The socket's name when it lives in the state directory.
SOCKET_NAME = "redis.sock"


def _state_dir(base_dir: str | None) -> Path:
    return Path(base_dir).resolve() if base_dir else (Path.cwd() / ".busapp").resolve()


def _socket_path(state_dir: Path) -> Path:
    """``state_dir/redis.sock``, or a short path in a directory private to the user."""
    path = state_dir / SOCKET_NAME
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return _private_socket_dir() / _short_socket_name(state_dir)


def _short_socket_name(state_dir: Path) -> str:
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]
    return f"busapp-{digest}.sock"


def _private_socket_dir() -> Path:
    """``$XDG_RUNTIME_DIR`` if it is private to us, else ``<tmp>/busapp-<uid>`` (made 0700).

    Raises:
        BrokerUnavailable: ``<tmp>/busapp-<uid>`` exists but is not a directory of our own
            closed to group and others (someone else could own the socket path).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_dir_problem(Path(runtime)) is None:
        return Path(runtime)
    path = Path(tempfile.gettempdir()) / f"busapp-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    problem = _private_dir_problem(path)
    if problem:
        raise BrokerUnavailable(
            f"refusing to put the embedded broker's socket in {path}: {problem}; remove it, "
            f"or set XDG_RUNTIME_DIR to a directory of your own, or {_HINT}")
    return path


def _private_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a directory private to us (no symlink, ours, mode 0?00), or None."""
    try:
        st = path.lstat()
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.getuid():
        return f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    if st.st_mode & 0o077:
        return f"it is open to group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _socket_of_url(url: str) -> Path | None:
    """The socket path of a ``redis+socket://`` URL, or None for any other URL."""
    if not url.startswith(URL_PREFIX):
        return None
    path = url[len(URL_PREFIX):].split("?", 1)[0]
    return Path(path) if path.startswith("/") else None


def _state_dir_of_socket(socket_path: Path) -> Path | None:
    """The state dir whose broker listens on ``socket_path``; None if not an embedded one."""
    if socket_path.name == SOCKET_NAME:
        state_dir = socket_path.parent
    elif socket_path.name.startswith("busapp-") and socket_path.suffix == ".sock":
        if _private_dir_problem(socket_path.parent):
            return None
        try:
            state_dir = Path(os.readlink(socket_path.with_suffix(".dir")))
        except OSError:
            return None
        if _short_socket_name(state_dir) != socket_path.name:
            return None
    else:
        return None
    return state_dir if (state_dir / "broker.lock").exists() else None


def _recorded_socket(state_dir: Path) -> Path | None:
    """The socket ``broker.json`` recorded, if it is still a safe place for this state dir."""
    recorded = _read_state(state_dir).get("socket")
    if not recorded:
        return None
    socket_path = Path(recorded)
    return socket_path if _state_dir_of_socket(socket_path) == state_dir else None


def _read_state(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "broker.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:

    with open(state_dir / "broker.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: Any) -> TypeGuard[int]:
    """True if ``pid`` runs (a zombie counts as gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_keeper(pid: Any, state_dir: Path) -> TypeGuard[int]:
    """True if ``pid`` is alive and is the keeper of ``state_dir`` (checked through /proc).

    A recycled pid that now belongs to the keeper of another directory is not ours to kill.
    """
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    return f"{KEEPER_MODULE}\0{state_dir}\0".encode() in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _remove_state(state_dir: Path, state: dict[str, Any]) -> None:
    for path in (state.get("socket"), state_dir / "broker.json", state_dir / "keeper.error"):
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _link_back(socket_path: Path, state_dir: Path) -> None:
    """Point ``busapp-<sha1>.dir`` next to a short socket at its state dir (for revive_embedded)."""
    link = socket_path.with_suffix(".dir")
    tmp = link.with_name(f"{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(state_dir, tmp)
    os.replace(tmp, link)
