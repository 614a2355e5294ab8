"""Prometheus metrics of ``busapp run --metrics-port N`` (``pip install 'busapp[prometheus]'``).

One endpoint per ``busapp run``, summed over its workers: the manager turns on
prometheus_client's multiprocess mode (a directory it makes before forking and removes
when it stops), each worker records into its own files there, and the manager serves
``/metrics`` from all of them.

Metrics (SPEC §10):

- ``busapp_calls_total{service,method,outcome}``: requests served; outcome ``ok`` or
  ``error``; a method the service does not have is counted as ``method="(unknown)"``;
- ``busapp_call_duration_seconds{service,method}``: histogram of the time to serve one;
- ``busapp_in_flight{service}``: requests being served now (summed over live workers);
- ``busapp_redeliveries_total{service}``, ``busapp_dead_letters_total{service}``;
- ``busapp_worker_restarts_total{service}``: workers the manager replaced after they died;
- ``busapp_events_total{service,handler,outcome}``: events handled; outcome ``ok``,
  ``retried`` (the handler failed, the event is sent again later) or ``dead_lettered``
  (failed on its last retry, or could never be handled); failed = retried + dead_lettered;
- ``busapp_timer_runs_total{service,timer,outcome}``: timer runs; outcome ``ok`` or ``error``.

Calls are counted by the worker, not by an App middleware: that also counts the
requests no middleware sees (unknown methods, bad params, undecodable bodies) and the
services written as :class:`~busapp.runtime.service.CommissaireService` classes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import structlog

from busapp import _extras

log = structlog.get_logger("busapp.metrics")

#: prometheus_client's variable naming its multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Label value of calls to a method the service does not have (bounded label values).
UNKNOWN_METHOD = "(unknown)"

#: The metric objects of this process, made once (prometheus_client refuses a name twice).
_made: dict[str, Any] = {}


def _client() -> Any:
    return _extras.require("prometheus_client", "prometheus", "busapp run --metrics-port needs")


def _metrics() -> dict[str, Any]:
    if not _made:
        prom = _client()
        _made.update(
            calls=prom.Counter("busapp_calls_total", "Requests served.",
                               ["service", "method", "outcome"]),
            duration=prom.Histogram("busapp_call_duration_seconds", "Seconds to serve a request.",
                                    ["service", "method"]),
            in_flight=prom.Gauge("busapp_in_flight", "Requests being served now.", ["service"],
                                 multiprocess_mode="livesum"),
            redeliveries=prom.Counter("busapp_redeliveries_total",
                                      "Messages delivered again after a worker died holding them.",
                                      ["service"]),
            dead_letters=prom.Counter("busapp_dead_letters_total",
                                      "Messages dead-lettered after too many deliveries.",
                                      ["service"]),
            restarts=prom.Counter("busapp_worker_restarts_total",
                                  "Workers replaced after they died.", ["service"]),
            events=prom.Counter("busapp_events_total",
                                "Events handled: ok, retried or dead_lettered.",
                                ["service", "handler", "outcome"]),
            timer_runs=prom.Counter("busapp_timer_runs_total", "Timer runs: ok or error.",
                                    ["service", "timer", "outcome"]),
        )
    return _made


class WorkerMetrics:
    """What one worker records (set as ``Worker.metrics`` in each worker process)."""

    def __init__(self, service: str) -> None:
        made = _metrics()
        self.service = service
        self._calls = made["calls"]
        self._duration = made["duration"]
        self._in_flight = made["in_flight"].labels(service)
        self._redeliveries = made["redeliveries"].labels(service)
        self._dead_letters = made["dead_letters"].labels(service)
        self._by_method: dict[str | None, tuple[Any, Any, Any]] = {}

    def _for(self, method: str | None) -> tuple[Any, Any, Any]:
        children = self._by_method.get(method)
        if children is None:
            label = method or UNKNOWN_METHOD
            children = self._by_method[method] = (
                self._calls.labels(self.service, label, "ok"),
                self._calls.labels(self.service, label, "error"),
                self._duration.labels(self.service, label))
        return children

    def call_started(self) -> None:
        self._in_flight.inc()

    def call_finished(self, method: str | None, ok: bool, seconds: float) -> None:
        """One request served (``method`` None: not a method of this service)."""
        ok_counter, error_counter, duration = self._for(method)
        (ok_counter if ok else error_counter).inc()
        duration.observe(seconds)
        self._in_flight.dec()

    def redelivered(self, dead: bool) -> None:
        """A redelivered message was counted; ``dead``: it went to the dead-letter queue."""
        self._redeliveries.inc()
        if dead:
            self._dead_letters.inc()

    def event_finished(self, handler: str | None, outcome: str, seconds: float) -> None:
        """One event run by ``handler``: ``ok``, ``retried`` or ``dead_lettered``."""
        _made["events"].labels(self.service, handler or UNKNOWN_METHOD, outcome).inc()

    def timer_finished(self, timer: str | None, ok: bool, seconds: float) -> None:
        """One run of ``timer``."""
        _made["timer_runs"].labels(self.service, timer or UNKNOWN_METHOD,
                                   "ok" if ok else "error").inc()


class MetricsEndpoint:
    """The manager's side: the multiprocess directory and the ``/metrics`` HTTP server.

    Args:
        port: TCP port to serve on (0: any free one; see :attr:`port` after :meth:`start`).
        host: address to bind (``0.0.0.0`` to be scraped from other hosts).
        service: the ``service`` label of the restart counter.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", service: str = "") -> None:
        self.port = port
        self.host = host
        self.service = service
        self.directory: str | None = None
        self._own_directory = False
        self._server: Any = None

    def start(self) -> None:
        """Make the directory, switch this process (and so its forks) to it, and serve.

        Raises:
            MissingExtra: prometheus_client is not installed.
            OSError: the port cannot be bound.
        """
        prom = _client()
        from prometheus_client import multiprocess, values

        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            directory = tempfile.mkdtemp(prefix="busapp-metrics-")
            self._own_directory = True
            os.environ[MULTIPROC_ENV] = directory
        self.directory = directory
        # prometheus_client picks its value class at import: an app that imported it
        # before the variable was set would record in memory, out of the endpoint's sight.
        values.ValueClass = values.get_value_class()
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        started = prom.start_http_server(self.port, addr=self.host, registry=registry)
        self._server = started[0]  # (server, thread)
        self.port = self._server.server_port
        log.info("metrics served", url=f"http://{self.host}:{self.port}/metrics", dir=directory)

    def recorder(self, service: str) -> WorkerMetrics:
        """What one worker process of ``service`` records through (made in the worker)."""
        return WorkerMetrics(service)

    def worker_died(self, pid: int, service: str | None = None) -> None:
        """Forget a dead worker's live gauges and count its restart (``service``: the one it
        served, default :attr:`service`)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.directory)
        _metrics()["restarts"].labels(service or self.service).inc()

    def close(self) -> None:
        """Stop serving and remove the directory (if this endpoint made it)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_directory and self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self.directory:
                del os.environ[MULTIPROC_ENV]
