"""examples/storage_watcher.py: the seed's storage example runs, classic and App versions."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from busapp.errors import StorageLookupError
from busapp.models import Host
from busapp.storage.client import StorageClient
from tests._services import running

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "storage_watcher.py"


def load_example():
    """A fresh copy of the example module (tests may rename its queues)."""
    spec = importlib.util.spec_from_file_location("storage_watcher_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for_status(storage: StorageClient, address: str, status: str,
                    deadline: float = 20.0) -> Host:
    """The Host once its stored status is ``status``."""
    end = time.monotonic() + deadline
    while True:
        try:
            host = storage.get_host(address)
        except StorageLookupError:
            host = None
        if host is not None and host.status == status:
            return host
        assert time.monotonic() < end, f"{address} never reached status {status!r}: {host}"
        time.sleep(0.05)


@pytest.mark.parametrize("flavour", ["classic", "app"])
def test_watcher_marks_created_hosts(flavour, shared, bus, unique):
    """A created Host is picked up by the watcher and saved back as 'investigating'."""
    redis_url, exchange = shared
    example = load_example()
    queue = f"watcher-{unique}"
    if flavour == "classic":
        def target():
            qkwargs = [{"name": queue, "routing_key": "watcher.*"}]
            example.WatcherService(exchange, redis_url, qkwargs).run()
        subscription = f"{queue}.notify.Host.created.host_created_cb"
    else:
        example.app.queue = queue
        def target():
            example.app.run(redis_url, exchange=exchange)
        subscription = f"{queue}.notify.Host.created.host_created"
    storage = StorageClient(bus)
    storage.save(Host.new(address="ready"))  # so that watcher.investigate can answer
    address = f"10.2.{unique}"
    with running(target, ready="watcher.investigate", ready_args=("ready",), url=redis_url,
                 exchange=exchange, cleanup_queues=(queue, subscription)):
        storage.save(Host.new(address=address))
        host = wait_for_status(storage, address, "investigating")
        assert host.last_check  # stamped by the watcher
        assert bus.call("watcher.investigate", address)["status"] == "investigating"
