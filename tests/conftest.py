"""Shared fixtures: real brokers and databases on loopback, isolated per test.

A service that is not reachable skips its tests locally; with
``BUSAPP_REQUIRE_SERVICES=1`` (set by ``.ci/run``) it fails them instead.

Tests are marked ``redis``, ``rabbitmq`` or ``postgres`` by the services they
use (see :func:`pytest_collection_modifyitems`), so ``pytest -m "not rabbitmq"``
leaves those out; ``slow`` (more than 5 s) is set by hand.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

# Fixtures any test here can ask for by name: a private broker of its own to stop or cut.
from tests._private_brokers import private_broker, private_rabbitmq, private_redis  # noqa: F401

REDIS_URL = os.environ.get("BUSAPP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("BUSAPP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PG_URL = os.environ.get("BUSAPP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

REQUIRE = os.environ.get("BUSAPP_REQUIRE_SERVICES") == "1"


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _need(port: int, what: str) -> None:
    if not _port_open(port):
        msg = f"{what} is not reachable on 127.0.0.1:{port}"
        if REQUIRE:
            pytest.fail(msg + " (BUSAPP_REQUIRE_SERVICES=1: a missing service is a failure)")
        pytest.skip(msg)


#: Fixtures that reach a service, and the marker for it.
SERVICE_FIXTURES = {"redis_url": "redis", "amqp_url": "rabbitmq", "pg_url": "postgres"}
#: Parameter values (of broker_url, store_url, ... or a parametrize) naming a service.
SERVICE_PARAMS = {"redis": "redis", "amqp": "rabbitmq", "postgres": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the services it uses: by the fixtures it needs (``redis_url``,
    ``amqp_url``, ``pg_url``), and by parameters naming one (``broker_url[redis]``,
    ``store_url[postgres]``...: these fixtures ask for the service fixture at run time)."""
    for item in items:
        needed = {SERVICE_FIXTURES[name] for name in getattr(item, "fixturenames", ())
                  if name in SERVICE_FIXTURES}
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            needed |= {SERVICE_PARAMS[value] for value in callspec.params.values()
                       if isinstance(value, str) and value in SERVICE_PARAMS}
        for marker in sorted(needed):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server (skips, or fails in CI, if it is down)."""
    _need(6379, "Redis")
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the real RabbitMQ server (skips, or fails in CI, if it is down)."""
    _need(5672, "RabbitMQ")
    return AMQP_URL


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the real PostgreSQL database ``test``."""
    _need(5432, "PostgreSQL")
    return PG_URL


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each real broker in turn."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def exchange() -> str:
    """A fresh exchange name, so tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique() -> str:
    """A short unique token for queue and service names."""
    return uuid.uuid4().hex[:10]
