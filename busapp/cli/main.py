"""The ``busapp`` command: run, call, routes, storage, status, probe.

Exit codes: 0 success; 1 an error reply or a failed run; 2 a usage error
(including an app that cannot be found, a URL with an unknown scheme, or a
missing optional dependency), a timeout, or no broker.

Example::

    busapp run examples/simpleservice.py:app --workers 3
    busapp call simple.add 1 2
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import structlog

import busapp
from busapp import config
from busapp._extras import MissingExtra
from busapp.errors import (
    AccessRefused,
    BrokerUnavailable,
    NoRouteError,
    RemoteProcedureCallError,
    RequestTimeout,
)
from busapp.log import FORMATS, LEVELS, configure_logging
from busapp.transport import check_broker_url, mask_url

log = structlog.get_logger("busapp.cli")

BROKER_ENV = config.env_name("broker_url")
EXCHANGE_ENV = config.env_name("exchange")
STORE_ENV = config.env_name("store_url")
KEYRING_ENV = config.env_name("keyring")


class CallFailed(click.ClickException):
    """The service answered with an error."""

    exit_code = 1


class NoReply(click.ClickException):
    """No answer: a timeout, or no broker to send through."""

    exit_code = 2


class RunFailed(click.ClickException):
    """``busapp run`` could not start, or its workers kept crashing."""

    exit_code = 1


class Unusable(click.ClickException):
    """A setting busapp cannot use (a URL's scheme, a missing extra): one line, exit 2."""

    exit_code = 2


def _url_source(ctx: click.Context, param: click.Parameter) -> str:
    """How the user gave ``param``: ``--broker`` or ``$BUSAPP_BROKER_URL``."""
    source = ctx.get_parameter_source(param.name or "")
    if source is click.core.ParameterSource.ENVIRONMENT and param.envvar:
        return f"${param.envvar}"
    return param.opts[0]


def _validate_broker(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    problem = check_broker_url(value) if value else None
    if problem:
        raise Unusable(f"{problem} (from {_url_source(ctx, param)})")
    return value


def _broker_option(func: Any) -> Any:
    return click.option("--broker", metavar="URL", envvar=BROKER_ENV, show_envvar=True,
                        callback=_validate_broker,
                        help="kombu broker URL (redis://..., amqp://...). "
                             "Default: the embedded Redis under ./.busapp/.")(func)


def _exchange_option(func: Any) -> Any:
    return click.option("--exchange", metavar="NAME", envvar=EXCHANGE_ENV, show_envvar=True,
                        help="Topic exchange. Default: the App's own (commissaire).")(func)


def _keyring_option(func: Any) -> Any:
    return click.option("--keyring", metavar="FILE", envvar=KEYRING_ENV, show_envvar=True,
                        type=click.Path(dir_okay=False),
                        help="Keyring file (lines of id:secret): callers must sign with one "
                             "of its keys. See README, 'Securing a deployment'.")(func)


def _load_keyring(path: str | None) -> Any:
    """The keyring in ``path`` (None: none); exported so reloaded or forked workers find it."""
    if not path:
        return None
    from busapp.security import Keyring

    keyring = _usable(Keyring.from_file, path)
    os.environ[KEYRING_ENV] = os.path.abspath(path)
    return keyring


def _log_options(func: Any) -> Any:
    func = click.option("-l", "--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                        default="info", show_default=True,
                        help="Lowest level logged; info has one line per call, warning none.")(func)
    return click.option("--log-format", type=click.Choice(FORMATS),
                        help="Log format. Default: console on a terminal, JSON lines "
                             "otherwise.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(busapp.__version__, "-V", "--version", prog_name="busapp")
def cli() -> None:
    """busapp: JSON-RPC services on a message bus (Redis, RabbitMQ, or an embedded Redis).

    \b
    Start a service, then call it from a second terminal:
      busapp run examples/simpleservice.py:app --workers 3
      busapp call simple.add 1 2
    """


# -- run -----------------------------------------------------------------------


@cli.command()
@click.argument("target", metavar="MODULE[:APP]")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (they share the App's queue).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Messages handled at once inside each worker. Default: 8.")
@_broker_option
@_exchange_option
@click.option("-r", "--reload", is_flag=True,
              help="Restart the workers when a .py file under the module's directory changes.")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long in-flight messages may take. Default: 30.")
@click.option("--startup-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up (exit 1) when a worker cannot reach the broker within this long "
                   "of starting. Default: keep trying.")
@_keyring_option
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), metavar="PORT",
              help="Serve Prometheus metrics of all workers on http://HOST:PORT/metrics "
                   "(needs busapp[prometheus]).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address the metrics endpoint binds (0.0.0.0: reachable from other hosts).")
@_log_options
def run(target: str, workers: int, concurrency: int | None, broker: str | None,
        exchange: str | None, reload: bool, graceful_timeout: float | None,
        startup_timeout: float | None, keyring: str | None, metrics_port: int | None,
        metrics_host: str, log_format: str | None, log_level: str) -> None:
    """Serve MODULE[:APP] until SIGTERM or SIGINT.

    MODULE is a dotted module name or a file path; APP names an App (default:
    `app`, else the only App in the module) or a CommissaireService subclass.

    \b
      busapp run examples/simpleservice.py:app --workers 3
      busapp run mypackage.service:MyService --broker amqp://guest:guest@localhost//
    """
    # Not cache=True: a frozen logger outlives any later configure (tests run commands
    # in-process), and the per-call line is cheap enough without it.
    configure_logging(log_level, log_format)
    from busapp.cli.locate import load_target

    if reload:
        from busapp import _extras

        _usable(_extras.watchfiles)
    if metrics_port is not None:
        from busapp.ops import metrics

        _usable(metrics._client)
    loaded = load_target(target)
    keys = _load_keyring(keyring)
    if keys is not None:
        if loaded.app is not None:
            loaded.app.keyring = keys
            loaded.app._service_class = None  # rebuilt: allow lists are checked against it
            _usable(lambda: loaded.app.service_class)
        else:
            loaded.service_class.keyring = keys
    url = _resolve_broker(broker)
    if reload:
        from busapp.cli.reload import run_with_reload

        options = {"workers": workers, "concurrency": concurrency, "exchange": exchange,
                   "graceful_timeout": graceful_timeout, "log_format": log_format,
                   "log_level": log_level,
                   "metrics_port": metrics_port, "metrics_host": metrics_host}
        sys.exit(run_with_reload(target, loaded.root, url, options))
    log.info("starting", target=target, serves=loaded.label, workers=workers, broker=mask_url(url),
             pid=os.getpid())
    _serve(loaded, url, workers=workers, concurrency=concurrency, exchange=exchange,
           startup_timeout=startup_timeout,
           graceful_timeout=graceful_timeout, metrics_port=metrics_port, metrics_host=metrics_host)


def _usable(check: Any, *args: Any) -> Any:
    """``check(*args)``, with a missing extra or a bad URL turned into a one-line exit 2."""
    try:
        return check(*args)
    except (MissingExtra, ValueError) as exc:
        raise Unusable(str(exc)) from None


def _resolve_broker(broker: str | None) -> str:
    from busapp.transport import resolve_broker_url

    try:
        return resolve_broker_url(broker)
    except BrokerUnavailable as exc:
        raise RunFailed(str(exc)) from None


def _serve(loaded: Any, url: str, **options: Any) -> None:
    from busapp.runtime.manager import CrashLoopError, ServiceManager
    from busapp.core.options import WorkerOptions

    try:
        # Always under a manager, even with one worker: a worker that dies is replaced,
        # and a crash loop ends in a clear exit 1 (app.run(workers=1) stays in-process).
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
        manager.metrics_port = options.get("metrics_port")
        manager.metrics_host = options.get("metrics_host") or manager.metrics_host
        manager.run()
    except CrashLoopError as exc:
        log.error("giving up", error=str(exc))
        raise RunFailed(f"{exc}; fix the error and run again") from None
    except OSError as exc:  # the metrics port is taken, or not ours to bind
        raise RunFailed(f"cannot serve metrics on {options.get('metrics_host')}:"
                        f"{options.get('metrics_port')}: {exc}") from None


# -- call ----------------------------------------------------------------------


@cli.command()
@click.argument("routing_key")
@click.argument("params", nargs=-1)
@_broker_option
@_exchange_option
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS", help="How long to wait for the reply.")
def call(routing_key: str, params: tuple[str, ...], broker: str | None, exchange: str | None,
         timeout: float) -> None:
    """Call ROUTING_KEY and print the result as JSON.

    PARAMS is one JSON array or object, key=value pairs (values parsed as JSON,
    else taken as strings), or plain values sent by position.

    \b
      busapp call simple.add 1 2
      busapp call simple.add x=1 y=2
      busapp call simple.echo '{"words": "hi there"}'

    Exits 0 with the result on stdout; 1 on an error reply (code and message
    on stderr); 2 on a timeout or when there is no broker.
    """
    configure_logging("warning")
    if "." not in routing_key.strip("."):
        raise click.BadParameter(
            f"{routing_key!r} has no method; use SERVICE.METHOD, e.g. simple.add",
            param_hint="ROUTING_KEY")
    body = parse_params(params)
    response = _request(routing_key, body, broker, exchange, timeout)
    error = response.get("error")
    if error is not None:
        raise CallFailed(_describe_error(response))
    click.echo(json.dumps(response.get("result"), ensure_ascii=False))


def _request(routing_key: str, body: Any, broker: str | None, exchange: str | None,
             timeout: float) -> dict:
    from busapp.client.sync import Client

    url = broker or _running_embedded()
    try:
        with Client(url, exchange, timeout=timeout) as client:
            return client.request(routing_key, body, timeout=timeout)
    except NoRouteError as exc:
        raise NoReply(str(exc)) from None
    except RequestTimeout as exc:
        raise NoReply(f"timeout: {exc}") from None
    except BrokerUnavailable as exc:
        raise NoReply(f"{exc}; check that the broker runs and the URL (--broker or "
                      f"{BROKER_ENV}) is right") from None
    except AccessRefused as exc:  # the broker answered, but not to this user: nothing was sent
        raise NoReply(str(exc)) from None


def _running_embedded() -> str:
    """The embedded broker if one runs (or was killed) here; with none, no service can answer.

    A broker that was killed is started again, so the workers still retrying it reconnect.
    """
    from busapp.transport.embedded import find_embedded_broker

    try:
        url = find_embedded_broker(revive=True)
    except BrokerUnavailable as exc:
        raise NoReply(str(exc)) from None
    if url is None:
        raise NoReply(
            f"no broker: no embedded broker is running in {os.getcwd()}/.busapp "
            "(start a service here with `busapp run MODULE:APP`), and no --broker or "
            f"{BROKER_ENV} was given"
        )
    return url


def _describe_error(response: dict) -> str:
    from busapp.core import wire

    exc = wire.error_from_response(response)
    if not isinstance(exc, RemoteProcedureCallError):  # pragma: no cover - malformed error
        return f"error reply: {response.get('error')!r}"
    text = f"{exc.code} {type(exc).__name__}: {exc.message}"
    if exc.data is not None:
        text += f"\ndata: {json.dumps(exc.data)}"
    return text


_KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(args: tuple[str, ...] | list[str]) -> list | dict | None:
    """Turn ``busapp call`` PARAMS into JSON-RPC params.

    One JSON array or object is sent as is; ``key=value`` pairs make an object;
    other values are sent by position. Values are parsed as JSON, else kept as strings.

    Raises:
        click.BadParameter: key=value pairs mixed with positional values.
    """
    if not args:
        return None
    if len(args) == 1:
        single = _json_or_text(args[0])
        if isinstance(single, (list, dict)):
            return single
    pairs = [_KEY_VALUE.match(a) for a in args]
    if all(pairs):
        return {m.group(1): _json_or_text(m.group(2)) for m in pairs if m}
    if any(pairs):
        raise click.BadParameter("mix of key=value and positional values; use one style "
                                 "(e.g. `x=1 y=2` or `1 2`)", param_hint="PARAMS")
    return [_json_or_text(a) for a in args]


# -- routes --------------------------------------------------------------------


@cli.command()
@click.argument("target", metavar="MODULE[:APP]")
@click.option("-f", "--format", "fmt", type=click.Choice(("text", "json", "openrpc")),
              default="text", show_default=True,
              help="text: a table; json: the same as data; openrpc: an OpenRPC 1.3 document "
                   "with JSON Schema of params and results.")
def routes(target: str, fmt: str) -> None:
    """List the routing keys MODULE[:APP] serves, with functions, parameters and storage events."""
    from busapp.cli.locate import load_target

    loaded = load_target(target)
    if fmt == "text":
        click.echo(route_table(loaded))
        return
    from busapp.ops import openrpc

    source = loaded.app if loaded.app is not None else _describe_instance(loaded.service_class)
    document = openrpc.openrpc_document(source) if fmt == "openrpc" else openrpc.describe(source)
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _table(headers: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]]


def _function_name(func: Any) -> str:
    func = getattr(func, "__func__", func)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def route_table(target: Any) -> str:
    """The text ``busapp routes`` prints for ``target`` (a :class:`busapp.cli.locate.Target`)."""
    if target.app is not None:
        app = target.app
        lines = [f"App {app.name!r}: exchange {app.exchange!r}, queue {app.queue!r}, "
                 f"binding {app.routing_key!r}", ""]
        rows = [(app.routing_key_for(name), _function_name(h.func), ", ".join(h.describe_params()))
                for name, h in sorted(app.methods.items())]
        events = [(e.binding_key, _function_name(e.func)) for e in app.storage_handlers]
    else:
        service = _describe_instance(target.service_class)
        binding = service.routing_keys[0] if service.routing_keys else f"{service.service_name}.*"
        prefix = binding[:-2] if binding.endswith(".*") else service.service_name
        lines = [f"Service class {target.service_class.__name__!r}: exchange "
                 f"{service.exchange_name!r}, queue {service.service_name!r}, "
                 f"binding {binding!r}", ""]
        rows = [(f"{prefix}.{name}", _function_name(h.func), ", ".join(h.describe_params()))
                for name, h in sorted(service.handlers.items())]
        events = []
    lines += _table(("ROUTING KEY", "FUNCTION", "PARAMS"), rows) if rows else ["(no methods)"]
    lines.append("")
    lines += (_table(("STORAGE EVENT", "FUNCTION"), events) if events
              else ["(no storage subscriptions)"])
    return "\n".join(lines)


def _describe_instance(service_class: type) -> Any:
    """An instance, to read its queues and handlers (a URL is given, so nothing connects)."""
    import inspect

    kwargs = {"exchange_name": None, "connection_url": "memory://"}
    params = inspect.signature(service_class).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        return service_class(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's __init__ may need more
        raise click.UsageError(
            f"could not create {service_class.__name__} to list its routes: {exc}") from None


# -- storage -------------------------------------------------------------------


@cli.command()
@click.option("--store", metavar="URL", envvar=STORE_ENV, show_envvar=True,
              help="Storage backend: sqlite:///PATH (default ./.busapp/storage.sqlite3), "
                   "memory://, postgresql://..., redis://...")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes.")
@_broker_option
@_exchange_option
@click.option("--queue", metavar="NAME",
              help="Queue name. Default: storage on the commissaire exchange, "
                   "<exchange>.storage on another.")
@_keyring_option
@click.option("--allow", "allow", multiple=True, metavar="TYPE=IDS",
              help="Only these key ids may read and write model TYPE, e.g. "
                   "HostCreds=investigator,ops (repeatable; needs --keyring).")
@click.option("--allow-read", "allow_read", multiple=True, metavar="TYPE=IDS",
              help="These key ids may also read model TYPE (repeatable; needs --keyring).")
@_log_options
def storage(store: str | None, workers: int, broker: str | None, exchange: str | None,
            queue: str | None, keyring: str | None, allow: tuple[str, ...],
            allow_read: tuple[str, ...], log_format: str | None, log_level: str) -> None:
    """Run the storage service (routing keys storage.*) until SIGTERM or SIGINT.

    \b
      busapp storage --keyring keys.txt --allow HostCreds=investigator,ops
    """
    # Not cache=True: a frozen logger outlives any later configure (tests run commands
    # in-process), and the per-call line is cheap enough without it.
    configure_logging(log_level, log_format)
    from busapp.storage.backends import open_backend
    from busapp.storage.service import make_app

    # Check the URL (scheme, options, driver installed) now; workers open it at the first call.
    _usable(open_backend, store)
    keys = _load_keyring(keyring)
    app = _usable(lambda: make_app(store, queue=queue, keyring=keys,
                                   allow=_access_rules(allow, "--allow"),
                                   allow_read=_access_rules(allow_read, "--allow-read")))
    url = _resolve_broker(broker)
    log.info("starting storage service", store=mask_url(store) if store else "default",
             workers=workers, broker=mask_url(url), pid=os.getpid())
    from busapp.cli.locate import Target

    target = Target("storage", sys.modules[make_app.__module__], app, app.service_class,
                    Path.cwd())
    _serve(target, url, workers=workers, concurrency=None, exchange=exchange, graceful_timeout=None)


def _access_rules(rules: tuple[str, ...], option: str) -> dict[str, list[str]]:
    """``("HostCreds=a,b", ...)`` -> ``{"HostCreds": ["a", "b"]}`` (a usage error otherwise)."""
    table: dict[str, list[str]] = {}
    for rule in rules:
        type_name, sep, ids = rule.partition("=")
        names = [i.strip() for i in ids.split(",") if i.strip()]
        if not sep or not type_name.strip() or not names:
            raise click.BadParameter(f"{rule!r}: want TYPE=ID[,ID...], e.g. HostCreds=ops",
                                     param_hint=option)
        table.setdefault(type_name.strip(), []).extend(names)
    return table


# -- status, probe ---------------------------------------------------------------


class ProbeFailed(click.ClickException):
    """No worker answered the probe (or the broker could not be reached)."""

    exit_code = 1


def _status_options(default_timeout: float) -> Any:
    def apply(func: Any) -> Any:
        func = click.option("--local", is_flag=True,
                            help="Only workers on this host (a container's own).")(func)
        func = click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True),
                            default=default_timeout, show_default=True, metavar="SECONDS",
                            help="How long to wait for answers.")(func)
        return _broker_option(_exchange_option(func))

    return apply


