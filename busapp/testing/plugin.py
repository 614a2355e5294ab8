"""pytest plugin: fixtures for testing busapp services (see :mod:`busapp.testing.client`).

Installed with busapp (entry point ``pytest11``); nothing to enable. Tell it
which App you test by overriding ``busapp_app`` in your ``conftest.py``::

    import pytest
    from myservice import app

    @pytest.fixture
    def busapp_app():
        return app

    def test_add(busapp_client):
        assert busapp_client.call("add", 1, 2) == 3

Fixtures (each test gets fresh ones, with empty in-memory storage):

- ``busapp_app``: the App under test; override it.
- ``busapp_client``: a :class:`~busapp.testing.client.TestClient` for ``busapp_app``.
- ``busapp_storage``: ``busapp_client.storage``, a StorageClient on in-memory storage.
- ``busapp_client_factory``: ``make(app=None, **options)`` builds more
  clients (e.g. ``raise_handler_errors=False``), closed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def busapp_app() -> Any:
    """The App under test: override this fixture in your conftest.py."""
    pytest.fail(
        "the busapp_client fixture needs your App: define a 'busapp_app' fixture returning it "
        "in conftest.py (see busapp.testing.plugin)",
        pytrace=False,
    )


@pytest.fixture
def busapp_client_factory() -> Iterator[Callable[..., Any]]:
    """``make(app=None, **options)``: a new TestClient (options as for TestClient), closed
    after the test."""
    # Imported here: pytest loads this plugin in every project of the environment, and
    # only a test that asks for the fixture should pay for importing busapp.
    from busapp.testing.client import TestClient

    made: list[TestClient] = []

    def make(app: Any = None, **options: Any) -> TestClient:
        client = TestClient(app, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def busapp_client(busapp_app: Any, busapp_client_factory: Callable[..., Any]) -> Any:
    """A TestClient calling ``busapp_app`` in memory (no broker), with in-memory storage."""
    return busapp_client_factory(busapp_app)


@pytest.fixture
def busapp_storage(busapp_client: Any) -> Any:
    """``busapp_client.storage``: a StorageClient over the client's in-memory storage service."""
    return busapp_client.storage
