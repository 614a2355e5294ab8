"""``busapp.App``: the App users write services with.

:class:`App` is the registry of :class:`busapp.core.app.App` (methods, storage handlers,
hooks, dependencies, middleware; no I/O) plus what runs it: the generated
:attr:`~App.service_class`, :meth:`~App.run`, and :meth:`~App.test_client`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from busapp.core import app as _core
from busapp.core.scaffold import STORAGE_EVENTS
from busapp.runtime.appservice import AppService, build_service_class
from busapp.runtime.manager import ServiceManager

if TYPE_CHECKING:
    from busapp.testing.client import TestClient

__all__ = ["STORAGE_EVENTS", "App"]


class App(_core.App):
    __doc__ = _core.App.__doc__

    @property
    def service_class(self) -> type[AppService]:
        """The :class:`~busapp.service.CommissaireService` subclass serving this App."""
        if self._service_class is None:
            self._service_class = build_service_class(self)
        return self._service_class

    def run(self, broker_url: str | None = None, *, workers: int = 1,
            concurrency: int | None = None, exchange: str | None = None,
            graceful_timeout: float | None = None, options: Any = None) -> None:
        """Serve until SIGINT/SIGTERM: in this process (``workers=1``) or under a ServiceManager.

        ``options`` is a :class:`~busapp.runtime.worker.WorkerOptions`; ``concurrency`` and
        ``graceful_timeout`` change single fields of it.
        """
        exchange = exchange or self.exchange
        options = (options or self.service_class.worker_options).evolve(
            concurrency=concurrency, graceful_timeout=graceful_timeout)
        if workers <= 1:
            self.service_class(exchange, broker_url, self.qkwargs(exchange), options=options).run()
            return
        ServiceManager(self.service_class, workers, exchange, broker_url, self.qkwargs(exchange),
                       options=options).run()

    def test_client(self, *, dependencies: dict[str, Any] | None = None,
                    key: Any = None) -> TestClient:
        """An in-memory client calling this App with no broker (see :mod:`busapp.testing.client`).

        ``dependencies`` replaces registered providers: ``{name: provider or value}``.
        ``key``: sign the calls with this key: ``(id, secret)``, or the id of a key of the
        App's keyring.
        """
        # Imported here: the test client serves the storage service, an App of this class.
        from busapp.testing.client import TestClient

        return TestClient(self, dependencies=dependencies, key=key)
