"""examples/web_fastapi.py through its ASGI interface (httpx's ASGI transport), on Redis."""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib

import pytest

pytest.importorskip("fastapi", reason="the web example needs the test extra (fastapi, httpx)")
httpx = pytest.importorskip("httpx")

from tests._services import run_app  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fastapi_example_calls_simple_add_over_the_bus(redis_url: str, exchange: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The web app keeps one AsyncClient for its lifespan and answers 200 concurrent GET /add
    through simple.add on a real worker; the client is closed with the app."""
    monkeypatch.setenv("BUSAPP_BROKER_URL", redis_url)
    monkeypatch.setenv("BUSAPP_EXCHANGE", exchange)
    service = _load("simpleservice").app
    web = _load("web_fastapi").web

    async def main() -> tuple[list, httpx.Response]:
        transport = httpx.ASGITransport(app=web)
        async with web.router.lifespan_context(web), \
                httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            replies = await asyncio.gather(*(http.get("/add", params={"x": i, "y": 1})
                                             for i in range(200)))
            bad = await http.get("/add", params={"x": 1, "y": 1.5})
        with pytest.raises(RuntimeError, match="closed"):  # the lifespan closed its client
            await web.state.bus.call("simple.add", 1, 2)
        return replies, bad

    with run_app(service, redis_url, exchange):
        replies, bad = asyncio.run(main())
    assert [r.status_code for r in replies] == [200] * 200
    assert [r.json() for r in replies] == [{"result": i + 1} for i in range(200)]
    assert bad.status_code == 422  # FastAPI itself refuses y=1.5 for an int
