"""Test Apps, built fresh per test with a unique name so tests never share a queue."""

from __future__ import annotations

import os
import time

import attrs

from busapp import App
from busapp.errors import RemoteProcedureCallError, StorageLookupError


@attrs.define
class Point:
    """A small attrs model to check conversion of params and results."""

    x: int
    y: int = 0


def make_app(name: str) -> App:
    """An App exercising every feature of the dispatch path."""
    app = App(name)

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method("add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def wordy_add(x: int, y: int, bus) -> str:
        return f"{x} plus {y} is {bus.call(f'{name}.add', x, y)}"

    @app.method()
    def echo(words):
        return words

    @app.method()
    def fail():
        raise NotImplementedError("I was never created")

    @app.method()
    def attr_error():
        return None.nope  # an AttributeError inside a handler is a server fault, not -32601

    @app.method()
    def custom_error():
        raise RemoteProcedureCallError("teapot", code=-31999, data={"why": "short and stout"})

    @app.method()
    def lookup_error(key: str):
        raise StorageLookupError(f"no record {key!r}", data={"key": key})

    @app.method()
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.method()
    def pid() -> int:
        return os.getpid()

    @app.method()
    def die() -> None:
        """Poison: kills its own worker process on every delivery."""
        os.kill(os.getpid(), 9)

    @app.method()
    def nested(depth: int, bus) -> int:
        """Calls itself over the bus ``depth`` times (with one worker)."""
        if depth <= 0:
            return 0
        return 1 + bus.call(f"{name}.nested", depth - 1)

    @app.method()
    def shift(point: Point, dx: int = 1) -> Point:
        return attrs.evolve(point, x=point.x + dx)

    @app.method()
    async def async_add(x: int, y: int) -> int:
        import asyncio

        await asyncio.sleep(0.01)
        return x + y

    @app.method()
    def unserialisable():
        return object()

    return app


def add_touch(app: App) -> App:
    """Add ``touch(path)``: proves a notification was handled (it has no reply)."""

    @app.method()
    def touch(path: str) -> None:
        with open(path, "a") as fh:
            fh.write("x")

    return app
