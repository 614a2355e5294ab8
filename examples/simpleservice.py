"""A first busapp service: a few methods to call, time out on, and notify.

Run it:   busapp run examples/simpleservice.py:app --workers 3
Call it:  busapp call simple.add 1 2
"""

from __future__ import annotations

import time

import structlog

from busapp import App

app = App("simple")
log = structlog.get_logger("simple")


@app.method("add")
def add(x: int, y: int) -> int:
    """Exposed as simple.add: the sum of two integers."""
    return x + y


@app.method()
def wordy_add(x: int, y: int, bus) -> str:
    """Exposed as simple.wordy_add: calls simple.add over the bus."""
    return f"{x} plus {y} is {bus.call('simple.add', x, y)}"


@app.method()
def ping() -> str:
    """Exposed as simple.ping. Takes no bus arguments."""
    return "pong"


@app.method()
def echo(words):
    """Exposed as simple.echo. Takes one bus argument of words."""
    return words


@app.method()
def slow(seconds: float = 1.0) -> float:
    """Exposed as simple.slow: answers after ``seconds`` (call it with a shorter timeout)."""
    time.sleep(seconds)
    return seconds


@app.method("log")
def log_text(text: str) -> None:
    """Exposed as simple.log: writes ``text`` to the service's log (send it as a notification)."""
    log.info("log", text=text)


@app.method()
def fail():
    """Exposed as simple.fail: always raises, so the caller gets an error reply."""
    raise NotImplementedError("I was never created")


if __name__ == "__main__":
    app.run()
