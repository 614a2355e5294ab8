"""``busapp run``: serve an App or a service class under a process manager."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import structlog

from busapp import _extras
from busapp.cli.locate import Target, load_targets
from busapp.cli.options import (
    RunFailed,
    broker_option,
    exchange_option,
    keyring_option,
    load_keyring,
    log_options,
    resolve_broker,
    usable,
)
from busapp.cli.reload import run_with_reload
from busapp.core.options import WorkerOptions
from busapp.errors import BrokerUnavailable, CrashLoopError
from busapp.log import configure_logging
from busapp.ops import metrics
from busapp.runtime.manager import ServiceManager
from busapp.transport import mask_url

log = structlog.get_logger("busapp.cli")


# -- run -----------------------------------------------------------------------


@click.command()
@click.argument("targets", metavar="MODULE[:APP]...", nargs=-1, required=True)
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (they share the App's queue).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Messages handled at once inside each worker. Default: 8.")
@broker_option
@exchange_option
@click.option("-r", "--reload", is_flag=True,
              help="Restart the workers when a .py file under the module's directory changes.")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long in-flight messages may take. Default: 30.")
@click.option("--startup-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up (exit 1) when a worker cannot reach the broker within this long "
                   "of starting. Default: keep trying.")
@keyring_option
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), metavar="PORT",
              help="Serve Prometheus metrics of all workers on http://HOST:PORT/metrics "
                   "(needs busapp[prometheus]).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address the metrics endpoint binds (0.0.0.0: reachable from other hosts).")
@log_options
def run(targets: tuple[str, ...], workers: int, concurrency: int | None, broker: str | None,
        exchange: str | None, reload: bool, graceful_timeout: float | None,
        startup_timeout: float | None, keyring: str | None, metrics_port: int | None,
        metrics_host: str, log_format: str | None, log_level: str) -> None:
    """Serve MODULE[:APP] until SIGTERM or SIGINT.

    MODULE is a dotted module name or a file path; APP names an App or a
    CommissaireService subclass. Without :APP, every App of the module is served
    (else its one service class). Several targets are served together, under one
    manager; each App gets its own --workers processes.

    \b
      busapp run examples/simpleservice.py:app --workers 3
      busapp run shop.py                  # every App in shop.py
      busapp run orders.py inventory.py:app
      busapp run mypackage.service:MyService --broker amqp://guest:guest@localhost//
    """
    # Not cache=True: a frozen logger outlives any later configure (tests run commands
    # in-process), and the per-call line is cheap enough without it.
    configure_logging(log_level, log_format)
    if reload:
        usable(_extras.watchfiles)
    if metrics_port is not None:
        usable(metrics._client)
    loaded = _load_all(targets)
    keys = load_keyring(keyring)
    for each in loaded:
        if keys is not None and each.app is not None:
            each.app.keyring = keys
            each.app._service_class = None  # rebuilt: allow lists are checked against it
            usable(lambda app=each.app: app.service_class)
        elif keys is not None:
            each.service_class.keyring = keys
    url = resolve_broker(broker)
    if reload:
        options = {"workers": workers, "concurrency": concurrency, "exchange": exchange,
                   "graceful_timeout": graceful_timeout, "log_format": log_format,
                   "log_level": log_level,
                   "metrics_port": metrics_port, "metrics_host": metrics_host}
        sys.exit(run_with_reload(list(targets), [t.root for t in loaded], url, options))
    log.info("starting", target=" ".join(targets), serves=", ".join(t.label for t in loaded),
             workers=workers, broker=mask_url(url), pid=os.getpid())
    serve(loaded, url, workers=workers, concurrency=concurrency, exchange=exchange,
          startup_timeout=startup_timeout,
          graceful_timeout=graceful_timeout, metrics_port=metrics_port, metrics_host=metrics_host)


def _load_all(targets: tuple[str, ...]) -> list[Target]:
    """Every App or service class the targets name, each once; two Apps of one name (they
    would share a queue) are a usage error."""
    found: dict[int, Target] = {}
    for spec in targets:
        for each in load_targets(spec):
            found.setdefault(id(each.app if each.app is not None else each.service_class), each)
    names: dict[str, str] = {}
    for each in found.values():
        if each.label in names:
            raise click.UsageError(f"{names[each.label]} and {each.spec} are both named "
                                   f"{each.label!r}; they would share one queue: rename one")
        names[each.label] = each.spec
    return list(found.values())


def _manager(loaded: Target, url: str, options: dict[str, Any]) -> ServiceManager:
    """The manager of one App or service class, with the command line's options."""
    if loaded.app is not None:
        app = loaded.app
        exchange = options["exchange"] or app.exchange
        manager = ServiceManager(app.service_class, options["workers"], exchange, url,
                                 app.qkwargs(exchange))
    else:
        manager = ServiceManager(loaded.service_class, options["workers"], options["exchange"],
                                 url, None)
    base = manager.options or getattr(manager.service_class, "worker_options", None)
    manager.options = (base or WorkerOptions()).evolve(
        concurrency=options["concurrency"], graceful_timeout=options["graceful_timeout"],
        startup_timeout=options.get("startup_timeout"))
    manager.graceful_timeout = manager.options.graceful_timeout
    return manager


def serve(loaded: Target | list[Target], url: str, **options: Any) -> None:
    """Serve ``loaded`` (one target or several, each its own workers) under one manager."""
    targets = loaded if isinstance(loaded, list) else [loaded]
    try:
        # Always under a manager, even with one worker: a worker that dies is replaced,
        # and a crash loop ends in a clear exit 1 (app.run(workers=1) stays in-process).
        manager = _manager(targets[0], url, options)
        for other in targets[1:]:
            manager.add(_manager(other, url, options))
        if options.get("metrics_port") is not None:
            manager.metrics = metrics.MetricsEndpoint(
                options["metrics_port"], options.get("metrics_host") or "127.0.0.1",
                manager._service_name())
        manager.run()
    except CrashLoopError as exc:
        log.error("giving up", error=str(exc))
        raise RunFailed(f"{exc}; fix the error and run again") from None
    except BrokerUnavailable as exc:  # a worker gave up (--startup-timeout): said once, here
        raise RunFailed(str(exc)) from None
    except OSError as exc:  # the metrics port is taken, or not ours to bind
        raise RunFailed(f"cannot serve metrics on {options.get('metrics_host')}:"
                        f"{options.get('metrics_port')}: {exc}") from None
