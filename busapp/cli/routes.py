"""``busapp routes``: what an App or service class serves."""

from __future__ import annotations

import inspect
import json
from typing import Any

import click

from busapp.cli.locate import load_target
from busapp.cli.options import table
from busapp.ops import openrpc


# -- routes --------------------------------------------------------------------


@click.command()
@click.argument("target", metavar="MODULE[:APP]")
@click.option("-f", "--format", "fmt", type=click.Choice(("text", "json", "openrpc")),
              default="text", show_default=True,
              help="text: a table; json: the same as data; openrpc: an OpenRPC 1.3 document "
                   "with JSON Schema of params and results.")
def routes(target: str, fmt: str) -> None:
    """List the routing keys MODULE[:APP] serves, with functions, parameters, storage events,
    event handlers and timers."""
    loaded = load_target(target)
    if fmt == "text":
        click.echo(route_table(loaded))
        return
    source = loaded.app if loaded.app is not None else _describe_instance(loaded.service_class)
    document = openrpc.openrpc_document(source) if fmt == "openrpc" else openrpc.describe(source)
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


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
    lines += table(("ROUTING KEY", "FUNCTION", "PARAMS"), rows) if rows else ["(no methods)"]
    lines.append("")
    lines += (table(("STORAGE EVENT", "FUNCTION"), events) if events
              else ["(no storage subscriptions)"])
    app = target.app
    if app is not None and app.event_handlers:
        lines.append("")
        lines += table(("EVENT", "FUNCTION", "DELIVERY", "RETRIES", "PARAMS"), [
            (h.pattern, _function_name(h.func), "every worker" if h.broadcast else "once per App",
             str(h.retries), ", ".join(h.handler.describe_params())) for h in app.event_handlers])
    if app is not None and app.timers:
        lines.append("")
        lines += table(("TIMER", "FUNCTION", "SCHEDULE"), [
            (name, _function_name(t.func), f"{t.schedule}{', eager' if t.eager else ''}")
            for name, t in sorted(app.timers.items())])
    return "\n".join(lines)


def _describe_instance(service_class: type) -> Any:
    """An instance, to read its queues and handlers (a URL is given, so nothing connects)."""
    kwargs = {"exchange_name": None, "connection_url": "memory://"}
    params = inspect.signature(service_class).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        return service_class(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's __init__ may need more
        raise click.UsageError(
            f"could not create {service_class.__name__} to list its routes: {exc}") from None
