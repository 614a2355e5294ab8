"""The consumer side: :class:`CommissaireService`, the class a service is written as.

A service's ``on_<name>`` methods are its bus methods. :meth:`CommissaireService.run`
serves them with a :class:`~busapp.runtime.worker.Worker` (the consume loop, concurrency,
redelivery and shutdown live in :mod:`busapp.runtime.worker`; the per-message step in
:mod:`busapp.core.pipeline`). A message is acked after its reply is sent, so a worker killed
mid-call leaves the message to be redelivered (at-least-once).

:class:`ServiceManager` lives in :mod:`busapp.runtime.manager` and is re-exported here
for Commissaire's import path.
"""

from __future__ import annotations

import inspect
import signal
import threading
from collections.abc import Callable
from typing import Any

from busapp import names
from busapp.core import dispatch
from busapp.client.async_bus import AsyncBus
from busapp.client.sync import BusMixin, Client, default_exchange, default_queue
from busapp.core.pipeline import IncomingMessage
from busapp.entrypoints.base import Entrypoint
from busapp.entrypoints.storage_event import Subscription
from busapp.storage.client import StorageClient
from busapp.transport import resolve_broker_url
from busapp.transport.base import QueueSpec
from busapp.core.options import WorkerOptions
from busapp.runtime.worker import Worker, rpc_entrypoints

__all__ = ["CommissaireService", "IncomingMessage", "Subscription", "WorkerOptions"]

#: ``on_*`` names that are hooks of kombu's ConsumerMixin or of Commissaire's
#: service, never bus methods, even when a subclass defines them.
RESERVED_HOOKS = frozenset({
    "on_message", "on_connection_error", "on_connection_revived", "onconnection_revived",
    "on_consume_ready", "on_consume_end", "on_iteration", "on_decode_error", "on_return",
    "on_startup", "on_shutdown",  # busapp's lifespan hooks (see _lifespan_start)
})


