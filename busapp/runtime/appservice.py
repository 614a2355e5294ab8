"""Build the CommissaireService subclass that serves an App."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from busapp import names
from busapp.core.lifespan import Lifespan
from busapp.core.options import WorkerOptions
from busapp.entrypoints.base import Entrypoint
from busapp.entrypoints.event import EventEntrypoint, handler_queue
from busapp.entrypoints.timer import TimerEntrypoint
from busapp.names import default_exchange
from busapp.runtime.service import CommissaireService, IncomingMessage
from busapp.storage.events import decode_event

if TYPE_CHECKING:
    from busapp.core.app import App
    from busapp.core.scaffold import StorageHandler


class AppService(CommissaireService):
    """Base of every App's generated service class."""

    _busapp_framework = True
    #: The App this class serves (set on each generated subclass).
    app: App

    def __init__(self, exchange_name: str | None = None, connection_url: str | None = None,
                 qkwargs: list[dict[str, Any]] | None = None, config_file: str | None = None,
                 **kwargs: Any) -> None:
        #: This worker's run of the App's hooks, dependencies and middleware.
        self.lifespan = Lifespan(self.app, kwargs.pop("dependencies", None))
        kwargs.setdefault("keyring", self.app.keyring)
        exchange_name = exchange_name or self.app.exchange
        super().__init__(exchange_name, connection_url,
                         qkwargs or self.app.qkwargs(default_exchange(exchange_name)), config_file,
                         **kwargs)
        for entry in self.app.storage_handlers:
            self.subscribe(entry.binding_key, self._event_callback(entry),
                           queue_name=entry.queue_name(self.service_name))

    def entrypoints(self, options: WorkerOptions) -> list[Entrypoint]:
        """Its methods and storage subscriptions, then the App's event handlers and timers."""
        found = super().entrypoints(options)
        queue = self.service_name
        for entry in self.app.event_handlers:
            handler = self.lifespan.wrap(entry.handler, "bus_event", entry.key)
            found.append(EventEntrypoint(entry, handler, handler_queue(entry, queue),
                                         names.dead_letter(entry.queue_name(queue))))
        for timer in self.app.timers.values():
            handler = self.lifespan.wrap(timer.handler, "timer", timer.key)
            found.append(TimerEntrypoint(timer, handler, queue))
        return found

    @classmethod
    def timer_lease(cls, queue: str) -> str | None:
        """The name of the timer lease of the App serving ``queue`` (None: it has no timers).
        A worker's own queues need no list here: Redis's registry knows them."""
        return names.timer_lease(queue) if cls.app.timers else None

    def _collect_handlers(self) -> dict[str, Any]:
        # From the App itself: a method may be named like a hook (``startup``).
        return {name: self.lifespan.wrap(handler, "call", ("call", name))
                for name, handler in self.app.methods.items()}

    def _event_callback(self, entry: StorageHandler) -> Any:
        handler = self.lifespan.wrap(entry.handler, "event", entry.key)

        def on_event(body: Any, message: IncomingMessage) -> None:
            event, model = decode_event(body)
            context = self._context(message)
            handler.call({"event": event, "model": model}, context)

        on_event.__name__ = entry.handler.name  # what log lines and the banner call it
        return on_event

    def _lifespan_start(self) -> None:
        self.lifespan.start({"bus": self, "storage": self._storage_client()})

    def _lifespan_stop(self) -> None:
        self.lifespan.stop()


def _method(handler: Any) -> Any:
    def on_method(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        return handler.func(*args, **kwargs)

    on_method.__busapp_handler__ = handler  # type: ignore[attr-defined]
    on_method.__name__ = f"on_{handler.name}"
    on_method.__doc__ = handler.func.__doc__
    return on_method


def build_service_class(app: App) -> type[AppService]:
    """A new AppService subclass with one ``on_<name>`` per registered function."""
    Lifespan(app)  # a wrong dependency graph or hook raises ValueError here, not in a worker
    if app.keyring is not None:  # a keyring given after registration (busapp run --keyring)
        for name, handler in app.methods.items():
            if handler.allow is not None:
                app.keyring.check_allow(handler.allow, f"method {name!r}")
        for entry in app.event_handlers:
            if entry.allow is not None:
                app.keyring.check_allow(entry.allow, f"event handler {entry.name!r}")
    for timer in app.timers.values():
        unknown = timer.unknown_params(app.dependencies)
        if unknown:
            raise ValueError(f"timer {timer.name!r} has parameters nothing fills: "
                             f"{', '.join(unknown)}; a timer takes bus, storage, message and "
                             f"dependencies only (or give them defaults)")
    namespace: dict[str, Any] = {"app": app, "__module__": __name__}
    if app.max_body is not None or app.queue_type is not None:
        namespace["worker_options"] = AppService.worker_options.evolve(
            max_body=app.max_body, queue_type=app.queue_type)
    for name, handler in app.methods.items():
        namespace[f"on_{name}"] = _method(handler)
    return type(f"{app.name.title().replace('_', '')}Service", (AppService,), namespace)
