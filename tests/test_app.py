"""App registration and the generated service class."""

from __future__ import annotations

import subprocess
import sys

import pytest

import busapp
from busapp import App
from busapp.service import CommissaireService


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a.b", "on ping", "_x"])
def test_bad_method_names_rejected(name):
    """Names must match [A-Za-z][A-Za-z0-9_]*."""
    app = App("n")
    with pytest.raises(ValueError, match="must match"):
        app.add_method(lambda: None, name)


def test_duplicate_method_rejected():
    """Registering a name twice is an error."""
    app = App("n")
    app.add_method(lambda: 1, "a")
    with pytest.raises(ValueError, match="already registered"):
        app.add_method(lambda: 2, "a")


def test_decorator_returns_function_unchanged():
    """@app.method returns the plain function, still callable directly."""
    app = App("n")

    def add(x: int, y: int) -> int:
        return x + y

    assert app.method()(add) is add
    assert add(1, 2) == 3 and "add" in app.methods


def test_defaults():
    """Queue defaults to the name, binding key to name.*, exchange to commissaire."""
    app = App("simple")
    assert (app.queue, app.routing_key, app.exchange) == ("simple", "simple.*", "commissaire")
    assert app.routing_key_for("add") == "simple.add"


def test_service_class_has_on_methods():
    """service_class is a CommissaireService subclass with on_<name> per function."""
    app = App("simple")
    app.add_method(lambda: "pong", "ping")
    cls = app.service_class
    assert issubclass(cls, CommissaireService)
    assert set(cls.exposed_methods()) == {"ping"}


def test_exposed_methods_skip_hooks():
    """kombu hooks and private names defined by a subclass are not exposed."""

    class S(CommissaireService):
        def on_ping(self, message):
            return "pong"

        def on_connection_revived(self):
            pass

        def on_message(self, body, message):
            pass

        def _on_x(self, message):
            pass

    assert set(S.exposed_methods()) == {"ping"}


def test_bad_storage_event_rejected():
    """Unknown storage events are a ValueError at registration."""
    with pytest.raises(ValueError, match="event must be one of"):
        App("n").add_storage_handler(lambda event, model: None, None, "exploded")


def test_public_surface():
    """busapp re-exports exactly its public names."""
    assert busapp.__all__ == sorted(busapp.__all__)
    assert {"App", "Client", "errors"} <= set(busapp.__all__)


def test_core_does_not_import_kombu():
    """Importing busapp and registering methods leaves kombu (and click) unimported."""
    code = ("import sys, busapp; app = busapp.App('x'); app.add_method(lambda: 1, 'a'); "
            "print('kombu' in sys.modules, 'click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_max_body_reaches_the_service_class():
    """App(max_body=...) sets the generated service's body limit."""
    app = App("big", max_body=5 * 1024 * 1024)
    assert app.service_class.worker_options.max_body == 5 * 1024 * 1024
    assert App("small").service_class.worker_options.max_body == 1024 * 1024


def test_storage_service_takes_records_over_one_mib():
    """A 1.5 MB record goes through the storage service's bus path (its limit is 16 MiB)."""
    from busapp.models import Host

    client = App("bigrec").test_client()
    big = Host.new(address="10.9.9.9", os="x" * 1_500_000)
    client.storage.save(big)
    assert client.storage.get_host("10.9.9.9").os == big.os