def _gather(name: str | None, broker: str | None, exchange: str | None, timeout: float,
            local: bool, first: bool) -> list[dict]:
    import socket

    from busapp.entrypoints import control
    from busapp.client.sync import default_exchange

    return control.gather(broker or _running_embedded(), default_exchange(exchange), name,
                          timeout=timeout, first=first,
                          host=socket.gethostname() if local else None)


@cli.command()
@click.argument("name", required=False)
@_status_options(1.0)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per worker.")
def status(name: str | None, broker: str | None, exchange: str | None, timeout: float, local: bool,
           as_json: bool) -> None:
    """List every live worker (of service NAME, or all): each answers for itself.

    \b
      busapp status
      busapp status simple --json
    """
    configure_logging("warning")
    try:
        workers = _gather(name, broker, exchange, timeout, local, first=False)
    except BrokerUnavailable as exc:
        raise NoReply(str(exc)) from None
    if as_json:
        click.echo(json.dumps(workers, indent=2))
    elif workers:
        from busapp.entrypoints.control import FIELDS

        rows = [tuple(str(w.get(f, "")) for f in FIELDS) for w in workers]
        click.echo("\n".join(_table(tuple(f.upper().replace("_", " ") for f in FIELDS), rows)))
    else:
        click.echo(f"no worker{' of ' + repr(name) if name else ''} answered within {timeout:g}s",
                   err=True)


@cli.command()
@click.argument("name")
@_status_options(5.0)
def probe(name: str, broker: str | None, exchange: str | None, timeout: float, local: bool) -> None:
    """Exit 0 if a worker of service NAME answers in time, else 1 (a liveness/readiness probe).

    \b
      busapp probe simple --local --timeout 3
    """
    configure_logging("warning")
    try:
        workers = _gather(name, broker, exchange, timeout, local, first=True)
    except (BrokerUnavailable, NoReply) as exc:
        raise ProbeFailed(str(exc.message if isinstance(exc, NoReply) else exc)) from None
    if not workers:
        where = " on this host" if local else ""
        raise ProbeFailed(f"no worker of {name!r}{where} answered within {timeout:g}s")
    click.echo(f"{name}: worker {workers[0].get('pid')} on {workers[0].get('host')} answered")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``busapp`` console script and ``python -m busapp``."""
    cli.main(args=argv, prog_name="busapp")
