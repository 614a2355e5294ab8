"""Storage fixtures: fresh stores of each backend kind,
and a storage service shared by the tests."""

from __future__ import annotations

import uuid

import pytest

from busapp import Client
from busapp.storage.backends import open_backend
from busapp.storage.service import make_app
from tests._services import running

#: Backends whose data outlives the process (all but memory).
PERSISTENT = ("sqlite", "postgres", "redis")


@pytest.fixture
def make_store_url(request: pytest.FixtureRequest, tmp_path, unique):
    """Build a store URL of a kind (memory, sqlite, postgres, redis), isolated and cleaned up."""
    made: list[str] = []

    def make(kind: str) -> str:
        if kind == "memory":
            url = "memory://"
        elif kind == "sqlite":
            url = f"sqlite:///{tmp_path}/store-{unique}.sqlite3"
        elif kind == "postgres":
            url = f"{request.getfixturevalue('pg_url')}?table=t_{unique}"
        elif kind == "redis":
            url = f"{request.getfixturevalue('redis_url')}?prefix=test-{unique}"
        else:
            raise ValueError(kind)
        made.append(url)
        return url

    yield make
    for url in made:
        backend = open_backend(url)
        if hasattr(backend, "drop"):
            backend.drop()
        backend.close()


@pytest.fixture(params=["memory", *PERSISTENT])
def store_url(request: pytest.FixtureRequest, make_store_url) -> str:
    """A fresh store URL of each backend kind in turn."""
    return make_store_url(request.param)


@pytest.fixture(params=PERSISTENT)
def persistent_store_url(request: pytest.FixtureRequest, make_store_url) -> str:
    """A fresh store URL of each backend that keeps data across restarts."""
    return make_store_url(request.param)


def storage_running(store_url: str, url: str, exchange: str, unique: str, *, workers: int = 1):
    """Run the storage service (queue ``storage-<unique>``) until the block ends."""
    app = make_app(store_url, queue=f"storage-{unique}")
    return running(lambda: app.run(url, exchange=exchange, workers=workers),
                   ready="storage.list_store_handlers", url=url, exchange=exchange,
                   cleanup_queues=(app.queue,))


@pytest.fixture(scope="package")
def shared(tmp_path_factory, redis_url):
    """One storage service (SQLite, Redis broker) shared by the storage tests.

    Starting and stopping a service costs seconds, so tests that only call it
    share one, each using its own keys.
    """
    token = uuid.uuid4().hex[:10]
    exchange = f"test-{token}"
    store = f"sqlite:///{tmp_path_factory.mktemp('storage')}/shared.sqlite3"
    with storage_running(store, redis_url, exchange, token):
        yield redis_url, exchange


@pytest.fixture
def bus(shared):
    """A Client on the shared storage service's exchange."""
    with Client(*shared) as client:
        yield client
