"""Storage fixtures: a fresh store of each backend kind, dropped after the test."""

from __future__ import annotations

import pytest

from busapp.storage.backends import open_backend

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
