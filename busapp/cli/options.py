"""What the ``busapp`` commands share: exit-code exceptions, the broker, exchange, keyring,
key and log options, and the helpers that turn a bad setting into a one-line error."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

from busapp import config
from busapp.errors import BrokerUnavailable, MissingExtra
from busapp.log import FORMATS, LEVELS
from busapp.security import KEY_ENV, Keyring, parse_key
from busapp.transport import check_broker_url, resolve_broker_url
from busapp.transport.embedded import find_embedded_broker

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


def url_source(ctx: click.Context, param: click.Parameter) -> str:
    """How the user gave ``param``: ``--broker`` or ``$BUSAPP_BROKER_URL``."""
    source = ctx.get_parameter_source(param.name or "")
    if source is click.core.ParameterSource.ENVIRONMENT and param.envvar:
        return f"${param.envvar}"
    return param.opts[0]


def validate_broker(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    problem = check_broker_url(value) if value else None
    if problem:
        raise Unusable(f"{problem} (from {url_source(ctx, param)})")
    return value


def broker_option(func: Any) -> Any:
    return click.option("--broker", metavar="URL", envvar=BROKER_ENV, show_envvar=True,
                        callback=validate_broker,
                        help="kombu broker URL (redis://..., amqp://...). "
                             "Default: the embedded Redis under ./.busapp/.")(func)


def exchange_option(func: Any) -> Any:
    return click.option("--exchange", metavar="NAME", envvar=EXCHANGE_ENV, show_envvar=True,
                        help="Topic exchange. Default: the App's own (commissaire).")(func)


def keyring_option(func: Any) -> Any:
    return click.option("--keyring", metavar="FILE", envvar=KEYRING_ENV, show_envvar=True,
                        type=click.Path(dir_okay=False),
                        help="Keyring file (lines of id:secret): callers must sign with one "
                             "of its keys. See the docs, 'Secure a deployment'.")(func)


def _parse_key(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if not value:
        return None
    try:
        return parse_key(value)
    except ValueError as exc:  # the message never holds the secret
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def key_option(func: Any) -> Any:
    """``--key ID:SECRET`` (or ``$BUSAPP_KEY``): the key a command signs its messages with."""
    return click.option("--key", metavar="ID:SECRET", envvar=KEY_ENV, show_envvar=True,
                        callback=_parse_key,
                        help="Sign with this key of the services' keyrings (they answer only "
                             "signed messages then). Prefer the variable: a command line is "
                             "visible to other users of the host.")(func)


def load_keyring(path: str | None) -> Any:
    """The keyring in ``path`` (None: none); exported so reloaded or forked workers find it."""
    if not path:
        return None
    keyring = usable(Keyring.from_file, path)
    os.environ[KEYRING_ENV] = os.path.abspath(path)
    return keyring


def log_options(func: Any) -> Any:
    func = click.option("-l", "--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                        default="info", show_default=True,
                        help="Lowest level logged; info has one line per call, warning none.")(func)
    return click.option("--log-format", type=click.Choice(FORMATS),
                        help="Log format. Default: console on a terminal, JSON lines "
                             "otherwise.")(func)


def usable(check: Any, *args: Any) -> Any:
    """``check(*args)``, with a missing extra or a bad URL turned into a one-line exit 2."""
    try:
        return check(*args)
    except (MissingExtra, ValueError) as exc:
        raise Unusable(str(exc)) from None


def resolve_broker(broker: str | None) -> str:
    try:
        return resolve_broker_url(broker)
    except BrokerUnavailable as exc:
        raise RunFailed(str(exc)) from None


def running_embedded() -> str:
    """The embedded broker if one runs (or was killed) here; with none, no service can answer.

    A broker that was killed is started again, so the workers still retrying it reconnect.
    """
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


def table(headers: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]]
