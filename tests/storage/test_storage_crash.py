"""The storage service killed -9 in the middle of a batch of saves loses no acknowledged save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from busapp import Client
from busapp.errors import BrokerUnavailable, RequestTimeout
from busapp.models import Host
from busapp.storage.client import StorageClient
from tests._services import delete_queues, wait_until_served

ROOT = Path(__file__).resolve().parents[2]


def _start(store_url: str, broker: str, exchange: str, queue: str) -> subprocess.Popen:
    code = ("from busapp.storage.service import make_app; "
            f"make_app({store_url!r}, queue={queue!r}).run({broker!r}, exchange={exchange!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until_served(broker, exchange, "storage.list_store_handlers")
    return proc


@pytest.mark.slow  # > 5 s
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_kill9_mid_batch_keeps_every_acknowledged_save(kind, make_store_url, redis_url, unique):
    """Saves run in a loop; kill -9 of the storage service;
    after restart every acked save reads back."""
    store_url = make_store_url(kind)
    exchange, queue = f"test-{unique}", f"storage-{unique}"
    acked: dict[str, Host] = {}
    stop = threading.Event()
    proc = _start(store_url, redis_url, exchange, queue)
    try:
        with Client(redis_url, exchange, timeout=2) as bus:
            storage = StorageClient(bus)

            def writer() -> None:
                i = 0
                while not stop.is_set():
                    host = Host.new(address=f"10.1.{i // 250}.{i % 250}", os="fedora",
                                    cpus=i % 64, memory=i, space=i * 7, status="active")
                    try:
                        storage.save(host)
                        acked[host.address] = host
                    except (RequestTimeout, BrokerUnavailable):
                        pass  # not acknowledged: may or may not have been written
                    i += 1

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(1.5)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            time.sleep(0.5)
            stop.set()
            thread.join(10)
            assert len(acked) > 20, "too few saves before the kill to prove anything"

            proc = _start(store_url, redis_url, exchange, queue)
            for address, host in acked.items():
                assert storage.get_host(address) == host
            for stored in storage.list(Host):  # every readable record is whole and valid
                assert json.loads(stored.to_json())["address"] == stored.address
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        delete_queues(redis_url, exchange, queue)
