"""A FastAPI front end that calls the ``simple`` service over the bus, without blocking.

One :class:`busapp.AsyncClient` lives as long as the web app (made and closed in its
lifespan), and every request awaits its call on it: many requests are in flight on one
event loop at once. Needs ``pip install fastapi uvicorn`` (not a dependency of busapp).

Run it beside the service::

    busapp run examples/simpleservice.py:app &
    uvicorn examples.web_fastapi:web
    curl 'http://127.0.0.1:8000/add?x=1&y=2'         # {"result": 3}

The broker and exchange come from ``$BUSAPP_BROKER_URL`` and ``$BUSAPP_EXCHANGE``
(default: the embedded broker, exchange ``commissaire``), as for ``busapp run``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request

from busapp import AsyncClient
from busapp.errors import InvalidParams, RemoteProcedureCallError, RequestTimeout


@asynccontextmanager
async def lifespan(web: FastAPI) -> AsyncIterator[None]:
    async with AsyncClient(timeout=5) as bus:
        web.state.bus = bus
        yield


web = FastAPI(lifespan=lifespan)


@web.get("/add")
async def add(request: Request, x: int, y: int) -> dict:
    """``simple.add(x, y)`` over the bus; bus errors become HTTP errors."""
    try:
        return {"result": await request.app.state.bus.call("simple.add", x, y)}
    except InvalidParams as exc:
        raise HTTPException(422, exc.message) from exc
    except RequestTimeout as exc:
        raise HTTPException(504, str(exc)) from exc
    except RemoteProcedureCallError as exc:
        raise HTTPException(502, exc.message) from exc
