"""An App for `busapp run` tests of §8: every step it takes is appended to $LIFESPAN_LOG.

Its name comes from $LIFESPAN_APP (unique per test, so queues never clash).
"""

from __future__ import annotations

import itertools
import os

from busapp import App, Router
from busapp.errors import RemoteProcedureCallError

LOG = os.environ.get("LIFESPAN_LOG", os.devnull)
app = App(os.environ.get("LIFESPAN_APP", "lifespan"))
_ids = itertools.count(1)


def record(line: str) -> None:
    """One line per step, with the pid: appends from several processes stay whole."""
    with open(LOG, "a") as f:
        f.write(f"{line} {os.getpid()}\n")


@app.on_startup
def started(conn):
    record(f"startup {conn}")


@app.on_shutdown
def stopping(conn):
    record(f"shutdown {conn}")


@app.dependency("conn")
def conn():
    name = f"conn-{os.getpid()}"
    record("conn made")
    yield name
    record("conn closed")


@app.dependency("cursor", scope="call")
def cursor(conn):
    record("cursor made")
    yield f"cursor-{next(_ids)}"
    record("cursor closed")


@app.middleware
def outer(call, call_next):
    result = call_next(call)
    if not isinstance(result, dict):
        return result
    return {**result, "mw": ["outer", *result.get("mw", [])]}


@app.middleware
def policy(call, call_next):
    if call.params == ["deny"]:
        raise RemoteProcedureCallError("denied by policy", code=-32001)
    if call.params == ["crash"]:
        raise KeyError("policy table")
    return call_next(call)


@app.method()
def ping() -> str:
    return "pong"


@app.method()
def whoami(*args, conn, cursor) -> dict:
    return {"pid": os.getpid(), "conn": conn, "cursor": cursor}


router = Router()


@router.middleware
def tagged(call, call_next):
    result = call_next(call)
    return {**result, "mw": ["router", *result.get("mw", [])]}


@router.method()
def routed() -> dict:
    return {"mw": []}


app.include(router)
