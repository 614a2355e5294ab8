"""``busapp call``: call a method and print its result."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from busapp.cli.options import (
    BROKER_ENV,
    CallFailed,
    NoReply,
    broker_option,
    exchange_option,
    key_option,
    running_embedded,
)
from busapp.client.sync import Client
from busapp.core import wire
from busapp.errors import (
    AccessRefused,
    BrokerUnavailable,
    NoRouteError,
    RemoteProcedureCallError,
    RequestTimeout,
)
from busapp.log import configure_logging


# -- call ----------------------------------------------------------------------


@click.command()
@click.argument("routing_key")
@click.argument("params", nargs=-1)
@broker_option
@exchange_option
@key_option
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS", help="How long to wait for the reply.")
def call(routing_key: str, params: tuple[str, ...], broker: str | None, exchange: str | None,
         key: Any, timeout: float) -> None:
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
    response = _request(routing_key, body, broker, exchange, timeout, key)
    error = response.get("error")
    if error is not None:
        raise CallFailed(_describe_error(response))
    click.echo(json.dumps(response.get("result"), ensure_ascii=False))


def _request(routing_key: str, body: Any, broker: str | None, exchange: str | None,
             timeout: float, key: Any = None) -> dict:
    url = broker or running_embedded()
    try:
        with Client(url, exchange, timeout=timeout, key=key) as client:
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


def _describe_error(response: dict) -> str:
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