class CommissaireService(BusMixin):
    """Base class: each ``on_<name>(self, message, ...)`` a subclass defines is bus method ``name``.

    Args:
        exchange_name: the topic exchange (None: ``$BUSAPP_EXCHANGE`` or ``commissaire``).
        connection_url: broker URL (None: ``$BUSAPP_BROKER_URL`` or the embedded broker).
        qkwargs: ``kombu.Queue`` keyword dicts (``name``, ``routing_key``, ``durable``, ...), used
            as given; default one queue named after the class (``<exchange>.<name>`` off the
            ``commissaire`` exchange: :func:`busapp.names.default_queue`), bound to ``<name>.*``.
        config_file: kept for Commissaire compatibility (available as ``self.config_file``).
        client: keyword-only; the bus object ``self.call``/``request``/``notify``/``publish``
            and replies go through (default: a :class:`~busapp.Client` on ``connection_url``).
        options: keyword-only :class:`~busapp.runtime.worker.WorkerOptions` (default: the class's
            :attr:`worker_options`); ``concurrency=``, ``graceful_timeout=``, ``max_body=``
            and ``max_deliveries=`` change single fields of it.
        keyring: keyword-only :class:`~busapp.security.Keyring`: requests must be signed
            with one of its keys; the service signs its own calls with
            ``keyring.own`` (default: the key named like the service, if any).

    Example::

        class MyService(CommissaireService):
            def on_ping(self, message):
                return "pong"

        MyService("my_exchange", "redis://127.0.0.1:6379/",
                  qkwargs=[{"name": "my_queue", "routing_key": "queues.my_queue.*"}]).run()
    """

    _busapp_framework = True
    #: How workers of this class run, unless the constructor or the manager says otherwise.
    worker_options: WorkerOptions = WorkerOptions()
    #: The keys callers must sign with (None: anyone may call); see :mod:`busapp.security`.
    keyring: Any = None

    def __init__(self, exchange_name: str | None = None, connection_url: str | None = None,
                 qkwargs: list[dict[str, Any]] | None = None, config_file: str | None = None,
                 **kwargs: Any) -> None:
        client = kwargs.pop("client", None)
        if kwargs.get("keyring") is not None:
            self.keyring = kwargs.pop("keyring")
        kwargs.pop("keyring", None)
        options = kwargs.pop("options", None) or self.worker_options
        changes = {k: kwargs.pop(k) for k in ("concurrency", "graceful_timeout", "max_body",
                                              "max_deliveries") if k in kwargs}
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        #: This worker's options (:class:`~busapp.runtime.worker.WorkerOptions`).
        self.options: WorkerOptions = options.evolve(**changes)
        self.exchange_name = default_exchange(exchange_name)
        # An injected client needs no broker URL of its own.
        self.connection_url = (connection_url if client is not None
                               else resolve_broker_url(connection_url))
        if not qkwargs:
            name = type(self).__name__.lower()
            qkwargs = [{"name": default_queue(name, self.exchange_name),
                        "routing_key": f"{name}.*"}]
        self.qkwargs = [dict(q) for q in qkwargs]
        self.config_file = config_file
        self.service_name = str(self.qkwargs[0].get("name") or type(self).__name__.lower())
        self.handlers = self._collect_handlers()
        self.subscriptions: list[Subscription] = []
        self._client: Any = client
        self._client_lock = threading.Lock()
        self._storage: Any = None
        #: The ``bus`` of ``async def`` handlers (its AsyncClient is made on first use).
        self._async_bus = AsyncBus(self)
        self.worker: Worker | None = None

    # -- registration ----------------------------------------------------------

    @classmethod
    def exposed_methods(cls) -> dict[str, Callable[..., Any]]:
        """``{name: function}`` for every ``on_<name>`` a user subclass defines itself."""
        found: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            if not issubclass(klass, CommissaireService) or klass.__dict__.get("_busapp_framework"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("on_") and attr not in RESERVED_HOOKS and callable(value):
                    name = attr[3:]
                    if names.NAME.match(name):
                        found[name] = value
        return found

    def _collect_handlers(self) -> dict[str, dispatch.Handler]:
        handlers = {}
        for name in self.exposed_methods():
            bound = getattr(self, f"on_{name}")
            handler = getattr(bound, "__busapp_handler__", None)
            handlers[name] = handler or dispatch.Handler.from_function(bound, name,
                                                                       message_first=True)
        return handlers

    def subscribe(self, binding_key: str, callback: Callable[[Any, IncomingMessage], Any], *,
                  queue_name: str) -> None:
        """Consume plain JSON messages matching ``binding_key`` from the named, shared queue.

        Every worker of the service consumes the same ``queue_name``, so each
        message is handled once per service. Call before :meth:`run`.
        """
        self.subscriptions.append(Subscription(binding_key, callback, queue_name))

    @property
    def routing_keys(self) -> list[str]:
        """The binding keys of the service's RPC queues."""
        return [str(q.get("routing_key", q.get("name"))) for q in self.qkwargs]

    def queue_specs(self) -> list[QueueSpec]:
        """The service's RPC queues, from ``qkwargs``."""
        specs = []
        for q in self.qkwargs:
            name = str(q.get("name"))
            specs.append(QueueSpec(
                name, (str(q.get("routing_key", name)),), durable=bool(q.get("durable", True)),
                auto_delete=bool(q.get("auto_delete", False)), expires=q.get("expires"),
                arguments=q.get("queue_arguments")))
        return specs

    def entrypoints(self, options: WorkerOptions) -> list[Entrypoint]:
        """What a worker of this service consumes: its RPC methods and its subscriptions."""
        return rpc_entrypoints(self, options)

    def key_name(self) -> str:
        """The name of the keyring key this service signs its own messages with: its App's
        (its queue may carry the exchange: ``prod.billing``), else the service's."""
        return getattr(getattr(self, "app", None), "name", None) or self.service_name

    def _bus_client(self) -> Client:
        with self._client_lock:
            if self._client is None:
                keyring = self.keyring
                own = keyring.own_key(self.key_name()) if keyring is not None else None
                self._client = Client(self.connection_url, self.exchange_name, key=own)
            return self._client

    def _context(self, info: IncomingMessage) -> dict[str, Any]:
        """What handlers may declare: ``message``, ``bus`` and ``storage`` (``async_bus``:
        the ``bus`` of ``async def`` handlers)."""
        return {"message": info, "bus": self, "storage": self._storage_client(),
                "async_bus": self._async_bus}

    def _storage_client(self) -> Any:
        client = self._storage
        if client is None:
            client = self._storage = StorageClient(self)
        return client

    # -- lifespan: run by the worker -------------------------------------------

    def _lifespan_start(self) -> None:
        """Call the subclass's ``on_startup()`` (sync or async), if any: in the worker, before
        it consumes."""
        self._call_hook("on_startup")

    def _lifespan_stop(self) -> None:
        """Call the subclass's ``on_shutdown()``, if any: in the worker, after its last message."""
        self._call_hook("on_shutdown")

    def _call_hook(self, name: str) -> None:
        hook = getattr(self, name, None)
        if hook is not None:
            result = hook()
            if inspect.isawaitable(result):
                dispatch.run_coroutine(result)

    # -- running ---------------------------------------------------------------

    def make_worker(self) -> Worker:
        """The :class:`~busapp.runtime.worker.Worker` that serves this service (made once)."""
        if self.worker is None:
            self.worker = Worker(self, self.options)
        return self.worker

    def run(self) -> None:
        """Consume until :meth:`stop` (or SIGINT/SIGTERM in the main thread), then drain."""
        worker = self.make_worker()
        worker.ready_callback = getattr(self, "ready_callback", None)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: worker.stop())
        try:
            worker.run()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._async_bus.close()

    def stop(self) -> None:
        """Stop taking messages; :meth:`run` finishes the ones in hand and returns."""
        self.make_worker().stop()

