"""The public API as a user's type checker sees it (busapp ships py.typed)."""

from __future__ import annotations

import pytest
from mypy import api as mypy_api

# What a user writes; each assert_type fails the check when busapp's annotations say otherwise.
USER_CODE = '''
from typing import Any, assert_type

from busapp import App, Router
from busapp.testing import TestClient

app = App("typed")
router = Router()


@app.method
def add(x: int, y: int) -> int:
    return x + y


@app.method("sub", time_limit=5.0)
def sub(x: int, y: int) -> int:
    return x - y


@router.method
def count(item: str) -> int:
    return len(item)


@router.method("total")
def total(items: list[str]) -> int:
    return len(items)


@app.dependency
def db() -> str:
    return "db"


@app.dependency("cache", scope="call")
def cache() -> dict[str, Any]:
    return {}


assert_type(add(1, 2), int)
assert_type(sub(1, 2), int)
assert_type(count("a"), int)
assert_type(total(["a"]), int)
assert_type(db(), str)
assert_type(cache(), dict[str, Any])
assert_type(app.test_client(), TestClient)
'''


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory):
    """``check(code)``: mypy's findings on ``code`` alone, as in a user's project (busapp's
    own modules are checked by ``mypy busapp`` in CI)."""
    workdir = tmp_path_factory.mktemp("typing")
    config = workdir / "mypy.ini"
    config.write_text("[mypy]\npython_version = 3.11\n")

    def run(code: str) -> list[str]:
        stdout, stderr, _ = mypy_api.run(["--config-file", str(config), "--cache-dir",
                                          str(workdir / "cache"), "--no-error-summary",
                                          "-c", code])
        assert not stderr, stderr
        return [line for line in stdout.splitlines() if line.startswith("<string>:")]

    return run


@pytest.mark.slow
def test_decorators_keep_the_function_type_and_test_client_is_typed(check):
    """Bare and called @app.method, @router.method, @app.dependency return the function as
    typed; App.test_client() is a TestClient, not Any."""
    assert check(USER_CODE) == []


@pytest.mark.slow
def test_the_check_sees_a_wrong_type(check):
    """The check above can fail: a wrong expected type is reported."""
    found = check(USER_CODE + "assert_type(add(1, 2), str)\n")
    assert len(found) == 1 and "[assert-type]" in found[0], found


INJECTED_CODE = '''
from typing import Any, assert_type

from busapp import App, AsyncBus, Bus, Message, Storage
from busapp.models import Host

app = App("typed")


@app.method()
def send(text: str, message: Message, bus: Bus, storage: Storage) -> str:
    assert_type(message.routing_key, str | None)
    assert_type(bus.call("mail.echo", text), Any)
    bus.notify("audit.sent", text=text)
    assert_type(storage.get_host("10.0.0.1"), Host)
    return text


@app.method()
async def relay(text: str, bus: AsyncBus) -> Any:
    return await bus.call("mail.echo", text)
'''


@pytest.mark.slow
def test_injected_parameters_can_be_annotated_and_type_check(check):
    """busapp.Message, Bus, AsyncBus and Storage type-check as annotations of the injected
    parameters: their attributes and calls are known to mypy."""
    assert check(INJECTED_CODE) == []


@pytest.mark.slow
def test_a_misspelt_bus_call_is_reported(check):
    """The Bus protocol is not Any: a method it does not have is a mypy error."""
    found = check(INJECTED_CODE + "\n\ndef wrong(bus: Bus) -> None:\n    bus.cal('a.b')\n")
    assert len(found) == 1 and '"Bus" has no attribute "cal"' in found[0], found
