#!/usr/bin/env python
"""How long the console log lines of `busapp run` are: the per-call line a person reads.

Starts ``busapp run examples/simpleservice.py:app --log-format console`` on a private
embedded broker in a temporary directory, makes ``--calls`` calls of ``simple.add`` (and,
when the installed busapp has them, ``simple.wordy_add``, which makes a nested call), stops
it with SIGINT, and prints, per line kind, how many lines there were and their average and
longest length in characters (colour codes left out). Run it with the Python of the
checkout to measure; comparing two checkouts means running it once with each::

    .venv/bin/python benchmarks/log_lines.py
    /path/to/other/checkout/.venv/bin/python benchmarks/log_lines.py --calls 200
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="calls of simple.add")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSAPP_")}
    with tempfile.TemporaryDirectory(prefix="busapp-loglines-") as workdir:
        log_path = Path(workdir) / "run.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "busapp", "run", str(ROOT / "examples/simpleservice.py"),
                 "--log-format", "console"], cwd=workdir, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(log_path, "worker ready")
            _calls(workdir, env, args.calls)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
            stop = ("from busapp.transport.embedded import stop_embedded_broker; "
                    f"stop_embedded_broker({workdir + '/.busapp'!r})")
            subprocess.run([sys.executable, "-c", stop], env=env, check=False)
        lines = [ANSI.sub("", line) for line in log_path.read_text().splitlines()]
    _report(lines)


def _wait_for(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            sys.exit(f"no {text!r} within {timeout:g}s:\n{path.read_text()}")
        time.sleep(0.1)


def _calls(workdir: str, env: dict[str, str], count: int) -> None:
    code = ("from busapp import Client\n"
            "from busapp.transport.embedded import broker_state\n"
            f"with Client(broker_state({workdir + '/.busapp'!r})['url']) as bus:\n"
            f"    for i in range({count}):\n"
            "        bus.call('simple.add', i, 1)\n"
            "    bus.call('simple.wordy_add', 1, 2)\n")
    subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True)


def _kind(line: str) -> str:
    for kind in ("call", "worker ready", "worker started", "manager starting", "starting"):
        if re.search(rf"(\] |\s){re.escape(kind)}(\s|$)", line):
            return kind
    return "other"


def _report(lines: list[str]) -> None:
    kinds: dict[str, list[int]] = {}
    for line in lines:
        kinds.setdefault(_kind(line), []).append(len(line))
    print(f"{'line kind':<18} {'lines':>6} {'average':>8} {'longest':>8}")
    for kind, lengths in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        print(f"{kind:<18} {len(lengths):>6} {statistics.mean(lengths):>8.1f} "
              f"{max(lengths):>8}")
    print("\nA call line, as written:")
    print(next((line for line in lines if _kind(line) == "call"), "(none)"))


if __name__ == "__main__":
    main()
