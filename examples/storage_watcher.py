"""Commissaire's storage example ("Storage Integration"), on busapp.

A service that hears when a Host record is created, marks it as being
investigated and saves the updated record. It is written twice:

- ``WatcherService``: the Commissaire-style service, unchanged but for imports
  (``StorageClient`` + ``register_callback`` + ``@NotifyCallback``);
- ``app``: the same on busapp's App front (``@app.on_storage_event``).

Try it (each command in its own terminal; with no ``--broker`` they share the
embedded broker under ./.busapp/)::

    busapp storage                                   # the storage service (SQLite)
    busapp run examples/storage_watcher.py:app --workers 3
    busapp call storage.save model_type_name=Host 'model_json_data={"address": "10.0.0.1"}'
    busapp call storage.get model_type_name=Host 'model_json_data={"address": "10.0.0.1"}'
    # -> "status": "investigating"

or run the classic service instead of the App: ``python examples/storage_watcher.py``.
"""

from __future__ import annotations

import attrs

from busapp import App
from busapp.models import Host, formatted_dt
from busapp.service import CommissaireService
from busapp.storage import client

#: Where the classic service takes requests.
QUEUE_KWARGS = [{"name": "watcher", "routing_key": "watcher.*"}]


class WatcherService(CommissaireService):
    """Demonstrates StorageClient on a classic CommissaireService."""

    def __init__(self, exchange_name=None, connection_url=None, qkwargs=None, config_file=None):
        super().__init__(exchange_name, connection_url, qkwargs or QUEUE_KWARGS, config_file)
        # StorageClient requires a BusMixin interface, which CommissaireService provides.
        self.storage = client.StorageClient(self)
        # Invoke a method when a new Host record is created (also: NOTIFY_EVENT_DELETED,
        # NOTIFY_EVENT_UPDATED, NOTIFY_EVENT_ANY).
        self.storage.register_callback(self.host_created_cb, Host, client.NOTIFY_EVENT_CREATED)

    @client.NotifyCallback
    def host_created_cb(self, event, model, message):
        """'event' is always 'created' and 'model' always a Host, as registered above."""
        model.status = "investigating"
        model.last_check = formatted_dt()
        self.storage.save(model)

    def on_investigate(self, message, address):
        """Exposed as watcher.investigate: the Host record as stored now."""
        return self.storage.get_host(address).to_dict()


app = App("watcher")


@app.on_storage_event(Host, "created")
def host_created(event: str, model: Host, storage) -> None:
    """The App version of host_created_cb."""
    storage.save(attrs.evolve(model, status="investigating", last_check=formatted_dt()))


@app.method()
def investigate(address: str, storage) -> Host:
    """Exposed as watcher.investigate: the Host record as stored now."""
    return storage.get_host(address)


@app.method()
def ping() -> str:
    """Answers 'pong' (a readiness check)."""
    return "pong"


if __name__ == "__main__":
    WatcherService().run()
