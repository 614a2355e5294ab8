"""``busapp run --reload``: serve in a child process and restart it when a .py file changes.

The reloader itself imports nothing of the user's: each restart is a fresh
``python -m busapp run`` (so edited modules are imported anew). The broker
URL reaches the child through ``$BUSAPP_BROKER_URL``, never its command line
(which ``ps`` shows). On Linux the child gets SIGTERM if the reloader dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import structlog

from busapp import _extras
from busapp import config
from busapp.transport._keeper import die_with_parent

log = structlog.get_logger("busapp.reloader")

#: Seconds between checks that the child still runs, while waiting for changes.
TICK_MS = 500


def child_command(targets: list[str], options: dict[str, Any]) -> list[str]:
    """The ``busapp run`` command line for the child (without --reload or --broker)."""
    cmd = [sys.executable, "-m", "busapp", "run", *targets]
    flags = {"workers": "--workers", "concurrency": "--concurrency", "exchange": "--exchange",
             "graceful_timeout": "--graceful-timeout", "log_format": "--log-format",
             "log_level": "--log-level", "metrics_port": "--metrics-port",
             "metrics_host": "--metrics-host"}
    for key, flag in flags.items():
        if options.get(key) is not None:
            cmd += [flag, str(options[key])]
    return cmd


def run_with_reload(targets: list[str], roots: list[Path], broker_url: str,
                    options: dict[str, Any]) -> int:
    """Serve ``targets`` in a child, restarting it on changes under ``roots``, until
    SIGTERM/SIGINT.

    Returns:
        The exit status for the reloader: 0 after a signal.

    Raises:
        busapp._extras.MissingExtra: watchfiles is not installed.
    """
    _extras.watchfiles()  # before starting anything
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    grace = float(options.get("graceful_timeout") or 30.0) + 10
    env = dict(os.environ, **{config.env_name("broker_url"): broker_url})
    roots = list(dict.fromkeys(roots))
    log.info("reloader watching", dir=", ".join(map(str, roots)), pid=os.getpid())
    while not stop.is_set():
        child = subprocess.Popen(child_command(targets, options), env=env,
                                 preexec_fn=die_with_parent)
        changes = _wait_for_change(roots, child, stop)
        _terminate(child, grace)
        if changes:
            log.info("reloading",
                     changed=sorted(os.path.relpath(path, roots[0]) for _, path in changes))
    return 0


def _wait_for_change(roots: list[Path], child: subprocess.Popen, stop: threading.Event) -> set:
    watchfiles = _extras.watchfiles()
    reported = False
    for changes in watchfiles.watch(*roots, watch_filter=watchfiles.PythonFilter(),
                                    stop_event=stop,
                                    rust_timeout=TICK_MS, yield_on_timeout=True, debounce=400,
                                    raise_interrupt=False):
        if changes:
            return changes
        if child.poll() is not None and not reported:
            log.warning("service exited; waiting for a change to restart it",
                        status=child.returncode, dir=", ".join(map(str, roots)))
            reported = True
    return set()


def _terminate(child: subprocess.Popen, grace: float) -> None:
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("service did not stop in time; killing", pid=child.pid)
        child.kill()
        child.wait()
