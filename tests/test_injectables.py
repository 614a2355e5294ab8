"""busapp.core.injectables and the reserved names: ``message``, ``bus`` and ``storage`` are
busapp's to fill; a wire type on one is refused when the function is registered."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import busapp
from busapp import App, AsyncBus, Bus, Message, Router, Storage
from busapp.cli.main import cli
from busapp.core.pipeline import IncomingMessage
from busapp.models import Host
from busapp.storage.client import StorageClient


@pytest.mark.parametrize("annotation", [str, int, dict, list[str], Host, "str | None"])
def test_message_with_a_wire_type_is_refused_at_registration(annotation: Any) -> None:
    """``def send(message: str)`` raises ValueError at @app.method(): the name is reserved,
    and the message says what to rename it to."""
    app = App("mail")
    namespace: dict[str, Any] = {"annotation": annotation}
    text = annotation if isinstance(annotation, str) else "annotation"
    exec(f"def send(message: {text}) -> None: ...", namespace)
    with pytest.raises(ValueError, match="'message' is a reserved name") as caught:
        app.add_method(namespace["send"])
    assert "Rename the parameter (e.g. to 'text')" in str(caught.value)
    assert "send" not in app.methods


@pytest.mark.parametrize("name, instead", [("bus", "bus_name"), ("storage", "store")])
def test_bus_and_storage_with_a_wire_type_are_refused(name: str, instead: str) -> None:
    """``bus: str`` and ``storage: int`` are refused too, each with its own suggestion."""
    app = App("mail")
    namespace: dict[str, Any] = {}
    exec(f"def send({name}: str) -> None: ...", namespace)
    with pytest.raises(ValueError, match=f"'{name}' is a reserved name.*'{instead}'"):
        app.add_method(namespace["send"])


def test_a_storage_handler_with_message_str_is_refused() -> None:
    """The rule holds for storage-event handlers as for methods."""
    app = App("mail")
    with pytest.raises(ValueError, match="'message' is a reserved name"):
        @app.on_storage_event(Host, "created")
        def created(event: str, model: Host, message: str) -> None: ...


def test_a_router_method_is_refused_when_included() -> None:
    """A router's method with ``message: str`` is refused when the App includes the router."""
    router = Router()

    @router.method()
    def send(message: str) -> None: ...

    with pytest.raises(ValueError, match="'message' is a reserved name"):
        App("mail").include(router)


def test_the_injectables_own_types_are_accepted_and_filled() -> None:
    """Annotated with busapp.Message, Bus and Storage, the parameters are injected with the
    incoming message, a bus and a storage client; only ``text`` is a wire param."""
    app = App("mail")
    seen: dict[str, Any] = {}

    @app.method()
    def send(text: str, message: Message, bus: Bus, storage: Storage) -> str:
        seen.update(message=message, bus=bus, storage=storage)
        return f"{text} via {message.routing_key}"

    assert app.methods["send"].describe_params() == ["text: str"]
    assert app.test_client().call("send", "hi") == "hi via mail.send"
    assert isinstance(seen["message"], IncomingMessage)
    assert isinstance(seen["storage"], StorageClient)
    assert callable(seen["bus"].call) and callable(seen["bus"].notify)


def test_an_async_handler_may_annotate_bus_as_async_bus() -> None:
    """``bus: AsyncBus`` in an ``async def`` registers, and its calls are awaited."""
    app = App("mail")

    @app.method()
    def echo(text: str) -> str:
        return text

    @app.method()
    async def relay(text: str, bus: AsyncBus) -> str:
        return str(await bus.call("mail.echo", text))

    assert app.test_client().call("relay", "hi") == "hi"


def test_the_injectable_types_are_exported() -> None:
    """busapp.Message is the incoming message class and busapp.Storage the storage client."""
    assert busapp.Message is IncomingMessage and busapp.Storage is StorageClient
    assert {"Message", "Bus", "AsyncBus", "Storage"} <= set(busapp.__all__)


def test_routes_lists_the_wire_params_of_a_function_taking_message(tmp_path: Path) -> None:
    """`busapp routes` shows ``text: str`` for ``send(text: str, message: Message)``."""
    (tmp_path / "mailer.py").write_text(textwrap.dedent('''
        from busapp import App, Message

        app = App("mailer")

        @app.method()
        def send(text: str, message: Message) -> str:
            return text
    '''))
    result = CliRunner().invoke(cli, ["routes", str(tmp_path / "mailer.py")])
    assert result.exit_code == 0, result.output
    assert any(line.split() == ["mailer.send", "mailer.send", "text:", "str"]
               for line in result.output.splitlines()), result.output


def test_routes_of_a_module_with_the_trap_exits_2_naming_it(tmp_path: Path) -> None:
    """`busapp routes` on ``def send(message: str)`` exits 2 saying the name is reserved."""
    (tmp_path / "trap.py").write_text(textwrap.dedent('''
        from busapp import App

        app = App("trap")

        @app.method()
        def send(message: str) -> None: ...
    '''))
    result = CliRunner().invoke(cli, ["routes", str(tmp_path / "trap.py")])
    assert result.exit_code == 2
    assert "'message' is a reserved name" in result.output
